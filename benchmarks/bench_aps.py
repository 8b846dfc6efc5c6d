"""APSPool2d speed over a plain stride-2 slice (``x[..., ::2, ::2].contiguous()``).

Input (8, 64, 112, 112) float32. Candidates run once per round in a rotating order (interleaved);
medians over the rounds. Printed: APSPool2d (choosing its phase: norms in float64, then a gather),
APS with a phase already chosen (what the layers of a residual block do when they share one), and APS
with a 3-tap blur first, each over the slice. Target for APSPool2d: under 3x.

Run: ``python benchmarks/bench_aps.py [--rounds 25] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from shiftlab.layers import APSPool2d, aps_phase, aps_pool2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(8, 64, 112, 112)
    layer = APSPool2d(stride=2)
    blurred = APSPool2d(stride=2, filter_size=3)
    phase = aps_phase(x)
    candidates = {
        "x[..., ::2, ::2].contiguous()": lambda: x[..., ::2, ::2].contiguous(),
        "APSPool2d": lambda: layer(x),
        "APS, phase given (shared)": lambda: aps_pool2d(x, phase=phase),
        "APSPool2d, filter 3": lambda: blurred(x),
    }
    with torch.no_grad():
        medians = interleaved(candidates, args.rounds)
    print(f"input {tuple(x.shape)} float32, stride 2; {torch.get_num_threads()} threads, {args.rounds} interleaved "
          "rounds (medians)")
    for name, t in medians.items():
        print(f"  {name:32s} {t * 1e3:8.2f} ms")
    base = medians["x[..., ::2, ::2].contiguous()"]
    print()
    for name in list(candidates)[1:]:
        target = "  (target < 3)" if name == "APSPool2d" else ""
        print(f"{name} / slice: {medians[name] / base:.2f}{target}")


if __name__ == "__main__":
    main()
