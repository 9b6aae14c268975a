"""Prompt refinement modules: the prompt encoder and the context decoder.

* ``PromptEncoder``: one CLIP residual block over the K prompt embeddings (self-attention among keypoints),
  no positional embedding (permutation-equivariant), then a LayerNorm. The official module also declares a
  ``positional_embedding`` and a ``text_projection`` that it never uses; they are left out here.
* ``ContextDecoder``: DenseCLIP's decoder. Prompts (queries) attend to the visual tokens [global; pixels].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import nn


class PromptEncoder(nn.Module):
    """``forward(x [B,K,D]) -> [B,K,D]``; pre-LN self-attention + QuickGELU MLP (4x), then LayerNorm.

    PyTorch default init, as the official code.
    """

    def __init__(self, dim: int, heads: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.block = ResidualAttentionBlock(dim, heads, mlp_ratio, act_layer=QuickGELU, batch_first=True)
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.block(x))


class _Attention(nn.Module):
    """Multi-head attention with separate bias-free q/k/v projections and a dropped-out output projection."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, nq, c = q.shape
        h = self.heads
        q = self.q_proj(q).reshape(b, nq, h, c // h).transpose(1, 2)
        k = self.k_proj(kv).reshape(b, kv.shape[1], h, c // h).transpose(1, 2)
        v = self.v_proj(kv).reshape(b, kv.shape[1], h, c // h).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)  # scale d_h^-1/2, no attention dropout (as official)
        x = x.transpose(1, 2).reshape(b, nq, c)
        return self.proj_drop(self.proj(x))


class _DecoderLayer(nn.Module):
    """Pre-norm: x += SelfAttn(LN x); x += CrossAttn(LN x, mem); x += Dropout(MLP(LN x))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, heads, dropout)
        self.cross_attn = _Attention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * 4), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * 4, dim)
        )

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.self_attn(y, y)
        x = x + self.cross_attn(self.norm2(x), mem)
        return x + self.dropout(self.mlp(self.norm3(x)))


class ContextDecoder(nn.Module):
    """DenseCLIP/CLAMP context decoder.

    ``forward(text [B,K,C], visual [B,N,C]) -> [B,K,C]`` with C = ``visual_dim`` and ``visual`` the memory
    tokens ``[global; pixels]`` (N = 1 + gh*gw). Memory: LN -> Linear(C, width) -> LN; queries:
    LN -> Linear(C, width); ``layers`` pre-norm decoder layers; output LN -> Linear(width, C).
    Linear weights trunc-normal(0.02), biases 0, LayerNorms 1/0. The caller adds the output with a learnable
    per-channel scale (gamma, CLAMP init 1e-3).
    """

    def __init__(
        self, visual_dim: int, width: int = 256, heads: int = 4, layers: int = 3, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width))
        self.decoder = nn.ModuleList([_DecoderLayer(width, heads, dropout) for _ in range(layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, visual_dim))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        mem = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.decoder:
            x = layer(x, mem)
        return self.out_proj(x)
