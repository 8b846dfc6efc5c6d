"""Progress that a log can read (issue 23, point 8): when stderr is not a terminal, plain lines with the counts, at
most one every PLAIN_EVERY_S seconds and one at the end; no ANSI codes, no carriage returns."""

from __future__ import annotations

import re

from shiftlab import _progress
from shiftlab._progress import PLAIN_EVERY_S, Bar, track


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_feature_plain_lines_are_rate_limited_and_carry_the_counts(capsys, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(_progress.time, "monotonic", clock)
    with Bar(960, "audit", enabled=True, status=True) as bar:  # capsys's stderr is not a terminal
        for step in range(960):
            clock.now += 0.5  # 2 steps a second: a line every 20 steps, never two within 10 s
            bar.advance(f"loss {step / 1000:.3f}")
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert len(lines) == 480 // PLAIN_EVERY_S  # 480 s at one line per 10 s; the last one is the end's
    assert lines[0] == "audit: 20/960 (2%), 0:00:10 elapsed, ~0:07:50 left, loss 0.019"
    assert lines[-1] == "audit: 960/960 (100%), 0:08:00 elapsed, loss 0.959"
    counts = [int(re.match(r"audit: (\d+)/960", line).group(1)) for line in lines]
    assert counts == sorted(counts) and all(b - a == 20 for a, b in zip(counts, counts[1:]))


def test_feature_the_end_is_always_shown_and_a_fast_run_gives_one_line(capsys, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(_progress.time, "monotonic", clock)
    assert list(track(range(7), "figures", enabled=True)) == list(range(7))  # within a second: the end only
    assert capsys.readouterr().err == "figures: 7/7 (100%), 0:00:00 elapsed\n"
    with Bar(10, "resumed", completed=4, enabled=True) as bar:  # a resumed run starts at its step
        clock.now += 30
        bar.advance()
    assert capsys.readouterr().err == "resumed: 5/10 (50%), 0:00:30 elapsed, ~0:02:30 left\n"


def test_exception_disabled_progress_prints_nothing(capsys):
    with Bar(3, "quiet") as bar:
        bar.advance()
    assert list(track([1, 2], "quiet")) == [1, 2]
    assert capsys.readouterr().err == ""
