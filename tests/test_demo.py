"""``make demo`` (``clamp_pl.demo``), shortened: both jobs run on the embedded data, the summary names the
metrics and pictures, and the pictures exist."""

from __future__ import annotations

import json
from pathlib import Path

from clamp_pl.demo import JOBS, print_summary, run_demo

SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
         "+trainer.limit_test_batches=1", "data.num_workers=0", "data.persistent_workers=false",
         "trainer.enable_progress_bar=false", "callbacks.rich_progress_bar=null"]


def test_demo_runs_both_jobs(tmp_path, capsys):
    # its own data dir: the demo's toy set has the default size, unlike the suite's debug=tiny one
    summary = run_demo([*SHORT, f"paths.data_dir={tmp_path / 'data'}"], out_root=tmp_path / "demo")
    assert set(summary) == set(JOBS)
    for s in summary.values():
        assert "test/AP" in s["metrics"] and "test/PCK@0.1" in s["metrics"]
        for key in ("picture", "bad_cases"):
            assert s[key].endswith(".png") and (tmp_path / "demo").as_posix() in s[key]
            assert Path(s[key]).is_file()
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == summary
    print_summary(summary)
    out = capsys.readouterr().out
    assert "mouse" in out and "AP" in out and "lowest-OKS" in out
