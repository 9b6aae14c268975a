"""The ``gpu`` suite: what a GPU user relies on and no CPU test can show (bf16 autocast through the losses,
fused AdamW and the non-finite guard on CUDA, torch.compile, channels_last, sync batch norm, pinned-memory loaders
with workers, CUDA resume, inference and ONNX export from a CUDA model, the detector, 2-GPU DDP).

Every module sets ``pytestmark = GPU``: marked ``gpu`` and skipped, with the reason, without a CUDA device.
``make check-gpu`` runs them (``python -m benchmarks.check_gpu``, report in ``docs/gpu_check.md``). ``CLAMP_GPU_TESTS_ON_CPU=1`` runs
their bodies on the CPU instead (the CUDA-only checks skip themselves): it checks the suite's own logic on a
machine without a GPU; it proves nothing about CUDA.

Figures worth reading (loss gaps, data-wait share, throughput) are recorded with ``record_property`` and
printed; ``benchmarks.check_gpu`` copies them into its report.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest
import torch

from benchmarks.fixtures import build_clamp, make_optimizer, model_config, synthetic_batch
from clamp_pl.models import CLAMPLoss
from clamp_pl.training.optim import skip_if_nonfinite

ON_CPU = os.environ.get("CLAMP_GPU_TESTS_ON_CPU") == "1"
# cuBLAS reads it when its first handle is created: deterministic matmuls for the bit-exact resume test
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


#: the device the suite runs on
DEVICE = torch.device("cpu" if ON_CPU and not torch.cuda.is_available() else "cuda")

#: every module of the suite: ``pytestmark = GPU``
GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() and not ON_CPU,
                       reason="needs a CUDA device (torch.cuda.is_available() is False); run by make check-gpu"),
]

#: checks that mean nothing off CUDA (pinned memory, the CUDA generators, NCCL)
cuda_only = pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA-only check (CLAMP_GPU_TESTS_ON_CPU=1 runs the "
                                                            "suite's logic on the CPU)")


def report(record_property, name: str, value) -> None:
    """Record a figure for the check report (pytest's ``record_property``) and print it."""
    record_property(name, value)
    print(f"{name} = {value}")


@functools.cache
def config(name: str) -> dict[str, Any]:
    """``conf/model/<name>.yaml`` composed and resolved, with its spec (random init: nothing is downloaded)."""
    return model_config(name)


def autocast(precision: str):
    """bf16 autocast on the suite's device for ``"bf16"``; a no-op for ``"fp32"``."""
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_losses(name: str, precision: str, steps: int, batch_size: int, *, lr: float | None = None,
                 compile: bool = False, channels_last: bool = False) -> list[float]:
    """The losses of ``steps`` training steps of the randomly initialised CLAMP of ``conf/model/<name>.yaml``
    (seed 0) on one fixed synthetic batch: forward + ``CLAMPLoss`` under ``precision`` + backward + the
    non-finite guard + fused AdamW (the step of ``PoseLitModule``), ``lr`` overriding the configured one."""
    cfg = config(name)
    if lr is not None:
        cfg = {**cfg, "optimizer": {**cfg["optimizer"], "lr": lr}}
    net = build_clamp(cfg).to(DEVICE)
    batch = {k: v.to(DEVICE) for k, v in synthetic_batch(net, batch_size, cfg["spec"].heatmap_size).items()}
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    model = torch.compile(net) if compile else net
    opt = make_optimizer(net, cfg)
    criterion = CLAMPLoss(**cfg["loss"])
    net.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with autocast(precision):
            loss = criterion(model(batch["image"]), batch)["loss"]
        loss.backward()
        skip_if_nonfinite(opt, ~torch.isfinite(loss.detach()))
        opt.step()
        losses.append(loss.detach().float())
    return [float(v) for v in torch.stack(losses).cpu()]
