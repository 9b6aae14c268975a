"""Checkpoint files: atomic writes, compact model files, and reading the spec + network weights of any of them.

Three kinds of file hold a trained model, all read by :func:`load_checkpoint` with ``weights_only=True``:

* a Lightning checkpoint written by training (``checkpoints/epoch_*.ckpt``, ``checkpoints/last.ckpt``): the spec
  is the ``spec`` hyper-parameter (``hyper_parameters["spec"]``), the network weights are under ``state_dict``
  with a ``net.`` prefix (files written before the spec was kept only there also hold it under :data:`SPEC_KEY`);
* a model file (:func:`save_model_file`, ``model.pt``): ``{MODEL_FILE_KEY: 1, "spec": ..., "state_dict": net
  weights}``, nothing of the optimiser or the trainer;
* a Lightning checkpoint of clamp_pl before the spec existed: the spec is rebuilt from its hyper-parameters and,
  when found beside it, the run's ``.hydra/config.yaml`` (with a warning, once per file).

A run directory resolves to one of its files (:func:`resolve_checkpoint`): the newest that actually loads, so a
file truncated by a crash mid-write is skipped with a message saying why.

No Lightning, Hydra or OmegaConf here (PyYAML reads the old runs' config).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clamp_pl.spec import LEGACY_DATA_KEYS, SPEC_DATA_KEYS, ModelSpec, network_geometry

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_FILE_KEY",
    "MODEL_FILE_NAME",
    "SPEC_HPARAM",
    "SPEC_KEY",
    "CheckpointError",
    "atomic_torch_save",
    "is_model_file",
    "load_checkpoint",
    "read_checkpoint_file",
    "resolve_checkpoint",
    "run_config_file",
    "save_model_file",
]

#: key of a second copy of the spec (``ModelSpec.to_dict()``) in Lightning checkpoints written by older clamp_pl;
#: read when the hyper-parameters hold none, never written
SPEC_KEY = "clamp_spec"
#: the hyper-parameter holding the spec in a Lightning checkpoint (``PoseLitModule``'s ``spec`` argument)
SPEC_HPARAM = "spec"
#: key marking a model file (its value is the format version)
MODEL_FILE_KEY = "clamp_pl_model"
#: the model file's name in a run directory
MODEL_FILE_NAME = "model.pt"
_NET_PREFIX = "net."
_warned_legacy: set[str] = set()


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or holds no model; the message names the file."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then renamed over ``path``: a
    reader (or a crash at any moment) sees the old file or the new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600: give it the permissions a plain open() would (or the old file's)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems refuse to fsync a directory
        pass
    return path


def save_model_file(path: str | Path, spec: ModelSpec, net_state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Write a compact model file: the spec and the CLAMP network's weights (``CLAMP.state_dict()`` keys).

    It loads wherever a checkpoint does: :func:`clamp_pl.api.load_model`, ``clamp_pl.eval ckpt_path=``,
    ``clamp_pl.train init_from=``. Written atomically; tensors are stored on the CPU.
    """
    state = {k: v.detach().cpu() for k, v in net_state_dict.items()}
    if any(k.startswith(_NET_PREFIX + "image_tower.") for k in state):
        raise ValueError(f"{path}: pass the network's state dict (CLAMP keys), not the LightningModule's")
    return atomic_torch_save({MODEL_FILE_KEY: 1, "spec": spec.to_dict(), "state_dict": state}, path)


def read_checkpoint_file(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU; a truncated or foreign file raises
    :class:`CheckpointError` naming it and saying why. ``mmap`` maps the tensors instead of reading them (a cheap
    check that the whole archive is there)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError / zip errors
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]}); "
                              "a file cut short by a crash while it was written looks like this") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def is_model_file(path: str | Path) -> bool:
    """Whether ``path`` is a model file (:func:`save_model_file`): weights and spec, nothing to resume from."""
    return MODEL_FILE_KEY in read_checkpoint_file(path, mmap=True)


def load_checkpoint(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and the network weights (``CLAMP.state_dict()`` keys, CPU tensors) of a checkpoint file or
    model file; a run directory resolves to its best checkpoint (:func:`resolve_checkpoint`)."""
    path = resolve_checkpoint(path, prefer="best")
    obj = read_checkpoint_file(path)
    if MODEL_FILE_KEY in obj:
        return _spec_of(obj.get("spec"), path), dict(obj["state_dict"])
    if "state_dict" not in obj:
        raise CheckpointError(f"{path}: neither a clamp_pl model file nor a Lightning checkpoint "
                              f"(top-level keys: {sorted(obj)[:10]})")
    state = {k[len(_NET_PREFIX):]: v for k, v in obj["state_dict"].items() if k.startswith(_NET_PREFIX)}
    hparams = obj.get("hyper_parameters") or {}
    if SPEC_HPARAM in hparams:
        return _spec_of(hparams[SPEC_HPARAM], path), state
    if SPEC_KEY in obj:
        return _spec_of(obj[SPEC_KEY], path), state
    return legacy_spec(hparams, path), state


def _spec_of(d: Any, path: Path) -> ModelSpec:
    if not isinstance(d, Mapping):
        raise CheckpointError(f"{path}: no model spec in the file")
    try:
        return ModelSpec.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def run_config_file(path: Path) -> Path | None:
    """The ``.hydra/config.yaml`` of the run a checkpoint belongs to (``run/checkpoints/x.ckpt`` or
    ``run/x.ckpt``), or None when there is none."""
    for folder in (path.parent.parent, path.parent):
        f = folder / ".hydra" / "config.yaml"
        if f.is_file():
            return f
    return None


def _run_config(path: Path) -> dict[str, Any]:
    """The run config of a checkpoint (:func:`run_config_file`), as written by Hydra (interpolations
    unresolved), or ``{}``."""
    import yaml

    f = run_config_file(path)
    if f is None:
        return {}
    try:
        return yaml.safe_load(f.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        log.warning("%s: cannot read %s (%s): using the defaults of the spec", path, f, e)
        return {}


def legacy_spec(hp: Mapping[str, Any], path: Path) -> ModelSpec:
    """The spec of a checkpoint written before the spec existed, from its hyper-parameters (network, meta,
    heatmap size, test settings) and its run's ``.hydra/config.yaml`` (normalisation, sigma, data config) when
    found. Unknown values take the training defaults of that code: ImageNet normalisation, padding 1.25, sigma 2.
    Warns once per file."""
    from clamp_pl.core.preprocess import NORMALIZATION

    if "net" not in hp or "prompts" not in hp:
        raise CheckpointError(f"{path}: a Lightning checkpoint without a clamp_pl model spec or the "
                              "hyper-parameters of one (net, prompts)")
    cfg = _run_config(path)
    data = dict(cfg.get("data") or {})
    net = {k: v for k, v in dict(hp["net"]).items() if k != "heatmap_size"}
    test = {"flip_test": True, "shift_heatmap": True, "decode": "default", **dict(hp.get("test_cfg") or {})}
    norm = data.get("normalization", "imagenet")
    if norm not in NORMALIZATION:
        norm = "imagenet"
    sigma = data.get("sigma", 2.0)
    sigma = float(sigma) if isinstance(sigma, (int, float)) else 2.0
    geometry = network_geometry(net["clip_model"], int(net["image_size"]), int(net.get("num_deconv", 2)))
    species = {int(c): str(n) for c, n in dict(hp.get("species") or {}).items()}
    families = dict(hp.get("families") or {})
    data_cfg = {key: v for key, v in data.items() if key not in (*SPEC_DATA_KEYS, *LEGACY_DATA_KEYS)}
    spec = ModelSpec(
        net=net,
        input_size=(int(net["image_size"]),) * 2,
        feature_grid=geometry.feature_grid,
        heatmap_size=tuple(hp.get("heatmap_size") or geometry.heatmap_size),
        normalization=norm,
        mean=NORMALIZATION[norm][0],
        std=NORMALIZATION[norm][1],
        padding=1.25,
        sigma=sigma,
        decode=str(test["decode"]),
        shift_heatmap=bool(test["shift_heatmap"]),
        flip_test=bool(test["flip_test"]),
        meta=_legacy_meta(hp, families, species),
        data={"name": str(hp.get("dataset_name") or ""), "config": data_cfg} if data_cfg else
             {"name": str(hp.get("dataset_name") or "")},
    )
    if str(path) not in _warned_legacy:
        _warned_legacy.add(str(path))
        log.warning("%s: written before checkpoints carried a model spec; rebuilt it from the hyper-parameters%s "
                    "(normalisation %s, padding 1.25). Re-save it with clamp_pl.inference.checkpoint.save_model_file to "
                    "silence this.", path, " and .hydra/config.yaml" if cfg else "", norm)
    return spec


def _legacy_meta(hp: Mapping[str, Any], families: Mapping[str, Any], species: dict[int, str]) -> dict[str, Any]:
    """The keypoint meta of an old checkpoint: a built-in table when the prompts are one's (it also knows the
    half-body groups and joint weights), else what the hyper-parameters kept."""
    from clamp_pl.data.metainfo import DatasetMeta, get_meta

    for name in ("ap10k", "animalpose"):
        table = get_meta(name)
        if list(table.prompts) == list(hp["prompts"]) and list(table.flip_indices) == list(hp["flip_indices"]):
            return table.to_dict()
    k = len(hp["prompts"])
    return DatasetMeta(
        name=str(hp.get("dataset_name") or ""),
        keypoint_names=tuple(hp.get("keypoint_names") or hp["prompts"]),
        prompts=tuple(hp["prompts"]),
        flip_indices=tuple(int(i) for i in hp["flip_indices"]),
        sigmas=np.asarray(hp["sigmas"], dtype=np.float64),
        skeleton=tuple((int(a), int(b)) for a, b in (hp.get("skeleton") or [])),
        # not kept by the old hyper-parameters: half-body augmentation only, which no loaded model runs
        upper_body_ids=(),
        lower_body_ids=(),
        joint_weights=np.ones(k),
        species=species,
        species_to_family={int(c): str(fam) for fam, ids in families.items() for c in ids if int(c) in species},
    ).to_dict()


# ------------------------------------------------------------------------------------------ run directories
def _candidates(ckpt_dir: Path, run_dir: Path, prefer: str) -> list[Path]:
    """Checkpoint files of a run, in the order to try them.

    ``prefer="best"`` (evaluation, inference, init_from): the best ``epoch_*.ckpt`` (newest first when
    ``save_top_k`` kept several), then the run's model file, then ``last.ckpt``. ``prefer="last"`` (resuming):
    every Lightning checkpoint of the run, newest first by modification time."""
    epochs = sorted(ckpt_dir.glob("epoch_*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    last = [p for p in (ckpt_dir / "last.ckpt",) if p.is_file()]
    if prefer == "last":
        others = [p for p in ckpt_dir.glob("*.ckpt") if p not in epochs and p not in last]
        return sorted([*last, *epochs, *others], key=lambda p: p.stat().st_mtime, reverse=True)
    model = [p for p in (run_dir / MODEL_FILE_NAME, ckpt_dir / MODEL_FILE_NAME) if p.is_file()]
    return [*epochs, *dict.fromkeys(model), *last]


def resolve_checkpoint(path: str | Path | None, prefer: str = "best") -> Path | None:
    """A checkpoint or model file (returned as is once it proves readable), or a run directory -> the file to use.

    For a directory (the run dir, or its ``checkpoints/``) the candidates of ``prefer`` (``"best"`` or
    ``"last"``, see :func:`_candidates`) are tried in order and the first that loads is returned; each one
    skipped is logged with the reason (e.g. truncated by a crash mid-write). None or "" -> None.

    Raises:
        FileNotFoundError: the path does not exist, or the directory holds no checkpoint.
        CheckpointError: no candidate loads (the message lists each with its reason).
    """
    if prefer not in ("best", "last"):
        raise ValueError(f"prefer must be 'best' or 'last', got {prefer!r}")
    if path is None or str(path) == "":
        return None
    p = Path(str(path)).expanduser()
    if p.is_file():
        try:
            read_checkpoint_file(p, mmap=True)
        except CheckpointError as e:
            raise CheckpointError(f"{e}. Pass its run directory to use the newest checkpoint there that loads") from None
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    run_dir = p if ckpt_dir != p else p.parent
    candidates = _candidates(ckpt_dir, run_dir, prefer)
    if not candidates:
        what = "last.ckpt or epoch_*.ckpt" if prefer == "last" else f"epoch_*.ckpt, last.ckpt or {MODEL_FILE_NAME}"
        raise FileNotFoundError(f"no checkpoint ({what}) in {ckpt_dir}")
    reasons = []
    for c in candidates:
        try:
            read_checkpoint_file(c, mmap=True)
        except CheckpointError as e:
            log.warning("skipping %s", e)
            reasons.append(str(e))
            continue
        if reasons:
            log.warning("using %s instead", c)
        return c
    raise CheckpointError(f"no checkpoint in {ckpt_dir} loads:\n  " + "\n  ".join(reasons))
