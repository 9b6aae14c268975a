"""Import the authors' released CLAMP checkpoint (mmpose format) as a clamp_pl run directory.

``python -m clamp_pl.tools.import_official <official .pth> model=clamp_vitb16 data=ap10k out=<run dir>`` (the path may
also be given as ``checkpoint=<official .pth>``; ``model=clamp_rn50`` / ``clamp_vitl14`` for the other towers).

The file is read safely (:func:`clamp_pl.models.official.load_checkpoint_file`; ``trust_checkpoint=true`` to
unpickle anything), the network is rebuilt as the official one (:func:`clamp_pl.models.official.official_net_kwargs`:
structure from the shapes, class embedding twice, 13-position text context, ViT-L/14's 8 text heads), the weights
are converted (:func:`clamp_pl.models.official.convert_state_dict`) and loaded strictly, and ``<out>/model.pt``
(model spec + CLAMP weights, the official test settings) and ``<out>/import.json`` (source, dropped keys, the
checkpoint's meta) are written. ``python -m clamp_pl.eval ckpt_path=<out> split=val`` then evaluates it on
val-split1, where the official configs test.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, open_dict

from clamp_pl.cli.build import build_datamodule, build_spec
from clamp_pl.cli.config import config_dir
from clamp_pl.cli.run import exit_on_user_error, write_json
from clamp_pl.data.metainfo import get_meta
from clamp_pl.inference.checkpoint import MODEL_FILE_NAME, save_model_file
from clamp_pl.models.official import convert_state_dict, describe, load_checkpoint_file, official_net_kwargs

log = logging.getLogger("clamp_pl")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """The checkpoint's meta as JSON: numpy values as Python numbers/lists, long texts kept."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


@contextlib.contextmanager
def _naming(source: Path) -> Iterator[None]:
    """Errors about the checkpoint's content name the file they come from (the converter sees only tensors)."""
    try:
        yield
    except (KeyError, ValueError) as e:
        message = e.args[0] if e.args else str(e)
        raise ValueError(f"{source}: {message}") from e


def import_official(cfg: DictConfig) -> Path:
    """Write the run directory ``cfg.out`` from the official checkpoint ``cfg.checkpoint``; returns the model file."""
    source, out = Path(cfg.checkpoint), Path(cfg.out)
    raw = load_checkpoint_file(source, trust_checkpoint=bool(cfg.trust_checkpoint))
    clip_model = str(cfg.model.net.clip_model)
    with _naming(source):
        official = official_net_kwargs(raw, clip_model)
        info = describe(raw)
    with open_dict(cfg):
        for key, value in official.items():
            ours = cfg.model.net.get(key)
            if key in cfg.model.net and ours != value:
                log.info("model.net.%s: %r from the checkpoint (the config says %r)", key, value, ours)
            cfg.model.net[key] = value
        # the weights are the checkpoint's: CLIP's are neither needed nor read
        cfg.model.net.pretrained = None
    dm = build_datamodule(cfg)
    # built-in datasets have a fixed keypoint table: the dataset itself need not be on disk yet
    meta = get_meta(dm.meta_name) if dm.meta_name is not None else dm.ensure_meta()
    if meta.num_keypoints != info["num_keypoints"]:
        raise ValueError(f"{source}: the checkpoint predicts {info['num_keypoints']} keypoints but data={dm.name} "
                         f"has {meta.num_keypoints}: choose the dataset it was trained on")
    spec = build_spec(cfg, meta, dm.name)
    net = spec.build_network(load_pretrained=False)
    with _naming(source):
        state = convert_state_dict(raw, expected=net.state_dict())
    net.load_state_dict(state, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    model_file = save_model_file(out / MODEL_FILE_NAME, spec, net.state_dict())
    write_json(out / "import.json", {
        "source": str(source.resolve()),
        "sha256": _sha256(source),
        "clip_model": clip_model,
        "official_net_kwargs": official,
        "dropped": state.dropped,
        "meta": _plain(raw.get("meta", {})) if isinstance(raw, dict) else {},
    })
    log.info("Imported %s (%s, %d parameters converted, %d dropped) -> %s", source, clip_model, len(state),
             len(state.dropped), model_file)
    log.info("Evaluate: python -m clamp_pl.eval ckpt_path=%s split=val", out)
    return model_file


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="import_official")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    import_official(cfg)


def main(argv: list[str] | None = None) -> None:
    """CLI: a leading bare path becomes ``checkpoint=<path>`` (Hydra only takes ``key=value`` overrides)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and "=" not in args[0] and not args[0].startswith("-"):
        path = args.pop(0).replace("\\", "\\\\").replace("'", "\\'")
        args.insert(0, f"checkpoint='{path}'")
    sys.argv = [sys.argv[0], *args]
    _hydra_main()


if __name__ == "__main__":
    main()
