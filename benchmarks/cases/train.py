"""``train``: one training step of CLAMP vs the image-only baseline (same backbone and head), with the FLOP
ratio the arithmetic sets; then the AdamW step alone, fused kernel vs per-tensor loop (docs/benchmarks.md)."""

from __future__ import annotations

import gc

from benchmarks.fixtures import (
    DEFAULT_REPEATS,
    MODELS,
    build_clamp,
    make_optimizer,
    make_train_step,
    model_config,
    synthetic_batch,
)
from benchmarks.harness import log, measure, time_interleaved
from benchmarks.report import Row, time_row
from clamp_pl.cli.run import flops_of


def bench_train(models: list[str], repeats: int | None, batch: int) -> list[Row]:
    from clamp_pl.models import CLAMPLoss

    rows = []
    for key in models:
        cfg = model_config(MODELS[key])
        log(f"train: {key} ({cfg['net']['clip_model']} at {cfg['net']['image_size']})")
        criterion = CLAMPLoss(**cfg["loss"])
        fns, nets, flops = {}, {}, {}
        for variant, text_branch in (("clamp", True), ("baseline", False)):
            nets[variant] = build_clamp(cfg, text_branch)
            data = synthetic_batch(nets[variant], batch, cfg["spec"].heatmap_size)
            fns[variant] = make_train_step(nets[variant], cfg, criterion, data)
            flops[variant] = flops_of(fns[variant])
        reps = repeats or DEFAULT_REPEATS[key]
        meas = measure(fns, reps)
        size = cfg["net"]["image_size"]
        name = f"{cfg['net']['clip_model']} {size}px"
        rows.append(
            meas.time_row(
                "train",
                f"train step CLAMP {name}, batch {batch}",
                "image-only baseline, same backbone + head",
                "clamp",
                "baseline",
                target=("ratio_le", 1.15),
                flop_ratio=flops["clamp"] / flops["baseline"],
                detail={
                    "params_clamp": sum(p.numel() for p in nets["clamp"].parameters() if p.requires_grad),
                    "params_baseline": sum(p.numel() for p in nets["baseline"].parameters()),
                    "gflop_clamp": flops["clamp"] / 1e9,
                    "gflop_baseline": flops["baseline"] / 1e9,
                },
            )
        )
        # the optimiser step alone, on the gradients the last timed step left: fused kernel vs per-tensor loop
        net = nets["clamp"]
        opts = {"fused": make_optimizer(net, cfg, fused=True), "loop": make_optimizer(net, cfg, fused=False)}
        t = time_interleaved({k: o.step for k, o in opts.items()}, reps + 2)
        n_tensors = sum(len(g["params"]) for g in opts["fused"].param_groups)
        rows.append(
            time_row(
                "train",
                f"AdamW step, CLAMP {name} ({n_tensors} tensors), fused kernel",
                "per-tensor loop (PyTorch's CPU default)",
                t["fused"],
                t["loop"],
            )
        )
        del fns, nets, opts
        gc.collect()
    return rows

