"""CLAMP's optimiser: AdamW over four parameter groups, and the non-finite step skip. The one definition, used by
``PoseLitModule`` and by the benchmarks (plain torch: no Lightning, no Hydra).

Groups (``CLAMP.param_groups`` partitions the parameters, :func:`clamp_pl.models.clamp.no_weight_decay` splits
each part): ``backbone`` and ``backbone_no_wd`` (the image tower, at ``lr x backbone_lr_mult``), ``head`` and
``head_no_wd`` (everything else that trains: prompt context, prompt encoder, context decoder, gamma, logit scale,
projections, both heads, at ``lr``). The ``_no_wd`` groups have weight decay 0. The frozen text tower and every
parameter with ``requires_grad=False`` are left out, so AdamW keeps no state for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from clamp_pl.models.clamp import no_weight_decay

__all__ = ["adamw", "fused_supported", "param_groups", "skip_if_nonfinite"]


def param_groups(
    net: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    backbone_lr_mult: float,
    no_decay_keys: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The optimiser groups of a ``CLAMP`` network, sorted by name.

    Args:
        net: a :class:`clamp_pl.models.CLAMP` (anything with its ``param_groups()`` partition).
        lr: learning rate of the head groups; the backbone groups get ``lr * backbone_lr_mult``.
        weight_decay: decoupled weight decay of the groups that are decayed.
        backbone_lr_mult: multiplier of the image tower's learning rate (CLAMP: 0.1 for ViTs, 1 for RN50).
        no_decay_keys: which parameters get no weight decay: None = every 0-/1-D tensor, the prompt context and
            the positional embeddings; a list of substrings = the official mmcv rule (see ``no_weight_decay``).

    Returns:
        ``[{"params": [Tensor, ...], "lr": float, "weight_decay": float, "name": str}, ...]``, empty groups left
        out; each parameter in exactly one group.
    """
    buckets: dict[tuple[str, bool], list[Tensor]] = {}
    for group, named in net.param_groups().items():
        if group == "text":
            continue  # frozen tower: requires_grad False, never in the optimiser
        for name, p in named:
            if p.requires_grad:
                buckets.setdefault((group, no_weight_decay(name, p, no_decay_keys)), []).append(p)
    return [
        {
            "params": params,
            "lr": lr * (backbone_lr_mult if group == "backbone" else 1.0),
            "weight_decay": 0.0 if no_wd else weight_decay,
            "name": f"{group}{'_no_wd' if no_wd else ''}",
        }
        for (group, no_wd), params in sorted(buckets.items())
    ]


def fused_supported(params: Iterable[Tensor]) -> bool:
    """Whether PyTorch's fused AdamW kernel takes these parameters: floating point, on CPU or CUDA.

    The kernel updates all tensors of a group at once instead of ~10 ops per tensor: on CPU the AdamW step of
    CLAMP ViT-B/16 or RN50 takes 0.3x the time of the per-tensor loop (``python -m benchmarks.cpu``, train case).
    """
    params = list(params)
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def adamw(groups: list[dict[str, Any]], *, fused: bool | Literal["auto"]) -> torch.optim.AdamW:
    """AdamW (default betas and eps) over ``groups`` (:func:`param_groups`: each group sets its lr and weight
    decay). ``fused``: True, False, or ``"auto"`` = the fused kernel whenever :func:`fused_supported`."""
    if fused not in ("auto", True, False):
        raise ValueError(f"model.optimizer.fused must be auto, true or false, not {fused!r}")
    if not groups:
        raise ValueError("no trainable parameters: every parameter group is empty")
    if fused == "auto":
        fused = fused_supported(p for g in groups for p in g["params"])
    # lr / weight_decay defaults of torch are never used: every group carries its own
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=groups[0]["weight_decay"], fused=bool(fused))


def skip_if_nonfinite(optimizer: torch.optim.Optimizer, loss_flag: Tensor) -> Tensor:
    """Make the coming ``optimizer.step()`` a no-op when the loss or any gradient is non-finite.

    Args:
        optimizer: after ``backward``, before ``step``.
        loss_flag: bool ``[]`` on the parameters' device, True when the loss was non-finite (under DDP: on any
            rank, already reduced).

    Returns:
        bool ``[]`` on the same device: the step is skipped (loss flag or a non-finite total gradient norm).

    A fused optimiser takes the decision as a tensor (``found_inf``, the attribute AMP's GradScaler sets; the
    kernel skips every update when it is non-zero): no host-device sync. Any other optimiser needs it on the host
    (one sync) and skips by dropping the gradients (``step`` leaves parameters whose gradient is None alone).
    """
    bad = loss_flag
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grads:
        bad = bad | ~torch.isfinite(torch.nn.utils.get_total_norm(grads))
    if getattr(optimizer, "_step_supports_amp_scaling", False):  # fused
        optimizer.found_inf = bad.float()
    elif bad.item():
        for g in optimizer.param_groups:
            for p in g["params"]:
                p.grad = None
    return bad
