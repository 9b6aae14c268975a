"""The two keypoint heads against the number of keypoints K: ``python -m benchmarks.cpu --only heads`` (its table
in ``docs/benchmarks_heads.md``), or alone ``python -m benchmarks.cases.heads [--ks 17 40 100]``.

* ``tiny``: a whole training step (forward, the three CLAMP losses, backward, AdamW) of ``model=clamp_tiny`` (random
  init, 128 px crops, batch ``--batch``) with K prompts, for ``head=concat`` and ``head=prompt``;
* ``vitb16-heads``: the part of a step that the head changes, at ``model=clamp_vitb16``'s sizes (a 768-channel 16x16
  ViT-B/16 feature map, 512-d prompts, 2 deconvolutions of 256 channels to 64x64 heatmaps, the score-map
  upsampler: K channels for concat as the official ViT config, 16 shared ones for prompt): keypoint head + upsampler,
  forward, MSE on both outputs, backward, AdamW. The ViT-B/16 tower itself is the same for both heads.

Per row: median step time over ``--steps`` timed steps (after one warm-up), the tensors autograd keeps for the
backward pass (MB: the activation memory a training step holds at its peak, summed through
``torch.autograd.graph.saved_tensors_hooks``, views of one storage counted once) and the head's parameters
(keypoint head + upsampler). CPU timings on a shared machine: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from clamp_pl.data.metainfo import meta_from_names
from clamp_pl.models import CLAMPLoss
from clamp_pl.models.heads import HeatmapHead, PromptHead, SharedUpsampleHead, UpsampleHead
from clamp_pl.spec import make_spec

CLAMP_TINY = dict(clip_model="clamp-tiny-rn", pretrained=None, image_size=128, num_deconv=3, deconv_channels=32,
                  upconv_num_deconv=3, upconv_channels=16, decoder_width=64, decoder_layers=2)


def saved_megabytes(step: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Run ``step`` (a forward returning the loss) and sum the storages autograd saves for backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    return loss, sum(storages.values()) / 2**20


def measure(params: list[nn.Parameter], forward: Callable[[], torch.Tensor], steps: int) -> tuple[float, float]:
    """(median seconds per training step, saved-tensor MB of one step)."""
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)
    times, mb = [], 0.0
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, mb = saved_megabytes(forward)
        loss.backward()
        opt.step()
        if i:  # the first step warms up (allocations, lazy init)
            times.append(time.perf_counter() - start)
    return statistics.median(times), mb


def tiny_case(head: str, k: int, batch: int, steps: int) -> tuple[float, float, int]:
    names = [f"keypoint {i}" for i in range(k)]
    spec = make_spec({**CLAMP_TINY, "head": head}, meta_from_names(names), normalization="imagenet",
                     padding=1.25, sigma=2.0, decode="default", shift_heatmap=True, flip_test=True)
    torch.manual_seed(0)
    net = spec.build_network().train()
    loss_fn = CLAMPLoss(spatial_weight=0.4)
    w, h = spec.input_size
    images = torch.randn(batch, 3, h, w)
    hw, hh = spec.heatmap_size
    gw, gh = spec.feature_grid
    targets = {"heatmaps": torch.rand(batch, k, hh, hw), "keypoint_weights": torch.ones(batch, k),
               "peak_index": torch.randint(0, gh * gw, (batch, k)), "peak_weights": torch.ones(batch, k)}

    def forward() -> torch.Tensor:
        return loss_fn(net(images), targets)["loss"]

    seconds, mb = measure(list(net.parameters()), forward, steps)
    head_params = sum(p.numel() for m in (net.keypoint_head, net.upsample_head) for p in m.parameters())
    return seconds, mb, head_params


def vitb16_heads_case(head: str, k: int, batch: int, steps: int) -> tuple[float, float, int]:
    torch.manual_seed(0)
    c, d, g = 768, 512, 16
    if head == "prompt":
        kp, up = PromptHead(c, d, 2, 256), SharedUpsampleHead(2, None)
    else:
        kp, up = HeatmapHead(c + k, k, 2, 256), UpsampleHead(k, 2, None)
    feats = torch.randn(batch, c, g, g)
    prompts = torch.randn(batch, k, d, requires_grad=True)
    scores = torch.randn(batch, k, g, g, requires_grad=True)
    target = torch.rand(batch, k, 4 * g, 4 * g)

    def forward() -> torch.Tensor:
        hm = kp(feats, prompts, scores) if head == "prompt" else kp(torch.cat([feats, scores], 1))
        return ((hm - target) ** 2).mean() + ((up(scores) - target) ** 2).mean()

    seconds, mb = measure([*kp.parameters(), *up.parameters()], forward, steps)
    return seconds, mb, sum(p.numel() for m in (kp, up) for p in m.parameters())


CASES = {"tiny": tiny_case, "vitb16-heads": vitb16_heads_case}
HEADER = ["| case | head | K | step (ms) | saved for backward (MB) | head parameters |",
          "| --- | --- | --- | --- | --- | --- |"]


def bench_heads(ks: list[int], batch: int = 8, steps: int = 3, cases: list[str] | None = None) -> list[str]:
    """The table rows (Markdown, header included) of every case x K x head, printed as they come."""
    lines = list(HEADER)
    for case in cases or list(CASES):
        for k in ks:
            for head in ("concat", "prompt"):
                seconds, mb, n = CASES[case](head, k, batch, steps)
                lines.append(f"| {case} | {head} | {k} | {1000 * seconds:.0f} | {mb:.1f} | {n:,} |")
                print(lines[-1], flush=True)
    return lines


def write_heads_page(lines: list[str], info: dict, command: str, out: Path, batch: int, steps: int) -> Path:
    """``<out>/benchmarks_heads.md``: its text above the results marker kept, the table below it."""
    from benchmarks.report import kept_preamble

    out.mkdir(parents=True, exist_ok=True)
    page = out / "benchmarks_heads.md"
    body = (f"Measured by `{command}` on {info.get('cpu', 'this CPU')}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}: batch {batch}, median of {steps} steps.\n\n" + "\n".join(lines) + "\n")
    page.write_text(kept_preamble(page) + body)
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[17, 40, 100])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, median of {args.steps} steps, {torch.get_num_threads()} CPU threads, torch "
          f"{torch.__version__}\n")
    print("\n".join(HEADER))
    bench_heads(args.ks, args.batch, args.steps, args.cases)


if __name__ == "__main__":
    main(sys.argv[1:])
