"""Frames worth labelling next: ``python -m clamp_pl.tools.outliers ckpt_path=<run or [runs]> input=<videos,
folders or a project> [project=<labelling project>] [n=20] [signal=combined]`` (``clamp-outliers``).

Each frame of each video is checked without labels (:mod:`clamp_pl.inference.qc`); ``<stem>_qc.csv`` and
``<stem>_qc.png`` go to ``output_dir``; the ``n`` frames picked (diverse, never labelled or proposed before)
are written with the model's keypoints as proposals into the project, in its own format
(:mod:`clamp_pl.formats.proposals`), for correction in DeepLabCut, lightning-pose's tools, SLEAP or a COCO
importer; retraining from the corrected project is ``python -m clamp_pl.train init_from=<run> data=dlc
data.project=<project>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig

from clamp_pl.cli.config import config_dir
from clamp_pl.cli.run import exit_on_user_error, task_wrapper
from clamp_pl.inference.estimator import load_model
from clamp_pl.inference.qc import find_outliers, resolve_inputs
from clamp_pl.inference.tracking import FollowConfig

log = logging.getLogger("clamp_pl")

__all__ = ["main", "outliers"]


def _paths(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple, ListConfig)) else [str(value)]


@task_wrapper
def outliers(cfg: DictConfig) -> dict[str, Any]:
    """The ``clamp_pl.tools.outliers`` command (see the module docstring)."""
    videos, project = resolve_inputs(_paths(cfg.input))
    if cfg.get("project"):
        project = Path(str(cfg.project)).expanduser()
        if not project.exists():
            raise FileNotFoundError(f"project={project}: no such labelling project")
    f = cfg.get("follow") or {}
    try:
        follow = FollowConfig(**{k: (tuple(v) if k == "search_scales" else v) for k, v in f.items()})
    except TypeError as e:
        raise ValueError(f"follow: {e} (known keys: {sorted(FollowConfig.__dataclass_fields__)})") from e
    estimators = [load_model(p, device=cfg.get("device")) for p in _paths(cfg.ckpt_path)]
    out = Path(cfg.output_dir)
    report = find_outliers(
        estimators, videos, out, n=int(cfg.n), signal=cfg.signal, project=project, fmt=cfg.get("format"),
        candidates=int(cfg.candidates), seed=int(cfg.seed), track=str(cfg.track), follow=follow,
        frame_step=int(cfg.frame_step), max_frames=cfg.get("max_frames"), batch_size=int(cfg.batch_size),
        jump_k=float(cfg.jump_k), scorer=str(cfg.scorer),
    )
    picked = sum(len(v["picked"]) for v in report["videos"].values())
    where = report["proposals"]["labels"] if report["proposals"] else []
    log.info("%d frames proposed (ranked by %s) into %s; per-frame signals in %s", picked,
             "+".join(report["signals"]), ", ".join(str(p) for p in where) or "nothing (no frame left)", out)
    return report


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="outliers")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    outliers(cfg)


if __name__ == "__main__":
    main()
