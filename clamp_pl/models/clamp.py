"""The CLAMP network: CLIP towers + learnable prompts + prompt refinement + score-map fusion.

Two keypoint heads (``head``):

* ``"concat"`` (CLAMP's): ``HeatmapHead`` on ``cat[feature_map, K score maps]``; K is fixed when it is built.
* ``"prompt"``: ``PromptHead``, whose keypoints are its prompts: the image is decoded once, each refined prompt
  becomes a 1x1 kernel on the decoded features, plus its upsampled score map; all weights are shared across
  keypoints, so any number and order of prompts works at forward time (``set_prompts`` or ``text_features``).

Image-only baseline: ``text_branch=False`` keeps the same image tower and keypoint head and drops everything
text-related (no prompts, no score maps; the keypoint head sees only the backbone map). Its image tower skips the
CLIP embedding head (ViT ``ln_post``/``proj``, RN attention pool), whose parameters are frozen: they feed nothing.
It needs the concat head (the prompt head has no keypoints without prompts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import nn

from .adapters import ContextDecoder, PromptEncoder
from .clip_towers import DenseImageTower, TextTower, build_clip
from .heads import HeatmapHead, PromptHead, SharedUpsampleHead, UpsampleHead
from .prompts import PromptLearner

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)
# open_clip's names, then timm's (ViT/Eva tables and tokens, the attention-pool query): 2-/3-D, so the ndim rule
# alone would let them decay
_NO_DECAY_NAMES = {"ctx", "positional_embedding", "class_embedding", "gamma", "logit_scale",
                   "pos_embed", "cls_token", "reg_token", "latent"}
HEADS = ("concat", "prompt")


def no_weight_decay(name: str, param: torch.Tensor, keys: Sequence[str] | None = None) -> bool:
    """Whether a CLAMP parameter should be excluded from weight decay.

    ``keys=None``: every 0-/1-D tensor (norm weights and biases, all biases, gamma, the logit scale, the ViT class
    embedding), the learnable prompt context (``ctx``), positional embeddings and timm's class / register tokens
    and attention-pool query (``pos_embed``, ``cls_token``, ``reg_token``, ``latent``: timm/open_clip convention).

    ``keys=[...]``: the official mmcv rule (``paramwise_cfg.custom_keys`` with ``decay_mult=0``): a parameter is
    excluded exactly when its name contains one of the substrings, everything else decays. The official ViT
    recipes use ``["norm"]`` (only the context decoder's ``norm1-3`` match: the ViT's ``ln_*``, the prompt
    encoder's LayerNorms and the heads' BatchNorms all decay), RN50 ``["bias", "norm"]``. The substrings carry
    over because CLAMP's parameter names are the official ones under other prefixes.
    """
    if keys is not None:
        return any(k in name for k in keys)
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES


class CLAMP(nn.Module):
    """CLAMP top-down keypoint network.

    ``forward(images [B,3,H,W], text_features [K,Dt] | None) -> dict``, K = the number of prompts (those set,
    or the rows of ``text_features``; any K >= 1 for ``head="prompt"``, the built K for ``head="concat"``):

    * ``heatmaps`` [B,K,h,w]: keypoint head output (the prediction).
    * ``score_maps`` [B,K,gh,gw]: cosine similarity (no temperature) of L2-normalised pixel embeddings and
      refined prompts, in [-1, 1].
    * ``spatial_heatmaps`` [B,K,h,w]: the upsampled score maps for the spatial loss (``UpsampleHead``, or for
      the prompt head ``SharedUpsampleHead``: one single-channel upsampler per score map); only in training
      mode (``self.training``) and with ``spatial_head=True``, else None.
    * ``pixel_embeddings`` [B,D,gh,gw], ``prompt_embeddings`` [B,K,D] (refined prompts T'), ``logit_scale``
      (scalar tensor, exp of the learnable log-scale clamped at ln 100): inputs of the feature loss.

    With ``text_branch=False`` all keys but ``heatmaps`` are None. ``text_features`` bypasses the text tower
    (e.g. for ONNX export with features precomputed by ``text_features()``). No op couples batch elements other
    than BatchNorm in training mode, so flip-test passes can be batched freely.

    ``heatmap_size`` is (w, h) and must equal the feature grid times 2**num_deconv (also for the upsampler).

    Keypoints and prompts (``head="prompt"``): reordering the prompts reorders every per-keypoint output
    (heatmaps, score maps, spatial heatmaps, prompt embeddings) exactly, since no module sees a prompt's position:
    the text tower runs each prompt alone, and the prompt encoder and context decoder use self-attention among the
    prompts without positional encoding. That self-attention does make keypoint k's output depend on the other
    prompts asked for with it: "nose" alone gives another heatmap than "nose" among the 17 AP-10K prompts.

    Ablation switches: ``text_branch``, ``prompt_encoder``, ``context_decoder`` (no gamma either),
    ``score_concat`` (score maps not fed to the keypoint head; for the prompt head: no score term),
    ``spatial_head`` (no upsampler: use it when the spatial loss weight is 0, so that DDP sees no unused
    parameters), ``n_ctx``. With a feature-loss weight of 0 the logit scale gets no gradient: freeze it
    (``requires_grad_(False)``) under DDP.

    ``decoder_width`` / ``decoder_layers`` size the context decoder (official: 256, 3); the tiny CPU model uses
    a smaller one, which otherwise holds most of its parameters.

    Official-code switches: ``drop_path_mode`` (``"token"``: the official per-token stochastic depth, or
    ``"sample"``), ``class_embedding_twice`` (the official ViT class token; on for imported official weights),
    ``text_heads`` (text-transformer heads, None = the CLIP config's; the official ViT-L/14 used 8),
    ``text_context_length`` (text positions kept, None = CLIP's 77; the official 13, which its checkpoints store).
    """

    def __init__(
        self,
        *,
        clip_model: str,
        pretrained: str | None,
        image_size: int,
        prompts: list[str],
        text_branch: bool = True,
        n_ctx: int = 8,
        ctx_init_std: float = 1.0,
        prompt_encoder: bool = True,
        context_decoder: bool = True,
        score_concat: bool = True,
        head: str = "concat",
        spatial_head: bool = True,
        num_deconv: int = 2,
        deconv_channels: int = 256,
        upconv_num_deconv: int = 2,
        upconv_channels: int | None = None,
        drop_path_rate: float = 0.0,
        drop_path_mode: str = "token",
        class_embedding_twice: bool = False,
        text_heads: int | None = None,
        text_context_length: int | None = None,
        heatmap_size: tuple[int, int] = (64, 64),
        quick_gelu: bool | None = None,
        truncate_prompts: bool = True,
        gamma_init: float = 1e-3,
        decoder_width: int = 256,
        decoder_layers: int = 3,
    ) -> None:
        super().__init__()
        k = len(prompts)
        if k == 0:
            raise ValueError("prompts must name at least one keypoint")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if head == "prompt" and not text_branch:
            raise ValueError(
                "head='prompt' takes its keypoints from the prompts, and the image-only baseline "
                "(text_branch=False) has none: use head='concat' (model.net.head=concat) for the baseline"
            )
        self.head = head
        # the K the concat head (and the baseline) is built for; the prompt head has none
        self._built_keypoints = k
        self.text_branch = text_branch
        self.score_concat = score_concat and text_branch
        clip = build_clip(clip_model, pretrained, image_size, quick_gelu, text_heads=text_heads)
        #: the activation actually built (``quick_gelu=None`` resolves it from the weights): record this value
        #: to rebuild the same network without its pretrained weights
        self.quick_gelu = any(isinstance(m, QuickGELU) for m in clip.modules())
        self.image_tower = DenseImageTower(
            clip_model,
            pretrained,
            image_size,
            drop_path_rate,
            quick_gelu,
            drop_path_mode=drop_path_mode,
            class_embedding_twice=class_embedding_twice,
            clip_model=clip,
        )
        if not text_branch:
            for p in self.image_tower.embedding_parameters():
                p.requires_grad_(False)
        gh, gw = self.image_tower.grid_size
        d = self.image_tower.embed_dim
        spatial_head = spatial_head and text_branch
        for what, n in (("num_deconv", num_deconv), ("upconv_num_deconv", upconv_num_deconv)):
            if spatial_head or what == "num_deconv":
                out_hw = (gh * 2**n, gw * 2**n)
                if out_hw != (heatmap_size[1], heatmap_size[0]):
                    raise ValueError(
                        f"{what}={n} upsamples the {gh}x{gw} feature grid to {out_hw[0]}x{out_hw[1]}, "
                        f"but heatmap_size (w, h) is {tuple(heatmap_size)}"
                    )
        self.prompt_learner: PromptLearner | None = None
        self.text_proj: nn.Parameter | None = None
        self.prompt_encoder: PromptEncoder | None = None
        self.context_decoder: ContextDecoder | None = None
        self.gamma: nn.Parameter | None = None
        self.upsample_head: UpsampleHead | None = None
        self.logit_scale: nn.Parameter | None = None
        if text_branch:
            self.prompt_learner = PromptLearner(
                TextTower(clip, clip_model, text_context_length),
                list(prompts),
                n_ctx,
                ctx_init_std,
                truncate_prompts,
            )
            dt = self.prompt_learner.embed_dim
            if dt != d:
                # only when the text and image embedding spaces differ (never for the official configs)
                self.text_proj = nn.Parameter(torch.randn(dt, d) * dt**-0.5)
            if prompt_encoder:
                self.prompt_encoder = PromptEncoder(d, heads=8 if d % 8 == 0 else 1)
            if context_decoder:
                self.context_decoder = ContextDecoder(d, width=decoder_width, layers=decoder_layers)
                self.gamma = nn.Parameter(torch.full((d,), gamma_init))
            if spatial_head:
                if head == "prompt":
                    self.upsample_head = SharedUpsampleHead(upconv_num_deconv, upconv_channels)
                else:
                    self.upsample_head = UpsampleHead(k, upconv_num_deconv, upconv_channels)
            self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.keypoint_head: HeatmapHead | PromptHead
        if head == "prompt":
            self.keypoint_head = PromptHead(
                self.image_tower.out_channels, d, num_deconv, deconv_channels, score_term=self.score_concat
            )
        else:
            head_in = self.image_tower.out_channels + (k if self.score_concat else 0)
            self.keypoint_head = HeatmapHead(head_in, k, num_deconv, deconv_channels)

    @property
    def num_keypoints(self) -> int:
        """The current number of prompts (fixed for the concat head and the image-only baseline)."""
        return self._built_keypoints if self.prompt_learner is None else len(self.prompt_learner.prompts)

    def _count_error(self, got: int) -> ValueError:
        k = self._built_keypoints
        return ValueError(
            f"the concat head (CLAMP's) predicts exactly K={k} keypoints: expected {k} prompts, got {got}; "
            "train with model.net.head=prompt (CLAMP(head='prompt')) to ask for other keypoints"
        )

    @property
    def feature_grid(self) -> tuple[int, int]:
        """(gh, gw) at the built image size."""
        return self.image_tower.grid_size

    @property
    def stride(self) -> tuple[int, int]:
        """(sy, sx) input pixels per feature cell."""
        return self.image_tower.stride

    @property
    def prompts(self) -> list[str] | None:
        return None if self.prompt_learner is None else list(self.prompt_learner.prompts)

    def set_prompts(self, prompts: list[str]) -> None:
        """Swap the keypoint texts (zero-shot vocabulary). The prompt head takes any number >= 1, in any order
        (the outputs follow it); the concat head only as many as it was built for (ValueError otherwise)."""
        if self.prompt_learner is None:
            raise RuntimeError("the image-only baseline has no prompts")
        if self.head == "concat" and len(prompts) != self._built_keypoints:
            raise self._count_error(len(prompts))
        self.prompt_learner.set_prompts(list(prompts))

    def text_features(self) -> torch.Tensor:
        """Prompt embeddings from the text tower, ``[K, Dt]`` (cached whenever no gradient can flow)."""
        if self.prompt_learner is None:
            raise RuntimeError("the image-only baseline has no text branch")
        return self.prompt_learner()

    def param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Partition of ``named_parameters()``: ``backbone`` (image tower), ``text`` (frozen text tower) and
        ``head`` (context, prompt encoder, context decoder, gamma, logit scale, projections, heads)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"backbone": [], "text": [], "head": []}
        for name, p in self.named_parameters():
            if name.startswith("image_tower."):
                groups["backbone"].append((name, p))
            elif name.startswith("prompt_learner.text_tower."):
                groups["text"].append((name, p))
            else:
                groups["head"].append((name, p))
        return groups

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> dict:
        feature_map, global_emb, pixel_emb = self.image_tower(images, embeddings=self.text_branch)
        if not self.text_branch:
            return dict(
                heatmaps=self.keypoint_head(feature_map),
                score_maps=None,
                spatial_heatmaps=None,
                pixel_embeddings=None,
                prompt_embeddings=None,
                logit_scale=None,
            )
        b = images.shape[0]
        t = self.text_features() if text_features is None else text_features  # [K, Dt]
        if self.head == "concat" and t.shape[0] != self._built_keypoints:
            raise self._count_error(t.shape[0])
        if self.text_proj is not None:
            t = t @ self.text_proj
        t = t.to(pixel_emb.dtype).unsqueeze(0)  # [1, K, D]
        if self.prompt_encoder is not None:
            # identical for every image: run it once, before broadcasting to the batch
            t = self.prompt_encoder(t)
        t = t.expand(b, -1, -1)
        if self.context_decoder is not None:
            memory = torch.cat([global_emb.unsqueeze(1), pixel_emb.flatten(2).transpose(1, 2)], dim=1)
            t = t + self.gamma * self.context_decoder(t, memory)
        score_maps = torch.einsum("bdhw,bkd->bkhw", F.normalize(pixel_emb, dim=1), F.normalize(t, dim=-1))
        if self.head == "prompt":
            heatmaps = self.keypoint_head(feature_map, t, score_maps if self.score_concat else None)
        else:
            head_in = torch.cat([feature_map, score_maps], dim=1) if self.score_concat else feature_map
            heatmaps = self.keypoint_head(head_in)
        return dict(
            heatmaps=heatmaps,
            score_maps=score_maps,
            spatial_heatmaps=(
                self.upsample_head(score_maps) if self.training and self.upsample_head is not None else None
            ),
            pixel_embeddings=pixel_emb,
            prompt_embeddings=t,
            logit_scale=self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp(),
        )
