"""Malformed DeepLabCut label files, each made from the real openfield project that ships with the package
(116 frames of one mouse, ``CollectedData_Pranav.csv``): every variant is an error naming the file, the row (line
and frame path) and the column (``bodypart/coord``), a listed skip with ``on_error="skip"`` that keeps every other
frame, or - where harmless - a normal load. The ``.h5`` twin is held to the same rules when it is the file read."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.projects import OPENFIELD_CSV, openfield_dlc_project, openfield_h5_twin

from clamp_pl.core.errors import DataError
from clamp_pl.formats.dlc import dlc_to_coco, read_dlc_labels

LINES = OPENFIELD_CSV.read_text().splitlines()
N_FRAMES = 116
#: line 6 of the file (header rows 1-3) labels this frame
FRAME = "labeled-data/m4s1/img0002.jpg"


def _cell(line: int, col: int, value: str) -> Callable[[list[str]], list[str]]:
    """Rewrite one cell (1-based line, 0-based cell) of the CSV."""

    def edit(lines: list[str]) -> list[str]:
        cells = lines[line - 1].split(",")
        cells[col] = value
        return [*lines[:line - 1], ",".join(cells), *lines[line:]]

    return edit


def _line(line: int, new: Callable[[str], str]) -> Callable[[list[str]], list[str]]:
    return lambda lines: [*lines[:line - 1], new(lines[line - 1]), *lines[line:]]


#: (variant, edit of the CSV lines, pattern the message matches after the file name)
ROW_ERRORS = [
    ("infinite x", _cell(6, 1, "inf"), rf"line 6 \(frame {FRAME}\), column snout/x: 'inf' is not a finite"),
    ("negative infinity", _cell(6, 8, "-inf"), rf"line 6 \(frame {FRAME}\), column tailbase/y: '-inf' is not a"),
    ("text coordinate", _cell(6, 3, "abc"), rf"line 6 \(frame {FRAME}\), column leftear/x: 'abc' is not a number"),
    ("decimal comma", _cell(6, 2, '"132,46"'), rf"line 6 \(frame {FRAME}\), column snout/y: '132,46' is not a"),
    ("row cut short", _line(6, lambda r: ",".join(r.split(",")[:6])),
     rf"line 6 \(frame {FRAME}\), column rightear/y: the row has 6 cells, the header 9: it is cut short"),
    ("row too long", _line(6, lambda r: r + ",7.5"),
     rf"line 6 \(frame {FRAME}\): the row has 10 cells, the header 9"),
    ("half a point", _cell(6, 2, ""), rf"line 6 \(frame {FRAME}\), column snout/y: empty while its x is labelled"),
    ("no frame path", _cell(6, 0, ""), r"line 6: no frame path"),
    ("frame listed twice", lambda lines: [*lines, lines[5]],
     rf"frame {FRAME}: listed 2 times \(line 6, line 120\)"),
]

#: problems of the whole file: an error whatever on_error says
FILE_ERRORS = [
    ("empty file", lambda lines: [], r"empty file: a DeepLabCut label file starts with the header rows"),
    ("header only", lambda lines: lines[:3], r"no labelled frame: the file holds only its header rows"),
    ("no label in any row", lambda lines: lines[:3] + [r.split(",")[0] + "," * 8 for r in lines[3:]],
     r"no labelled frame: none of its 116 rows labels a point"),
    ("header rows out of order", lambda lines: [lines[0], lines[2], lines[1], *lines[3:]],
     r"header rows \['scorer', 'coords', 'bodyparts'\] .*expected scorer / bodyparts / coords"),
    ("bodyparts row missing", lambda lines: [lines[0], *lines[2:]],
     r"header rows \['scorer', 'coords', 'labeled-data/m4s1/img0000.jpg'\]"),
    ("scorer row missing", lambda lines: lines[1:], r"the first header row must start with 'scorer', line 1 starts "
                                                    r"with 'bodyparts'"),
    ("duplicate body part", _line(2, lambda r: r.replace("leftear,leftear", "snout,snout")),
     r"columns 2 and 4 are both snout/x: which one holds the label is undefined"),
    ("unknown coord", _line(3, lambda r: r.replace("x,y,x,y,x", "x,y,x,z,x")),
     r"column 5 \(leftear/z\): coords must be x, y or likelihood"),
    ("x without y", _line(3, lambda r: r[:r.rindex(",")] + ",likelihood"),
     r"column tailbase/x has no y column"),
    ("header row cut short", _line(2, lambda r: r[:r.rindex(",")]),
     r"header line 2 \('bodyparts'\) has 8 cells, the 'coords' row 9"),
    ("not a label file", lambda lines: ["frame,x,y", "a.png,1,2"], r"the first header row must start with 'scorer'"),
]

#: edits that are harmless: the file loads with every frame
HARMLESS = [
    ("NaN written out", lambda lines: _cell(6, 1, "NaN")(_cell(6, 2, "NaN")(lines))),
    ("blank lines", lambda lines: [*lines[:5], "", *lines[5:], ""]),
    ("rows out of order", lambda lines: [*lines[:3], *reversed(lines[3:])]),
    ("spaces around cells", _line(6, lambda r: ", ".join(r.split(",")))),
    ("likelihood columns of machine labels", lambda lines: [
        lines[0] + ",Pranav", lines[1] + ",snout", lines[2] + ",likelihood", *(r + ",0.9" for r in lines[3:])]),
    ("byte-order mark", lambda lines: ["\ufeff" + lines[0], *lines[1:]]),
]


def _project(tmp_path: Path, edit: Callable[[list[str]], list[str]]) -> Path:
    csv_path = openfield_dlc_project(tmp_path / "openfield")
    csv_path.write_text("\n".join(edit(list(LINES))) + "\n")
    return csv_path


@pytest.mark.parametrize("name, edit, message", ROW_ERRORS, ids=[v[0] for v in ROW_ERRORS])
def test_bad_row_is_an_error_naming_file_row_and_column(tmp_path, name, edit, message):
    csv_path = _project(tmp_path, edit)
    with pytest.raises(DataError, match=re.escape(str(csv_path)) + ": " + message):
        read_dlc_labels(csv_path)


@pytest.mark.parametrize("name, edit, message", ROW_ERRORS, ids=[v[0] for v in ROW_ERRORS])
def test_bad_row_is_skipped_and_listed_losing_nothing_else(tmp_path, name, edit, message):
    csv_path = _project(tmp_path, edit)
    clean = read_dlc_labels(OPENFIELD_CSV)
    labels = read_dlc_labels(csv_path, on_error="skip")
    assert len(labels.skipped) == 1 and re.search(message.split(": ", 1)[-1], labels.skipped[0]["reason"])
    assert labels.skipped[0]["file"] == str(csv_path)
    assert sorted(set(clean.frame_paths) - set(labels.frame_paths)) == [FRAME]
    keep = [clean.frame_paths.index(f) for f in labels.frame_paths]
    np.testing.assert_array_equal(labels.coords, clean.coords[keep])


@pytest.mark.parametrize("name, edit, message", FILE_ERRORS, ids=[v[0] for v in FILE_ERRORS])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_bad_file_is_an_error_whatever_on_error_says(tmp_path, name, edit, message, on_error):
    csv_path = _project(tmp_path, edit)
    with pytest.raises(DataError, match=re.escape(str(csv_path)) + ": .*" + message):
        read_dlc_labels(csv_path, on_error=on_error)


@pytest.mark.parametrize("name, edit", HARMLESS, ids=[v[0] for v in HARMLESS])
def test_harmless_edits_load_every_frame(tmp_path, name, edit):
    labels = read_dlc_labels(_project(tmp_path, edit))
    clean = read_dlc_labels(OPENFIELD_CSV)
    assert labels.frame_paths == clean.frame_paths and labels.bodyparts == clean.bodyparts and not labels.skipped
    same = np.isclose(labels.coords, clean.coords) | np.isnan(labels.coords)
    assert same.all() and np.isnan(labels.coords).sum() == (2 if name == "NaN written out" else 0)


def test_windows_line_ends_load(tmp_path):
    csv_path = _project(tmp_path, lambda lines: lines)
    csv_path.write_bytes(csv_path.read_bytes().replace(b"\n", b"\r\n"))
    labels = read_dlc_labels(csv_path)
    assert labels.frame_paths == read_dlc_labels(OPENFIELD_CSV).frame_paths and not np.isnan(labels.coords).any()


def test_everything_skipped_is_still_an_error(tmp_path):
    csv_path = _project(tmp_path, lambda lines: lines[:3] + [r + ",1" for r in lines[3:]])
    with pytest.raises(DataError, match=r"no labelled frame left after skipping 116 bad rows: line 4 \(frame "):
        read_dlc_labels(csv_path, on_error="skip")


def test_conversion_with_skip_lists_the_skipped_rows_in_split_json(tmp_path):
    csv_path = _project(tmp_path, lambda lines: _cell(6, 1, "inf")(_cell(10, 3, "abc")(lines)))
    with pytest.raises(DataError, match="line 6"):
        dlc_to_coco(csv_path.parents[2], tmp_path / "raise")
    paths = dlc_to_coco(csv_path.parents[2], tmp_path / "out", on_error="skip")
    record = json.loads(paths["split"].read_text())
    assert [(s["record"], s["column"]) for s in record["skipped"]] == [
        (f"line 6 (frame {FRAME})", "snout/x"), ("line 10 (frame labeled-data/m4s1/img0006.jpg)", "leftear/x")]
    assert record["frames_per_video"] == {"m4s1": N_FRAMES - 2}
    assert sum(c["frames"] for c in record["counts"].values()) == N_FRAMES - 2


def test_missing_frame_file_names_the_frame_without_a_doubled_path(tmp_path, capfd):
    csv_path = openfield_dlc_project(tmp_path / "openfield")
    (csv_path.parent / "img0002.jpg").unlink()
    with pytest.raises(FileNotFoundError) as err:
        dlc_to_coco(csv_path.parents[2], tmp_path / "out")
    message = str(err.value)
    assert message.startswith(f"{csv_path}: frame {FRAME}: image not found (looked for ")
    assert str(tmp_path / "openfield" / FRAME) in message
    doubled = "labeled-data/m4s1/labeled-data"
    assert doubled not in message and doubled not in capfd.readouterr().err  # OpenCV is not asked to read it
    paths = dlc_to_coco(csv_path.parents[2], tmp_path / "skip", on_error="skip")
    record = json.loads(paths["split"].read_text())
    assert [s["record"] for s in record["skipped"]] == [f"frame {FRAME}"]
    assert record["frames_per_video"] == {"m4s1": N_FRAMES - 1}


def test_unreadable_frame_file_names_the_frame(tmp_path):
    csv_path = openfield_dlc_project(tmp_path / "openfield")
    (csv_path.parent / "img0002.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=rf"{re.escape(str(csv_path))}: frame {FRAME}: .*img0002.jpg is not an "
                                        "image OpenCV can read"):
        dlc_to_coco(csv_path.parents[2], tmp_path / "out")


# ---------------------------------------------------------------- the .h5 twin
def test_h5_twin_reads_as_the_csv(tmp_path):
    h5 = openfield_h5_twin(openfield_dlc_project(tmp_path / "openfield"))
    from_h5, from_csv = read_dlc_labels(h5), read_dlc_labels(OPENFIELD_CSV)
    assert from_h5.frame_paths == from_csv.frame_paths and from_h5.bodyparts == from_csv.bodyparts
    np.testing.assert_array_equal(from_h5.coords, from_csv.coords)
    assert from_h5.scorer == "Pranav"


def _h5(tmp_path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    h5 = openfield_h5_twin(openfield_dlc_project(tmp_path / "openfield"))
    edit(pd.read_hdf(h5)).to_hdf(h5, key="df_with_missing", mode="w")
    h5.with_suffix(".csv").unlink()  # a project keeping only the .h5: the table converted is this one
    return h5


def _set(frame: str, column: tuple[str, str, str], value: float) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[frame, column] = value
        return df

    return edit


#: (pandas cannot write an .h5 table with two equal columns, so that variant has no .h5 form)
H5_ERRORS = [
    ("infinite x", _set(FRAME, ("Pranav", "snout", "x"), np.inf),
     rf"row 3 \(frame {FRAME}\), column snout/x: 'inf' is not a finite coordinate"),
    ("frame listed twice", lambda df: pd.concat([df, df.iloc[[2]]]),
     rf"frame {FRAME}: listed 2 times \(row 3, row 117\)"),
    ("no labelled frame", lambda df: df.iloc[:0], r"no labelled frame: the file holds only its header rows"),
    ("levels out of order", lambda df: df.reorder_levels([0, 2, 1], axis=1),
     r"header rows \['scorer', 'coords', 'bodyparts'\]"),
]


@pytest.mark.parametrize("name, edit, message", H5_ERRORS, ids=[v[0] for v in H5_ERRORS])
def test_h5_table_is_checked_as_the_csv(tmp_path, name, edit, message):
    h5 = _h5(tmp_path, edit)
    with pytest.raises(DataError, match=re.escape(str(h5)) + ": " + message):
        dlc_to_coco(h5.parents[2], tmp_path / "out")


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + b"\0" * 64, b"scorer,Pranav\n"],
                         ids=["empty", "truncated HDF5", "CSV text"])
def test_unreadable_h5_names_the_file(tmp_path, content):
    h5 = tmp_path / "CollectedData_Pranav.h5"
    h5.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(str(h5)) + r": not a readable DeepLabCut \.h5 label table "
                                        r"\(pandas reported: \w+"):
        read_dlc_labels(h5)


def test_csv_and_h5_that_disagree_are_named(tmp_path, caplog):
    csv_path = openfield_dlc_project(tmp_path / "openfield")
    openfield_h5_twin(csv_path)
    csv_path.write_text("\n".join(_cell(6, 1, "12.5")(list(LINES))) + "\n")  # edited by hand after the save
    paths = dlc_to_coco(csv_path.parents[2], tmp_path / "out")
    warning = next(r.getMessage() for r in caplog.records if "disagree" in r.getMessage())
    assert warning.startswith(f"{csv_path} and CollectedData_Pranav.h5 disagree: 1 frame(s) differ, first frame "
                              f"{FRAME}, column snout/x: 12.5 in CollectedData_Pranav.csv, 12.048 in "
                              "CollectedData_Pranav.h5")
    assert "Converting CollectedData_Pranav.csv (CollectedData_Pranav.csv was saved last)" in warning
    assert "train" in paths
    caplog.clear()
    openfield_h5_twin(csv_path)  # the twins agree again: not a word
    dlc_to_coco(csv_path.parents[2], tmp_path / "again")
    assert not [r for r in caplog.records if "disagree" in r.getMessage()]


def test_a_bad_h5_twin_is_named_beside_the_csv_converted(tmp_path, caplog):
    csv_path = openfield_dlc_project(tmp_path / "openfield")
    h5 = openfield_h5_twin(csv_path)
    _set(FRAME, ("Pranav", "snout", "x"), np.inf)(pd.read_hdf(h5)).to_hdf(h5, key="df_with_missing", mode="w")
    dlc_to_coco(csv_path.parents[2], tmp_path / "out")
    warning = next(r.getMessage() for r in caplog.records if "disagree" in r.getMessage())
    assert f"CollectedData_Pranav.h5 does not pass the checks ({h5}: row 3 (frame {FRAME}), column snout/x" in warning
