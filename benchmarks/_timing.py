"""Shared timing for the benchmark scripts: A and B interleaved, medians over rounds."""

from __future__ import annotations

import statistics
import time


def interleaved(candidates: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each candidate; one call of each per round, order rotated every round.

    Interleaving matters on shared machines, where load drifts: every candidate sees the same drift.
    """
    names = list(candidates)
    times = {name: [] for name in names}
    for fn in candidates.values():  # warm-up
        fn()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
