"""DeepLabCut-layout pose tables written by clamp_pl.formats.dlc: read back with pandas as DeepLabCut /
lightning-pose users do, HDF5 where PyTables is installed, smoothed tables written beside the raw one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clamp_pl.formats.dlc import (
    PoseTable,
    table_from_instances,
    write_dlc_csv,
    write_dlc_h5,
)
from clamp_pl.inference.smoothing import write_pose_table

PARTS = ["snout", "leftear", "rightear", "tailbase"]


def _inst(xy, scores, score):
    return {"keypoints": np.asarray(xy, np.float32), "scores": np.asarray(scores, np.float32), "score": score}


def _table(t=30, seed=0):
    rng = np.random.default_rng(seed)
    xy = np.cumsum(rng.normal(0, 2, (t, 1, 4, 2)), axis=0) + 100
    lk = rng.uniform(0.5, 1.0, (t, 1, 4))
    return PoseTable(list(range(t)), xy, lk, PARTS, "clamp")


def test_single_animal_csv_reads_back_with_pandas(tmp_path):
    table = _table()
    table.xy[3, 0, 1] = np.nan  # one missing point
    table.likelihood[3, 0, 1] = np.nan
    path = write_dlc_csv(table, tmp_path / "walk_clamp.csv")
    df = pd.read_csv(path, header=[0, 1, 2], index_col=0)
    assert df.columns.names == ["scorer", "bodyparts", "coords"]
    assert list(df.columns.get_level_values("bodyparts").unique()) == PARTS
    assert list(df.columns.get_level_values("coords")[:3]) == ["x", "y", "likelihood"]
    assert df.index.tolist() == list(range(30))
    snout = df["clamp"]["snout"]
    np.testing.assert_allclose(snout["x"], table.xy[:, 0, 0, 0], atol=1e-3)
    np.testing.assert_allclose(snout["likelihood"], table.likelihood[:, 0, 0], atol=1e-4)
    assert np.isnan(df["clamp"]["leftear"]["x"].iloc[3]) and df.notna().sum().sum() == 30 * 12 - 3
    # the lightning-pose way: all values as (T, K, 3)
    arr = df.to_numpy().reshape(30, 4, 3)
    np.testing.assert_allclose(arr[:, 2, :2], table.xy[:, 0, 2], atol=1e-3)


def test_multi_animal_csv_has_the_individuals_row(tmp_path):
    rows = [[],  # a first row without any prediction is still a row (pandas drops a first row of empty cells)
            [_inst([[1, 1]] * 4, [0.5] * 4, 0.5), _inst([[9, 9]] * 4, [0.9] * 4, 0.9)],
            [],
            [_inst([[5, 5]] * 4, [0.7] * 4, 0.7)]]
    table = table_from_instances(["a/0.jpg", "a/1.jpg", "a/2.jpg", "b/1.jpg"], rows, PARTS, "clamp",
                                 multi_animal=True)
    df = pd.read_csv(write_dlc_csv(table, tmp_path / "p.csv"), header=[0, 1, 2, 3], index_col=0)
    assert df.columns.names == ["scorer", "individuals", "bodyparts", "coords"]
    assert list(df.columns.get_level_values("individuals").unique()) == ["animal1", "animal2"]
    assert df.index.tolist() == ["a/0.jpg", "a/1.jpg", "a/2.jpg", "b/1.jpg"] and df.loc["a/0.jpg"].isna().all()
    row = df.loc["a/1.jpg"]["clamp"]
    assert row["animal1"]["snout"]["x"] == 9 and row["animal2"]["snout"]["x"] == 1  # best score first
    assert df.loc["a/2.jpg"].isna().all() and df.loc["b/1.jpg"]["clamp"]["animal2"].isna().all()


def test_single_animal_keeps_the_best_instance():
    rows = [[_inst([[1, 1]] * 4, [0.5] * 4, 0.5), _inst([[9, 9]] * 4, [0.9] * 4, 0.9)]]
    table = table_from_instances([0], rows, PARTS)
    assert table.individuals is None and table.xy.shape == (1, 1, 4, 2) and table.xy[0, 0, 0, 0] == 9


def test_h5_matches_the_csv(tmp_path):
    pytest.importorskip("tables")
    table = _table()
    h5 = write_dlc_h5(table, tmp_path / "walk.h5")
    df_h5 = pd.read_hdf(h5, "df_with_missing")
    df_csv = pd.read_csv(write_dlc_csv(table, tmp_path / "walk.csv"), header=[0, 1, 2], index_col=0)
    assert list(df_h5.columns) == list(df_csv.columns)
    np.testing.assert_allclose(df_h5.to_numpy(), df_csv.to_numpy(), atol=1e-3)


def test_filtered_files_are_written_beside_the_raw_ones(tmp_path):
    table = _table()
    table.xy[10, 0, 0] += 80.0  # a spike the filter removes
    raw_before = table.xy.copy()
    files = write_pose_table(table, tmp_path / "walk_clamp", {"method": "median", "window": 5})
    assert files["csv"].name == "walk_clamp.csv" and files["filtered_csv"].name == "walk_clamp_filtered.csv"
    raw = pd.read_csv(files["csv"], header=[0, 1, 2], index_col=0)
    filt = pd.read_csv(files["filtered_csv"], header=[0, 1, 2], index_col=0)
    np.testing.assert_array_equal(table.xy, raw_before)  # the table itself is not changed
    np.testing.assert_allclose(raw.to_numpy().reshape(30, 4, 3)[..., :2], raw_before[:, 0], atol=1e-3)
    assert abs(filt["clamp"]["snout"]["x"].iloc[10] - raw["clamp"]["snout"]["x"].iloc[10]) > 40
    np.testing.assert_allclose(filt.xs("likelihood", level="coords", axis=1),
                               raw.xs("likelihood", level="coords", axis=1))
    if files["h5"] is not None:
        assert files["h5"].is_file() and files["filtered_h5"].is_file()


def test_multi_animal_is_not_smoothed(tmp_path):
    rows = [[_inst([[1, 1]] * 4, [0.9] * 4, 0.9)]] * 5
    table = table_from_instances(list(range(5)), rows, PARTS, multi_animal=True)
    files = write_pose_table(table, tmp_path / "x", {"method": "median"})
    assert files["csv"].is_file() and files["filtered_csv"] is None


def test_inconsistent_table_is_an_error():
    with pytest.raises(ValueError, match="inconsistent shapes"):
        PoseTable([0, 1], np.zeros((3, 1, 4, 2)), np.zeros((3, 1, 4)), PARTS)
    with pytest.raises(ValueError, match="need names"):
        PoseTable([0], np.zeros((1, 2, 4, 2)), np.zeros((1, 2, 4)), PARTS)
