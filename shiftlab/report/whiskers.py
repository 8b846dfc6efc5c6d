"""What the whiskers and bands of an experiment figure show: one rule for every figure of ``shiftlab experiment``.

With two seeds or more, the spread over seeds: +-1 sample standard deviation. With one seed there is no spread
over seeds (a standard deviation of one value is 0, and caps drawn at 0 would claim a precision nobody measured):
the single run's own 95% interval over images is drawn instead, and the note says so. Where the run kept no
interval, nothing is drawn and the note says that too. :func:`whisker` gives a bar's or point's whisker,
:func:`band` a curve's band, :func:`whisker_note` the words for a legend or caption. Nothing is recomputed: the
values are the saved results' (``summary`` over seeds, ``runs[0]``'s interval).
"""

from __future__ import annotations

__all__ = ["seed_count", "whisker", "band", "whisker_note"]


def seed_count(result: dict) -> int:
    """The number of seeds behind an experiment result's means."""
    return len(result.get("seeds") or [])


def _finite(pair) -> bool:
    return (isinstance(pair, (list, tuple)) and len(pair) == 2
            and all(isinstance(v, (int, float)) and v == v for v in pair))


def whisker(entry: dict, key: str, seeds: int, complement: bool = False) -> tuple[float, list | None]:
    """The value of metric ``key`` of one variant (``entry``: its ``summary`` and ``runs``) and its whisker.

    Returns ``(value, err)``: ``err`` is ``[[below], [above]]`` for matplotlib's ``yerr``/``xerr`` (+-1 s.d. over
    ``seeds`` >= 2, else the run's 95% interval), or None where there is nothing to draw. ``complement``: the
    value is ``1 - mean`` (e.g. top-1 kept for a P(top-1 change)), its interval flipped.
    """
    stats = entry["summary"][key]
    mean = float(stats["mean"])
    value = 1.0 - mean if complement else mean
    if seeds >= 2:
        sd = float(stats.get("std") or 0.0)
        return value, [[sd], [sd]]
    runs = entry.get("runs") or []
    run = runs[0].get(key) if runs else None
    ci = run.get("ci") if isinstance(run, dict) else None
    if not _finite(ci):
        return value, None
    low, high = (1.0 - float(ci[1]), 1.0 - float(ci[0])) if complement else (float(ci[0]), float(ci[1]))
    return value, [[max(value - low, 0.0)], [max(high - value, 0.0)]]


def band(curve: dict, intervals, seeds: int) -> tuple[list[float], list[float]] | None:
    """The band around a curve (``curve``: ``{"mean": [...], "std": [...]}`` over seeds): mean +-1 s.d. with
    ``seeds`` >= 2, else the single run's pointwise 95% intervals (``intervals``: ``[[low, high], ...]``, or
    None). Returns ``(lower, upper)``, or None where there is nothing to draw."""
    mean = [float(m) for m in curve["mean"]]
    if seeds >= 2:
        std = [float(s) for s in curve["std"]]
        return [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
    if not intervals or len(intervals) != len(mean) or not all(_finite(ci) for ci in intervals):
        return None
    return [float(ci[0]) for ci in intervals], [float(ci[1]) for ci in intervals]


def whisker_note(seeds: int, what: str = "whiskers") -> str:
    """The words for what ``what`` (whiskers, bands, "bars/bands") show with ``seeds`` seeds."""
    if seeds >= 2:
        return f"{what}: +-1 s.d. over {seeds} seeds"
    return f"{what}: the run's 95% interval over images (no s.d. with one seed)"
