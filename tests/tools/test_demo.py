"""``make demo`` (``clamp_pl.tools.demo``), shortened: every job runs on the embedded data (the few-shot pair from the
shipped starting point and from scratch, the zero-shot job from the starting point without training), the summary
names the metrics and pictures, the pictures exist and the closing note names the real experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clamp_pl.tools.demo import JOBS, PRETRAINED, conclusion, print_summary, run_demo

SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
         "+trainer.limit_test_batches=1", "data.num_workers=0", "data.persistent_workers=false",
         "trainer.enable_progress_bar=false", "callbacks.rich_progress_bar=null"]


@pytest.mark.e2e
def test_demo_runs_every_job(tmp_path, capsys):
    # its own data dir: the demo's toy set has the default size, unlike the suite's debug=tiny one
    summary = run_demo([*SHORT, f"paths.data_dir={tmp_path / 'data'}"], out_root=tmp_path / "demo")
    assert set(summary) == {*JOBS, "_total"}
    for name in JOBS:
        s = summary[name]
        assert "test/AP" in s["metrics"] and "test/PCK@0.1" in s["metrics"]
        for key in ("picture", "bad_cases"):
            assert s[key].endswith(".png") and (tmp_path / "demo").as_posix() in s[key]
            assert Path(s[key]).is_file()
    pre, scratch, zero = summary["fewshot_pretrained"], summary["fewshot_scratch"], summary["zeroshot"]
    assert Path(pre["init_from"]) == PRETRAINED and scratch["init_from"] is None
    # the same budget: k instances of each of the two held-out species, the same epochs
    assert pre["train_instances"] == scratch["train_instances"] == 2 * pre["shots"]
    assert pre["epochs"] == scratch["epochs"] == 1
    assert not zero["trained"] and Path(zero["init_from"]) == PRETRAINED
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == summary

    print_summary(summary)
    out = capsys.readouterr().out
    for s in (summary[name] for name in JOBS):
        assert s["title"] in out and s["picture"] in out
    assert "lowest-OKS" in out and "experiment=fewshot_ap10k" in out


def test_conclusion_states_the_numbers():
    def job(ap: float, **kw) -> dict:
        return {"metrics": {"test/AP": ap}, "shots": 10, "train_instances": 20, "epochs": 60, **kw}

    text = conclusion({"fewshot_pretrained": job(0.45), "fewshot_scratch": job(0.05), "zeroshot": job(0.30),
                       "_total": {"seconds": 200.0}})
    assert "0.450" in text and "0.050" in text and "(9.0x)" in text and "0.300" in text and "200 s" in text
    # a zero from scratch: no division
    assert "0.000" in conclusion({"fewshot_pretrained": job(0.45), "fewshot_scratch": job(0.0)})
