"""Config helpers: where ``conf/`` lives, resolvers, and clear errors for unknown config choices."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def project_root() -> Path:
    """The checkout that holds ``conf/`` (editable install), else the current directory."""
    env = os.environ.get("PROJECT_ROOT")
    if env:
        return Path(env)
    root = PACKAGE_DIR.parent
    return root if (root / "conf").is_dir() else Path.cwd()


def config_dir() -> Path:
    """``conf/`` of the checkout. Every entry point asks for it before Hydra composes, so the ``clamp_root``
    resolver its paths use is registered here rather than when the module is imported."""
    register_resolvers()
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



def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would, outside ``@hydra.main`` (demo, notebooks, tests),
    with the run dir at ``output_dir`` (``${hydra:runtime.output_dir}`` resolves to it)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg
