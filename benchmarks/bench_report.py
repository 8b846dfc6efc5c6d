"""Wall, user and system time of ``shiftlab report`` (default and --quick), with shiftlab's allocator settings
and, side by side in the same run, with glibc's defaults (``SHIFTLAB_KEEP_ALLOCATOR=1``, the "before").

Targets (issue 11), on a quiet 2-core machine: the default report <= 100 s, ``--quick`` <= 20 s, system time
<= 10% of user time. Each command runs in a fresh process (the CPU times are those of the process and its
children, from ``os.wait4``); the kinds alternate over ``--repeats`` rounds and medians are printed.

Usage:  python benchmarks/bench_report.py [--repeats 1] [--skip-before] [--quick-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(args: list[str], env: dict) -> tuple[float, float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "shiftlab", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"shiftlab {' '.join(args)} failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_utime, usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-before", action="store_true", help="measure only shiftlab's settings")
    parser.add_argument("--quick-only", action="store_true")
    args = parser.parse_args()
    kinds = ["now"] if args.skip_before else ["now", "before"]
    modes = [["--quick"]] if args.quick_only else [["--quick"], []]
    with tempfile.TemporaryDirectory() as tmp:
        results: dict = {}
        for r in range(args.repeats):
            for mode in modes:
                for kind in kinds:
                    env = {**os.environ, "SHIFTLAB_KEEP_ALLOCATOR": "1" if kind == "before" else "0"}
                    env.pop("MALLOC_MMAP_THRESHOLD_", None)
                    env.pop("MALLOC_TRIM_THRESHOLD_", None)
                    out = os.path.join(tmp, f"r{r}{kind}{len(mode)}")
                    results.setdefault((tuple(mode), kind), []).append(
                        timed(["report", *mode, "--out", out, "--no-progress"], env))
        for (mode, kind), runs in results.items():
            wall, user, sys_ = (statistics.median(v) for v in zip(*runs))
            name = "report --quick" if mode else "report        "
            print(f"shiftlab {name} [{kind:6s}] wall {wall:6.1f} s  user {user:6.1f} s  sys {sys_:5.1f} s  "
                  f"sys/user {100 * sys_ / max(user, 1e-9):4.1f}%  ({len(runs)} run(s))")
        print("targets: default <= 100 s, --quick <= 20 s, sys/user <= 10% (on a quiet 2-core machine)")


if __name__ == "__main__":
    main()
