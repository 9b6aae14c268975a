"""``make demo`` / ``python -m clamp_pl.tools.demo``: the main jobs on the embedded data, nothing downloaded.

1. ``mouse`` (``experiment=demo``): the tiny CLIP (random init) trained from scratch on the 116 real DeepLabCut
   mouse frames shipped with the package, tested on a held-out contiguous block of 16 frames.
2. ``fewshot_pretrained`` / ``fewshot_scratch`` (``experiment=fewshot_unseen_toy``): few-shot on the toy horses
   and zebras (``protocol.shots`` instances per species), a family the shipped starting point never saw,
   fine-tuned from it and, with the same budget, from scratch (``experiment=fewshot_unseen_scratch_toy``).
3. ``zeroshot`` (``experiment=zeroshot_pretrained_toy``): the shipped starting point tested on the toy horses
   and zebras as it is, no training.

The starting point (``clamp_pl/resources/toy_pretrained/``) is the tiny CLIP trained by
``scripts/pretrain_toy.py`` on every toy family but Equidae: the offline stand-in for CLIP's pretrained weights.

Prints one table of test metrics (OKS AP, PCK) with the paths of the pictures of test predictions and of the
test instances with the lowest OKS, then what the numbers show. Extra Hydra overrides apply to every job, e.g.
``python -m clamp_pl.tools.demo trainer.max_epochs=5``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from clamp_pl.cli.config import PACKAGE_DIR, compose_config, project_root

#: the shipped starting point: clamp_tiny trained on every toy family but Equidae (scripts/pretrain_toy.py); the
#: JSON file beside it says how it was made and what it scores
PRETRAINED = PACKAGE_DIR / "resources" / "toy_pretrained" / "clamp_tiny_toy_no_equidae.pt"
#: the same with the prompt head (``scripts/pretrain_toy.py --head prompt``): its keypoints are its prompts, so it
#: loads whole into a network for any other keypoint names
PRETRAINED_PROMPT = PRETRAINED.with_name("clamp_tiny_toy_no_equidae_prompt.pt")
#: what the JSON records of the shipped file, each measured by ``clamp_pl.eval`` on the file itself
PRETRAINED_EVALS = {
    "zeroshot_test": ["data=toy_ap10k", "protocol=zeroshot", "split=test"],  # held-out Equidae
    "seen_val": ["data=toy_ap10k", "protocol=zeroshot", "split=val"],  # the seen families' validation split
}
RECORDED = ("AP", "AP50", "AP75", "AR", "PCK@0.05", "PCK@0.1", "PCK@0.2")


@dataclass(frozen=True)
class Job:
    title: str
    overrides: tuple[str, ...]


JOBS: dict[str, Job] = {
    "mouse": Job("mouse frames, from scratch", ("experiment=demo",)),
    "fewshot_pretrained": Job("toy Equidae few-shot, from the checkpoint", ("experiment=fewshot_unseen_toy",)),
    "fewshot_scratch": Job("toy Equidae few-shot, from scratch", ("experiment=fewshot_unseen_scratch_toy",)),
    "zeroshot": Job("toy Equidae zero-shot, checkpoint as is", ("experiment=zeroshot_pretrained_toy",)),
}
SHOWN = ("test/AP", "test/AP50", "test/PCK@0.05", "test/PCK@0.1", "test/PCK@0.2")


def run_demo(overrides: list[str] | None = None, out_root: Path | None = None) -> dict[str, dict]:
    """Run every job of :data:`JOBS` into ``out_root/<job>``; returns (and writes to ``summary.json``) per job its
    run dir, wall time, test metrics, picture paths and the few-shot budget."""
    start_all = time.time()  # the imports below (torch, Lightning) are part of the wait
    from clamp_pl.train import train

    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_root = out_root or project_root() / "logs" / "demo" / stamp
    summary: dict[str, dict] = {}
    for name, job in JOBS.items():
        run_dir = out_root / name
        start = time.time()
        cfg = compose_config("train", [*job.overrides, "extras.print_config=false", *(overrides or [])], run_dir)
        metrics, objects = train(cfg)
        summary[name] = {
            "title": job.title,
            "run_dir": str(run_dir),
            "seconds": round(time.time() - start, 1),
            "metrics": {k: v for k, v in metrics.items() if k.startswith("test/") and "/AP_" not in k
                        and "swap/" not in k},
            "trained": bool(cfg.train),
            "init_from": cfg.get("init_from"),
            "epochs": int(cfg.trainer.max_epochs) if cfg.train else 0,
            "train_instances": len(objects["datamodule"].instances["train"]) if cfg.train else 0,
            "shots": cfg.protocol.get("shots") if cfg.protocol.name == "fewshot" else None,
            "picture": str(run_dir / "vis" / "test_predictions.png"),
            "bad_cases": str(run_dir / "vis" / "test_worst_predictions.png"),
        }
    summary["_total"] = {"seconds": round(time.time() - start_all, 1)}
    (out_root / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def measure_pretrained(model_file: Path, overrides: list[str] | None = None) -> dict[str, dict[str, float]]:
    """The metrics :data:`PRETRAINED_EVALS` of a model file, by the eval entry point (``clamp_pl.eval``):
    ``{"zeroshot_test": {"AP": ..., ...}, "seen_val": {...}}``. ``overrides`` go to every evaluation (e.g.
    ``paths.data_dir``; the toy set's val/test images do not depend on ``data.n_train``)."""
    import tempfile

    from clamp_pl.eval import evaluate

    out: dict[str, dict[str, float]] = {}
    for name, evals in PRETRAINED_EVALS.items():
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose_config("eval", [f"ckpt_path={model_file}", *evals, "extras.print_config=false",
                                          *(overrides or [])], Path(tmp))
            metrics, _ = evaluate(cfg)
        split = cfg.split
        out[name] = {k: round(float(metrics[f"{split}/{k}"]), 6) for k in RECORDED}
    return out


def _jobs(summary: dict[str, dict]) -> dict[str, dict]:
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def conclusion(summary: dict[str, dict]) -> str:
    """The closing paragraphs: what the numbers show, what they cannot, and what the real experiment is."""
    jobs = _jobs(summary)
    paras = []
    if {"fewshot_pretrained", "fewshot_scratch"} <= set(jobs):
        pre, scr = jobs["fewshot_pretrained"], jobs["fewshot_scratch"]
        a, b = pre["metrics"].get("test/AP", float("nan")), scr["metrics"].get("test/AP", float("nan"))
        ratio = f" ({a / b:.1f}x)" if b > 0 else ""
        paras.append(
            f"Few-shot: fine-tuned from the checkpoint on {pre['train_instances']} labelled toy horses and zebras "
            f"({pre['shots']} per species, a family the checkpoint never saw), {pre['epochs']} epochs reach test AP "
            f"{a:.3f}{ratio}; the same budget from scratch reaches {b:.3f}."
        )
    if "zeroshot" in jobs:
        z = jobs["zeroshot"]["metrics"].get("test/AP", float("nan"))
        scratch = jobs.get("fewshot_scratch", {}).get("metrics", {}).get("test/AP")
        than = f" (the few-shot model from scratch: {scratch:.3f})" if scratch is not None else ""
        record = PRETRAINED.with_suffix(".json")
        seen = json.loads(record.read_text())["metrics"]["seen_val"]["AP"] if record.is_file() else None
        on_seen = f"; on the families it was trained on it scores {seen:.3f} (validation)" if seen is not None else ""
        paras.append(
            f"Zero-shot: the checkpoint as it is, without a single horse or zebra label, scores test AP {z:.3f} on "
            f"them{than}{on_seen}."
        )
    paras.append(
        "What transfers is what the other toy families taught the tiny CLIP: where a quadruped's keypoints are and "
        "the prompts naming them, the role CLIP's image-text pretraining plays for CLAMP. What this cannot show: the "
        "starting point was trained here on cartoon animals, the test sets hold tens of instances, and nothing here "
        "is CLAMP's accuracy on real animals. The real experiment is `python -m clamp_pl.train "
        "experiment=fewshot_ap10k` (and `experiment=zeroshot_ap10k`) on AP-10K with the CLIP ViT-B/16 weights "
        "(fetched once through open_clip, or model.net.pretrained=/path/to/ViT-B-16.pt)."
    )
    if "_total" in summary:
        paras.append(f"The demo took {summary['_total']['seconds']:.0f} s.")
    return "\n\n".join(paras)


def print_summary(summary: dict[str, dict]) -> None:
    import textwrap

    jobs = _jobs(summary)
    width = max(len(s["title"]) for s in jobs.values())
    print("\n" + "=" * 100)
    print(f"{'job':{width}s}  {'time':>7s}  " + "  ".join(f"{k.removeprefix('test/'):>7s}" for k in SHOWN))
    for s in jobs.values():
        m = s["metrics"]
        print(f"{s['title']:{width}s}  {s['seconds']:5.0f} s  " + "  ".join(
            f"{m[k]:7.3f}" if k in m else f"{'':7s}" for k in SHOWN))
    print()
    for name, s in jobs.items():
        print(f"{name}: picture {s['picture']}")
        print(f"{'':{len(name)}s}  lowest-OKS test instances {s['bad_cases']}")
    print("=" * 100)
    for para in conclusion(summary).split("\n\n"):
        print(textwrap.fill(para, width=100))
        print()


def main() -> None:
    # clamp_pl's own INFO lines (what init_from loaded, frozen modules) as the train entry point shows them; the
    # libraries' INFO chatter stays off
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    package_log = logging.getLogger("clamp_pl")
    package_log.setLevel(logging.INFO)
    package_log.addHandler(handler)
    package_log.propagate = False
    summary = run_demo(sys.argv[1:])
    print_summary(summary)


if __name__ == "__main__":
    main()
