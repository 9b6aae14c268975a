"""Config helpers: where ``conf/`` lives, resolvers, and clear errors for unknown config choices."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def project_root() -> Path:
    """The checkout that holds ``conf/`` (editable install), else the current directory."""
    env = os.environ.get("PROJECT_ROOT")
    if env:
        return Path(env)
    root = PACKAGE_DIR.parent
    return root if (root / "conf").is_dir() else Path.cwd()


def config_dir() -> Path:
    path = project_root() / "conf"
    if not path.is_dir():
        raise FileNotFoundError(
            f"clamp_pl's Hydra configs were not found at {path}. Install the package from a checkout with "
            "`pip install -e .` (the configs live in the checkout's conf/), or set PROJECT_ROOT to it."
        )
    return path


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("clamp_root"):
        OmegaConf.register_new_resolver("clamp_root", lambda: str(project_root()))


def group_choices(group: str) -> list[str]:
    """The options of a config group (file stems, private ``_*`` files excluded)."""
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


register_resolvers()
