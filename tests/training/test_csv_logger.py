"""``clamp_pl.training.loggers.CSVLogger`` keeps an existing ``metrics.csv`` (a resumed run) and appends to it, without
Lightning's "directory is not empty, files will be deleted" warning (a Hydra run dir is never empty)."""

from __future__ import annotations

import csv
import warnings

from clamp_pl.training.loggers import CSVLogger


def test_existing_rows_kept_new_columns_added(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,1,0.5\n")
    (tmp_path / "train.log").write_text("Hydra's job log\n")
    logger = CSVLogger(save_dir=str(tmp_path), name="", version="")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.log_metrics({"val/AP": 0.25}, step=2)
        logger.save()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["train/loss"] for r in rows] == ["0.5", ""] and [r["val/AP"] for r in rows] == ["", "0.25"]
