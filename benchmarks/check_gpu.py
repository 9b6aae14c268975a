"""Everything a GPU user relies on, checked in one command: ``make check-gpu`` (= ``python -m benchmarks.check_gpu``)
on a machine with a CUDA device, at most 8 minutes on one H100 (``--budget-s``, default 450 s, skips what would
start too late and says so).

1. the ``gpu`` test suite (``pytest -m gpu tests/gpu``, results collected by :mod:`benchmarks.pytest_results`);
2. the GPU benchmark (``make bench-gpu``, eager rows: ``docs/benchmarks_gpu.md``);
3. CLAMP ViT-B/16 bf16 training throughput at batch 64 and 128, eager and ``torch.compile``, with peak memory.

Writes ONE report, ``docs/gpu_check.md`` + ``docs/gpu_check.json`` (device, torch/CUDA versions, each test's
result and recorded figures, the throughput table, the data-wait share), prints it, and exits with status 1 when
a test failed or a measurement raised.

``--dry-run`` (or ``CHECK_GPU_DRY_RUN=1``): the same steps on the CPU with tiny sizes (the gpu tests are collected
and skipped, the benchmark is ``--cpu-smoke``, the tiny model at batch 2 and 4, no compile), written to a temporary
folder unless ``--out`` is given: it checks the command and its report without a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks import gpu
from benchmarks.harness import log, reexec_with_runtime_env
from benchmarks.pytest_results import ENV as RESULTS_ENV
from benchmarks.report import REPO, machine_info

DRY_RUN_ENV = "CHECK_GPU_DRY_RUN"
# seconds reserved for each piece when deciding whether it still fits the budget (H100 estimates: see docs/gpu.md)
NEED_S = {"eager": 15.0, "compiled": 100.0, "bench": 90.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", default=os.environ.get(DRY_RUN_ENV) == "1",
                    help=f"CPU, tiny sizes, gpu tests skipped (also {DRY_RUN_ENV}=1)")
    ap.add_argument("--out", type=Path, default=None, help="report folder (default docs/; dry run: a temp dir)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip what would start after this many seconds (default 450; dry run: 1200, a shared CPU "
                         "is slow and the dry run checks code paths, not time)")
    ap.add_argument("--tests-timeout-s", type=float, default=240.0, help="the gpu test suite's time limit")
    ap.add_argument("--batches", default="64,128", help="batch sizes of the throughput table")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile throughput rows")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments (e.g. '-k resume')")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        ap.error(f"no CUDA device: run with --dry-run ({DRY_RUN_ENV}=1) to check the command on the CPU")
    args.budget_s = args.budget_s or (1200.0 if args.dry_run else 450.0)
    args.batches = [2, 4] if args.dry_run else [int(b) for b in args.batches.split(",") if b]
    args.out = args.out or (Path(tempfile.mkdtemp(prefix="clamp_check_gpu_")) if args.dry_run else REPO / "docs")
    return args


def device_info(dry_run: bool) -> dict[str, Any]:
    info = machine_info()
    cuda = torch.cuda.is_available()
    info.update(
        device="CPU (dry run)" if dry_run else torch.cuda.get_device_name(),
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        gpus=torch.cuda.device_count() if cuda else 0,
        gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        compute_capability=".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
    )
    return info


def run_tests(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``pytest -m gpu tests/gpu`` in a subprocess (a fresh CUDA context, the tests' memory freed on exit)."""
    results = work / "pytest_results.json"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-p", "benchmarks.pytest_results", "-q",
           "-p", "no:cacheprovider", *args.pytest_args.split()]
    env = {**os.environ, RESULTS_ENV: str(results), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("CLAMP_GPU_TESTS_ON_CPU", None)  # the dry run skips the suite, as any machine without CUDA does
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.tests_timeout_s)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-4000:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = None, f"timed out after {args.tests_timeout_s:.0f} s\n{str(exc.stdout or '')[-3000:]}"
    out = json.loads(results.read_text()) if results.is_file() else {"tests": []}
    out.update(command=" ".join(["python", *cmd[1:]]), returncode=rc, seconds=time.perf_counter() - t0, output_tail=tail)
    return out


def run_benchmark(args: argparse.Namespace, remaining_s: float) -> dict[str, Any]:
    """``make bench-gpu`` without its compiled row (the throughput table compiles): docs/benchmarks_gpu.md."""
    argv = ["--cpu-smoke", "--out", str(args.out)] if args.dry_run else ["--no-compile"]
    argv += ["--budget-s", f"{max(remaining_s, 1.0):.0f}"]
    bench_args = gpu.parse_args(argv)
    rows, _, out = gpu.run(bench_args)
    wait = {v: r[v]["data_wait_share"] for r in rows for v in ("clamp", "baseline")
            if "data_wait_share" in r.get(v, {})}
    return {"command": f"python -m benchmarks.gpu {' '.join(argv)}", "report": str(out / "benchmarks_gpu.md"),
            "rows": rows, "data_wait_share": wait}


def run_throughput(args: argparse.Namespace, deadline: float) -> list[dict[str, Any]]:
    """CLAMP ViT-B/16 bf16 (dry run: tiny, fp32) images/s at each batch size, eager then compiled."""
    argv = ["--cpu-smoke"] if args.dry_run else ["--model", "clamp_vitb16", "--batch", str(args.batches[0])]
    runner = gpu.Runner(gpu.parse_args(argv))
    rows = []
    for compiled in (False, True):
        for batch in args.batches:
            row: dict[str, Any] = {"model": runner.args.model, "batch": batch, "compiled": compiled,
                                   "precision": "fp32" if args.dry_run else "bf16 autocast"}
            need = NEED_S["compiled" if compiled else "eager"]
            if compiled and (args.dry_run or args.no_compile):
                row["skipped"] = "dry run: no compile on the CPU" if args.dry_run else "--no-compile"
            elif time.perf_counter() + need > deadline:
                row["skipped"] = "time budget"
            else:
                try:
                    row.update(runner.throughput(batch, compiled))
                except Exception as exc:  # an OOM at batch 128 must not lose the other rows
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    traceback.print_exc()
                finally:
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
            log(f"throughput batch {batch} {'compiled' if compiled else 'eager'}: "
                f"{row.get('images_per_s', row.get('skipped') or row.get('error'))}")
            rows.append(row)
    return rows


def failures(report: dict[str, Any]) -> list[str]:
    """What makes the check fail: failed or erroring tests, a test run that did not finish, measurements that
    raised."""
    out = [f"test {t['nodeid']}: {t['outcome']}" for t in report["tests"]["tests"]
           if t["outcome"] in ("failed", "error")]
    if report["tests"]["returncode"] not in (0, 5) and not out:  # 5: nothing collected (reported as such)
        out.append(f"pytest exited with {report['tests']['returncode']}")
    if report["tests"]["returncode"] == 5 or not report["tests"]["tests"]:
        out.append("no gpu test was collected")
    bench = report.get("benchmark", {})
    if "error" in bench:
        out.append(f"benchmark: {bench['error']}")
    for r in bench.get("rows", []):
        for v in ("clamp", "baseline"):
            if "error" in r.get(v, {}):
                out.append(f"benchmark {r['config']} ({v}): {r[v]['error']}")
    out += [f"throughput batch {r['batch']} {'compiled' if r['compiled'] else 'eager'}: {r['error']}"
            for r in report.get("throughput", []) if "error" in r]
    return out


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def to_markdown(report: dict[str, Any]) -> str:
    m, tests = report["machine"], report["tests"]["tests"]
    counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "error", "skipped")}
    lines = [
        "# GPU check",
        "",
        f"`{report['command']}` on {m['date']}, commit `{m['commit'] or '?'}`, {report['seconds']:.0f} s"
        f"{' (DRY RUN on the CPU: nothing here says anything about a GPU)' if report['dry_run'] else ''}.",
        "",
        f"**Device:** {m['device']} ({m['gpus']} visible, {_num(m['gpu_memory_gib'], '.0f')} GiB, compute "
        f"capability {m['compute_capability'] or '-'}); torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}; "
        f"host {m['cpu']}, {m['logical_cpus']} logical CPUs.",
        "",
        f"**Result:** {'FAILED' if report['failures'] else 'passed'}. Tests: {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['error']} errors, {counts['skipped']} skipped.",
        *[f"- {f}" for f in report["failures"]],
        "",
        "## Training throughput (CLAMP, synthetic batches)",
        "",
        "| model | batch | precision | compile | images/s | step ms | MFU | peak GiB | warm-up s |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["throughput"]:
        note = r.get("skipped") or r.get("error")
        cells = ([f"{r['images_per_s']:.0f}", f"{r['step_s'] * 1e3:.1f}", f"{r['mfu']:.1%}",
                  f"{r['peak_mem_gib']:.2f}", f"{r['warmup_s']:.1f}"] if note is None else [note, "", "", "", ""])
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {'yes' if r['compiled'] else 'no'} | "
                     + " | ".join(cells) + " |")
    bench = report.get("benchmark", {})
    wait = bench.get("data_wait_share", {})
    loader_test = next((t["properties"] for t in tests if "loader_data_wait_share" in t["properties"]), {})
    lines += [
        "",
        "## Data loading",
        "",
        f"Share of the training step spent waiting for the next batch, real loader of the GPU benchmark: CLAMP "
        f"{_num(wait.get('clamp'), '.0%')}, baseline {_num(wait.get('baseline'), '.0%')}; the loader test "
        f"({loader_test.get('loader_setup', 'not run')}): {_num(loader_test.get('loader_data_wait_share'), '.0%')} "
        f"at {_num(loader_test.get('loader_fed_images_per_s'), '.0f')} images/s.",
        "",
        f"GPU benchmark: `{bench.get('command', '-')}` -> `{bench.get('report', '-')}`"
        f"{'; error: ' + bench['error'] if 'error' in bench else ''}.",
        "",
        "## Tests",
        "",
        f"`{report['tests']['command']}`: exit status {report['tests']['returncode']}, "
        f"{report['tests']['seconds']:.0f} s.",
        "",
        "| test | result | s | figures / reason |",
        "| --- | --- | ---: | --- |",
    ]
    for t in tests:
        figures = "; ".join(f"{k} = {_fmt_prop(v)}" for k, v in t["properties"].items())
        detail = t["detail"].strip().splitlines()[-1] if t["outcome"] != "passed" and t["detail"].strip() else ""
        text = "; ".join(x for x in (figures, detail) if x).replace("|", "\\|")
        lines.append(f"| `{t['nodeid'].removeprefix('tests/gpu/')}` | {t['outcome']} | {t['seconds']:.1f} | {text} |")
    return "\n".join(lines) + "\n"


def _fmt_prop(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt_prop(x) for x in v) + "]"
    return str(v)


def run(args: argparse.Namespace, argv_is_ours: bool = False) -> dict[str, Any]:
    """The three steps within the budget, then the report; returns it (``failures`` empty when all passed)."""
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    if not args.dry_run:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    argv = " ".join(sys.argv[1:]) if argv_is_ours else ""
    report: dict[str, Any] = {"command": f"python -m benchmarks.check_gpu {argv}".strip(), "dry_run": args.dry_run,
                              "budget_s": args.budget_s}
    with tempfile.TemporaryDirectory(prefix="clamp_check_gpu_work_") as tmp:
        log("gpu tests")
        report["tests"] = run_tests(args, Path(tmp))
    # the CUDA context of this process starts after the tests' process has ended
    report["machine"] = device_info(args.dry_run)
    remaining = deadline - time.perf_counter()
    compiles = not (args.dry_run or args.no_compile)
    throughput_need = (NEED_S["eager"] + compiles * NEED_S["compiled"]) * len(args.batches)
    if remaining - throughput_need > NEED_S["bench"]:
        log("GPU benchmark")
        try:
            report["benchmark"] = run_benchmark(args, remaining - throughput_need)
        except Exception as exc:
            report["benchmark"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            traceback.print_exc()
    else:
        report["benchmark"] = {"skipped": "time budget"}
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log("throughput")
    report["throughput"] = run_throughput(args, deadline)
    report["seconds"] = time.perf_counter() - t0
    report["failures"] = failures(report)
    write_report(report, args.out)
    return report


def write_report(report: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = to_markdown(report)
    (out / "gpu_check.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        reexec_with_runtime_env("benchmarks.check_gpu")
    args = parse_args(argv)
    report = run(args, argv_is_ours=argv is None)
    print(to_markdown(report))
    log(f"wrote {args.out / 'gpu_check.md'} and .json")
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
