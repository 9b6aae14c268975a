"""A mistake a user can fix prints as one clear line from every entry point (exit status 1, no traceback);
``HYDRA_FULL_ERROR=1`` brings the traceback back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


def _run(module: str, *args: str, full: bool = False, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1" if full else "0"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=300)


@pytest.mark.parametrize("module, args, message", [
    ("clamp_pl.predict", ["ckpt_path=/no/such/run", "input=/no/such/folder"], "error: input not found: /no/such/folder"),
    ("clamp_pl.eval", ["ckpt_path=/no/such/run"], "error: "),
    ("clamp_pl.export", ["ckpt_path=/no/such/run"], "error: "),
])
def test_user_errors_are_one_line(tmp_path, module, args, message):
    out = _run(module, *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 1, out.stderr[-2000:]
    assert message in out.stderr and "/no/such" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout and "HYDRA_FULL_ERROR" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1


def test_full_error_shows_the_traceback(tmp_path):
    out = _run("clamp_pl.predict", "ckpt_path=/no/such/run", "input=/no/such/folder",
               f"hydra.run.dir={tmp_path / 'run'}", full=True)
    assert out.returncode == 1 and "Traceback" in out.stderr and "FileNotFoundError" in out.stderr
