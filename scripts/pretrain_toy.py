"""Train the demo's starting point and ship it in the package: ``python scripts/pretrain_toy.py [overrides]``.

The tiny CLAMP (``model=clamp_tiny``, random init) is trained from scratch on the toy set with the zero-shot
protocol's split, every toy family but Equidae (``experiment=pretrain_toy``), so the toy horses and zebras stay
unseen for the demo's few-shot and zero-shot jobs. The best checkpoint (by val AP on the seen families) becomes a
compact model file with fp16 weights (``clamp_pl.inference.checkpoint.save_model_file``), and a JSON file beside it
records how it was made (command, seed, data version, wall time, machine) and the metrics of the shipped fp16
weights, measured on the file itself; ``tests/tools/test_pretrained_toy.py`` re-measures them.

    python scripts/pretrain_toy.py                       # train (~30 min on 2 CPU cores) and write the file
    python scripts/pretrain_toy.py --run logs/train/runs/<time>   # only convert and measure a finished run
    python scripts/pretrain_toy.py --head prompt         # the prompt-head starting point (experiment=pretrain_toy_prompt)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from clamp_pl.cli.build import build_datamodule, build_spec
from clamp_pl.cli.config import compose_config, project_root
from clamp_pl.inference.checkpoint import (
    load_checkpoint,
    read_checkpoint_file,
    resolve_checkpoint,
    save_model_file,
)
from clamp_pl.spec import ModelSpec
from clamp_pl.tools.demo import PRETRAINED, PRETRAINED_PROMPT, measure_pretrained

#: the experiment per head: CLAMP's concat head, or the prompt head (keypoints = prompts, transfers whole)
EXPERIMENTS = {"concat": "experiment=pretrain_toy", "prompt": "experiment=pretrain_toy_prompt"}


def portable(spec: ModelSpec) -> ModelSpec:
    """The spec with data paths inside the checkout made relative to it (``data/toy_ap10k``): the shipped file
    names no folder of the machine that made it."""
    root = project_root().resolve()
    config = dict(spec.data.get("config") or {})
    for key, value in config.items():
        if isinstance(value, str) and value.startswith("/") and Path(value).resolve().is_relative_to(root):
            config[key] = str(Path(value).resolve().relative_to(root))
    return dataclasses.replace(spec, data={**spec.data, "config": config})


def to_fp16(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors in fp16 (loading casts them back to the network's dtype); others unchanged."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}


def git_commit() -> str:
    """The checkout's commit, with ``+changes`` when the working tree differs from it."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=project_root()).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "-uno") else "")


def trained_epochs(run_dir: Path, best: Path) -> int:
    """Epochs the run trained: its ``last.ckpt``'s (else the best checkpoint's) epoch counter + 1."""
    last = run_dir / "checkpoints" / "last.ckpt"
    return int(read_checkpoint_file(last if last.is_file() else best)["epoch"]) + 1


def run_provenance(run_dir: Path) -> dict:
    """How a finished run was made: its command line (``.hydra/overrides.yaml``) and wall time (its log)."""
    import yaml

    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else ""
    seconds = re.findall(r"run dir: .* \(([\d.]+) s\)", log)
    return {"command": " ".join(["python -m clamp_pl.train", *overrides]), "overrides": overrides,
            "train_seconds": float(seconds[-1]) if seconds else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="convert this run dir (finished, or stopped: its best checkpoint) "
                        "instead of training; a run dir without .hydra/ (made by this script) needs --head and the "
                        "overrides it was trained with")
    parser.add_argument("--head", choices=sorted(EXPERIMENTS), default="concat",
                        help="keypoint head of the starting point (default: %(default)s)")
    parser.add_argument("--out", type=Path, help=f"model file to write (default: {PRETRAINED} for concat, "
                        f"{PRETRAINED_PROMPT} for prompt)")
    parser.add_argument("--code", default="", help="with --run: the commit the run was trained with")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the training run")
    args = parser.parse_args(argv)

    out = args.out or (PRETRAINED_PROMPT if args.head == "prompt" else PRETRAINED)
    overrides = [EXPERIMENTS[args.head], *args.overrides]
    if args.run is None:
        from clamp_pl.train import train

        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        log_dir = compose_config("train", overrides, project_root()).paths.log_dir
        run_dir = Path(log_dir) / "pretrain_toy" / stamp
        cfg = compose_config("train", [*overrides, "extras.print_config=false"], run_dir)
        command = ["python scripts/pretrain_toy.py", *(["--head", args.head] if args.head != "concat" else []),
                   *args.overrides]
        made = {"command": " ".join(command), "code": git_commit(),
                "load_average_at_start": round(os.getloadavg()[0], 2)}
        start = time.time()
        train(cfg)
        made["train_seconds"] = round(time.time() - start, 1)
    else:
        run_dir = args.run
        if (run_dir / ".hydra" / "overrides.yaml").is_file():
            made = {**run_provenance(run_dir), "code": args.code or "not recorded"}
            overrides = made.pop("overrides")
        else:  # a run of this script: its overrides are the experiment of --head and the ones given again here
            command = ["python scripts/pretrain_toy.py", *(["--head", args.head] if args.head != "concat" else []),
                       *args.overrides]
            made = {"command": " ".join(command) + f" (converted with --run {run_dir.name})",
                    "code": args.code or "not recorded", "train_seconds": None}
    cfg = compose_config("train", [*overrides, "extras.print_config=false"], run_dir)
    ckpt = resolve_checkpoint(run_dir, prefer="best")
    _, state = load_checkpoint(ckpt)
    # the spec this code writes for the experiment (a run trained before checkpoints carried one has only an
    # approximate spec rebuilt from its hyper-parameters); the weights must fit its network exactly
    dm = build_datamodule(cfg)
    spec = build_spec(cfg, dm.ensure_meta(), dm.name)
    spec.build_network().load_state_dict(state)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model_file(out, portable(spec), to_fp16(state))
    stamp_file = Path(cfg.data.root) / "toy_stamp.json"
    record = {
        "file": out.name,
        "bytes": out.stat().st_size,
        **made,
        "overrides": overrides,
        "seed": int(cfg.seed),
        "data": json.loads(stamp_file.read_text()),
        "protocol": {"name": "zeroshot", "held_out_families": list(cfg.protocol.held_out_families)},
        # what was trained (a run stopped early has fewer epochs than max_epochs): from its last checkpoint
        "epochs": trained_epochs(run_dir, ckpt),
        "max_epochs": int(cfg.trainer.max_epochs),
        "source_checkpoint": ckpt.name,
        "source_epoch": int(read_checkpoint_file(ckpt)["epoch"]) + 1,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "torch": torch.__version__},
        "made": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        # measured on the data the run used (paths./data. overrides), e.g. a smaller toy set in a test
        "metrics": measure_pretrained(out, [o for o in overrides if o.lstrip("+").startswith(("paths.", "data."))]),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
