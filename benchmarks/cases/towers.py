"""``towers``: inference speed of every CLAMP tower config (``conf/model/clamp_<tower>.yaml``) at its default input
size, randomly initialised (the speed does not depend on the weights; nothing is downloaded).

Per tower: GFLOPs per crop (:func:`clamp_pl.cli.run.flops_of`, one forward, text features cached as inference
does); crops/s through ``load_model(...).predict`` (PyTorch) and through the ONNX export (onnxruntime,
:mod:`clamp_pl.inference.onnx_backend`), timed interleaved on the same frames and boxes, one pass per crop (no flip
test); and a synthetic video run end to end as ``python -m clamp_pl.predict input=<video> track=follow`` runs it
(:func:`clamp_pl.inference.video.run_video_prediction`: decoding, crops, flip test, heatmap decoding, the CSV /
H5 / JSON files and the annotated mp4), on both backends. Its overhead ratio is the run's wall time over the time
spent inside the network's forward on the very crops of that run (the forward is wrapped and timed in place).

Random weights do not track an animal: the follower is set to its steady state of a tracked animal, one crop per
frame (every keypoint counts as confident, the animal is never lost, no recentring pass); the first frame's search
runs on one grid scale (0.8) and is part of the run. SigLIP 2's Gemma tokenizer is a Hugging Face download: its
prompts are tokenized with CLIP's BPE instead (same context length; the per-crop cost does not depend on the text).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.fixtures import model_config, synthetic_photo
from benchmarks.harness import log, time_interleaved
from benchmarks.report import Row, rate_row
from clamp_pl.cli.run import flops_of

#: key -> conf/model config; the order of the table
TOWERS = {
    "mobileclip2_s0": "clamp_mobileclip2_s0",
    "convnext_base": "clamp_convnext_base",
    "siglip2_vitb16": "clamp_siglip2_vitb16",
    "eva02_vitb16": "clamp_eva02_vitb16",
    "pecore_vitb16": "clamp_pecore_vitb16",
    "vitb16": "clamp_vitb16",
}
QUICK_TOWERS = ("mobileclip2_s0",)
#: the video: frames of this size, and how many
VIDEO_SIZE, VIDEO_FRAMES = (640, 480), 24
OVERHEAD_TARGET = 1.25


@contextlib.contextmanager
def _offline_tokenizer(clip_model: str):
    """CLIP's BPE tokenizer for a tower whose own tokenizer is a Hugging Face file (SigLIP / SigLIP 2)."""
    import open_clip

    from clamp_pl.models import prompts

    if "SigLIP" not in clip_model:
        yield
        return
    own = prompts._tokenizer
    prompts._tokenizer = lambda name: open_clip.get_tokenizer("ViT-B-16")
    try:
        yield
    finally:
        prompts._tokenizer = own


def _video(path: Path) -> Path:
    """An MJPG .avi (OpenCV writes it without FFmpeg) of one synthetic photo panning 4 px per frame."""
    frame = synthetic_photo(np.random.default_rng(0), VIDEO_SIZE)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, VIDEO_SIZE)
    for i in range(VIDEO_FRAMES):
        writer.write(np.roll(frame, 4 * i, axis=1))
    writer.release()
    return path


class _ForwardTimer:
    """Wraps a callable and sums the wall time spent inside it."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


def _video_run(est, video: Path, out: Path) -> dict[str, Any]:
    """``predict input=<video> track=follow`` on ``est`` (steady-state follower, see the module docstring): wall
    seconds end to end, seconds inside the network's forward, frames, crops."""
    from clamp_pl.inference.tracking import FollowConfig
    from clamp_pl.inference.video import run_video_prediction

    follow = FollowConfig(keypoint_threshold=-np.inf, score_threshold=-np.inf, refine_shift=None,
                          search_scales=(0.8,))
    if hasattr(est, "session"):  # onnx backend
        timer = _ForwardTimer(est.heatmaps)
        est.heatmaps = timer
    else:
        timer = _ForwardTimer(est.net.forward)
        est.net.forward = timer
    try:
        t0 = time.perf_counter()
        summary = run_video_prediction(est, video, out, track="follow", follow=follow)
        wall = time.perf_counter() - t0
    finally:
        if hasattr(est, "session"):
            del est.heatmaps
        else:
            del est.net.forward
    return {"wall": wall, "model": timer.seconds, "forward_calls": timer.calls, "frames": summary["frames"],
            "crops": summary["boxes_predicted"]}


@torch.no_grad()
def _gflops_per_crop(net, input_size: tuple[int, int]) -> tuple[float, float]:
    """GFLOPs of one crop's forward (the text features computed beforehand: inference caches them), and of its
    image tower alone."""
    text = net.text_features() if net.text_branch else None
    x = torch.zeros(1, 3, input_size[1], input_size[0])
    return flops_of(lambda: net(x, text)) / 1e9, flops_of(lambda: net.image_tower(x)) / 1e9


def bench_towers(towers: list[str], repeats: int | None, n_crops: int = 8) -> tuple[list[Row], list[dict]]:
    """Rows for the main report (ONNX vs PyTorch crops/s; video pipeline vs model-only forward) and one table
    record per tower (:func:`towers_markdown`)."""
    from clamp_pl.api import load_model
    from clamp_pl.inference.checkpoint import save_model_file
    from clamp_pl.inference.onnx_backend import load_onnx_model

    rows, table = [], []
    with tempfile.TemporaryDirectory(prefix="clamp_towers_") as tmp:
        work = Path(tmp)
        video = _video(work / "walk.avi")
        frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in
                  [synthetic_photo(np.random.default_rng(s), VIDEO_SIZE) for s in range(n_crops)]]
        boxes = [[[80.0, 60.0, 420.0, 340.0]] for _ in frames]
        for key in towers:
            cfg = model_config(TOWERS[key])
            spec = cfg["spec"]
            spec = dataclasses.replace(spec, net={**spec.net, "pretrained": None})
            name = f"{spec.net['clip_model']} {spec.input_size[0]}px"
            log(f"towers: {name}")
            with _offline_tokenizer(spec.net["clip_model"]):
                torch.manual_seed(0)
                file = save_model_file(work / f"{key}.pt", spec, spec.build_network().state_dict())
                est = load_model(file, device="cpu")
                gflops, tower_gflops = _gflops_per_crop(est.net, spec.input_size)
                t0 = time.perf_counter()
                onnx_est = load_onnx_model(file, work / f"{key}.onnx")
                export_s = time.perf_counter() - t0
            fns = {b: (lambda e=e: e.predict(frames, boxes, flip_test=False, batch_size=n_crops))
                   for b, e in (("onnx", onnx_est), ("torch", est))}
            t = time_interleaved(fns, repeats or 3)
            rows.append(rate_row("towers", f"crops/s ONNX Runtime, {name}, batch {n_crops}",
                                 "PyTorch load_model(...).predict", n_crops, t["onnx"], t["torch"],
                                 detail={"gflops_per_crop": gflops}))
            video_runs = {b: _video_run(e, video, work / f"{key}_{b}") for b, e in (("torch", est), ("onnx", onnx_est))}
            for backend, v in video_runs.items():
                rows.append(Row("towers", f"video track=follow end to end, {name}, {backend}", v["wall"], "s",
                                "model-only forward on the same crops", v["model"],
                                target=("ratio_le", OVERHEAD_TARGET), detail=v))
            table.append({
                "tower": key, "clip_model": spec.net["clip_model"], "input": spec.input_size[0],
                "normalization": f"{spec.normalization} ({', '.join(f'{m:g}' for m in spec.mean)})",
                "gflops_per_crop": gflops, "tower_gflops_per_crop": tower_gflops,
                "crops_s_torch": n_crops / t["torch"].wall, "crops_s_onnx": n_crops / t["onnx"].wall,
                "onnx_export_s": export_s,
                **{f"video_fps_{b}": v["frames"] / v["wall"] for b, v in video_runs.items()},
                **{f"overhead_{b}": v["wall"] / v["model"] for b, v in video_runs.items()},
                **{f"video_crops_{b}": v["crops"] for b, v in video_runs.items()},
                "video_frames": video_runs["torch"]["frames"],
            })
            del est, onnx_est, fns
            gc.collect()
    return rows, table


def towers_markdown(table: list[dict], command: str, info: dict[str, Any]) -> str:
    """The towers table as Markdown (the results section of docs/benchmarks_towers.md)."""
    lines = [
        "## Results",
        "",
        f"`{command}` on {info['date']}, commit `{info['commit'] or '?'}`; {info['cpu']}, "
        f"{info['logical_cpus']} logical CPUs shared with other jobs (load average {info['load_avg_start']:.1f} "
        f"at start), torch {info['torch']} ({info['torch_threads']} threads).",
        "",
        "| tower | input | normalisation | GFLOPs / crop (image tower) | crops/s PyTorch | crops/s ONNX "
        "| video fps PyTorch | video fps ONNX | overhead PyTorch | overhead ONNX |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        lines.append(
            f"| {r['clip_model']} | {r['input']} | {r['normalization']} | {r['gflops_per_crop']:.1f} "
            f"({r['tower_gflops_per_crop']:.1f}) | "
            f"{r['crops_s_torch']:.2f} | {r['crops_s_onnx']:.2f} | {r['video_fps_torch']:.2f} | "
            f"{r['video_fps_onnx']:.2f} | {r['overhead_torch']:.2f}x | {r['overhead_onnx']:.2f}x |"
        )
    lines += [
        "",
        f"Video: {table[0]['video_frames'] if table else 0} frames of {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]}, "
        "`track=follow`, flip test on (the command's default), annotated mp4 written. Overhead = the run's wall "
        f"time / the time inside the network's forward on the same crops (target <= {OVERHEAD_TARGET}x).",
    ]
    return "\n".join(lines) + "\n"


def write_towers_page(table: list[dict], info: dict[str, Any], command: str, out: Path) -> Path:
    """``<out>/benchmarks_towers.md`` (its text above the results marker kept) and ``benchmarks_towers.json``."""
    import json
    import os

    from benchmarks.report import kept_preamble

    out.mkdir(parents=True, exist_ok=True)
    info = dict(info, load_avg_end=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    (out / "benchmarks_towers.json").write_text(
        json.dumps({"machine": info, "command": command, "towers": table}, indent=1) + "\n")
    page = out / "benchmarks_towers.md"
    page.write_text(kept_preamble(page) + towers_markdown(table, command, info))
    return page
