"""Aggregate a multirun: ``python -m clamp_pl.tools.aggregate <multirun dir> [--species] [--metrics test/AP,...]``.

Reads every job's ``.hydra/config.yaml`` and ``results.json`` below the directory, groups the jobs by
(dataset, protocol, shots, few-shot taxa, held-out, model, starting point) and prints and writes
``results.md`` and ``results.csv`` in it: mean ± std (sample std, n-1) over seeds, with the number of seeds
— the table a paper needs. Jobs without a ``results.json`` (failed or still running) are listed, never
silently averaged in.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from clamp_pl.cli.config import register_resolvers

DEFAULT_METRICS = ("test/AP", "test/AP50", "test/AP75", "test/AR", "test/PCK@0.1")
KEY_COLUMNS = ("dataset", "protocol", "shots", "taxa", "held_out", "model", "init")


def _job_key(cfg) -> dict[str, str]:
    protocol = cfg.get("protocol", {}) or {}
    held = [*(protocol.get("held_out_families") or []), *(protocol.get("held_out_species") or [])]
    # few-shot on chosen taxa only (protocol.families / species), e.g. a family the starting point never saw
    taxa = [*(protocol.get("families") or []), *(protocol.get("species") or [])]
    init = cfg.get("init_from")
    return {
        "dataset": str(cfg.data.get("_target_", "")).rsplit(".", 1)[-1].replace("DataModule", ""),
        "protocol": str(protocol.get("name", "")),
        "shots": str(protocol.get("shots", "")) if protocol.get("name") == "fewshot" else "",
        "taxa": "+".join(map(str, taxa)) if protocol.get("name") == "fewshot" else "",
        "held_out": "+".join(held) if protocol.get("name") == "zeroshot" else "",
        "model": str(cfg.model.net.get("clip_model", "")) + ("" if cfg.model.net.get("text_branch", True)
                                                              else " (image only)"),
        # the starting point: a checkpoint's file name (its run dir's name), or from scratch
        "init": Path(str(init)).name if init else "scratch",
    }


def collect(root: Path) -> tuple[list[dict], list[Path]]:
    """One row per job: its key columns, seed and results; plus the job dirs that have no results."""
    register_resolvers()  # a job's init_from may name a file under ${paths.root_dir} (the clamp_root resolver)
    rows, missing = [], []
    for cfg_file in sorted(root.rglob(".hydra/config.yaml")):
        job = cfg_file.parent.parent
        cfg = OmegaConf.load(cfg_file)
        res = job / "results.json"
        if not res.is_file():
            missing.append(job)
            continue
        rows.append({**_job_key(cfg), "seed": cfg.get("seed"), "job": str(job), **json.loads(res.read_text())})
    return rows, missing


def _fmt(values: list[float]) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def aggregate(rows: list[dict], metrics: list[str]) -> list[dict]:
    """Group rows by the key columns; each metric as mean ± std over seeds (in %, one decimal), plus raw means."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in KEY_COLUMNS)].append(r)

    def order(item):
        key = item[0]
        shots = int(key[2]) if key[2].isdigit() else -1
        return (*key[:2], shots, *key[3:])

    table = []
    for key, members in sorted(groups.items(), key=order):
        line = dict(zip(KEY_COLUMNS, key))
        line["seeds"] = len(members)
        for m in metrics:
            vals = [float(r[m]) for r in members if m in r and math.isfinite(float(r[m]))]
            line[m] = _fmt(vals)
            line[f"{m} mean"] = statistics.fmean(vals) if vals else float("nan")
        table.append(line)
    return table


def to_markdown(table: list[dict], metrics: list[str]) -> str:
    cols = [c for c in KEY_COLUMNS if any(r[c] for r in table)] + ["seeds", *metrics]
    head = "| " + " | ".join(c.removeprefix("test/") for c in cols) + " |"
    sep = "| " + " | ".join("---" for _ in cols) + " |"
    body = ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table]
    return "\n".join([head, sep, *body]) + "\n"


def write(root: Path, table: list[dict], metrics: list[str]) -> tuple[Path, Path]:
    md, cs = root / "results.md", root / "results.csv"
    md.write_text(to_markdown(table, metrics))
    with open(cs, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]) if table else list(KEY_COLUMNS))
        writer.writeheader()
        writer.writerows(table)
    return md, cs


def latest(folder: Path) -> Path:
    runs = sorted(p for p in folder.iterdir() if p.is_dir())
    if not runs:
        raise FileNotFoundError(f"no multirun in {folder}")
    return runs[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a multirun dir (or, with --latest, the folder holding them)")
    parser.add_argument("--latest", action="store_true", help="aggregate the newest multirun under PATH")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    parser.add_argument("--species", action="store_true", help="add one AP column per species")
    args = parser.parse_args(argv)
    root = latest(args.path) if args.latest else args.path
    if not root.is_dir():
        raise SystemExit(f"not a directory: {root}")
    rows, missing = collect(root)
    if not rows:
        raise SystemExit(f"no finished job (results.json) below {root}")
    metrics = [m for m in args.metrics.split(",") if m]
    if args.species:
        metrics += sorted({k for r in rows for k in r if k.startswith("test/AP_species/")})
    table = aggregate(rows, metrics)
    md, cs = write(root, table, metrics)
    print(to_markdown(table, metrics))
    print(f"{len(rows)} jobs -> {md} and {cs}")
    for job in missing:
        print(f"no results.json (failed or running): {job}")


if __name__ == "__main__":
    main()
