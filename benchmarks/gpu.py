"""GPU training throughput of CLAMP vs the image-only baseline -> docs/benchmarks_gpu.{json,md}
(``make bench-gpu`` = ``python -m benchmarks.gpu``).

One prepared run (< 8 minutes on one H200; ``--budget-s`` skips what would not fit) of CLAMP ViT-B/16 at 256x256
(``conf/model/clamp_vitb16.yaml``, random init) and its image-only baseline, bf16-mixed (``torch.autocast``),
and the step of ``PoseLitModule`` (fused AdamW, :func:`clamp_pl.training.optim.skip_if_nonfinite`: the
non-finite skip decided on the device) unless a row says otherwise:

* synthetic tensors: eager; eager + channels_last; ``torch.compile`` (contiguous);
* the real loader: ``TopDownDataset`` (train transform, the configured ``data.augment``) on synthetic AP-10K-sized
  JPEGs, ``--workers`` worker processes, pinned memory; the loader alone with full and with reduced-resolution
  JPEG decoding (``data.reduced_decode``), and the training step fed by it (full decoding, the default);
* the non-finite check: the device-side skip (loss flag + gradient norm, handed to fused AdamW as
  ``optimizer.found_inf``, the attribute AMP's GradScaler uses: no host sync) vs ``if not torch.isfinite(loss)``
  (a host-device sync per step, ``PoseLitModule`` before it went sync-free) vs no check;
* fused vs foreach AdamW (without a check).

Throughput is images/s over ``--steps`` timed steps after ``--warmup`` (``torch.utils.benchmark.Timer``: CUDA
synchronised around the timed block, after two more untimed steps). Data-wait share (real loader rows): the time
the host waits for the next batch over the wall time of the steps. MFU = FLOPs of one training step (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions,
attention, forward + backward) / step time / ``--peak-tflops`` (989: H200 dense bf16). Peak memory:
``torch.cuda.max_memory_allocated`` over the timed steps.

``--cpu-smoke``: the tiny model, fp32, batch 2, 2 steps, no compile, 0 workers, output in a temporary directory
unless ``--out`` is given: the same code paths on CPU in seconds, so that the script never rots (tests run it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.fixtures import (
    ap10k_like_set,
    build_clamp,
    make_optimizer,
    model_config,
    synthetic_batch,
    train_augment,
)
from benchmarks.harness import log, peak_memory_mib, time_cuda_steps, timer_warmup_calls
from benchmarks.report import REPO, machine_info
from clamp_pl.cli.run import flops_of
from clamp_pl.models import CLAMPLoss
from clamp_pl.training.optim import skip_if_nonfinite

Step = Callable[[dict[str, torch.Tensor]], None]


class Runner:
    """Builds the two networks once and times training steps under the run's settings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cpu" if args.cpu_smoke else "cuda")
        self.cfg = model_config(args.model)
        self.criterion = CLAMPLoss(**self.cfg["loss"])
        self.nets = {v: build_clamp(self.cfg, v == "clamp").to(self.device) for v in ("clamp", "baseline")}
        self.batch = {
            v: {
                k: t.to(self.device)
                for k, t in synthetic_batch(net, args.batch, self.cfg["spec"].heatmap_size).items()
            }
            for v, net in self.nets.items()
        }
        self.flops: dict[str, float] = {}
        self.t0 = time.perf_counter()

    # ---------------------------------------------------------------- pieces
    def autocast(self):
        if self.args.cpu_smoke:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def make_step(
        self, variant: str, *, compiled: bool = False, fused: bool = True, check: str = "device"
    ) -> Step:
        """A training step taking a batch on the device. ``check``: "none", "sync" (``if not isfinite``: skip
        the update) or "device" (``PoseLitModule``'s :func:`~clamp_pl.training.optim.skip_if_nonfinite`:
        non-finite loss or gradient norm -> fused AdamW's ``found_inf`` flag, skipped on the device, no sync)."""
        net = self.nets[variant].train()
        model = torch.compile(net) if compiled else net
        opt = make_optimizer(net, self.cfg, fused=fused or check == "device")

        def step(batch: dict[str, torch.Tensor]) -> None:
            opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.criterion(model(batch["image"]), batch)["loss"]
            loss.backward()
            if check == "sync" and not torch.isfinite(loss):
                return
            if check == "device":
                skip_if_nonfinite(opt, ~torch.isfinite(loss.detach()))
            opt.step()

        return step

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def time_steps(self, step: Step, batches: Callable[[], dict[str, torch.Tensor]],
                   batch: int | None = None) -> dict[str, float]:
        """Images/s over the timed steps (``batch`` images each, default ``--batch``), seconds of the warm-up
        (compilation included) and peak memory."""
        a = self.args
        batch = batch or a.batch
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            step(batches())
        self.sync()
        warmup_s = time.perf_counter() - t0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step_s = time_cuda_steps(lambda: step(batches()), a.steps)
        if self.device.type == "cuda":
            mem = torch.cuda.max_memory_allocated() / 2**30
        else:
            mem = (peak_memory_mib(lambda: step(batches())) or 0.0) / 1024
        return {"images_per_s": batch / step_s, "step_s": step_s, "warmup_s": warmup_s, "peak_mem_gib": mem}

    def count_flops(self, variant: str) -> float:
        """FLOPs of one eager training step (forward + backward) of ``variant``."""
        if variant not in self.flops:
            net = self.nets[variant].train()
            batch = self.batch[variant]

            def step() -> None:
                with self.autocast():
                    loss = self.criterion(net(batch["image"]), batch)["loss"]
                loss.backward()

            self.flops[variant] = float(flops_of(step))
            net.zero_grad(set_to_none=True)
        return self.flops[variant]

    def throughput(self, batch: int, compiled: bool) -> dict[str, Any]:
        """CLAMP's training step on a synthetic batch of ``batch`` images, eager or ``torch.compile`` (compiled
        afresh for this batch size: a static graph, not the dynamic-shape recompile a second size would get)."""
        net = self.nets["clamp"]
        data = {k: t.to(self.device)
                for k, t in synthetic_batch(net, batch, self.cfg["spec"].heatmap_size).items()}
        if compiled:
            torch._dynamo.reset()
        res = self.time_steps(self.make_step("clamp", compiled=compiled), lambda: data, batch=batch)
        per_image = self.count_flops("clamp") / self.args.batch
        res["mfu"] = per_image * batch / res["step_s"] / (self.args.peak_tflops * 1e12)
        return res

    def over_budget(self, need_s: float = 0.0) -> bool:
        """Whether a piece expected to take ``need_s`` would end past ``--budget-s``."""
        return time.perf_counter() - self.t0 + need_s > self.args.budget_s

    # ---------------------------------------------------------------- rows
    def compare(self, config: str, need_s: float = 0.0, **kw) -> dict[str, Any]:
        """CLAMP vs baseline under one configuration, on the synthetic batch (``need_s``: expected seconds per
        variant, for the budget)."""
        row: dict[str, Any] = {"config": config}
        channels_last = kw.pop("channels_last", False)
        for variant in ("clamp", "baseline"):
            if self.over_budget(need_s):
                row[variant] = {"skipped": "time budget"}
                continue
            try:
                batch = self.batch[variant]
                if channels_last:
                    self.nets[variant].to(memory_format=torch.channels_last)
                    batch = dict(batch, image=batch["image"].contiguous(memory_format=torch.channels_last))
                res = self.time_steps(self.make_step(variant, **kw), lambda b=batch: b)
                res["mfu"] = self.count_flops(variant) / res["step_s"] / (self.args.peak_tflops * 1e12)
                row[variant] = res
            except Exception as exc:  # one failing configuration must not lose the others
                row[variant] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            finally:
                self.nets[variant].to(memory_format=torch.contiguous_format)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        log(f"{config}: {summary(row)}")
        return row

    def loader_rows(self, workdir: Path) -> list[dict[str, Any]]:
        """The loader alone with full and with reduced-resolution JPEG decoding (``data.reduced_decode``), then
        the training step fed by the default (full decoding), eager, CLAMP and baseline."""
        from clamp_pl.codecs import MSRAHeatmap
        from clamp_pl.data.dataset import TopDownDataset
        from clamp_pl.data.metainfo import get_meta
        from clamp_pl.data.transforms import TopDownTransform
        from clamp_pl.formats.coco import load_coco_instances

        a = self.args
        ann, img_dir = ap10k_like_set(workdir / "jpegs", n_synthetic=a.loader_images)
        meta = get_meta("ap10k")
        instances, _, _ = load_coco_instances(ann, img_dir, meta, train=True)
        size = self.cfg["net"]["image_size"]
        need = a.batch * (a.warmup + timer_warmup_calls(a.steps) + a.steps + 1)
        instances = (instances * (need // len(instances) + 1))[:need]
        net = self.nets["clamp"]
        gh, gw = net.feature_grid
        augment = train_augment(meta)
        pin = self.device.type == "cuda"

        def loader(reduced_decode: bool = False) -> DataLoader:
            ds = TopDownDataset(
                instances,
                TopDownTransform(meta, (size, size), augment=augment, reduced_decode=reduced_decode),
                MSRAHeatmap((size, size), tuple(self.cfg["spec"].heatmap_size)),
                feature_grid=(gw, gh),
            )
            return DataLoader(
                ds,
                batch_size=a.batch,
                shuffle=True,
                num_workers=a.workers,
                pin_memory=pin,
                drop_last=True,
                persistent_workers=False,
                prefetch_factor=4 if a.workers else None,
            )

        rows = []
        for reduced, label in ((False, "full decode"), (True, "reduced decode")):
            it = iter(loader(reduced))
            next(it)  # worker start-up
            t0 = time.perf_counter()
            n = 0
            for batch in it:
                n += batch["image"].shape[0]
            alone = n / (time.perf_counter() - t0)
            rows.append({"config": f"loader alone, {a.workers} workers, {label}", "loader_images_per_s": alone})
            log(f"loader alone, {label}: {alone:.0f} images/s")
        row: dict[str, Any] = {"config": f"real loader ({a.workers} workers), eager"}
        for variant in ("clamp", "baseline"):
            if self.over_budget():
                row[variant] = {"skipped": "time budget"}
                continue
            it = iter(loader())
            waited = [0.0]

            def next_batch(it=it, waited=waited) -> dict[str, torch.Tensor]:
                t0 = time.perf_counter()
                host = next(it)
                waited[0] += time.perf_counter() - t0
                return {k: v.to(self.device, non_blocking=True) for k, v in host.items()}

            step = self.make_step(variant)
            res = self.time_steps(step, next_batch)
            res["mfu"] = self.count_flops(variant) / res["step_s"] / (a.peak_tflops * 1e12)
            # the share over the warm-up and timed steps (the Timer's block and its two untimed calls)
            n_steps = a.warmup + timer_warmup_calls(a.steps) + a.steps
            res["data_wait_share"] = waited[0] / (res["warmup_s"] + (n_steps - a.warmup) * res["step_s"])
            row[variant] = res
        log(f"{row['config']}: {summary(row)}")
        rows.append(row)
        return rows


def summary(row: dict[str, Any]) -> str:
    parts = []
    for v in ("clamp", "baseline"):
        r = row.get(v, {})
        parts.append(f"{v} {r['images_per_s']:.1f} img/s" if "images_per_s" in r else f"{v} {r}")
    return ", ".join(parts)


def to_markdown(rows: list[dict[str, Any]], info: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = [
        "# GPU benchmarks",
        "",
        f"`{settings['command']}` on {info['date']}, commit `{info['commit'] or '?'}`.",
        "",
        f"**Device:** {info['device']}; torch {info['torch']} (CUDA {info['cuda']}); host {info['cpu']}, "
        f"{info['logical_cpus']} logical CPUs. Model `{settings['model']}` at {settings['image_size']}px, batch "
        f"{settings['batch']}, {settings['precision']}, {settings['steps']} timed steps after {settings['warmup']}; "
        f"MFU against {settings['peak_tflops']:g} TFLOP/s. Training FLOPs per step: CLAMP "
        f"{settings['tflop_per_step'].get('clamp', 0):.3g} TFLOP, baseline {settings['tflop_per_step'].get('baseline', 0):.3g} TFLOP.",
        "",
        "Ratio = CLAMP step time / baseline step time (target <= 1.15). Method: `benchmarks/gpu.py`.",
        "",
        "| configuration | CLAMP images/s | baseline images/s | ratio | CLAMP MFU | baseline MFU | "
        "peak GiB (CLAMP / baseline) | warm-up s (CLAMP / baseline) | data wait (CLAMP / baseline) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "loader_images_per_s" in row:
            lines.append(f"| {row['config']} | {row['loader_images_per_s']:.0f} (loader) | | | | | | | |")
            continue
        c, b = row.get("clamp", {}), row.get("baseline", {})

        def cell(r: dict[str, Any], key: str, fmt: str) -> str:
            if key in r:
                return format(r[key], fmt)
            return str(r.get("error") or r.get("skipped") or "-")[:60]

        ratio = (
            f"{b['images_per_s'] / c['images_per_s']:.2f}"
            if "images_per_s" in c and "images_per_s" in b
            else "-"
        )
        lines.append(
            f"| {row['config']} | {cell(c, 'images_per_s', '.1f')} | {cell(b, 'images_per_s', '.1f')} | {ratio} | "
            f"{cell(c, 'mfu', '.1%')} | {cell(b, 'mfu', '.1%')} | {cell(c, 'peak_mem_gib', '.2f')} / "
            f"{cell(b, 'peak_mem_gib', '.2f')} | {cell(c, 'warmup_s', '.1f')} / {cell(b, 'warmup_s', '.1f')} | "
            f"{cell(c, 'data_wait_share', '.0%')} / {cell(b, 'data_wait_share', '.0%')} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model, fp32, 2 steps on CPU (tests)")
    ap.add_argument(
        "--model", default=None, help="conf/model config (default clamp_vitb16; smoke: clamp_tiny)"
    )
    ap.add_argument("--batch", type=int, default=None, help="images per step (default 64; smoke: 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; smoke: 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; smoke: 1)")
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="loader worker processes (default: logical CPUs - 2; smoke: 0)",
    )
    ap.add_argument("--loader-images", type=int, default=None, help="synthetic JPEGs (default 96; smoke: 2)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H200: 989)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip what starts after this many seconds")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default docs/; smoke: a temp dir)")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    defaults = {
        "model": ("clamp_vitb16", "clamp_tiny"),
        "batch": (64, 2),
        "steps": (20, 2),
        "warmup": (5, 1),
        "workers": (max(1, (os.cpu_count() or 2) - 2), 0),
        "loader_images": (96, 2),
    }
    for key, (gpu, cpu) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, cpu if smoke else gpu)
    if smoke:
        args.no_compile = True
    elif not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu-smoke on CPU")
    return args


def run(args: argparse.Namespace, argv_is_ours: bool = False) -> tuple[list[dict[str, Any]], str, Path]:
    """Run the rows, write ``benchmarks_gpu.{json,md}``, return the rows, the Markdown and the output folder
    (``argv_is_ours``: the command line is this module's, to be recorded in the outputs)."""
    out = args.out or (Path(tempfile.mkdtemp(prefix="clamp_bench_gpu_")) if args.cpu_smoke else REPO / "docs")
    if not args.cpu_smoke:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    runner = Runner(args)
    # cheapest first: the compiled rows (minutes of compilation) come last, within --budget-s
    rows = [
        runner.compare("synthetic, eager (fused AdamW, device-side non-finite skip)"),
        runner.compare("synthetic, eager, channels_last", channels_last=True),
        runner.compare("synthetic, eager, fused AdamW + isfinite check (host sync)", check="sync"),
        runner.compare("synthetic, eager, fused AdamW, no check", check="none"),
        runner.compare("synthetic, eager, foreach AdamW, no check", fused=False, check="none"),
    ]
    with tempfile.TemporaryDirectory(prefix="clamp_bench_gpu_data_") as tmp:
        rows += runner.loader_rows(Path(tmp))
    if not args.no_compile:
        rows.append(runner.compare("synthetic, torch.compile", need_s=120.0, compiled=True))

    info = machine_info()
    info["device"] = "CPU (smoke test)" if args.cpu_smoke else torch.cuda.get_device_name()
    info["cuda"] = torch.version.cuda
    argv = " ".join(sys.argv[1:]) if argv_is_ours else ""
    settings = {
        "command": f"python -m benchmarks.gpu {argv}".strip(),
        "model": args.model,
        "image_size": runner.cfg["net"]["image_size"],
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "precision": "fp32" if args.cpu_smoke else "bf16-mixed (torch.autocast)",
        "peak_tflops": args.peak_tflops,
        "tflop_per_step": {k: v / 1e12 for k, v in runner.flops.items()},
        "elapsed_s": time.perf_counter() - runner.t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks_gpu.json").write_text(
        json.dumps({"machine": info, "settings": settings, "rows": rows}, indent=1) + "\n"
    )
    md = to_markdown(rows, info, settings)
    (out / "benchmarks_gpu.md").write_text(md)
    return rows, md, out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _, md, out = run(args, argv_is_ours=argv is None)
    print(md)
    log(f"wrote {out / 'benchmarks_gpu.md'} and .json")


if __name__ == "__main__":
    main()
