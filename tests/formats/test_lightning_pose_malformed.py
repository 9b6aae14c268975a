"""Malformed lightning-pose projects (one ``CollectedData.csv`` at the project root, DeepLabCut's single-animal
format), made from the real openfield frames and labels that ship with the package, converted as ``data=dlc`` /
``data=lightning_pose`` does: each is an error naming the CSV, the row (line and frame path) and the column, or
with ``on_error="skip"`` a listed skip that keeps every other frame."""

from __future__ import annotations

import json
import logging
import re

import pytest
from helpers.projects import openfield_lightning_pose_project

from clamp_pl.core.errors import DataError
from clamp_pl.formats.dlc import dlc_to_coco

N_FRAMES = 116
FRAME = "labeled-data/m4s1/img0002.jpg"  # on line 6, after the three header rows


def _project(tmp_path, edit=None):
    csv_path = openfield_lightning_pose_project(tmp_path / "lp")
    if edit is not None:
        csv_path.write_text("\n".join(edit(csv_path.read_text().splitlines())) + "\n")
    return csv_path


def _cell(line, col, value):
    def edit(lines):
        cells = lines[line - 1].split(",")
        cells[col] = value
        return [*lines[:line - 1], ",".join(cells), *lines[line:]]

    return edit


VARIANTS = [
    ("infinite y", _cell(6, 2, "Infinity"), rf"line 6 \(frame {FRAME}\), column snout/y: 'Infinity' is not a finite"),
    ("text coordinate", _cell(6, 7, "n/a"), rf"line 6 \(frame {FRAME}\), column tailbase/x: 'n/a' is not a number"),
    ("row cut short", lambda lines: [*lines[:5], ",".join(lines[5].split(",")[:4]), *lines[6:]],
     rf"line 6 \(frame {FRAME}\), column leftear/y: the row has 4 cells, the header 9"),
    ("frame listed twice", lambda lines: [*lines, lines[5]], rf"frame {FRAME}: listed 2 times \(line 6, line 120\)"),
]


@pytest.mark.parametrize("name, edit, message", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_bad_row_is_an_error_or_a_listed_skip(tmp_path, name, edit, message):
    csv_path = _project(tmp_path, edit)
    with pytest.raises(DataError, match=re.escape(str(csv_path)) + ": " + message):
        dlc_to_coco(csv_path, tmp_path / "raise")
    paths = dlc_to_coco(csv_path, tmp_path / "skip", on_error="skip")
    record = json.loads(paths["split"].read_text())
    assert len(record["skipped"]) == 1 and record["skipped"][0]["file"] == str(csv_path)
    assert record["frames_per_video"] == {"m4s1": N_FRAMES - 1}
    names = {im["file_name"] for s in ("train", "val", "test") if s in paths
             for im in json.loads(paths[s].read_text())["images"]}
    assert len(names) == N_FRAMES - 1 and "m4s1/img0002.jpg" not in names


@pytest.mark.parametrize("name, edit, message", [
    ("header only", lambda lines: lines[:3], r"no labelled frame: the file holds only its header rows"),
    ("duplicate body part", lambda lines: [lines[0], lines[1].replace("rightear", "leftear"), *lines[2:]],
     r"columns 4 and 6 are both leftear/x"),
    ("coords row missing", lambda lines: [lines[0], lines[1], *lines[3:]],
     r"header rows \['scorer', 'bodyparts', 'labeled-data/m4s1/img0000.jpg'\]"),
], ids=["header only", "duplicate body part", "coords row missing"])
def test_bad_file_is_an_error_even_when_skipping(tmp_path, name, edit, message):
    csv_path = _project(tmp_path, edit)
    with pytest.raises(DataError, match=re.escape(str(csv_path)) + ": " + message):
        dlc_to_coco(csv_path, tmp_path / "out", on_error="skip")


def test_missing_frame_image_names_it_once(tmp_path, capfd):
    csv_path = _project(tmp_path)
    (tmp_path / "lp" / FRAME).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{csv_path}: frame {FRAME}: image not found (looked "
                                                          f"for {tmp_path / 'lp' / FRAME})")):
        dlc_to_coco(csv_path, tmp_path / "out")
    assert "imread" not in capfd.readouterr().err  # no OpenCV warning before the message


def test_datamodule_with_on_error_skip_converts_the_rest(tmp_path, caplog):
    from clamp_pl.data.datamodule import DLCDataModule

    csv_path = _project(tmp_path, _cell(6, 1, "inf"))
    dm = DLCDataModule(project=str(csv_path), converted_dir=str(tmp_path / "converted"), on_error="raise")
    with pytest.raises(DataError, match="column snout/x"):
        dm.prepare_data()
    dm = DLCDataModule(project=str(csv_path), converted_dir=str(tmp_path / "converted"), on_error="skip")
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    assert any(f"{csv_path}: 1 records skipped by the conversion" in r.getMessage() for r in caplog.records)
    counts = {s: len(json.loads(p.read_text())["images"]) for s, (p, _) in dm.files().items()}
    assert sum(counts.values()) == N_FRAMES - 1
