"""APSPool2d speed over a plain stride-2 slice (``x[..., ::2, ::2].contiguous()``).

Input (8, 64, 112, 112) float32. Candidates run once per round in a rotating order (interleaved);
medians over the rounds. Printed: APSPool2d (choosing its phase, then a gather), APS written directly from
its definition (stack the 4 components, their norms, a gather: the plain peer), APS with a phase already
chosen (what the layers of a residual block do when they share one), and APS with a 3-tap blur
first, each over the slice. Target for APSPool2d: under 3x.

The speed of a strided copy depends on where the allocator placed the input, which differs from process to
process, so the measurement is repeated in several fresh processes (``--processes``) and the script prints
each process's ratios and their median.

Run: ``python benchmarks/bench_aps.py [--rounds 25] [--processes 5] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from shiftlab.layers import APSPool2d, aps_phase, aps_pool2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import child_or_runs, interleaved, process_options, ratio_summary  # noqa: E402

SLICE = "x[..., ::2, ::2].contiguous()"


def plain_aps(x: torch.Tensor) -> torch.Tensor:
    """APS from its definition: stack the 4 components, take their norms, gather the largest."""
    comps = torch.stack([x[..., i::2, j::2] for i in range(2) for j in range(2)], dim=1)  # (B, 4, C, h, w)
    b = comps.shape[0]
    norms = torch.linalg.vector_norm(comps.flatten(2), dim=2)
    index = norms.argmax(1).reshape(b, 1, 1, 1, 1).expand(b, 1, *comps.shape[2:])
    return comps.gather(1, index).squeeze(1)


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of each candidate in this process."""
    torch.manual_seed(0)
    x = torch.randn(8, 64, 112, 112)
    layer = APSPool2d(stride=2)
    blurred = APSPool2d(stride=2, filter_size=3)
    phase = aps_phase(x)
    candidates = {
        SLICE: lambda: x[..., ::2, ::2].contiguous(),
        "APSPool2d": lambda: layer(x),
        "plain APS (definition)": lambda: plain_aps(x),
        "APS, phase given (shared)": lambda: aps_pool2d(x, phase=phase),
        "APSPool2d, filter 3": lambda: blurred(x),
    }
    with torch.no_grad():
        return interleaved(candidates, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=25, processes=5)
    args = parser.parse_args()
    runs = child_or_runs(args, __file__, measure)
    if runs is None:
        return
    print(f"input (8, 64, 112, 112) float32, stride 2; {torch.get_num_threads()} threads; {args.processes} "
          f"processes x {args.rounds} interleaved rounds (medians per process)")
    names = list(runs[0])
    for name in names:
        times = " ".join(f"{run[name] * 1e3:6.2f}" for run in runs)
        print(f"  {name:32s} ms: {times}")
    print()
    for name in names[1:]:
        target = "  (target < 3)" if name == "APSPool2d" else ""
        print(f"{name} / slice: {ratio_summary(runs, name, SLICE)}{target}")


if __name__ == "__main__":
    main()
