"""``flip``: ``PoseLitModule.predict_heatmaps`` with flip test (both passes in one batch) vs one pass."""

from __future__ import annotations

import gc

import torch

from benchmarks.fixtures import DEFAULT_REPEATS, MODELS, model_config, synthetic_batch
from benchmarks.harness import measure
from benchmarks.report import Row
from clamp_pl.cli.run import flops_of


def bench_flip(models: list[str], repeats: int | None, batch: int) -> list[Row]:
    from clamp_pl.training.module import PoseLitModule

    rows = []
    for key in models:
        cfg = model_config(MODELS[key])
        torch.manual_seed(0)
        module = PoseLitModule(spec=cfg["spec"], loss=cfg["loss"]).eval()
        x = synthetic_batch(module.net, batch, cfg["spec"].heatmap_size)["image"]
        fns = {
            flip: (lambda flip=flip, m=module, x=x: m.predict_heatmaps(x, flip_test=flip))
            for flip in (True, False)
        }
        meas = measure(fns, repeats or DEFAULT_REPEATS[key])
        flops = {k: flops_of(fn) for k, fn in fns.items()}
        rows.append(
            meas.time_row(
                "flip",
                f"predict_heatmaps flip test (one batch of 2x{batch}), {cfg['net']['clip_model']}",
                f"single pass (batch {batch})",
                True,
                False,
                flop_ratio=flops[True] / flops[False],
            )
        )
        del module, fns
        gc.collect()
    return rows

