"""Few-shot transfer to names no starting point was trained on: the shipped mouse frames (``experiment=fewshot_mouse``:
prompts "snout", "left ear", "right ear", "tail base"), ``--shots`` training frames drawn with each ``--seeds`` seed,
trained for the same number of optimiser steps in every arm:

* ``prompt``: the prompt head, from the prompt-head toy starting point (``clamp_tiny_toy_no_equidae_prompt.pt``,
  every tensor loaded);
* ``scratch``: the same network from random weights (``init_from=null``);
* ``concat``: CLAMP's concat head from the concat toy starting point (``clamp_tiny_toy_no_equidae.pt``: its
  head's K-shaped tensors are left as initialised, "partial load").

Prints a markdown table of test PCK@0.1 and OKS AP (mean over seeds, each seed's value in brackets) on the 16 test
frames (frames 100-115); every run's metrics go to ``<out>/runs.json``, which later calls extend (an arm already
there for a shots/seed pair is not run again), so the arms can be run one at a time.

    python scripts/fewshot_transfer.py --shots 10 30 --seeds 0 1 --steps 40
    python scripts/fewshot_transfer.py --arms scratch concat   # some arms now, the others later, one table
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from clamp_pl.cli.config import compose_config, project_root
from clamp_pl.tools.demo import PRETRAINED, PRETRAINED_PROMPT

ARMS = {
    "prompt": ["model.net.head=prompt", f"init_from={PRETRAINED_PROMPT}"],
    "scratch": ["model.net.head=prompt", "init_from=null"],
    "concat": ["model.net.head=concat", f"init_from={PRETRAINED}"],
}
TITLES = {"prompt": "prompt head, from the prompt-head start (whole load)",
          "scratch": "prompt head, from scratch",
          "concat": "concat head, from the concat start (partial load)"}
METRICS = ("test/PCK@0.1", "test/AP")
BATCH = 10


def run_arm(arm: str, shots: int, seed: int, steps: int, out: Path, extra: list[str]) -> dict:
    """Train and test one arm; returns its test metrics, wall time and epochs."""
    from clamp_pl.train import train

    epochs = max(1, math.ceil(steps / math.ceil(shots / BATCH)))
    overrides = ["experiment=fewshot_mouse", *ARMS[arm], f"protocol.shots={shots}", f"seed={seed}",
                 f"data.batch_size={BATCH}", f"trainer.max_epochs={epochs}", f"trainer.check_val_every_n_epoch={epochs}",
                 "extras.print_config=false", "trainer.enable_progress_bar=false", "callbacks.rich_progress_bar=null",
                 "trainer.enable_model_summary=false", *extra]
    run_dir = out / f"{arm}_k{shots}_s{seed}"
    start = time.time()
    metrics, objects = train(compose_config("train", overrides, run_dir))
    return {"arm": arm, "shots": shots, "seed": seed, "epochs": epochs, "steps": steps,
            "train_frames": len(objects["datamodule"].instances["train"]), "seconds": round(time.time() - start, 1),
            "run_dir": str(run_dir), **{m: float(metrics[m]) for m in METRICS}}


def table(runs: list[dict]) -> str:
    """Markdown: one row per (shots, arm), the mean of each metric over seeds and the per-seed values."""
    lines = ["| train frames | arm | seeds | test PCK@0.1 | test AP |", "| --- | --- | --- | --- | --- |"]
    for shots in sorted({r["shots"] for r in runs}):
        for arm in ARMS:
            rs = sorted((r for r in runs if r["shots"] == shots and r["arm"] == arm), key=lambda r: r["seed"])
            if not rs:
                continue
            cells = []
            for m in METRICS:
                vals = [r[m] for r in rs]
                cells.append(f"{sum(vals) / len(vals):.3f} ({', '.join(f'{v:.3f}' for v in vals)})")
            lines.append(f"| {shots} | {TITLES[arm]} | {len(rs)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=40, help=f"optimiser steps of every run (batch {BATCH})")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS))
    parser.add_argument("--out", type=Path, default=project_root() / "logs" / "fewshot_transfer")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    record = args.out / "runs.json"
    runs: list[dict] = json.loads(record.read_text()) if record.is_file() else []
    for shots in args.shots:
        for seed in args.seeds:
            for arm in args.arms:
                if any((r["arm"], r["shots"], r["seed"], r["steps"]) == (arm, shots, seed, args.steps) for r in runs):
                    continue
                runs.append(run_arm(arm, shots, seed, args.steps, args.out, args.overrides))
                record.write_text(json.dumps(runs, indent=1) + "\n")
    print(table([r for r in runs if r["steps"] == args.steps]))


if __name__ == "__main__":
    main(sys.argv[1:])
