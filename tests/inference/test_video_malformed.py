"""Malformed video files given to ``run_video_prediction`` and to the ``clamp_pl.predict`` command, each made from
a real clip: the first 20 frames of the openfield mouse that ships with the package, written as an MJPG .avi
(OpenCV writes it without FFmpeg). Every variant that cannot be read is an error naming the file, raised before
any output is written."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import pytest
from helpers.projects import OPENFIELD_CSV

from clamp_pl.api import load_model
from clamp_pl.inference.video import VideoReadError, run_video_prediction
from clamp_pl.predict import predict

N_FRAMES = 20


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    frames = sorted(OPENFIELD_CSV.parent.glob("img*.jpg"))[:N_FRAMES]
    path = tmp_path_factory.mktemp("clip") / "m4s1.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 240))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.imread(str(frame)))
    writer.release()
    return path


@pytest.fixture(scope="module")
def estimator(tiny_run):
    return load_model(tiny_run, device="cpu")


#: (variant, file name, bytes of the clip -> bytes written)
UNREADABLE = [
    ("empty file", "empty.avi", lambda data: b""),
    ("text named .mp4", "notes.mp4", lambda data: b"frame,x,y\n" * 50),
    ("header only", "header.avi", lambda data: data[:600]),
    ("frames zeroed", "zeroed.avi", lambda data: data[:4096] + bytes(len(data) - 4096)),
]


@pytest.mark.parametrize("name, file_name, make", UNREADABLE, ids=[v[0] for v in UNREADABLE])
def test_unreadable_video_is_an_error_naming_the_file(estimator, clip, tmp_path, name, file_name, make):
    bad = tmp_path / file_name
    bad.write_bytes(make(clip.read_bytes()))
    out = tmp_path / "out"
    with pytest.raises(VideoReadError, match=re.escape(str(bad)) + ": cannot be opened as a video"):
        run_video_prediction(estimator, bad, out)
    assert not out.exists()  # nothing that looks like a finished run


def test_the_predict_command_names_the_file(make_cfg, tiny_run, clip, tmp_path):
    bad = tmp_path / "empty.mp4"
    bad.write_bytes(b"")
    cfg = make_cfg(f"ckpt_path={tiny_run}", f"input={bad}", f"output_dir={tmp_path / 'out'}", "device=cpu",
                   config_name="predict", fast=False)
    with pytest.raises(VideoReadError, match=re.escape(str(bad))):
        predict(cfg)


def test_missing_video_names_the_path(make_cfg, tiny_run, tmp_path):
    missing = tmp_path / "nowhere.mp4"
    cfg = make_cfg(f"ckpt_path={tiny_run}", f"input={missing}", f"output_dir={tmp_path / 'out'}", "device=cpu",
                   config_name="predict", fast=False)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        predict(cfg)


def test_the_intact_clip_reads_every_frame(estimator, clip, tmp_path):
    summary = run_video_prediction(estimator, clip, tmp_path / "out")
    assert summary["frames"] == N_FRAMES


def test_truncated_video_is_named(estimator, clip, tmp_path, caplog):
    cut = tmp_path / "cut.avi"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    try:
        summary = run_video_prediction(estimator, cut, tmp_path / "out")
    except VideoReadError as err:
        assert str(cut) in str(err)
        return
    assert summary["frames"] < N_FRAMES
    assert any(str(cut) in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
