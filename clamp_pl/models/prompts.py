"""CoOp-style learnable prompts for keypoint names.

Each keypoint name becomes the text tower's own tokenization of the name with ``n_ctx`` context vectors, shared by
all keypoints, inserted right before the name: ``[SOT] [ctx_1 .. ctx_n] [name tokens] [EOT] [pad ..]`` for CLIP's
BPE (as CLAMP), ``[ctx_1 .. ctx_n] [name tokens] [EOS] [pad ..]`` for a tokenizer without a start token (SigLIP's).
The frozen text tower runs on it and is read out where it pools (EOT, or the last position for SigLIP).

Only the context vectors are parameters. Token ids are non-persistent buffers, so checkpoints do not depend on
the keypoint names and ``set_prompts`` can swap the vocabulary (zero-shot on new names), as in CoOp.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import open_clip
import torch
from torch import nn

from .clip_towers import TextTower


@functools.lru_cache(maxsize=8)
def _tokenizer(model_name: str):
    """open_clip's tokenizer for ``model_name`` (SigLIP / SigLIP 2: Hugging Face files, fetched by open_clip)."""
    try:
        tok = open_clip.get_tokenizer(model_name)
    except Exception as e:  # noqa: BLE001 - HF tokenizers fail with many types (no network, no transformers)
        raise RuntimeError(
            f"{model_name}: could not load its open_clip tokenizer ({type(e).__name__}: {e}); SigLIP / SigLIP 2 "
            "tokenizers are Hugging Face files that open_clip reads with the `transformers` package and downloads "
            "once (or pass a tokenizer to PromptLearner)"
        ) from e
    if not callable(tok):
        raise ValueError(f"{model_name}: CLAMP prompts need a callable open_clip tokenizer, got {type(tok).__name__}")
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
        truncate: run a causal tower on positions up to the last readout only (13 for CLAMP on AP-10K) instead of
            the full context (77). Exact thanks to the causal mask; much cheaper. Bidirectional towers (SigLIP,
            MobileCLIP2) always run on their full context, where the readout depends on every position.
        share_prefix: run the start token + the context, which every prompt shares, once instead of K times
            (:class:`TextTower` ``shared_prefix``, causal towers); exact for the same reason, ~2.5x fewer token rows
            for CLAMP on AP-10K. An attribute, so it can be switched off to compare.
        tokenizer: ``tokenizer(texts, context_length=N) -> LongTensor[len(texts), N]`` (open_clip's interface);
            None: open_clip's tokenizer of the tower's model. The prompt layout is read off its output: the
            leading special tokens (those it also puts around an empty text), the name, the trailing specials
            and padding (the last id of an empty text).

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
        tokenizer: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0, got {n_ctx}")
        self.text_tower = text_tower
        self.n_ctx = n_ctx
        self.truncate = truncate
        self.share_prefix = share_prefix
        self.tokenizer = tokenizer
        #: number of positions before the context (1: CLIP's SOT; 0 for a tokenizer without a start token)
        self.prefix_length = 0
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
        tower = self.text_tower
        tok = self.tokenizer if self.tokenizer is not None else _tokenizer(tower.model_name)
        ctx_len = tower.context_length
        n = self.n_ctx
        # tokenize with room to spare, so that a prompt too long for the context is seen, not silently truncated
        room = ctx_len + n + 2
        names = torch.as_tensor(tok(prompts, context_length=room)).long()
        empty = torch.as_tensor(tok([""], context_length=room)).long()[0]
        pad = int(empty[-1])
        differs = names != empty  # the leading specials: what an empty text starts with too
        starts = torch.where(differs.any(dim=1), differs.int().argmax(dim=1), torch.full_like(names[:, 0], room))
        prefix = int(starts.min())
        ids = torch.cat([names[:, :prefix], torch.full((len(prompts), n), pad), names[:, prefix:]], dim=1)
        too_long = (ids[:, ctx_len:] != pad).any(dim=1)
        if too_long.any():
            worst = prompts[int(too_long.nonzero()[0])]
            shown = worst if len(worst) <= 40 else worst[:37] + "..."
            raise ValueError(
                f"prompt {shown!r}: its tokens + {n} context tokens + the special tokens: the sequence exceeds the "
                f"text context length {ctx_len}"
            )
        ids = ids[:, :ctx_len]
        readout = tower.readout_index(ids)
        if self.truncate and tower.causal:
            ids = ids[:, : int(readout.max()) + 1]
        device = self.ctx.device
        self.token_ids = ids.to(device)
        self.eot_index = readout.to(device)
        self.prefix_length = prefix
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
        k, p = emb.shape[0], self.prefix_length
        ctx = self.ctx.to(emb.dtype).unsqueeze(0).expand(k, -1, -1)
        x = torch.cat([emb[:, :p], ctx, emb[:, p + self.n_ctx :]], dim=1)
        return self.text_tower(x, self.eot_index, shared_prefix=p + self.n_ctx if self.share_prefix else 0)

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
