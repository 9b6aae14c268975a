"""``make demo`` / ``python -m clamp_pl.demo``: the main job on the embedded default, nothing downloaded.

1. ``experiment=demo``: the tiny CLIP (random init) trained from scratch on the 116 real DeepLabCut mouse frames
   shipped with the package, tested on a held-out contiguous block of 16 frames.
2. ``experiment=fewshot_toy``: the toy AP-10K few-shot protocol (10 instances per toy species).

Prints the test metrics (OKS AP, PCK) and the paths of the pictures of test predictions and of the test
instances with the lowest OKS. Extra Hydra overrides
apply to both jobs, e.g. ``python -m clamp_pl.demo trainer.max_epochs=5``.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

from clamp_pl.utils.config import compose_config, project_root

JOBS = {
    "mouse": ["experiment=demo"],
    "toy_fewshot": ["experiment=fewshot_toy"],
}


def run_demo(overrides: list[str] | None = None, out_root: Path | None = None) -> dict[str, dict]:
    from clamp_pl.train import train

    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_root = out_root or project_root() / "logs" / "demo" / stamp
    summary: dict[str, dict] = {}
    for name, job in JOBS.items():
        run_dir = out_root / name
        start = time.time()
        cfg = compose_config("train", [*job, "extras.print_config=false", *(overrides or [])], run_dir)
        metrics, _ = train(cfg)
        summary[name] = {
            "run_dir": str(run_dir),
            "seconds": round(time.time() - start, 1),
            "metrics": {k: v for k, v in metrics.items() if k.startswith("test/") and "/AP_" not in k
                        and "swap/" not in k},
            "picture": str(run_dir / "vis" / "test_predictions.png"),
            "bad_cases": str(run_dir / "vis" / "test_worst_predictions.png"),
        }
    (out_root / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_summary(summary: dict[str, dict]) -> None:
    print("\n" + "=" * 72)
    for name, s in summary.items():
        m = s["metrics"]
        shown = ", ".join(f"{k.removeprefix('test/')} {m[k]:.3f}" for k in
                          ("test/AP", "test/AP50", "test/PCK@0.05", "test/PCK@0.1", "test/PCK@0.2") if k in m)
        print(f"{name:12s} {s['seconds']:6.1f} s   {shown}")
        print(f"{'':12s} picture: {s['picture']}")
        print(f"{'':12s} lowest-OKS test instances: {s['bad_cases']}")
    print("=" * 72)


def main() -> None:
    summary = run_demo(sys.argv[1:])
    print_summary(summary)


if __name__ == "__main__":
    main()
