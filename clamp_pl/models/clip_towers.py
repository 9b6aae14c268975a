"""open_clip towers adapted for dense prediction.

Image towers with dense features: open_clip's ``ModifiedResNet`` (RN50, RN101, ...) and class-token
``VisionTransformer`` (ViT-B-16, ViT-L-14, ...), and the timm trunks open_clip wraps (SigLIP / SigLIP 2, EVA02,
PE-Core, ConvNeXt, MobileCLIP / MobileCLIP2; :mod:`clamp_pl.models.timm_towers`). Text towers: open_clip's
``TextTransformer`` with EOT (argmax / eos) or last-token pooling, causal or bidirectional (:class:`TextTower`);
not the Hugging Face text encoders. Weights come from

* ``pretrained=None``: random init, never touches the network (tests, the tiny configs);
* a local checkpoint file: an open_clip/OpenAI state dict (optionally under ``'state_dict'``, optionally
  with ``module.`` prefixes) or an original OpenAI TorchScript release file (``RN50.pt``, ``ViT-B-16.pt``);
* an open_clip tag (``'openai'``, ``'laion2b_s34b_b88k'``, ...): downloaded by open_clip on request.

The image tower is built at the training resolution, so the positional embeddings of a checkpoint trained at
another resolution are resized on load: bilinearly for the ViT token grid and the RN attention-pool grid (open_clip
itself only resizes the ViT grid), with timm's resampling (bicubic) for timm trunks. Loading is strict.

Behaviour of the official CLAMP backbones (an mmpose fork of DenseCLIP's), and where this differs:
* Class embedding: the official ViT adds ``class_embedding`` twice, once as the class token and again into the
  class token's positional embedding. ``class_embedding_twice=True`` does the same (weights fine-tuned that
  way expect it); the default adds it once, as CLIP was trained.
* Stochastic depth: the official blocks run sequence-first ``[L, B, W]``, so its per-"sample" drop path masks
  dimension 0, i.e. drops a residual branch for one token position in every image of the batch.
  ``drop_path_mode="token"`` reproduces that on open_clip's batch-first blocks; ``"sample"`` is the usual
  stochastic depth (a whole image's branch).
* Positional tables are resized once at load to the built grid (the official code stores them at the trained
  resolution too) and re-interpolated in the forward pass only when the input grid differs.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
import zipfile
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from timm.layers import drop_path, resample_abs_pos_embed
from torch import nn

from . import timm_towers

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
_registered = False


def register_tiny_configs() -> None:
    """Register the package's open_clip configs and the tiny timm trunks they use; idempotent.

    ``clamp-tiny-rn``, ``clamp-tiny-vit``: open_clip's own towers. One per timm family, each the family's trunk and
    text tower at toy width and depth (random init only): ``clamp-tiny-mapvit`` (SigLIP 2: MAP-head ViT,
    bidirectional last-token text tower; the name avoids "siglip", which makes open_clip pick the SigLIP
    sentencepiece tokenizer, a download), ``clamp-tiny-eva02``, ``clamp-tiny-pecore``, ``clamp-tiny-convnext``,
    ``clamp-tiny-mobileclip2`` (FastViT MCi, bidirectional EOT text tower)."""
    global _registered
    if not _registered:
        timm_towers.register_tiny_timm_models()
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


# --------------------------------------------------------------------------------------------------------------
# checkpoint reading and loading


def _is_torchscript_archive(path: str | Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Read a CLIP checkpoint file into a flat state dict.

    Returns ``(state_dict, is_openai_torchscript)``. Plain files are read with ``weights_only=True``; the
    original OpenAI releases are TorchScript archives, which only ``torch.jit.load`` can read (that executes
    the archive's TorchScript code, so only use files you trust).
    """
    path = Path(path)
    if _is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation: no other reader exists
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        is_jit = True
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        is_jit = False
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: not a state dict (got {type(state).__name__})")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    for key in _OPENAI_META_KEYS:
        state.pop(key, None)
    return state, is_jit


def _resize_grid(pos: torch.Tensor, new_hw: tuple[int, int], what: str, verbose: bool = False) -> torch.Tensor:
    """Bilinearly resize a ``[1 + h*w, C]`` positional table (first row: class/mean token) to ``new_hw``.

    timm's ``resample_abs_pos_embed`` with bilinear, ``align_corners=False``, no antialiasing: what the official
    CLAMP/DenseCLIP backbones do (``F.interpolate``). Returns ``pos`` itself when the grid already matches (no
    resampling op in a traced graph)."""
    n = pos.shape[0] - 1
    old = int(round(math.sqrt(n)))
    if old * old != n:
        raise ValueError(f"{what}: {n} grid positions do not form a square grid")
    if (old, old) == tuple(new_hw):
        return pos
    if verbose:
        log.info("Resizing %s from %dx%d to %dx%d", what, old, old, *new_hw)
    out = resample_abs_pos_embed(
        pos[None], new_size=list(new_hw), old_size=[old, old], num_prefix_tokens=1, interpolation="bilinear",
        antialias=False,
    )
    return out[0]


def resize_vision_pos_embeds(state_dict: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Resize, in place, the image-tower positional tables of ``state_dict`` to the grids of ``model``."""
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        key = "visual.positional_embedding"
        if key in state_dict:
            state_dict[key] = _resize_grid(state_dict[key], tuple(visual.grid_size), key, verbose=True)
    elif isinstance(visual, ModifiedResNet):
        key = "visual.attnpool.positional_embedding"
        if key in state_dict:
            side = int(round(math.sqrt(visual.attnpool.positional_embedding.shape[0] - 1)))
            state_dict[key] = _resize_grid(state_dict[key], (side, side), key, verbose=True)
    elif timm_towers.is_timm_tower(visual):
        trunk = visual.trunk
        key = "visual.trunk.pos_embed"
        table = getattr(trunk, "pos_embed", None)
        if key in state_dict and table is not None and state_dict[key].shape != table.shape:
            prefix = 0 if getattr(trunk, "no_embed_class", False) else int(getattr(trunk, "num_prefix_tokens", 0))
            state_dict[key] = resample_abs_pos_embed(
                state_dict[key], new_size=list(trunk.patch_embed.grid_size), num_prefix_tokens=prefix, verbose=True
            )


def load_clip_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a full CLIP state dict into an open_clip model strictly, resizing positional grids first."""
    state_dict = dict(state_dict)
    # TorchScript archives also store non-persistent buffers (the causal mask)
    transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    for key in transient:
        state_dict.pop(key, None)
    resize_vision_pos_embeds(state_dict, model)
    if "logit_scale" in state_dict and model.logit_scale.ndim != state_dict["logit_scale"].ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    model.load_state_dict(state_dict, strict=True)


def build_clip(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    image_size: int | None = None,
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
    text_heads: int | None = None,
) -> nn.Module:
    """Create an open_clip CLIP model at ``image_size`` and load ``pretrained`` weights into it.

    Args:
        model_name: open_clip architecture name (``"ViT-B-16"``, ``"RN50"``, ``"clamp-tiny-vit"``, ...).
        pretrained: None (random init), a local checkpoint path, or an open_clip pretrained tag (downloads).
        image_size: square input side; None keeps the config's size.
        quick_gelu: activation override. None picks what the weights were trained with: the tag's setting
            (True for ``'openai'``), True for OpenAI TorchScript files, else the architecture config's default.
        text_heads: attention heads of the text transformer; None keeps the config's. The weights do not
            depend on it, the features do: the official CLAMP ViT-L/14 ran CLIP's 12-head text tower with 8
            heads, and its learned prompts only fit that split.
    """
    register_tiny_configs()
    name = model_name.replace("/", "-")
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model '{model_name}'; available: {open_clip.list_models()}")
    check_text_tower_config(name, cfg)
    state_dict = None
    default_qg = bool(cfg.get("quick_gelu", False))
    if pretrained is not None and str(pretrained) != "":
        if os.path.isfile(pretrained):
            state_dict, is_jit = read_checkpoint(pretrained)
            default_qg = default_qg or is_jit
        else:
            tag_cfg = open_clip.get_pretrained_cfg(name, str(pretrained))
            if not tag_cfg:
                raise ValueError(
                    f"pretrained='{pretrained}' is neither a file nor an open_clip tag of '{name}' "
                    f"(tags: {open_clip.list_pretrained_tags_by_model(name)})"
                )
            path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
            state_dict, _ = read_checkpoint(path)
            default_qg = bool(tag_cfg.get("quick_gelu", default_qg))
    qg = default_qg if quick_gelu is None else bool(quick_gelu)
    # open_clip is always given pretrained=None (it cannot resize the RN attention pool) and would warn
    # "initialized randomly" on every build: either the weights are loaded right below, or random init is what
    # the caller asked for (pretrained=None: the tiny configs, or a network about to be filled from a clamp_pl
    # checkpoint), so the warning never says anything the config does not
    extra = {}
    if text_heads is not None:
        width = cfg["text_cfg"]["width"]
        if width % int(text_heads):
            raise ValueError(f"text_heads={text_heads} does not divide the text width {width} of {model_name}")
        extra["text_cfg"] = {**cfg["text_cfg"], "heads": int(text_heads)}
    if state_dict is None:
        log.debug("%s: random initialisation (pretrained=None)", name)
    quiet = _DropMessage("No pretrained weights loaded")
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        model = open_clip.create_model(
            name, pretrained=None, force_image_size=image_size, quick_gelu=qg, **extra
        )
    finally:
        root.removeFilter(quiet)
    if state_dict is not None:
        load_clip_weights(model, state_dict)
    return model


TEXT_TOWER_FAMILIES = (
    "open_clip TextTransformer towers: CLIP (OpenAI, LAION, DataComp, MetaCLIP, DFN), EVA02, PE-Core, ConvNeXt "
    "CLIPs, SigLIP / SigLIP 2, MobileCLIP / MobileCLIP2"
)


def check_text_tower_config(model_name: str, cfg: dict) -> None:
    """Reject, before anything is built or downloaded, text towers the prompt learner cannot drive: Hugging Face
    text models (open_clip's ``HFTextEncoder``: roberta, xlm-roberta, mT5, NLLB, ...) and CoCa's class-token
    tower."""
    text = cfg.get("text_cfg", {})
    if text.get("hf_model_name"):
        raise ValueError(
            f"{model_name}: its text tower is the Hugging Face model '{text['hf_model_name']}' (open_clip "
            f"HFTextEncoder), which CLAMP's prompt learner cannot drive (it runs the frozen text transformer on "
            f"learned token embeddings); towers that work: {TEXT_TOWER_FAMILIES}"
        )
    if text.get("embed_cls") or "multimodal_cfg" in cfg:
        raise ValueError(f"{model_name}: CoCa text towers are not supported; towers that work: {TEXT_TOWER_FAMILIES}")


def preprocess_config(
    model_name: str, pretrained: str | os.PathLike | None = None, image_size: int | None = None
) -> dict:
    """The input a tower expects, as primitives: ``{"image_size": [H, W], "mean": [r, g, b], "std": [r, g, b],
    "interpolation": str, "resize_mode": str}`` (mean/std on the [0, 1] scale).

    ``image_size``: the crop CLAMP runs at; None = the open_clip config's. Normalisation: an open_clip tag's own
    (``pretrained="webli"`` for SigLIP 2: 0.5/0.5; MobileCLIP2's ``dfndr2b``: 0/1); for a local file or None, the
    config's ``preprocess_cfg`` if it has one, else the value every tag of the architecture shares, else open_clip's
    default (OpenAI CLIP's mean/std). Nothing is downloaded.
    """
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    register_tiny_configs()
    name = model_name.replace("/", "-")
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model '{model_name}'")
    out = dict(vars(PreprocessCfg()))
    tag_cfg = None
    if pretrained is not None and str(pretrained) and not os.path.isfile(pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(name, str(pretrained)) or None
        if tag_cfg is None:
            raise ValueError(
                f"pretrained='{pretrained}' is neither a file nor an open_clip tag of '{name}' "
                f"(tags: {open_clip.list_pretrained_tags_by_model(name)})"
            )
    if tag_cfg is not None:
        out = merge_preprocess_dict(out, tag_cfg)
    elif cfg.get("preprocess_cfg"):
        out = merge_preprocess_dict(out, cfg["preprocess_cfg"])
    else:
        tags = [open_clip.get_pretrained_cfg(name, t) for t in open_clip.list_pretrained_tags_by_model(name)]
        keys = ("mean", "std", "interpolation", "resize_mode")
        shared = {k: {tuple(t[k]) if isinstance(t.get(k), (list, tuple)) else t.get(k) for t in tags} for k in keys}
        out = merge_preprocess_dict(out, {k: next(iter(v)) for k, v in shared.items() if len(v) == 1 and None not in v})
    size = image_size if image_size is not None else cfg["vision_cfg"].get("image_size", out["size"])
    hw = [int(size), int(size)] if isinstance(size, (int, float)) else [int(v) for v in size]
    return {
        "image_size": hw,
        "mean": [float(v) for v in out["mean"]],
        "std": [float(v) for v in out["std"]],
        "interpolation": str(out["interpolation"]),
        "resize_mode": str(out["resize_mode"]),
    }


def tower_geometry(model_name: str, image_size: int) -> tuple[int, tuple[int, int]]:
    """``(stride, (gh, gw))`` of :class:`DenseImageTower` for ``model_name`` at a square ``image_size``, from the
    open_clip config alone (no weights, no download; timm architectures are instantiated on the meta device).

    open_clip ViT: the patch size; ModifiedResNet: 32; timm token trunks (SigLIP, EVA02, PE-Core): the patch size;
    timm ConvNeXt / FastViT: the last stage's reduction (32; 64 for the five-stage MobileCLIP2-S3/S4).

    Raises:
        ValueError: unknown model, no dense features for its image tower, or ``image_size`` not a multiple of the
            stride.
    """
    register_tiny_configs()
    name = model_name.replace("/", "-")
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(
            f"model.net.clip_model={model_name!r} is not an open_clip model config "
            f"(known: {', '.join(open_clip.list_models()[:8])}, ...)"
        )
    vision = cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        stride = timm_towers.timm_stride(name)
    elif isinstance(vision.get("layers"), (list, tuple)):
        stride = 32  # ModifiedResNet: stem /4, then three stride-2 stages
    elif vision.get("patch_size"):
        stride = int(vision["patch_size"])
    else:
        raise ValueError(f"{model_name}: no dense CLAMP features for this image tower")
    image_size = int(image_size)
    if image_size % stride:
        raise ValueError(f"model.net.image_size={image_size} is not a multiple of {model_name}'s stride {stride}")
    return stride, (image_size // stride, image_size // stride)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# --------------------------------------------------------------------------------------------------------------
# stochastic depth for open_clip ViT blocks


DROP_PATH_MODES = ("token", "sample")


class _DropPathHook:
    """Forward hook on a residual block's ``ls_1``/``ls_2`` (the last op of each residual branch): stochastic
    depth without touching open_clip's modules or their state-dict keys.

    In training, timm's ``drop_path``: zeroes the branch output ``[B, L, W]`` with probability ``p`` and rescales
    what is kept by 1/(1-p), so the expectation is unchanged. ``mode="token"``: one draw per token position, shared
    by every image of the batch (timm's per-"sample" mask on the sequence-first ``[L, B, W]`` layout of the official
    CLAMP/DenseCLIP blocks: mask ``[1, L, 1]`` here); ``mode="sample"``: one draw per image (mask ``[B, 1, 1]``).
    ``mode`` is one of :data:`DROP_PATH_MODES` (checked by :class:`DenseImageTower`).
    """

    def __init__(self, p: float, mode: str) -> None:
        self.p = p
        self.mode = mode

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not module.training or self.p == 0.0:
            return out
        if self.mode == "token":
            return drop_path(out.transpose(0, 1), self.p, training=True).transpose(0, 1)
        return drop_path(out, self.p, training=True)


# --------------------------------------------------------------------------------------------------------------
# towers


class DenseImageTower(nn.Module):
    """CLIP image encoder returning dense, CLIP-space pixel embeddings.

    ``forward(x [B,3,H,W], embeddings=True) -> (feature_map [B,Cf,gh,gw], global_emb [B,D], pixel_emb [B,D,gh,gw])``
    (``embeddings=False``: ``(feature_map, None, None)``, skipping the CLIP embedding head, see
    :meth:`embedding_parameters`; what the image-only baseline needs)

    * ViT: ``feature_map`` = last-block patch tokens (class token dropped, before ``ln_post``; Cf = width);
      ``pixel_emb`` = every patch token through ``ln_post`` and ``proj``; ``global_emb`` = the class token
      through the same. Row-major token order, so ``pixel_emb[:, :, r, c]`` is the patch at row r, column c.
    * ModifiedResNet: ``feature_map`` = layer4 (Cf = 32*width, 2048 for RN50); the attention pool runs over
      the whole token set [mean; pixels] with every token as a query (DenseCLIP): its per-pixel outputs are
      ``pixel_emb`` (D = 1024 for RN50) and the mean-token output is ``global_emb``.
    * timm trunks (SigLIP / SigLIP 2, EVA02, PE-Core: ``kind="timm_token"``; ConvNeXt, FastViT / MobileCLIP:
      ``kind="timm_spatial"``): ``feature_map`` = the last block's patch-token grid (before the final norm) or the
      last stage; ``global_emb`` = open_clip's image feature; ``pixel_emb`` = the tower's pooled head applied to
      each position alone (for SigLIP's / PE-Core's attention-pool head: its value path, output projection and
      MLP). See :mod:`clamp_pl.models.timm_towers`.

    Attributes: ``out_channels`` (Cf), ``embed_dim`` (D), ``grid_size`` (gh, gw) and ``stride`` (sy, sx) at the
    built ``image_size``; inputs of another size also work (positional tables interpolated on the fly), except
    for timm Eva trunks (EVA02, PE-Core: built at one size, which is what exports to ONNX).

    ``drop_path_rate``: stochastic depth, linear 0 -> rate over the blocks (CLAMP uses 0.4 for ViTs); not supported
    for ResNets (CLAMP uses none there). open_clip ViTs: ``drop_path_mode`` ``"token"`` (official) or ``"sample"``,
    see :class:`_DropPathHook`. timm trunks: timm's own ``drop_path_rate`` (its per-block schedule, one draw per
    sample), so ``drop_path_mode`` must be ``"sample"`` when the rate is positive. ``class_embedding_twice``: the
    official ViT's class token (open_clip ViT only).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | os.PathLike | None,
        image_size: int,
        drop_path_rate: float = 0.0,
        quick_gelu: bool | None = None,
        *,
        drop_path_mode: str = "token",
        class_embedding_twice: bool = False,
        clip_model: nn.Module | None = None,
    ) -> None:
        """``clip_model``: an already built (and loaded) open_clip model to take the image tower from, so that
        CLAMP builds and loads CLIP once for both towers; the other arguments then only describe it. A timm trunk
        is created again by timm for dense use (input size, stochastic depth) with the given model's weights."""
        super().__init__()
        if not isinstance(image_size, int):
            raise TypeError(f"image_size must be an int (square input), got {image_size!r}")
        if drop_path_mode not in DROP_PATH_MODES:
            raise ValueError(f"drop_path_mode must be one of {DROP_PATH_MODES}, got {drop_path_mode!r}")
        if clip_model is None:
            clip_model = build_clip(model_name, pretrained, image_size, quick_gelu)
        visual = clip_model.visual
        self.model_name = model_name
        self.image_size = image_size
        self.class_embedding_twice = bool(class_embedding_twice)
        if class_embedding_twice and not isinstance(visual, VisionTransformer):
            raise ValueError("class_embedding_twice applies to open_clip ViT towers only (the official CLAMP ViT)")
        if isinstance(visual, VisionTransformer):
            if visual.attn_pool is not None or visual.pool_type != "tok" or visual.proj is None:
                raise ValueError(f"{model_name}: dense CLAMP features need a class-token ViT with a projection")
            self.kind = "vit"
            self.out_channels = visual.transformer.width
            self.embed_dim = visual.proj.shape[1]
            self.stride = tuple(visual.patch_size)
            self.grid_size = (image_size // self.stride[0], image_size // self.stride[1])
            self._add_drop_path(visual, drop_path_rate, drop_path_mode)
        elif isinstance(visual, ModifiedResNet):
            if drop_path_rate:
                raise ValueError("drop_path_rate is only supported for ViT and timm towers (not ResNets)")
            self.kind = "rn"
            self.out_channels = visual.attnpool.k_proj.in_features
            self.embed_dim = visual.attnpool.c_proj.out_features
            self.stride = (32, 32)
            self.grid_size = (image_size // 32, image_size // 32)
        elif timm_towers.is_timm_tower(visual):
            if drop_path_rate and drop_path_mode != "sample":
                raise ValueError(
                    f"{model_name}: a timm image tower uses timm's stochastic depth (one draw per sample): set "
                    f"drop_path_mode='sample' (got {drop_path_mode!r})"
                )
            self.kind = "timm_" + timm_towers.trunk_kind(visual.trunk, model_name)
            timm_towers.check_supported_head(visual, model_name)
            timm_towers.rebuild_trunk(visual, model_name, image_size, drop_path_rate)
            stride, self.grid_size, self.out_channels = timm_towers.tower_geometry(visual, image_size)
            self.stride = (stride, stride)
            self.embed_dim = int(open_clip.get_model_config(model_name.replace("/", "-"))["embed_dim"])
        else:
            raise ValueError(
                f"{model_name}: unsupported image tower {type(visual).__name__} (dense features exist for open_clip "
                f"VisionTransformer and ModifiedResNet and the timm trunks {timm_towers.SUPPORTED})"
            )
        self.visual = visual

    @staticmethod
    def _add_drop_path(visual: VisionTransformer, rate: float, mode: str) -> None:
        if rate <= 0:
            return
        if not visual.transformer.batch_first:
            raise ValueError("drop path expects a batch-first open_clip transformer")
        blocks = visual.transformer.resblocks
        for i, blk in enumerate(blocks):
            p = rate * i / max(len(blocks) - 1, 1)
            if p > 0:
                blk.ls_1.register_forward_hook(_DropPathHook(p, mode))
                blk.ls_2.register_forward_hook(_DropPathHook(p, mode))

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters used only for ``global_emb``/``pixel_emb``: ViT ``ln_post`` and ``proj``, the RN attention
        pool, a timm trunk's final norm and pooled head and open_clip's projection head. The image-only baseline
        freezes them (they would get no gradient, which DDP rejects)."""
        v = self.visual
        if self.kind == "vit":
            return [*v.ln_post.parameters(), v.proj]
        if self.kind == "rn":
            return list(v.attnpool.parameters())
        params: dict[int, nn.Parameter] = {}
        for module in timm_towers.embedding_modules(v):
            params.update((id(p), p) for p in module.parameters())
        return list(params.values())

    def forward(
        self, x: torch.Tensor, embeddings: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.kind == "vit":
            return self._forward_vit(x, embeddings)
        if self.kind == "rn":
            return self._forward_rn(x, embeddings)
        if self.kind == "timm_token":
            return timm_towers.forward_token(self.visual, x, embeddings)
        return timm_towers.forward_spatial(self.visual, x, embeddings)

    def _forward_vit(
        self, x: torch.Tensor, embeddings: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        v = self.visual
        x = v.conv1(x)  # [B, W, gh, gw]
        b, w, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, gh*gw, W], row-major
        cls = v.class_embedding.to(x.dtype).view(1, 1, w).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = _resize_grid(v.positional_embedding, (gh, gw), "visual.positional_embedding")
        if self.class_embedding_twice:
            pos = torch.cat([pos[:1] + v.class_embedding, pos[1:]])
        x = x + pos.to(x.dtype)
        x = v.ln_pre(x)
        x = v.transformer(x)  # [B, 1+gh*gw, W]
        feature_map = x[:, 1:].transpose(1, 2).reshape(b, w, gh, gw)
        if not embeddings:
            return feature_map, None, None
        emb = v.ln_post(x) @ v.proj  # [B, 1+gh*gw, D]
        global_emb = emb[:, 0]
        pixel_emb = emb[:, 1:].transpose(1, 2).reshape(b, -1, gh, gw)
        return feature_map, global_emb, pixel_emb

    def _forward_rn(
        self, x: torch.Tensor, embeddings: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        v = self.visual
        x = v.stem(x)
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))
        feature_map = x  # [B, Cf, gh, gw]
        if not embeddings:
            return feature_map, None, None
        b, c, gh, gw = x.shape
        ap = v.attnpool
        tokens = x.flatten(2).permute(2, 0, 1)  # [gh*gw, B, C]
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
        pos = _resize_grid(ap.positional_embedding, (gh, gw), "visual.attnpool.positional_embedding")
        tokens = tokens + pos[:, None, :].to(tokens.dtype)
        out, _ = F.multi_head_attention_forward(
            query=tokens,
            key=tokens,
            value=tokens,
            embed_dim_to_check=c,
            num_heads=ap.num_heads,
            q_proj_weight=ap.q_proj.weight,
            k_proj_weight=ap.k_proj.weight,
            v_proj_weight=ap.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([ap.q_proj.bias, ap.k_proj.bias, ap.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=ap.c_proj.weight,
            out_proj_bias=ap.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )  # [1+gh*gw, B, D]
        global_emb = out[0]
        pixel_emb = out[1:].permute(1, 2, 0).reshape(b, -1, gh, gw)
        return feature_map, global_emb, pixel_emb


class TextTower(nn.Module):
    """The frozen CLIP text transformer, run on token *embeddings* so that prompts can contain learned vectors.

    Holds open_clip's ``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
    ``text_projection`` and attention mask. All parameters have ``requires_grad=False`` and the module stays in
    eval mode whatever ``train()`` is called with; gradients still flow *through* it to its inputs.

    Towers: open_clip's ``TextTransformer`` (in ``CLIP`` or ``CustomTextCLIP``), with

    * ``causal``: CLIP's causal mask (CLIP, EVA02, PE-Core, ConvNeXt CLIPs), or none (``no_causal_mask``:
      SigLIP / SigLIP 2, MobileCLIP2: every token sees the whole sequence, padding included, so such a tower must
      run on its full ``context_length``, as it was trained);
    * ``pool_type`` (open_clip's readout, :meth:`readout_index`): ``"argmax"`` (the EOT token: the largest id of
      CLIP's BPE), ``"eos"`` (the first ``eos_id``), ``"last"`` (the last position: SigLIP), ``"first"``;
    * a projection matrix, an ``nn.Linear`` (with bias: SigLIP) or none.

    Hugging Face text encoders (``HFTextEncoder``) and CoCa's class-token tower are refused with an error naming the
    towers that work.

    ``forward(x [K,L,W], eot_index [K], shared_prefix=0) -> [K,D]``: adds ``positional_embedding[:L]``, runs
    the transformer (causal mask cropped to L x L, or no mask), and reads out ``ln_final`` + projection at
    ``eot_index`` (the readout position of each row, whatever the pooling). Thanks to the causal mask, a causal
    tower run on L < context_length tokens gives the same readout as the full context.

    ``shared_prefix=P``: the caller guarantees that the first P token embeddings are the same in every row
    (CoOp prompts: SOT + the shared context vectors). Under a causal mask their hidden states are then the same
    in every row too, so they are computed once, from row 0, and each row runs only its L - P own positions,
    attending to the shared prefix's keys and values (a prefix KV cache). Same math as the full pass (float
    round-off aside); for CLAMP on AP-10K it runs 9 + 17 x 4 = 77 token rows per layer instead of 17 x 13 =
    221, forward and backward. Gradients reach the prefix through row 0 only, which is exact for shared
    parameters (the context gets the sum over prompts either way). Used only for open_clip's default blocks
    (``nn.MultiheadAttention`` with a packed in-projection) and the standard causal mask; otherwise (bidirectional
    towers included) the full pass runs.
    """

    def __init__(self, clip_model: nn.Module, model_name: str, context_length: int | None = None) -> None:
        """``context_length``: keep only the first N positions (official CLAMP: 13, what its checkpoints store);
        longer prompts are then an error. None keeps the tower's (CLIP: 77). Causal towers only."""
        super().__init__()
        src = getattr(clip_model, "text", clip_model)  # CustomTextCLIP keeps the tower under .text
        if not all(hasattr(src, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
            raise ValueError(
                f"{model_name}: the text tower is a {type(src).__name__}, which CLAMP's prompt learner cannot drive "
                f"(Hugging Face text encoders are not supported); towers that work: {TEXT_TOWER_FAMILIES}"
            )
        pool_type = getattr(src, "text_pool_type", getattr(src, "pool_type", "argmax"))
        if pool_type not in ("argmax", "eos", "last", "first") or getattr(src, "cls_emb", None) is not None:
            raise ValueError(
                f"{model_name}: CLAMP prompts need a text tower read out at one token (argmax/eos/last/first "
                f"pooling, no appended class token), got pool_type={pool_type!r}; towers that work: "
                f"{TEXT_TOWER_FAMILIES}"
            )
        if getattr(src, "use_pad_mask", False):
            raise ValueError(f"{model_name}: text towers that mask padding (use_pad_mask) are not supported")
        self.model_name = model_name
        self.pool_type = pool_type
        self.eos_id = getattr(src, "text_eos_id", getattr(src, "eos_id", None))
        self.token_embedding = src.token_embedding
        self.positional_embedding = src.positional_embedding
        attn_mask = src.attn_mask
        self.causal = attn_mask is not None
        full = self.positional_embedding.shape[0]
        if context_length is not None and context_length != full:
            if not self.causal:
                raise ValueError(
                    f"{model_name}: a bidirectional text tower runs on its full context ({full}); "
                    f"text context_length={context_length} would change every feature"
                )
            if not 0 < context_length < full:
                raise ValueError(f"text context_length must be in 1..{full}, got {context_length}")
            self.positional_embedding = nn.Parameter(self.positional_embedding.detach()[:context_length].clone())
            attn_mask = attn_mask[:context_length, :context_length]
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.register_buffer("attn_mask", attn_mask.clone() if self.causal else None, persistent=False)
        self.context_length = self.positional_embedding.shape[0]
        self.width = self.token_embedding.embedding_dim
        if self.text_projection is None:
            self.embed_dim = self.width
        elif isinstance(self.text_projection, nn.Linear):
            self.embed_dim = self.text_projection.out_features
        else:
            self.embed_dim = self.text_projection.shape[1]
        self.requires_grad_(False)
        super().train(False)
        self.supports_shared_prefix = False
        if self.causal:
            causal = torch.full_like(self.attn_mask, float("-inf")).triu(1)
            self.supports_shared_prefix = bool(torch.equal(self.attn_mask, causal)) and all(
                _is_plain_block(b) for b in self.transformer.resblocks
            )

    def train(self, mode: bool = True) -> TextTower:
        """Frozen: stays in eval mode."""
        return super().train(False)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[K, L]`` -> token embeddings ``[K, L, W]``."""
        return self.token_embedding(token_ids)

    def readout_index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Where the tower reads its output for token ids ``[K, L]`` (full-context rows for ``"last"``): open_clip's
        ``text_global_pool`` rule, ``[K]``."""
        k, length = token_ids.shape
        if self.pool_type == "argmax":
            return token_ids.argmax(dim=-1)
        if self.pool_type == "eos":
            if self.eos_id is None:
                raise ValueError(f"{self.model_name}: eos pooling without an eos_id")
            return (token_ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full((k,), length - 1, dtype=torch.long, device=token_ids.device)
        return torch.zeros(k, dtype=torch.long, device=token_ids.device)

    def forward(self, x: torch.Tensor, eot_index: torch.Tensor, shared_prefix: int = 0) -> torch.Tensor:
        length = x.shape[1]
        if length > self.context_length:
            raise ValueError(f"sequence of {length} tokens exceeds the context length {self.context_length}")
        cast = self.transformer.get_cast_dtype()
        x = (x + self.positional_embedding[:length]).to(cast)
        rows = torch.arange(x.shape[0], device=x.device)
        if 0 < shared_prefix < length and self.supports_shared_prefix and not self.transformer.grad_checkpointing:
            x = self._run_shared_prefix(x, shared_prefix)[rows, eot_index - shared_prefix]  # [K, W]
        else:
            mask = self.attn_mask[:length, :length] if self.causal else None
            x = self.transformer(x, attn_mask=mask)
            x = x[rows, eot_index]  # [K, W]
        x = self.ln_final(x)  # per-token LayerNorm: applying it to the readout token only is exact
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def _run_shared_prefix(self, x: torch.Tensor, p: int) -> torch.Tensor:
        """Hidden states ``[K, S, W]`` of positions p..L-1 of every row (S = L - p), the p prefix positions
        computed once from row 0. Per-token ops (LayerNorms, projections, MLP) run on one flat
        ``[p + K*S, W]`` matrix; only the attention sees the structure."""
        k, length, w = x.shape
        s = length - p
        h = torch.cat([x[0, :p], x[:, p:].reshape(k * s, w)])  # [p + K*S, W]
        # own position i (absolute p + i) sees the whole prefix and its own positions <= i
        mask = torch.ones(s, p + s, dtype=torch.bool, device=x.device).tril(p)
        for blk in self.transformer.resblocks:
            attn = blk.attn
            heads = attn.num_heads
            qkv = F.linear(blk.ln_1(h), attn.in_proj_weight, attn.in_proj_bias)  # [p + K*S, 3W]
            pre = qkv[:p].view(1, p, 3, heads, w // heads).permute(2, 0, 3, 1, 4)  # [3, 1, H, p, Dh]
            own = qkv[p:].view(k, s, 3, heads, w // heads).permute(2, 0, 3, 1, 4)  # [3, K, H, S, Dh]
            out_pre = F.scaled_dot_product_attention(pre[0], pre[1], pre[2], is_causal=True)
            keys = torch.cat([pre[1].expand(k, -1, -1, -1), own[1]], dim=2)  # [K, H, p + S, Dh]
            values = torch.cat([pre[2].expand(k, -1, -1, -1), own[2]], dim=2)
            out_own = F.scaled_dot_product_attention(own[0], keys, values, attn_mask=mask)  # [K, H, S, Dh]
            out = torch.cat([out_pre[0].transpose(0, 1).reshape(p, w), out_own.transpose(1, 2).reshape(k * s, w)])
            h = h + blk.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
            h = h + blk.ls_2(blk.mlp(blk.ln_2(h)))
        return h[p:].view(k, s, w)


def _is_plain_block(block: nn.Module) -> bool:
    """open_clip's default ``ResidualAttentionBlock`` around a plain self-attention ``nn.MultiheadAttention``
    (packed in-projection, no extra key/value biases, no dropout): what the shared-prefix path re-implements."""
    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and isinstance(attn, nn.MultiheadAttention)
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and attn.dropout == 0.0
        and not hasattr(block, "ln_1_kv")
    )
