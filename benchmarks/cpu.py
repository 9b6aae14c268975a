"""CPU benchmarks of clamp_pl, every figure next to a reference measured in the same run: ``make bench``
(= ``python -m benchmarks.cpu``) writes ``docs/benchmarks.json`` and the results of ``docs/benchmarks.md`` and
prints the Markdown table. The method (interleaved timing, peak memory, threads, allocator) and the cases are
described in ``docs/benchmarks.md``.

Cases (``--only``): data, train, text, flip, eval, heads (the concat and the prompt head against K, its table
in ``docs/benchmarks_heads.md``), towers (inference speed of every tower config, its table in
``docs/benchmarks_towers.md``). ``--quick`` skips the ViT-B/16 and RN50 models and every tower but MobileCLIP2-S0
(about a minute instead of 10-15 minutes on 2 cores, and 10-15 more for the towers). The output holds exactly the cases of this run: point ``--out`` elsewhere for
partial runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.cases.data import bench_data
from benchmarks.cases.eval import bench_eval
from benchmarks.cases.flip import bench_flip
from benchmarks.cases.heads import bench_heads, write_heads_page
from benchmarks.cases.text import bench_text
from benchmarks.cases.towers import QUICK_TOWERS, TOWERS, bench_towers, write_towers_page
from benchmarks.cases.train import bench_train
from benchmarks.fixtures import DEFAULT_REPEATS, HEAVY_MODELS, MODELS
from benchmarks.harness import log, reexec_with_runtime_env
from benchmarks.report import REPO, Row, machine_info, write_outputs

CASES = ("data", "train", "text", "flip", "eval", "heads", "towers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the ViT-B/16 and RN50 models")
    ap.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases out of {','.join(CASES)}")
    ap.add_argument(
        "--models", default=",".join(MODELS), help=f"models for train/text/flip: {','.join(MODELS)}"
    )
    ap.add_argument("--towers", default=",".join(TOWERS), help=f"tower configs of the towers case: {','.join(TOWERS)}")
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
    args.towers = [t for t in args.towers.split(",") if t and not (args.quick and t not in QUICK_TOWERS)]
    for name, valid in (("--only", CASES), ("--models", MODELS), ("--towers", TOWERS)):
        bad = set(getattr(args, name[2:])) - set(valid)
        if bad:
            ap.error(f"{name}: unknown {sorted(bad)}; choices: {list(valid)}")
    return args


def run(args: argparse.Namespace, argv_is_ours: bool = False) -> tuple[list[Row], str]:
    """Run the selected cases, write the outputs, return the rows and the Markdown (``argv_is_ours``: the
    command line is this module's, to be recorded in the outputs)."""
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
            elif case == "heads":
                # K = 17, 40, 100: AP-10K's count, a large vocabulary, a very large one (--quick: tiny only)
                lines = bench_heads([17, 40, 100], 8, args.repeats or 3, ["tiny"] if args.quick else None)
                argv = " ".join(sys.argv[1:]) if argv_is_ours else ""
                write_heads_page(lines, info, f"python -m benchmarks.cpu {argv}".strip(), args.out, 8,
                                 args.repeats or 3)
            elif case == "towers":
                tower_rows, table = bench_towers(args.towers, args.repeats)
                rows += tower_rows
                argv = " ".join(sys.argv[1:]) if argv_is_ours else ""
                write_towers_page(table, info, f"python -m benchmarks.cpu {argv}".strip(), args.out)
            log(f"case {case} done in {time.perf_counter() - t0:.0f} s")
    argv = " ".join(sys.argv[1:]) if argv_is_ours else ""
    settings = {
        "command": f"python -m benchmarks.cpu {argv}".strip(),
        "cases": args.only,
        "models": args.models,
        "repeats": args.repeats,
        "batch": args.batch,
    }
    md = write_outputs(rows, info, settings, args.out)
    return rows, md


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if argv is None:
        reexec_with_runtime_env("benchmarks.cpu")
    _, md = run(args, argv_is_ours=argv is None)
    print(md)


if __name__ == "__main__":
    main()
