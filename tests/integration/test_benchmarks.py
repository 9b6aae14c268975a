"""The benchmarks keep running: ``python -m benchmarks.gpu --cpu-smoke`` and a reduced ``python -m benchmarks.cpu``
(eval, text and train cases, tiny text tower, a small evaluation set), as subprocesses like ``make bench``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.report import RESULTS_MARKER

REPO = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str) -> None:
    # a short OpenMP spin, as benchmarks.cpu sets for itself: long spinning is many times slower on a busy host
    env = {**os.environ, "GOMP_SPINCOUNT": "1000"}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_gpu_benchmark_cpu_smoke(tmp_path):
    _run("benchmarks.gpu", "--cpu-smoke", "--out", str(tmp_path))
    data = json.loads((tmp_path / "benchmarks_gpu.json").read_text())
    rows = {r["config"]: r for r in data["rows"]}
    for config in (
        "synthetic, eager (fused AdamW, device-side non-finite skip)",
        "synthetic, eager, channels_last",
        "synthetic, eager, fused AdamW + isfinite check (host sync)",
        "synthetic, eager, foreach AdamW, no check",
        "real loader (0 workers), eager",
    ):
        for variant in ("clamp", "baseline"):
            assert rows[config][variant]["images_per_s"] > 0, (config, variant, rows[config][variant])
    loader_step = rows["real loader (0 workers), eager"]["clamp"]
    assert 0.0 <= loader_step["data_wait_share"] <= 1.0
    for decode in ("full decode", "reduced decode"):  # data.reduced_decode false (default) and true
        assert rows[f"loader alone, 0 workers, {decode}"]["loader_images_per_s"] > 0
    flops = data["settings"]["tflop_per_step"]
    assert flops["clamp"] > flops["baseline"] > 0
    assert "| synthetic, eager (fused AdamW, device-side non-finite skip) |" in (tmp_path / "benchmarks_gpu.md").read_text()


def test_cpu_benchmark_eval_text_train(tmp_path):
    # the hand-written part of the page (title, method) survives a run; the results below the marker are replaced
    preamble = f"# Benchmarks\n\n## Method\n\nHow it is measured.\n\n{RESULTS_MARKER}"
    (tmp_path / "benchmarks.md").write_text(f"{preamble}\n\n## Results\n\nan earlier run\n")
    _run(
        "benchmarks.cpu",
        "--quick",
        "--only",
        "eval,text,train",
        "--repeats",
        "1",
        "--text-model",
        "clamp-tiny-vit",
        "--eval-instances",
        "600",
        "--eval-images",
        "450",
        "--out",
        str(tmp_path),
    )
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert data["machine"]["torch"] and data["machine"]["gomp_spincount"] == "1000"
    assert data["machine"]["malloc_env"]["MALLOC_TRIM_THRESHOLD_"] == str(16 * 2**30)  # set by the re-exec
    rows = data["rows"]
    assert {r["case"] for r in rows} == {"eval", "text", "train"}
    assert data["settings"]["models"] == ["tiny"]  # --quick
    for r in rows:
        assert r["value"] > 0 and r["ref_value"] > 0 and r["ratio"] > 0, r
    evals = [r for r in rows if r["case"] == "eval"]
    assert len(evals) == 2 and evals[0]["detail"]["identical_stats"]
    step, opt = [r for r in rows if r["case"] == "train"]
    # the text branch adds arithmetic: more FLOPs than the baseline, fewer than twice
    assert 1.0 < step["flop_ratio"] < 2.0 and step["detail"]["gflop_clamp"] > step["detail"]["gflop_baseline"]
    assert "fused" in opt["figure"] and opt["flop_ratio"] is None
    md = (tmp_path / "benchmarks.md").read_text()
    assert md.startswith(preamble) and "an earlier run" not in md and md.count("## Results") == 1
    assert md.count("\n| eval |") == 2 and md.count("\n| train |") == 2 and "**Machine:**" in md


def test_check_gpu_dry_run_writes_the_report(tmp_path):
    """``make check-gpu`` end to end on the CPU: the gpu tests are collected and skipped with the reason, the
    benchmark and the throughput rows run tiny, and the one report (Markdown + JSON) is written."""
    _run("benchmarks.check_gpu", "--dry-run", "--out", str(tmp_path))
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["failures"] == []
    tests = report["tests"]["tests"]
    assert len(tests) >= 10 and {t["outcome"] for t in tests} == {"skipped"}
    assert all("needs a CUDA device" in t["detail"] or "needs 2 CUDA devices" in t["detail"] for t in tests)
    eager = [r for r in report["throughput"] if not r["compiled"]]
    assert [r["batch"] for r in eager] == [2, 4] and all(r["images_per_s"] > 0 for r in eager)
    assert all(r["skipped"] for r in report["throughput"] if r["compiled"])
    assert 0.0 <= report["benchmark"]["data_wait_share"]["clamp"] <= 1.0
    assert (tmp_path / "benchmarks_gpu.md").is_file()
    md = (tmp_path / "gpu_check.md").read_text()
    assert "DRY RUN" in md and "**Result:** passed" in md and md.count("| skipped |") == len(tests)
