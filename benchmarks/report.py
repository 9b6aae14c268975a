"""Benchmark results and their reports: :class:`Row` (one figure next to its reference), the machine
description, and the Markdown + JSON outputs of ``python -m benchmarks.cpu``."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

if TYPE_CHECKING:
    from benchmarks.harness import Timing

REPO = Path(__file__).resolve().parents[1]
# the process settings the CPU figures depend on (docs/benchmarks.md, "Threads" and "Memory allocator")
MALLOC_ENV_KEYS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


@dataclass
class Row:
    """One figure and its reference. ``ratio`` = value / reference (times: lower is better; throughputs:
    higher). ``target``: ("ratio_le", x), ("value_ge", x) or None (informational)."""

    case: str
    figure: str
    value: float
    unit: str
    reference: str
    ref_value: float
    target: tuple[str, float] | None = None
    cpu_value: float | None = None
    cpu_ref_value: float | None = None
    mem_mib: float | None = None
    ref_mem_mib: float | None = None
    flop_ratio: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.value / self.ref_value

    @property
    def cpu_ratio(self) -> float | None:
        if self.cpu_value is None or self.cpu_ref_value is None:
            return None
        return self.cpu_value / self.cpu_ref_value

    def _meets(self, value: float | None, ratio: float | None) -> bool | None:
        if self.target is None or value is None or ratio is None:
            return None
        kind, x = self.target
        return ratio <= x if kind == "ratio_le" else value >= x

    @property
    def ok(self) -> str:
        if self.target is None:
            return ""
        if self._meets(self.value, self.ratio):
            return "ok"
        return "ok (CPU)" if self._meets(self.cpu_value, self.cpu_ratio) else "MISSED"

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        kind, x = self.target
        return f"<= {x:g}x" if kind == "ratio_le" else f">= {x:g} {self.unit}"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ratio=self.ratio, cpu_ratio=self.cpu_ratio, ok=self.ok, target=self.target_text)
        return out


def time_row(case: str, figure: str, reference: str, t: Timing, ref: Timing, **kw) -> Row:
    """A row comparing two timings in seconds per call."""
    return Row(
        case,
        figure,
        t.wall,
        "s",
        reference,
        ref.wall,
        cpu_value=t.cpu,
        cpu_ref_value=ref.cpu,
        detail={"wall_samples": t.samples, "ref_wall_samples": ref.samples, **kw.pop("detail", {})},
        **kw,
    )


def rate_row(case: str, figure: str, reference: str, n: int, t: Timing, ref: Timing, **kw) -> Row:
    """A row comparing throughputs (``n`` items per call), items/s of wall time (CPU: items per CPU second)."""
    return Row(
        case,
        figure,
        n / t.wall,
        "samples/s",
        reference,
        n / ref.wall,
        cpu_value=n / t.cpu,
        cpu_ref_value=n / ref.cpu,
        detail={
            "items_per_call": n,
            "wall_samples": t.samples,
            "ref_wall_samples": ref.samples,
            **kw.pop("detail", {}),
        },
        **kw,
    )



# ------------------------------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if commit and status:
            commit += " + uncommitted changes"
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "(libgomp default)"),
        "malloc_env": {k: os.environ.get(k, "(glibc default)") for k in MALLOC_ENV_KEYS},
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def to_markdown(rows: list[Row], info: dict[str, Any], settings: dict[str, Any]) -> str:
    mem = "peak RSS MiB (fig. / ref.)"
    lines = [
        "## Results",
        "",
        f"`{settings['command']}` on {info['date']}, commit `{info['commit'] or '?'}`.",
        "",
        f"**Machine:** {info['cpu']}, {info['logical_cpus']} logical CPUs, torch {info['torch']} "
        f"({info['torch_threads']} threads, OMP_WAIT_POLICY {info['omp_wait_policy']}, GOMP_SPINCOUNT "
        f"{info['gomp_spincount']}, glibc malloc "
        f"{' '.join(f'{k}={v}' for k, v in info['malloc_env'].items())}), numpy {info['numpy']}, "
        f"OpenCV {info['opencv']}, Python "
        f"{info['python']}; load average {info['load_avg_start']:.1f} at start, {info['load_avg_end']:.1f} at end.",
        "",
        "Medians of interleaved runs (wall time; the CPU-time ratio alongside), each figure measured next to its "
        "reference in the same run. Ratio = figure / reference. FLOP ratio: the floating-point operations of the "
        "figure over those of the reference (`torch.utils.flop_counter`, matrix products and convolutions, "
        "forward + backward): the ratio the arithmetic alone sets. Peak memory: resident memory above the level "
        "before one call. Method and cases: `docs/benchmarks.md`, section \"Method\".",
        "",
        f"| case | figure | value | reference | ref. value | ratio | CPU ratio | FLOP ratio | target | | {mem} |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for r in rows:
        mems = f"{_fmt_mem(r.mem_mib)} / {_fmt_mem(r.ref_mem_mib)}"
        cpu_ratio = "-" if r.cpu_ratio is None else f"{r.cpu_ratio:.2f}"
        flop_ratio = "-" if r.flop_ratio is None else f"{r.flop_ratio:.2f}"
        lines.append(
            f"| {r.case} | {r.figure} | {_fmt(r.value, r.unit)} | {r.reference} | "
            f"{_fmt(r.ref_value, r.unit)} | {r.ratio:.2f} | {cpu_ratio} | {flop_ratio} | {r.target_text} | {r.ok} "
            f"| {mems} |"
        )
    return "\n".join(lines) + "\n"


def _fmt_mem(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def write_outputs(rows: list[Row], info: dict[str, Any], settings: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    info = dict(info, load_avg_end=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    payload = {"machine": info, "settings": settings, "rows": [r.to_json() for r in rows]}
    (out / "benchmarks.json").write_text(json.dumps(payload, indent=1) + "\n")
    md = to_markdown(rows, info, settings)
    page = out / "benchmarks.md"
    page.write_text(kept_preamble(page) + md)
    return md


RESULTS_MARKER = "<!-- results: written by `python -m benchmarks.cpu` (make bench); the text above this line is kept -->"


def kept_preamble(page: Path) -> str:
    """The hand-written part of ``page`` (title and method, everything up to and including
    :data:`RESULTS_MARKER`), or a bare title when the page does not exist or has no marker."""
    text = page.read_text() if page.is_file() else ""
    if RESULTS_MARKER not in text:
        return f"# Benchmarks\n\n{RESULTS_MARKER}\n\n"
    return text[: text.index(RESULTS_MARKER) + len(RESULTS_MARKER)] + "\n\n"
