"""Export a checkpoint for deployment: ``python -m clamp_pl.export ckpt_path=<.ckpt or run dir> [format=onnx]
[output=<file.onnx>] [opset=17] [verify=true]``. What the ONNX file holds: :mod:`clamp_pl.inference.onnx`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clamp_pl.inference.estimator import load_model
from clamp_pl.inference.onnx import export_onnx, verify_onnx

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("clamp_pl")

__all__ = ["export", "main"]


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` (the composed ``conf/export.yaml``); returns ``{"output", "metadata",
    "max_abs_diff"}`` (the last None without ``verify``)."""
    if cfg.format != "onnx":
        raise ValueError(f"format must be 'onnx', got {cfg.format!r}")
    est = load_model(cfg.ckpt_path, device="cpu")
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / "model.onnx"
    export_onnx(est, output, opset=int(cfg.opset))
    meta_path = output.with_suffix(".json")
    log.info("exported %s (%.1f MB) and %s", output, output.stat().st_size / 2**20, meta_path)
    diff = None
    if cfg.get("verify"):
        diff = verify_onnx(est, output)
        meta = json.loads(meta_path.read_text())
        meta["verified_max_abs_diff"] = diff
        meta_path.write_text(json.dumps(meta, indent=1))
        log.info("ONNX Runtime vs PyTorch: max abs difference of the heatmaps %.2e", diff)
        if diff > float(cfg.tolerance):
            raise RuntimeError(f"{output}: ONNX Runtime differs from PyTorch by {diff:.2e} > {cfg.tolerance}")
    return {"output": output, "metadata": meta_path, "max_abs_diff": diff}


def main() -> None:
    """The Hydra entry point. Hydra is imported here only: importing this module for :func:`export_onnx` needs
    neither Hydra nor Lightning."""
    import hydra

    from clamp_pl.cli.config import config_dir
    from clamp_pl.cli.run import exit_on_user_error

    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")(exit_on_user_error(export))()


if __name__ == "__main__":
    main()
