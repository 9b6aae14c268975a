"""Prediction progress off a terminal: plain lines every 10 %, not carriage-return updates."""

from __future__ import annotations

import io

from tqdm import tqdm

from clamp_pl.inference.progress import LineProgress, progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_one_line_every_ten_percent():
    out = io.StringIO()
    with progress(1000, "clip.mp4", "frame", stream=out) as bar:
        assert isinstance(bar, LineProgress)
        for _ in range(1000):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split(": ")[1].split("%")[0] for line in lines] == [str(p) for p in range(10, 101, 10)]
    assert lines[-1].startswith("clip.mp4: 100% (1000/1000 frame,")


def test_unknown_total_reports_where_it_ended():
    out = io.StringIO()
    with progress(None, "stream", "frame", stream=out) as bar:
        bar.update(7)
    assert out.getvalue().startswith("stream: (7 frame,")


def test_a_terminal_gets_a_tqdm_bar():
    bar = progress(10, "x", "img", stream=_Tty())
    assert isinstance(bar, tqdm)
    bar.close()
