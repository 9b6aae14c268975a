"""The authors' released CLAMP checkpoints (mmpose 0.x format) as :class:`~clamp_pl.models.CLAMP` state dicts.

An official checkpoint is ``{"meta": ..., "state_dict": ..., "optimizer": ...}`` written by mmcv 1.4. Its
parameter names follow the official modules, which CLAMP mirrors under other prefixes:

===================================================  =======================================================
official                                             CLAMP
===================================================  =======================================================
``backbone.*`` (CLIP ViT or ModifiedResNet)           ``image_tower.visual.*`` (open_clip, same leaf names)
``text_encoder.*`` (positional table: 13 rows)        ``prompt_learner.text_tower.*`` (``text_context_length``)
``contexts`` ``[1, n_ctx, W]``                        ``prompt_learner.ctx`` ``[n_ctx, W]``
``prompt_encoder.transformer.resblocks.0.*``          ``prompt_encoder.block.*``
``prompt_encoder.ln_final.*``                         ``prompt_encoder.ln.*``
``context_decoder.*``, ``keypoint_head.*``            same names
``upconv_head.*``                                     ``upsample_head.*``
``gamma``, ``logit_scale``                            same names
===================================================  =======================================================

Dropped (the official modules declare them, the forward pass never reads them): the top-level
``text_projection`` (used only when the text and visual widths differ, never in the released configs) and the
prompt encoder's ``positional_embedding`` and ``text_projection``.

What the official code ran differently from CLAMP's training defaults, and an imported checkpoint needs
(:func:`official_net_kwargs`): the ViT class embedding added twice, a 13-position text context, and for
ViT-L/14 an 8-head split of the text transformer.

Reading the file (:func:`load_checkpoint_file`) is safe by default: ``torch.load(weights_only=True)`` with an
allow-list of the few numpy types mmcv's ``meta`` holds; any other pickled type is refused by name.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

#: official parameter -> why CLAMP has no use for it
UNUSED_OFFICIAL = {
    "text_projection": "top-level text projection, applied only when the text and visual widths differ",
    "prompt_encoder.positional_embedding": "declared by the official prompt encoder, never used",
    "prompt_encoder.text_projection": "declared by the official prompt encoder, never used",
}
_PREFIXES = (
    ("backbone.", "image_tower.visual."),
    ("text_encoder.", "prompt_learner.text_tower."),
    ("prompt_encoder.transformer.resblocks.0.", "prompt_encoder.block."),
    ("prompt_encoder.ln_final.", "prompt_encoder.ln."),
    ("context_decoder.", "context_decoder."),
    ("keypoint_head.", "keypoint_head."),
    ("upconv_head.", "upsample_head."),
)
_EXACT = {"contexts": "prompt_learner.ctx", "gamma": "gamma", "logit_scale": "logit_scale"}
#: text-transformer heads of the released configs where they differ from CLIP's (ViT-L/14: 8 instead of 12)
OFFICIAL_TEXT_HEADS = {"ViT-L-14": 8}


class ConvertedStateDict(dict):
    """``CLAMP.state_dict()``-keyed tensors; ``dropped`` maps each official key left out to the reason,
    ``sources`` each CLAMP key to the official key it came from."""

    dropped: dict[str, str]
    sources: dict[str, str]


def _shape(t: Any) -> str:
    return str(list(t.shape)) if hasattr(t, "shape") else type(t).__name__


def unwrap(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The parameter dict of a raw mmpose checkpoint (``state_dict`` inside) or of a bare state dict, with
    DDP's ``module.`` prefixes removed."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"not an official CLAMP checkpoint: expected a state dict, got {type(state).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def convert_state_dict(
    state_dict: Mapping[str, Any], expected: Mapping[str, torch.Tensor] | None = None
) -> ConvertedStateDict:
    """Official CLAMP parameters -> :class:`~clamp_pl.models.CLAMP` state-dict keys (ViT-B/16, RN50, ViT-L/14).

    Args:
        state_dict: an official state dict, or the raw mmpose checkpoint dict holding one under ``state_dict``.
        expected: the target's ``CLAMP.state_dict()`` (or any key -> tensor mapping): every key must be filled
            with the same shape.

    Raises:
        KeyError: official keys with no place in CLAMP (named with their shapes).
        ValueError: with ``expected``, CLAMP keys left unfilled or filled with another shape (named, both shapes).
    """
    out = ConvertedStateDict()
    out.dropped, out.sources = {}, {}
    unknown = []
    sd = unwrap(state_dict)
    for key, value in sd.items():
        if key in UNUSED_OFFICIAL:
            out.dropped[key] = UNUSED_OFFICIAL[key]
            continue
        target = _EXACT.get(key)
        if target is None:
            target = next((new + key[len(old):] for old, new in _PREFIXES if key.startswith(old)), None)
        if target is None:
            unknown.append(key)
            continue
        if key == "contexts":
            if value.ndim != 3 or value.shape[0] != 1:
                raise ValueError(f"official 'contexts' should be [1, n_ctx, width], got {_shape(value)}")
            value = value[0]
        out[target] = value
        out.sources[target] = key
    if unknown and any(k.startswith(("image_tower.", "net.image_tower.")) for k in unknown):
        raise ValueError("these weights are already in clamp_pl's layout (image_tower.*): load them with "
                         "clamp_pl.api.load_model or eval ckpt_path=, not import_official")
    if unknown:
        listing = ", ".join(f"{k} {_shape(sd[k])}" for k in unknown)
        raise KeyError(f"{len(unknown)} official parameter(s) CLAMP has no place for: {listing}")
    if out.dropped:
        log.info("Official parameters not used by CLAMP, dropped: %s", ", ".join(out.dropped))
    if expected is not None:
        check_against(out, expected)
    return out


def check_against(converted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming every ``expected`` key that ``converted`` leaves unfilled, fills with another
    shape, or that ``converted`` has in excess."""
    sources = getattr(converted, "sources", {})

    def named(k: str) -> str:
        return f"{k} (official {sources[k]})" if sources.get(k, k) != k else k

    missing = [k for k in expected if k not in converted]
    extra = [k for k in converted if k not in expected]
    wrong = [k for k in expected if k in converted and tuple(converted[k].shape) != tuple(expected[k].shape)]
    problems = []
    if wrong:
        problems.append("shape mismatch (checkpoint vs model): " + ", ".join(
            f"{named(k)} {_shape(converted[k])} vs {_shape(expected[k])}" for k in wrong))
    if missing:
        problems.append("model parameters the checkpoint does not fill: " + ", ".join(
            f"{k} {_shape(expected[k])}" for k in missing))
    if extra:
        problems.append("checkpoint parameters the model does not have: " + ", ".join(
            f"{named(k)} {_shape(converted[k])}" for k in extra))
    if problems:
        raise ValueError("official checkpoint does not fit the model: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# what the checkpoint says about the network


def describe(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The network facts an official state dict carries (shapes only): ``kind`` (``vit`` | ``rn``), ``width``,
    ``patch`` (ViT), ``layers`` (ViT blocks or RN blocks per stage), ``image_size`` (the trained resolution, from
    the positional table), ``num_keypoints``, ``n_ctx``, ``text_context_length``, ``text_width``, head and
    decoder sizes, and ``clip_model`` when the tower is one of the released ones (else None)."""
    sd = unwrap(state_dict)

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise KeyError(f"not an official CLAMP checkpoint: no '{key}'")
        return sd[key]

    info: dict[str, Any] = {}
    if "backbone.class_embedding" in sd:
        conv = need("backbone.conv1.weight")  # [W, 3, P, P]
        pos = need("backbone.positional_embedding")
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.transformer\.resblocks\.(\d+)\.", k))}
        side = math.isqrt(pos.shape[0] - 1)
        info.update(kind="vit", width=conv.shape[0], patch=conv.shape[-1], layers=len(blocks),
                    image_size=side * conv.shape[-1])
        known = {(768, 16, 12): "ViT-B-16", (1024, 14, 24): "ViT-L-14"}
        info["clip_model"] = known.get((info["width"], info["patch"], info["layers"]))
    elif "backbone.attnpool.positional_embedding" in sd:
        pos = sd["backbone.attnpool.positional_embedding"]
        stages = tuple(
            len({int(m.group(1)) for k in sd if (m := re.match(rf"backbone\.layer{i}\.(\d+)\.", k))})
            for i in range(1, 5)
        )
        width = need("backbone.conv3.weight").shape[0]
        info.update(kind="rn", width=width, layers=stages, image_size=math.isqrt(pos.shape[0] - 1) * 32)
        info["clip_model"] = {((3, 4, 6, 3), 64): "RN50", ((3, 4, 23, 3), 64): "RN101"}.get((stages, width))
    else:
        raise KeyError("not an official CLAMP checkpoint: no 'backbone.class_embedding' (ViT) or "
                       "'backbone.attnpool.positional_embedding' (ResNet)")
    contexts = need("contexts")
    info["n_ctx"] = contexts.shape[1]
    info["text_width"] = contexts.shape[2]
    info["text_context_length"] = need("text_encoder.positional_embedding").shape[0]
    info["num_keypoints"] = need("keypoint_head.final_layer.weight").shape[0]

    def deconvs(prefix: str) -> tuple[int, int | None]:
        weights = [v for k, v in sorted(sd.items()) if k.startswith(prefix + ".deconv_layers.") and v.ndim == 4]
        return len(weights), (weights[0].shape[1] if weights else None)  # ConvTranspose2d weight [in, out, k, k]

    info["num_deconv"], info["deconv_channels"] = deconvs("keypoint_head")
    info["spatial_head"] = any(k.startswith("upconv_head.") for k in sd)
    info["upconv_num_deconv"], info["upconv_channels"] = deconvs("upconv_head")
    info["prompt_encoder"] = any(k.startswith("prompt_encoder.transformer.") for k in sd)
    info["decoder_width"] = need("context_decoder.memory_proj.1.weight").shape[0]
    info["decoder_layers"] = len(
        {int(m.group(1)) for k in sd if (m := re.match(r"context_decoder\.decoder\.(\d+)\.", k))}
    )
    return info


def official_net_kwargs(state_dict: Mapping[str, Any], clip_model: str) -> dict[str, Any]:
    """``CLAMP`` keyword arguments that make the network the official one the checkpoint was trained as:
    the structure read from the shapes (:func:`describe`) and the official forward-pass behaviour
    (QuickGELU, class embedding twice for ViTs, the 13-position text context, ViT-L/14's 8 text heads)."""
    info = describe(state_dict)
    if info["clip_model"] is not None and info["clip_model"] != clip_model.replace("/", "-"):
        raise ValueError(
            f"the checkpoint holds a {info['clip_model']} CLAMP but model.net.clip_model is {clip_model!r}"
        )
    kwargs: dict[str, Any] = dict(
        head="concat",  # CLAMP's own head: the official checkpoints have no other
        image_size=info["image_size"],
        n_ctx=info["n_ctx"],
        text_context_length=info["text_context_length"],
        prompt_encoder=info["prompt_encoder"],
        context_decoder=True,
        score_concat=True,
        spatial_head=info["spatial_head"],
        num_deconv=info["num_deconv"],
        deconv_channels=info["deconv_channels"],
        decoder_width=info["decoder_width"],
        decoder_layers=info["decoder_layers"],
        class_embedding_twice=info["kind"] == "vit",
        quick_gelu=True,  # the official towers hard-code CLIP's QuickGELU
        text_heads=OFFICIAL_TEXT_HEADS.get(clip_model.replace("/", "-")),
    )
    if info["spatial_head"]:
        kwargs.update(upconv_num_deconv=info["upconv_num_deconv"], upconv_channels=info["upconv_channels"])
    return kwargs


# ---------------------------------------------------------------------------------------------------------------
# reading the file


def _safe_globals() -> list[Any]:
    """What mmcv's ``meta`` needs beyond torch's defaults: numpy scalars, arrays and dtypes (numeric only), under
    both module spellings (numpy 1.x pickles name ``numpy.core``, numpy 2 ``numpy._core``)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    entries: list[Any] = [np.ndarray, np.dtype]
    for mod in ("numpy.core", "numpy._core"):
        entries += [(multiarray.scalar, f"{mod}.multiarray.scalar"),
                    (multiarray._reconstruct, f"{mod}.multiarray._reconstruct")]
    entries += sorted({type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"}, key=lambda t: t.__name__)
    return entries


def _global_name(entry: Any) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint pickles a type outside the allow-list."""


def load_checkpoint_file(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Read an official (mmpose/mmcv) checkpoint file on the CPU.

    Default: ``torch.load(weights_only=True)`` with numpy's scalar/array/dtype reconstruction allowed (what
    mmcv's ``meta`` holds: versions, config text, numpy scores); a file that pickles any other type is refused
    with :class:`UnsafeCheckpointError` naming it. ``trust_checkpoint=True`` unpickles arbitrary objects (which
    can run code from the file): only for files you trust; logged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if trust_checkpoint:
        log.warning("%s: trust_checkpoint=true, unpickling arbitrary objects (can run code from the file)", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    allowed = _safe_globals()
    if zipfile.is_zipfile(path):
        names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        refused = sorted(names - {_global_name(e) for e in allowed})
        if refused:
            raise UnsafeCheckpointError(_refusal(path, refused))
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.findall(r"GLOBAL (\S+)", str(err))
        raise UnsafeCheckpointError(_refusal(path, found or [str(err).splitlines()[0]])) from None


def _refusal(path: Path, names: list[str]) -> str:
    return (
        f"{path}: refusing to unpickle {', '.join(names)}: not one of the plain types an mmpose checkpoint "
        "needs (tensors, containers, numpy scalars/arrays). If you trust the file, pass trust_checkpoint=true."
    )
