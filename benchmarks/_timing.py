"""Shared timing for the benchmark scripts: A and B interleaved, medians over rounds."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
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


def in_fresh_processes(command: list[str], processes: int) -> list[dict[str, float]]:
    """Run ``command`` (a benchmark in child mode printing one JSON dict of medians) in ``processes`` new processes.

    Where the allocator puts a large tensor differs between processes and can change a strided kernel's
    speed by tens of percent; repeating the whole measurement in fresh processes shows that spread, and
    the caller reports the median of the per-process ratios.
    """
    runs = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, *command], check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def ratio_summary(runs: list[dict[str, float]], name: str, base: str) -> str:
    """``median R (per process r1 r2 ...)`` for the ratio ``name / base`` over the runs."""
    ratios = [run[name] / run[base] for run in runs]
    return f"median {statistics.median(ratios):.2f} (per process {' '.join(f'{r:.2f}' for r in ratios)})"


def print_runs(runs: list[dict[str, float]], unit: str = "ms", width: int = 44, decimals: int = 1) -> None:
    """One line per timed candidate: its name and its median time in each process, in ``unit`` (ms or s)."""
    scale = {"ms": 1e3, "s": 1.0}[unit]
    for name in runs[0]:
        times = " ".join(f"{run[name] * scale:7.{decimals}f}" for run in runs)
        print(f"  {name:{width}s} {unit}: {times}")


def process_options(parser: argparse.ArgumentParser, rounds: int, processes: int) -> None:
    """Add ``--rounds``, ``--processes``, ``--threads`` and the hidden ``--child`` to a benchmark's parser."""
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--processes", type=int, default=processes)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def child_or_runs(args: argparse.Namespace, script: str, measure, **options) -> list[dict[str, float]] | None:
    """In a child, print ``measure(args.rounds, **options)`` as JSON and return None; else spawn the children.

    ``options`` are passed to the children as ``--name value``, so the script's parser must accept them.
    """
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.rounds, **options)))
        return None
    command = [script, "--child", "--rounds", str(args.rounds)]
    for name, value in options.items():
        command += [f"--{name}", str(value)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return in_fresh_processes(command, args.processes)


def note_if_aacnn_missing() -> None:
    """Say how to install antialiased-cnns (a peer, never a dependency) when it is not importable."""
    import importlib.util

    if importlib.util.find_spec("antialiased_cnns") is None:
        print("antialiased-cnns not installed: skipping that peer "
              "(pip install --no-deps --target /tmp/aacnn antialiased-cnns; PYTHONPATH=/tmp/aacnn)")
