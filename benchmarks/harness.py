"""Timing and memory probes of the benchmarks (plain torch, no clamp_pl).

CPU: :func:`time_interleaved` (a, b, a, b, ... after one warm-up call each, so that load from other processes on
a shared host hits the callables of one comparison alike) and :func:`peak_memory_mib` (the kernel's resident
high-water mark, reset before each call). GPU: :func:`time_cuda_steps`, ``torch.utils.benchmark.Timer`` with the
device synchronised around the timed block. ``docs/benchmarks.md`` ("Method") explains the choices.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import torch
import torch.utils.benchmark as torch_benchmark

from benchmarks.report import Row, rate_row, time_row

# glibc malloc keeps freed memory instead of returning it to the kernel after every step (docs/benchmarks.md,
# "Memory allocator"); read by glibc at process start, hence :func:`reexec_with_runtime_env`
GLIBC_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30),
    "MALLOC_TOP_PAD_": str(2**30),
}


# ------------------------------------------------------------------------------------------------- measuring
@dataclass
class Timing:
    """Median wall and process-CPU seconds per call, and the wall samples."""

    wall: float
    cpu: float
    samples: list[float]


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Call each function ``warmup`` times, then ``repeats`` rounds of one call each, interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls[name].append(time.perf_counter() - w0)
            cpus[name].append(time.process_time() - c0)
    return {k: Timing(statistics.median(walls[k]), statistics.median(cpus[k]), walls[k]) for k in fns}


def _status_kib(*keys: str) -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) for k in keys}


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory_mib(fn: Callable[[], Any]) -> float | None:
    """Peak resident memory of one call of ``fn`` above the resident memory before it, MiB (None when the
    high-water mark cannot be reset: not Linux, or no permission)."""
    gc.collect()
    _malloc_trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        before = _status_kib("VmRSS")["VmRSS"]
    except OSError:
        return None
    fn()
    peak = _status_kib("VmHWM")["VmHWM"]
    return max(0.0, (peak - before) / 1024)


@dataclass
class Measured:
    """Timings and peak memory of the callables of one comparison (:func:`measure`), by key."""

    t: dict[Any, Timing]
    mem: dict[Any, float | None]

    def time_row(self, case: str, figure: str, reference: str, key: Any, ref_key: Any, **kw) -> Row:
        """:func:`time_row` of callable ``key`` against ``ref_key``, their peak memory included."""
        return time_row(case, figure, reference, self.t[key], self.t[ref_key], mem_mib=self.mem[key],
                        ref_mem_mib=self.mem[ref_key], **kw)

    def rate_row(self, case: str, figure: str, reference: str, n: int, key: Any, ref_key: Any, **kw) -> Row:
        """:func:`rate_row` of callable ``key`` against ``ref_key``, their peak memory included."""
        return rate_row(case, figure, reference, n, self.t[key], self.t[ref_key], mem_mib=self.mem[key],
                        ref_mem_mib=self.mem[ref_key], **kw)


def measure(fns: dict[Any, Callable[[], Any]], repeats: int, warmup: int = 1) -> Measured:
    """:func:`time_interleaved`, then :func:`peak_memory_mib` of each callable."""
    t = time_interleaved(fns, repeats, warmup)
    return Measured(t, {k: peak_memory_mib(fn) for k, fn in fns.items()})


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)




@contextlib.contextmanager
def single_threaded():
    """One torch and one OpenCV thread, as in a DataLoader worker (torch sets 1; OpenCV 0 = sequential)."""
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv_threads)


def reexec_with_runtime_env(module: str) -> None:
    """Re-execute ``python -m <module>`` with glibc's malloc settings and a short OpenMP spin unless the
    environment sets them already: libgomp and glibc read them at start-up only (docs/benchmarks.md, "Threads"
    and "Memory allocator"). Returns when nothing is missing."""
    wanted = dict(GLIBC_MALLOC_ENV)
    if "OMP_WAIT_POLICY" not in os.environ:
        wanted["GOMP_SPINCOUNT"] = "1000"
    if any(k not in os.environ for k in wanted):
        argv = [sys.executable, "-m", module, *sys.argv[1:]]
        os.execve(sys.executable, argv, {**wanted, **os.environ})


def time_cuda_steps(step: Callable[[], None], steps: int) -> float:
    """Seconds per call of ``step`` over one block of ``steps`` calls (``torch.utils.benchmark.Timer``: the
    accelerator is synchronised before and after the block, and the Timer first runs ``max(steps // 100, 2)``
    untimed calls). Torch's thread count is left as it is (the Timer's default would set 1)."""
    timer = torch_benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return timer.timeit(steps).mean


def timer_warmup_calls(steps: int) -> int:
    """The untimed calls :func:`time_cuda_steps` makes before its block (a loader must hold batches for them)."""
    return max(steps // 100, 2)
