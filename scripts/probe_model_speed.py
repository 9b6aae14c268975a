"""Measure CLAMP model costs on CPU (random weights, no network).

1. One training step (forward + CLAMPLoss + backward, no optimiser) of CLAMP vs the image-only baseline with
   the same backbone and head.
2. The text branch (17 AP-10K prompts through the text tower) on the truncated context vs all 77 positions,
   forward only (validation) and forward + backward to the context (training).

Timings are medians of interleaved runs, wall and process CPU time (CPU time is the steadier figure when
other processes share the machine).

Usage: python scripts/probe_model_speed.py [--threads 2] [--batch 8] [--iters 5] [--configs tiny-vit,vitb16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clamp_pl.models import CLAMP, CLAMPLoss, PromptLearner, TextTower, build_clip

AP10K = [
    "left eye", "right eye", "nose", "neck", "tail root", "left shoulder", "left elbow", "left front paw",
    "right shoulder", "right elbow", "right front paw", "left hip", "left knee", "left back paw", "right hip",
    "right knee", "right back paw",
]
CONFIGS = {
    "tiny-vit": dict(clip_model="clamp-tiny-vit", image_size=64, heatmap_size=(16, 16)),
    "tiny-rn": dict(clip_model="clamp-tiny-rn", image_size=128, heatmap_size=(32, 32), num_deconv=3,
                    upconv_num_deconv=3, upconv_channels=256),
    "vitb16": dict(clip_model="ViT-B-16", image_size=256, heatmap_size=(64, 64), drop_path_rate=0.4),
    "rn50": dict(clip_model="RN50", image_size=256, heatmap_size=(64, 64), num_deconv=3, upconv_num_deconv=3,
                 upconv_channels=256),
}


def timeit(fns: dict, iters: int, warmup: int = 1) -> dict[str, tuple[float, float]]:
    """Median (wall s, process CPU s) per call; the callables are interleaved so that load from other
    processes on a shared machine hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            samples[name].append((time.perf_counter() - w0, time.process_time() - c0))
    return {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in samples.items()
    }


def make_train_step(cfg: dict, text_branch: bool, batch: int):
    torch.manual_seed(0)
    model = CLAMP(pretrained=None, prompts=AP10K, text_branch=text_branch, **cfg).train()
    loss_fn = CLAMPLoss()
    size = cfg["image_size"]
    hw = cfg["heatmap_size"]
    gh, gw = model.feature_grid
    x = torch.randn(batch, 3, size, size)
    target = dict(
        heatmaps=torch.rand(batch, 17, hw[1], hw[0]),
        keypoint_weights=torch.ones(batch, 17),
        peak_index=torch.randint(0, gh * gw, (batch, 17)),
        peak_weights=torch.ones(batch, 17),
    )

    def step():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), target)["loss"].backward()

    return step


def text_branch_times(iters: int) -> dict[str, tuple[float, float]]:
    torch.manual_seed(0)
    tower = TextTower(build_clip("ViT-B-16", None, 224), "ViT-B-16")
    fns = {}
    for truncate in (True, False):
        pl = PromptLearner(tower, AP10K, truncate=truncate).train()
        tag = f"L={pl.sequence_length}"

        def fwd(pl=pl):
            with torch.no_grad():
                pl.compute()

        def fwd_bwd(pl=pl):
            pl.ctx.grad = None
            pl().sum().backward()

        fns[f"text fwd {tag}"] = fwd
        fns[f"text fwd+bwd {tag}"] = fwd_bwd
    return timeit(fns, iters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--configs", default="tiny-vit,tiny-rn,vitb16")
    ap.add_argument("--skip-text", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, median of {args.iters}")
    for name in filter(None, args.configs.split(",")):
        cfg = CONFIGS[name]
        fns = {"clamp": make_train_step(cfg, True, args.batch), "baseline": make_train_step(cfg, False, args.batch)}
        res = timeit(fns, args.iters)
        (cw, cc), (bw, bc) = res["clamp"], res["baseline"]
        print(f"{name:9s} train step wall/CPU: CLAMP {cw:.3f}/{cc:.3f} s, baseline {bw:.3f}/{bc:.3f} s, "
              f"CLAMP/baseline {cw / bw:.2f} (CPU {cc / bc:.2f})")
    if not args.skip_text:
        for k, (w, c) in text_branch_times(args.iters).items():
            print(f"ViT-B-16 {k}: wall {w * 1000:.1f} ms, CPU {c * 1000:.1f} ms")

if __name__ == "__main__":
    main()
