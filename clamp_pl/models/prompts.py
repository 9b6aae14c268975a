"""CoOp-style learnable prompts for keypoint names.

Each keypoint name becomes ``[SOT] [ctx_1 .. ctx_n] [name BPE tokens] [EOT] [pad ..]``: ``n_ctx`` context
vectors shared by all keypoints, inserted right after SOT, then the frozen CLIP text tower, read out at EOT.

Only the context vectors are parameters. Token ids are non-persistent buffers, so checkpoints do not depend on
the keypoint names and ``set_prompts`` can swap the vocabulary (zero-shot on new names), as in CoOp.
"""

from __future__ import annotations

import functools

import open_clip
import torch
from torch import nn

from .clip_towers import TextTower


@functools.lru_cache(maxsize=8)
def _tokenizer(model_name: str):
    tok = open_clip.get_tokenizer(model_name)
    if not all(hasattr(tok, a) for a in ("encode", "sot_token_id", "eot_token_id")):
        raise ValueError(f"{model_name}: CLAMP prompts need CLIP's BPE tokenizer, got {type(tok).__name__}")
    return tok


class PromptLearner(nn.Module):
    """Learnable-context prompts through a frozen text tower.

    ``forward() -> [K, D]``: one embedding per prompt, in the text tower's output space.

    Args:
        text_tower: the frozen CLIP text tower (becomes a submodule).
        prompts: K keypoint texts, e.g. ``"left front paw"``.
        n_ctx: number of shared context vectors (CLAMP: 8).
        ctx_init_std: context init, ``trunc_normal_(std, a=-2 std, b=2 std)``; 1.0 is the official CLAMP init
            (CoOp uses 0.02).
        truncate: run the tower on ``1 + n_ctx + max name tokens + 1`` positions (13 for CLAMP on AP-10K)
            instead of the full context (77). Exact thanks to the causal mask; much cheaper.
        share_prefix: run SOT + the context, which every prompt shares, once instead of K times
            (:class:`TextTower` ``shared_prefix``); exact for the same reason, ~2.5x fewer token rows for
            CLAMP on AP-10K. An attribute, so it can be switched off to compare.

    Caching: when no gradient can reach the context (``torch.is_grad_enabled()`` is False, e.g. validation under
    ``no_grad``/``inference_mode``, or the context is frozen) the prompts cannot change between calls, so the
    output is cached and reused. The cache is dropped by ``train()``/``eval()``, ``set_prompts``, loading a
    state dict, moving the module, and any in-place change of the context (its version counter). With grad
    enabled and a trainable context it is recomputed every call, so each training step gets a fresh graph.
    """

    def __init__(
        self,
        text_tower: TextTower,
        prompts: list[str],
        n_ctx: int = 8,
        ctx_init_std: float = 1.0,
        truncate: bool = True,
        share_prefix: bool = True,
    ) -> None:
        super().__init__()
        if n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0, got {n_ctx}")
        self.text_tower = text_tower
        self.n_ctx = n_ctx
        self.truncate = truncate
        self.share_prefix = share_prefix
        self.ctx = nn.Parameter(torch.empty(n_ctx, text_tower.width))
        nn.init.trunc_normal_(self.ctx, mean=0.0, std=ctx_init_std, a=-2 * ctx_init_std, b=2 * ctx_init_std)
        self.register_buffer("token_ids", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self.register_buffer("eot_index", torch.zeros(0, dtype=torch.long), persistent=False)
        self._cache: torch.Tensor | None = None
        self._cache_key: tuple | None = None
        self.prompts: list[str] = []
        self.set_prompts(prompts)

    @property
    def embed_dim(self) -> int:
        return self.text_tower.embed_dim

    @property
    def sequence_length(self) -> int:
        """Number of token positions the text tower runs on."""
        return self.token_ids.shape[1]

    def set_prompts(self, prompts: list[str]) -> None:
        """Replace the prompt texts (any number); the learned context is kept."""
        prompts = [str(p) for p in prompts]
        if not prompts or any(not p.strip() for p in prompts):
            raise ValueError(f"prompts must be non-empty strings, got {prompts!r}")
        tok = _tokenizer(self.text_tower.model_name)
        names = [tok.encode(p) for p in prompts]
        ctx_len = self.text_tower.context_length
        longest = max(len(n) for n in names)
        if 2 + self.n_ctx + longest > ctx_len:
            raise ValueError(
                f"prompt of {longest} BPE tokens + {self.n_ctx} context tokens + SOT/EOT exceeds the "
                f"text context length {ctx_len}"
            )
        length = 2 + self.n_ctx + longest if self.truncate else ctx_len
        ids = torch.zeros(len(names), length, dtype=torch.long)
        eot = torch.empty(len(names), dtype=torch.long)
        for i, name in enumerate(names):
            # positions 1..n_ctx are placeholders (id 0) replaced by the context vectors in forward
            seq = [tok.sot_token_id] + [0] * self.n_ctx + name + [tok.eot_token_id]
            ids[i, : len(seq)] = torch.tensor(seq)
            eot[i] = len(seq) - 1
        device = self.ctx.device
        self.token_ids = ids.to(device)
        self.eot_index = eot.to(device)
        self.prompts = prompts
        self.invalidate_cache()

    def invalidate_cache(self) -> None:
        self._cache = None
        self._cache_key = None

    def train(self, mode: bool = True) -> PromptLearner:
        self.invalidate_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.invalidate_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.invalidate_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def compute(self) -> torch.Tensor:
        """Run the text tower (no caching): ``[K, D]``."""
        emb = self.text_tower.embed(self.token_ids)  # [K, L, W]
        k = emb.shape[0]
        ctx = self.ctx.to(emb.dtype).unsqueeze(0).expand(k, -1, -1)
        x = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx :]], dim=1)
        return self.text_tower(x, self.eot_index, shared_prefix=1 + self.n_ctx if self.share_prefix else 0)

    def forward(self) -> torch.Tensor:
        if torch.is_grad_enabled() and self.ctx.requires_grad:
            return self.compute()
        dev = self.ctx.device.type
        autocast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        key = (self.ctx._version, autocast)
        cached = self._cache
        if (
            cached is not None
            and self._cache_key == key
            and not (cached.is_inference() and not torch.is_inference_mode_enabled())
        ):
            return cached
        out = self.compute()
        self._cache, self._cache_key = out, key
        return out
