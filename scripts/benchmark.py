"""CPU benchmarks of clamp_pl: every figure next to a reference measured in the same run.

``make bench`` (= ``python scripts/benchmark.py``) writes ``docs/benchmarks.json`` and ``docs/benchmarks.md`` and
prints the Markdown table. Cases (``--only``):

* ``data``: samples/s of one process (1 torch / 1 OpenCV thread: one DataLoader worker) through
  ``TopDownDataset`` in train mode (the configured ``data.augment``), full JPEG decoding (the default) and
  reduced-resolution decoding (``data.reduced_decode=true``), on 24 synthetic AP-10K-sized
  JPEGs (1024x683) + the 2 real AP-10K samples in ``tests/data/ap10k``; reference: ``cv2.imread`` +
  ``cv2.warpAffine`` alone. Target: >= 150 samples/s per core.
* ``train``: one training step (forward + ``CLAMPLoss`` + backward + fused AdamW step, as ``PoseLitModule``),
  batch 8, random init, of CLAMP vs the image-only baseline with the same backbone and head, for
  ``conf/model/clamp_{tiny,vitb16,rn50}.yaml``. Target: CLAMP <= 1.15x the baseline. The FLOP ratio column is
  the floor the arithmetic sets (``torch.utils.flop_counter``): CLAMP RN50's dense attention pool and its
  3 x 256-channel upsampler that the spatial loss is computed through are ~1.3x the baseline's FLOPs by
  themselves. Then the AdamW step alone, fused kernel vs PyTorch's per-tensor loop.
* ``text``: the ViT-B/16 text tower (``--text-model``) on the 17 AP-10K prompts: truncated context (13 tokens) vs all 77
  (target <= 0.25x), the shared SOT+context prefix vs running it per prompt, and N validation forwards with the
  cached text features vs recomputing them every forward.
* ``flip``: ``PoseLitModule.predict_heatmaps`` with flip test (both passes batched) vs one pass (FLOP ratio 2).
* ``eval``: 6,000 AP-10K-like instances (4,500 images, 54 categories, K=17) through ``evaluate_keypoints`` and
  ``CocoKeypointAP`` (update + compute, which adds NMS, per-species/family AP, PCK, swap rate) vs xtcocotools
  ``COCOeval`` called directly on JSON files, as mmpose does. Target: within 1.2x.

Method. Each figure is the median over ``--repeats`` calls; the callables of one comparison are interleaved
(a, b, a, b, ...) after one warm-up call each, so that load from other processes hits them alike. The table
shows wall time; the JSON also has process CPU time (steadier on a shared machine, but it counts OpenMP
spin-waiting too). Targets are checked on wall time; "ok (CPU)" means only the CPU-time ratio meets it.

Peak memory (CPU). Every callable runs once more, untimed, to measure its peak resident memory above the
resident memory just before the call: Python garbage is collected, glibc's free heap is returned to the OS
(``malloc_trim``) and the kernel's high-water mark is reset (``/proc/self/clear_refs``), then ``VmHWM - VmRSS``
is read from ``/proc/self/status``. This isolates each case inside one process (``ru_maxrss`` cannot be reset,
and a subprocess per case would count the model build). Train steps are measured after the warm-up step, so the
figure is activations + gradients + temporaries, not the optimiser state. "-" where the kernel does not allow it.

Threads. ``GOMP_SPINCOUNT`` is 1000 unless it or ``OMP_WAIT_POLICY`` is set (the script re-executes itself to
set it before torch loads libgomp): idle OpenMP threads spin for 1000 turns, then sleep. With libgomp's default
spin (300,000 turns), a machine shared with other processes turns every parallel region into a scheduler time
slice (~8 ms each on a 2-core VM at load 4: the ViT-B/16 text tower fwd+bwd took 5 s instead of 0.25 s); with
no spin at all (``OMP_WAIT_POLICY=PASSIVE``) every small op pays a thread wake-up (the clamp-tiny-rn step
155 ms instead of 70-75 ms on an idle machine). The data case runs single-threaded.

Memory allocator. CPU tensors come from glibc malloc, which by default hands large freed blocks back to the
kernel, so every training step page-faults its activations in again: 160k-390k minor faults (0.6-1.5 GB
first-touched) per CLAMP RN50 step, 0.4-1.6 s of system time, the step 4.2-5.6 s instead of 3.8 s. The script
sets ``MALLOC_MMAP_THRESHOLD_`` (32 MiB), ``MALLOC_TRIM_THRESHOLD_`` (16 GiB) and ``MALLOC_TOP_PAD_`` (1 GiB)
unless set (``GLIBC_MALLOC_ENV``; ``make`` exports the same): freed memory stays with the process and the
steady-state steps fault nothing, so the ratios measure computation, not the allocator.

Usage: ``python scripts/benchmark.py [--quick] [--only data,train,text,flip,eval] [--repeats N] [--out docs/]``.
``--quick`` skips the ViT-B/16 and RN50 models (about a minute instead of 10-15 minutes on 2 cores). The output
holds exactly the cases of this run: point ``--out`` elsewhere for partial runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from clamp_pl.cli.run import flops_of

REPO = Path(__file__).resolve().parents[1]
# glibc malloc keeps freed memory (see the module docstring); read by glibc at process start
GLIBC_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30),
    "MALLOC_TOP_PAD_": str(2**30),
}
CASES = ("data", "train", "text", "flip", "eval")
MODELS = {"tiny": "clamp_tiny", "vitb16": "clamp_vitb16", "rn50": "clamp_rn50"}
HEAVY_MODELS = ("vitb16", "rn50")
DEFAULT_REPEATS = {"data": 7, "text": 5, "eval": 3, "tiny": 5, "vitb16": 3, "rn50": 3}
AP10K_SAMPLES = REPO / "tests" / "data" / "ap10k"


# ------------------------------------------------------------------------------------------------- measuring
@dataclass
class Timing:
    """Median wall and process-CPU seconds per call, and the wall samples."""

    wall: float
    cpu: float
    samples: list[float]


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Call each function ``warmup`` times, then ``repeats`` rounds of one call each, interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls[name].append(time.perf_counter() - w0)
            cpus[name].append(time.process_time() - c0)
    return {k: Timing(statistics.median(walls[k]), statistics.median(cpus[k]), walls[k]) for k in fns}


def _status_kib(*keys: str) -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) for k in keys}


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory_mib(fn: Callable[[], Any]) -> float | None:
    """Peak resident memory of one call of ``fn`` above the resident memory before it, MiB (None when the
    high-water mark cannot be reset: not Linux, or no permission)."""
    gc.collect()
    _malloc_trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        before = _status_kib("VmRSS")["VmRSS"]
    except OSError:
        return None
    fn()
    peak = _status_kib("VmHWM")["VmHWM"]
    return max(0.0, (peak - before) / 1024)


# ------------------------------------------------------------------------------------------------- results
@dataclass
class Row:
    """One figure and its reference. ``ratio`` = value / reference (times: lower is better; throughputs:
    higher). ``target``: ("ratio_le", x), ("value_ge", x) or None (informational)."""

    case: str
    figure: str
    value: float
    unit: str
    reference: str
    ref_value: float
    target: tuple[str, float] | None = None
    cpu_value: float | None = None
    cpu_ref_value: float | None = None
    mem_mib: float | None = None
    ref_mem_mib: float | None = None
    flop_ratio: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.value / self.ref_value

    @property
    def cpu_ratio(self) -> float | None:
        if self.cpu_value is None or self.cpu_ref_value is None:
            return None
        return self.cpu_value / self.cpu_ref_value

    def _meets(self, value: float | None, ratio: float | None) -> bool | None:
        if self.target is None or value is None or ratio is None:
            return None
        kind, x = self.target
        return ratio <= x if kind == "ratio_le" else value >= x

    @property
    def ok(self) -> str:
        if self.target is None:
            return ""
        if self._meets(self.value, self.ratio):
            return "ok"
        return "ok (CPU)" if self._meets(self.cpu_value, self.cpu_ratio) else "MISSED"

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        kind, x = self.target
        return f"<= {x:g}x" if kind == "ratio_le" else f">= {x:g} {self.unit}"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ratio=self.ratio, cpu_ratio=self.cpu_ratio, ok=self.ok, target=self.target_text)
        return out


def time_row(case: str, figure: str, reference: str, t: Timing, ref: Timing, **kw) -> Row:
    """A row comparing two timings in seconds per call."""
    return Row(
        case,
        figure,
        t.wall,
        "s",
        reference,
        ref.wall,
        cpu_value=t.cpu,
        cpu_ref_value=ref.cpu,
        detail={"wall_samples": t.samples, "ref_wall_samples": ref.samples, **kw.pop("detail", {})},
        **kw,
    )


def rate_row(case: str, figure: str, reference: str, n: int, t: Timing, ref: Timing, **kw) -> Row:
    """A row comparing throughputs (``n`` items per call), items/s of wall time (CPU: items per CPU second)."""
    return Row(
        case,
        figure,
        n / t.wall,
        "samples/s",
        reference,
        n / ref.wall,
        cpu_value=n / t.cpu,
        cpu_ref_value=n / ref.cpu,
        detail={
            "items_per_call": n,
            "wall_samples": t.samples,
            "ref_wall_samples": ref.samples,
            **kw.pop("detail", {}),
        },
        **kw,
    )


@dataclass
class Measured:
    """Timings and peak memory of the callables of one comparison (:func:`measure`), by key."""

    t: dict[Any, Timing]
    mem: dict[Any, float | None]

    def time_row(self, case: str, figure: str, reference: str, key: Any, ref_key: Any, **kw) -> Row:
        """:func:`time_row` of callable ``key`` against ``ref_key``, their peak memory included."""
        return time_row(case, figure, reference, self.t[key], self.t[ref_key], mem_mib=self.mem[key],
                        ref_mem_mib=self.mem[ref_key], **kw)

    def rate_row(self, case: str, figure: str, reference: str, n: int, key: Any, ref_key: Any, **kw) -> Row:
        """:func:`rate_row` of callable ``key`` against ``ref_key``, their peak memory included."""
        return rate_row(case, figure, reference, n, self.t[key], self.t[ref_key], mem_mib=self.mem[key],
                        ref_mem_mib=self.mem[ref_key], **kw)


def measure(fns: dict[Any, Callable[[], Any]], repeats: int, warmup: int = 1) -> Measured:
    """:func:`time_interleaved`, then :func:`peak_memory_mib` of each callable."""
    t = time_interleaved(fns, repeats, warmup)
    return Measured(t, {k: peak_memory_mib(fn) for k, fn in fns.items()})


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- shared data
def synthetic_photo(rng: np.random.Generator, size: tuple[int, int] = (1024, 683)) -> np.ndarray:
    """A BGR uint8 image whose JPEG size and decode cost resemble a photo: smooth colour fields, shapes, grain."""
    w, h = size
    img = cv2.resize(
        rng.uniform(0, 255, (h // 48 + 2, w // 48 + 2, 3)).astype(np.float32),
        (w, h),
        interpolation=cv2.INTER_CUBIC,
    )
    for _ in range(12):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(20, w // 3)), int(rng.integers(20, h // 3)))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    img += rng.normal(0, 10, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def ap10k_like_set(root: Path, n_synthetic: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """COCO file + image dir: ``n_synthetic`` 1024x683 JPEGs (quality 90) with one AP-10K-like instance each
    (box 30-90% of the image, 17 keypoints, ~85% labelled) and the 2 real AP-10K test samples."""
    import shutil

    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    real = json.loads((AP10K_SAMPLES / "test_ap10k.json").read_text())
    images, annotations = list(real["images"]), list(real["annotations"])
    for im in real["images"]:
        shutil.copy(AP10K_SAMPLES / im["file_name"], img_dir / im["file_name"])
    cat_ids = [c["id"] for c in real["categories"]]
    w, h = 1024, 683
    for i in range(n_synthetic):
        image_id, name = 10_000 + i, f"synthetic_{i:03d}.jpg"
        cv2.imwrite(str(img_dir / name), synthetic_photo(rng, (w, h)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        bw, bh = rng.uniform(0.3, 0.9) * w, rng.uniform(0.3, 0.9) * h
        bx, by = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        kx, ky = bx + rng.uniform(0, bw, 17), by + rng.uniform(0, bh, 17)
        v = np.where(rng.random(17) < 0.85, 2, 0)
        v[:3] = 2  # at least a few labelled keypoints
        kpts = np.stack([kx * (v > 0), ky * (v > 0), v], 1).reshape(-1)
        annotations.append(
            {
                "id": 20_000 + i,
                "image_id": image_id,
                "category_id": int(rng.choice(cat_ids)),
                "bbox": [bx, by, bw, bh],
                "area": bw * bh,
                "iscrowd": 0,
                "num_keypoints": int((v > 0).sum()),
                "keypoints": kpts.tolist(),
            }
        )
    ann = root / "ap10k_like.json"
    ann.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": real["categories"]})
    )
    return ann, img_dir


@contextlib.contextmanager
def composed(overrides: list[str]):
    """``conf/train.yaml`` composed by Hydra with ``overrides`` (the DictConfig, inside the context)."""
    from clamp_pl.cli.config import compose_config

    with tempfile.TemporaryDirectory() as d:
        yield compose_config("train", overrides, Path(d))


def model_config(name: str) -> dict[str, Any]:
    """``conf/model/<name>.yaml`` composed by Hydra and resolved, plus ``"spec"``: the model spec for the AP-10K
    keypoints (:func:`clamp_pl.cli.build.build_spec`: heatmap size and feature grid derived from the network)."""
    from omegaconf import OmegaConf

    from clamp_pl.cli.build import build_spec
    from clamp_pl.data.metainfo import get_meta

    with composed([f"model={name}"]) as cfg:
        out = OmegaConf.to_container(cfg.model, resolve=True)
        out["spec"] = build_spec(cfg, get_meta("ap10k"), "ap10k")
    return out


def train_augment(meta, seed: int = 0):
    """The training augmentation as the datamodule builds it from the configured ``data.augment`` node."""
    from omegaconf import OmegaConf

    from clamp_pl.data.transforms import TopDownAugment

    with composed([]) as cfg:
        node = OmegaConf.to_container(cfg.data.augment, resolve=True)
    return TopDownAugment.from_config(meta, node, seed)


def build_clamp(cfg: dict[str, Any], text_branch: bool = True):
    """The randomly initialised CLAMP of a :func:`model_config`'s spec, or its image-only baseline."""
    import dataclasses

    torch.manual_seed(0)
    spec = cfg["spec"]
    return dataclasses.replace(spec, net={**spec.net, "text_branch": text_branch}).build_network()


def synthetic_batch(model, batch: int, heatmap_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Random images [B,3,S,S] and training targets (heatmaps [B,K,h,w] for ``heatmap_size`` (w, h), weights,
    feature-grid peak cells) for ``model``."""
    size = model.image_tower.image_size
    gh, gw = model.feature_grid
    g = torch.Generator().manual_seed(0)
    k = model.num_keypoints
    return {
        "image": torch.randn(batch, 3, size, size, generator=g),
        "heatmaps": torch.rand(batch, k, heatmap_size[1], heatmap_size[0], generator=g),
        "keypoint_weights": torch.ones(batch, k),
        "peak_index": torch.randint(0, gh * gw, (batch, k), generator=g),
        "peak_weights": torch.ones(batch, k),
    }


def make_optimizer(model, cfg: dict[str, Any], fused: bool = True) -> torch.optim.Optimizer:
    """``PoseLitModule``'s AdamW (:mod:`clamp_pl.training.optim`) with the optimiser settings of the :func:`model_config`
    ``cfg``; fused as the module makes it by default (``optimizer.fused: auto``)."""
    from clamp_pl.training.optim import adamw, param_groups

    o = cfg["optimizer"]
    groups = param_groups(model, lr=o["lr"], weight_decay=o["weight_decay"], backbone_lr_mult=o["backbone_lr_mult"],
                          no_decay_keys=o.get("no_decay_keys"))
    return adamw(groups, fused=fused)


def make_train_step(model, cfg: dict[str, Any], criterion, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """Forward + loss + backward + optimiser step on a fixed batch."""
    opt = make_optimizer(model, cfg)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        criterion(model(batch["image"]), batch)["loss"].backward()
        opt.step()

    return step


# ------------------------------------------------------------------------------------------------- cases
@contextlib.contextmanager
def single_threaded():
    """One torch and one OpenCV thread, as in a DataLoader worker (torch sets 1; OpenCV 0 = sequential)."""
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv_threads)


def bench_data(repeats: int, workdir: Path) -> list[Row]:
    from clamp_pl.codecs import MSRAHeatmap
    from clamp_pl.core.geometry import bbox_xywh_to_center_scale, get_warp_matrix
    from clamp_pl.data.dataset import TopDownDataset
    from clamp_pl.data.metainfo import get_meta
    from clamp_pl.data.transforms import TopDownTransform
    from clamp_pl.formats.coco import load_coco_instances

    ann, img_dir = ap10k_like_set(workdir / "data")
    meta = get_meta("ap10k")
    instances, _, _ = load_coco_instances(ann, img_dir, meta, train=True)
    n = len(instances)
    size = (256, 256)
    codec = MSRAHeatmap(input_size=size, heatmap_size=(64, 64))
    augment = train_augment(meta)
    datasets = {
        flag: TopDownDataset(
            instances,
            TopDownTransform(meta, size, augment=augment, reduced_decode=flag),
            codec,
            feature_grid=(16, 16),
        )
        for flag in (True, False)
    }
    mats = [get_warp_matrix(*bbox_xywh_to_center_scale(i.bbox, 1.0), 0.0, size) for i in instances]

    def reference() -> None:
        for inst, mat in zip(instances, mats):
            cv2.warpAffine(cv2.imread(inst.image_path, cv2.IMREAD_COLOR), mat, size, flags=cv2.INTER_LINEAR)

    def epoch(ds) -> Callable[[], None]:
        def run() -> None:
            for i in range(len(ds)):
                ds[i]

        return run

    fns = {"on": epoch(datasets[True]), "off": epoch(datasets[False]), "ref": reference}
    with single_threaded():
        meas = measure(fns, repeats)
    kib = np.mean([Path(i.image_path).stat().st_size for i in instances]) / 1024
    detail = {"images": n, "mean_jpeg_kib": round(float(kib), 1), "input_size": size}
    ref_name = "cv2.imread + cv2.warpAffine only"
    return [
        meas.rate_row(
            "data",
            f"TopDownDataset train, full decode (data.reduced_decode=false, the default and CLAMP's; {n} "
            "AP-10K-sized JPEGs, 1 thread)",
            ref_name,
            n,
            "off",
            "ref",
            target=("value_ge", 150.0),
            detail=detail,
        ),
        meas.rate_row(
            "data",
            "TopDownDataset train, reduced-resolution decode (data.reduced_decode=true)",
            ref_name,
            n,
            "on",
            "ref",
            target=("value_ge", 150.0),
            detail=detail,
        ),
    ]


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


def bench_text(models: list[str], repeats: int | None, text_model: str = "ViT-B-16") -> list[Row]:
    from clamp_pl.data.metainfo import get_meta
    from clamp_pl.models import PromptLearner, TextTower, build_clip

    reps = repeats or DEFAULT_REPEATS["text"]
    prompts = list(get_meta("ap10k").prompts)
    torch.manual_seed(0)
    tower = TextTower(build_clip(text_model, None), text_model)
    learners = {
        "short": PromptLearner(tower, prompts, truncate=True).train(),
        "full": PromptLearner(tower, prompts, truncate=False).train(),
        "unshared": PromptLearner(tower, prompts, truncate=True, share_prefix=False).train(),
    }
    for pl in learners.values():
        pl.ctx.data.copy_(learners["short"].ctx.data)

    def fwd(pl) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                pl.compute()

        return run

    def fwd_bwd(pl) -> Callable[[], None]:
        def run() -> None:
            pl.ctx.grad = None
            pl().sum().backward()

        return run

    short_len, full_len = learners["short"].sequence_length, learners["full"].sequence_length
    rows = []
    for label, make in (("fwd+bwd (train)", fwd_bwd), ("fwd (no grad)", fwd)):
        fns = {k: make(pl) for k, pl in learners.items()}
        meas = measure(fns, reps)
        rows.append(
            meas.time_row(
                "text",
                f"{text_model} text tower {label}, 17 prompts x {short_len} tokens",
                f"{full_len} tokens",
                "short",
                "full",
                target=("ratio_le", 0.25),
            )
        )
        rows.append(
            meas.time_row(
                "text",
                f"{text_model} text tower {label}, shared SOT+context prefix",
                "prefix run per prompt",
                "short",
                "unshared",
            )
        )
    del learners, tower
    gc.collect()

    # validation: N eval forwards with the text features cached vs recomputed every forward
    for key in models:
        cfg = model_config(MODELS[key])
        model = build_clamp(cfg).eval()
        x = synthetic_batch(model, 8, cfg["spec"].heatmap_size)["image"]
        n_fwd = 10 if key == "tiny" else 3

        def val(cache: bool, model=model, x=x, n_fwd=n_fwd) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode():
                    for _ in range(n_fwd):
                        if not cache:
                            model.prompt_learner.invalidate_cache()
                        model(x)

            return run

        fns = {"cached": val(True), "recomputed": val(False)}
        meas = measure(fns, repeats or DEFAULT_REPEATS[key])
        rows.append(
            meas.time_row(
                "text",
                f"validation {n_fwd} forwards x batch 8, {cfg['net']['clip_model']}, cached text features",
                "text tower rerun every forward",
                "cached",
                "recomputed",
            )
        )
        del model, fns
        gc.collect()
    return rows


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


AP10K_SIGMAS = (
    0.025,
    0.025,
    0.026,
    0.035,
    0.035,
    0.079,
    0.072,
    0.062,
    0.079,
    0.072,
    0.062,
    0.107,
    0.087,
    0.089,
    0.107,
    0.087,
    0.089,
)


def synthetic_ap10k_eval(n_instances: int, n_images: int, n_cats: int = 54, k: int = 17, seed: int = 0):
    """AP-10K-like ground truth (1024x768 images, boxes 30-600 px, ~85% of keypoints labelled, every image with
    at least one instance) and per-instance predictions = truth + Gaussian noise of 0.5-8% of the box size.

    Returns ``(gt dict, keypoints (N, K, 2), scores (N, K))`` in annotation order."""
    rng = np.random.default_rng(seed)
    images = [
        {"id": i + 1, "file_name": f"{i + 1:06d}.jpg", "width": 1024, "height": 768} for i in range(n_images)
    ]
    categories = [
        {"id": c + 1, "name": f"species{c + 1}", "supercategory": f"family{c % 23}"} for c in range(n_cats)
    ]
    image_of = (
        np.concatenate(
            [np.arange(min(n_images, n_instances)), rng.integers(0, n_images, max(0, n_instances - n_images))]
        )
        + 1
    )
    anns, preds = [], np.zeros((n_instances, k, 2))
    scores = rng.uniform(0.1, 1.0, (n_instances, k))
    for i in range(n_instances):
        w, h = rng.uniform(30, 600), rng.uniform(30, 500)
        x, y = rng.uniform(0, 1024 - w), rng.uniform(0, 768 - h)
        kp = np.stack([x + rng.uniform(0, w, k), y + rng.uniform(0, h, k)], 1)
        v = np.where(rng.random(k) < 0.85, 2, 0)
        anns.append(
            {
                "id": i + 1,
                "image_id": int(image_of[i]),
                "category_id": int(rng.integers(1, n_cats + 1)),
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "num_keypoints": int((v > 0).sum()),
                "keypoints": np.concatenate([kp * (v > 0)[:, None], v[:, None]], 1).reshape(-1).tolist(),
            }
        )
        preds[i] = kp + rng.normal(0, rng.uniform(0.005, 0.08) * max(w, h), (k, 2))
    return {"images": images, "annotations": anns, "categories": categories}, preds, scores


def bench_eval(repeats: int | None, n_instances: int, n_images: int, workdir: Path) -> list[Row]:
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    from clamp_pl.evaluation import evaluate_keypoints
    from clamp_pl.evaluation.metric import CocoKeypointAP

    reps = repeats or DEFAULT_REPEATS["eval"]
    gt, preds, scores = synthetic_ap10k_eval(n_instances, n_images)
    sigmas = np.asarray(AP10K_SIGMAS)
    anns = gt["annotations"]
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "score": float(scores[i].mean()),
            "keypoints": np.concatenate([preds[i], scores[i][:, None]], 1).reshape(-1).tolist(),
        }
        for i, a in enumerate(anns)
    ]
    gt_file, res_file = workdir / "eval_gt.json", workdir / "eval_results.json"
    stats: dict[str, Any] = {}

    def direct() -> None:
        # mmpose's route: results and ground truth as JSON files, the stock class
        with contextlib.redirect_stdout(io.StringIO()):
            gt_file.write_text(json.dumps(gt))
            res_file.write_text(json.dumps(results))
            coco_gt = COCO(str(gt_file))
            ev = COCOeval(coco_gt, coco_gt.loadRes(str(res_file)), "keypoints", sigmas, use_area=True)
            ev.params.useSegm = None
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats["direct"] = [float(v) for v in ev.stats]

    def ours() -> None:
        stats["ours"] = list(evaluate_keypoints(gt, results, sigmas).values())

    species = {c["id"]: c["name"] for c in gt["categories"]}
    families: dict[str, list[int]] = {}
    for c in gt["categories"]:
        families.setdefault(c["supercategory"], []).append(c["id"])
    flip_pairs = [(0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16)]
    ids = [torch.tensor([a[key] for a in anns]) for key in ("id", "image_id", "category_id")]

    def metric() -> None:
        m = CocoKeypointAP(gt, sigmas, species=species, families=families, flip_pairs=flip_pairs)
        m.update(*ids, torch.from_numpy(preds), torch.from_numpy(scores))
        stats["metric"] = m.compute()

    fns = {"direct": direct, "ours": ours, "metric": metric}
    meas = measure(fns, reps, warmup=0)
    if not np.allclose(stats["direct"], stats["ours"], atol=1e-12):
        raise AssertionError(f"evaluate_keypoints {stats['ours']} != COCOeval {stats['direct']}")
    size = f"{n_instances} instances, {n_images} images, 54 categories, K=17"
    ref_name = "xtcocotools COCOeval on JSON files (mmpose)"
    return [
        meas.time_row(
            "eval",
            f"evaluate_keypoints ({size})",
            ref_name,
            "ours",
            "direct",
            target=("ratio_le", 1.2),
            detail={"AP": stats["ours"][0], "identical_stats": True},
        ),
        meas.time_row(
            "eval",
            "CocoKeypointAP update + compute (+ OKS-NMS, 54 species, 23 families, PCK, swap rate)",
            ref_name,
            "metric",
            "direct",
            target=("ratio_le", 1.2),
            detail={"AP": stats["metric"]["AP"]},
        ),
    ]


# ------------------------------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if commit and status:
            commit += " + uncommitted changes"
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "(libgomp default)"),
        "malloc_env": {k: os.environ.get(k, "(glibc default)") for k in GLIBC_MALLOC_ENV},
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def to_markdown(rows: list[Row], info: dict[str, Any], settings: dict[str, Any]) -> str:
    mem = "peak RSS MiB (fig. / ref.)"
    lines = [
        "# Benchmarks",
        "",
        f"`{settings['command']}` on {info['date']}, commit `{info['commit'] or '?'}`.",
        "",
        f"**Machine:** {info['cpu']}, {info['logical_cpus']} logical CPUs, torch {info['torch']} "
        f"({info['torch_threads']} threads, OMP_WAIT_POLICY {info['omp_wait_policy']}, GOMP_SPINCOUNT "
        f"{info['gomp_spincount']}, glibc malloc "
        f"{' '.join(f'{k}={v}' for k, v in info['malloc_env'].items())}), numpy {info['numpy']}, "
        f"OpenCV {info['opencv']}, Python "
        f"{info['python']}; load average {info['load_avg_start']:.1f} at start, {info['load_avg_end']:.1f} at end.",
        "",
        "Medians of interleaved runs (wall time; the CPU-time ratio alongside), each figure measured next to its "
        "reference in the same run. Ratio = figure / reference. FLOP ratio: the floating-point operations of the "
        "figure over those of the reference (`torch.utils.flop_counter`, matrix products and convolutions, "
        "forward + backward): the ratio the arithmetic alone sets. Peak memory: resident memory above the level "
        "before one call (`scripts/benchmark.py` explains how). Method and cases: `scripts/benchmark.py`.",
        "",
        f"| case | figure | value | reference | ref. value | ratio | CPU ratio | FLOP ratio | target | | {mem} |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for r in rows:
        mems = f"{_fmt_mem(r.mem_mib)} / {_fmt_mem(r.ref_mem_mib)}"
        cpu_ratio = "-" if r.cpu_ratio is None else f"{r.cpu_ratio:.2f}"
        flop_ratio = "-" if r.flop_ratio is None else f"{r.flop_ratio:.2f}"
        lines.append(
            f"| {r.case} | {r.figure} | {_fmt(r.value, r.unit)} | {r.reference} | "
            f"{_fmt(r.ref_value, r.unit)} | {r.ratio:.2f} | {cpu_ratio} | {flop_ratio} | {r.target_text} | {r.ok} "
            f"| {mems} |"
        )
    return "\n".join(lines) + "\n"


def _fmt_mem(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def write_outputs(rows: list[Row], info: dict[str, Any], settings: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    info = dict(info, load_avg_end=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    payload = {"machine": info, "settings": settings, "rows": [r.to_json() for r in rows]}
    (out / "benchmarks.json").write_text(json.dumps(payload, indent=1) + "\n")
    md = to_markdown(rows, info, settings)
    (out / "benchmarks.md").write_text(md)
    return md


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the ViT-B/16 and RN50 models")
    ap.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases out of {','.join(CASES)}")
    ap.add_argument(
        "--models", default=",".join(MODELS), help=f"models for train/text/flip: {','.join(MODELS)}"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per figure (default: 7 data, 5 text/tiny, 3 eval/ViT-B/16/RN50)",
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--text-model", default="ViT-B-16", help="open_clip text tower of the text case")
    ap.add_argument("--eval-instances", type=int, default=6000)
    ap.add_argument("--eval-images", type=int, default=4500)
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    args = ap.parse_args(argv)
    args.only = [c for c in args.only.split(",") if c]
    args.models = [m for m in args.models.split(",") if m and not (args.quick and m in HEAVY_MODELS)]
    for name, valid in (("--only", CASES), ("--models", MODELS)):
        bad = set(getattr(args, name[2:])) - set(valid)
        if bad:
            ap.error(f"{name}: unknown {sorted(bad)}; choices: {list(valid)}")
    return args


def run(args: argparse.Namespace) -> tuple[list[Row], str]:
    """Run the selected cases, write the outputs, return the rows and the Markdown."""
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info = machine_info()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="clamp_bench_") as tmp:
        work = Path(tmp)
        for case in CASES:
            if case not in args.only:
                continue
            log(f"case {case}")
            t0 = time.perf_counter()
            if case == "data":
                rows += bench_data(args.repeats or DEFAULT_REPEATS["data"], work)
            elif case == "train":
                rows += bench_train(args.models, args.repeats, args.batch)
            elif case == "text":
                rows += bench_text(args.models, args.repeats, args.text_model)
            elif case == "flip":
                rows += bench_flip(args.models, args.repeats, args.batch)
            elif case == "eval":
                rows += bench_eval(args.repeats, args.eval_instances, args.eval_images, work)
            log(f"case {case} done in {time.perf_counter() - t0:.0f} s")
    argv = " ".join(sys.argv[1:]) if Path(sys.argv[0]).name == "benchmark.py" else ""
    settings = {
        "command": f"python scripts/benchmark.py {argv}".strip(),
        "cases": args.only,
        "models": args.models,
        "repeats": args.repeats,
        "batch": args.batch,
    }
    md = write_outputs(rows, info, settings, args.out)
    return rows, md


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    wanted = dict(GLIBC_MALLOC_ENV)
    if "OMP_WAIT_POLICY" not in os.environ:
        wanted["GOMP_SPINCOUNT"] = "1000"
    if argv is None and any(k not in os.environ for k in wanted):
        # libgomp and glibc read them at start-up, hence the re-exec (see the module docstring)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**wanted, **os.environ})
    _, md = run(args)
    print(md)


if __name__ == "__main__":
    main()
