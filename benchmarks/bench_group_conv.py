"""Cost of the rotation-equivariant layers against plain convolutions (forward, float32, no grad).

Input: batch 8, C = 16 channels (fields), 32x32. Candidates run once per round in a rotating order
(interleaved); medians over the rounds; the whole measurement repeated in fresh processes, and the median of
the per-process ratios printed. Printed ratios:

- ``GroupConv2d`` p4 (C -> C fields, 3x3) over ``nn.Conv2d(C, C, 3)``: a plain convolution with the same
  number of output channels; the group convolution computes 4 maps per channel from 4x the inputs (16x the
  multiply-accumulates);
- the same over ``nn.Conv2d(4C, 4C, 3)`` on the same (B, 4C, H, W) tensor: equal multiply-accumulates, so the
  ratio is the price of the filter expansion (``rot90`` and ``roll`` of the weights) and the reshapes;
- ``LiftConv2d`` p4 (1 -> C, 3x3, the first layer of a digit network) over ``nn.Conv2d(1, C, 3)``;
- ``GroupConv2d`` p4m (8 maps per channel) over ``nn.Conv2d(C, C, 3)``;
- ``HarmonicConv2d`` (C -> C channels, 5x5, rotation orders 0, 1 in and out) over ``nn.Conv2d(C, C, 5)``:
  the harmonic layer's cost; and over ``nn.Conv2d(4C, 4C, 5)``, the real convolution it runs (2 streams x
  real and imaginary parts), so the ratio is its filter synthesis and complex/real layout copies;
- the three networks of ``shiftlab experiment rotation`` (about 24k parameters each: ``SmallCNN`` width 16,
  ``GroupCNN`` p4 width 8, ``HarmonicCNN`` width 12) on a batch of 100 digits-sized inputs (1, 32, 32), each
  over ``SmallCNN``.

Run: ``python benchmarks/bench_group_conv.py [--rounds 25] [--processes 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from shiftlab.experiments.nets import GroupCNN, HarmonicCNN, SmallCNN
from shiftlab.layers import GroupConv2d, HarmonicConv2d, LiftConv2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import child_or_runs, interleaved, process_options, ratio_summary  # noqa: E402

B, C, S = 8, 16, 32


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of each candidate in this process."""
    torch.manual_seed(0)
    image = torch.randn(B, 1, S, S)
    plain_in = torch.randn(B, C, S, S)
    wide_in = torch.randn(B, 4 * C, S, S)
    p4_in = torch.randn(B, C, 4, S, S)
    p4m_in = torch.randn(B, C, 8, S, S)
    harmonic_in = torch.randn(B, C, 2, S, S, dtype=torch.complex64)
    digits = torch.rand(100, 1, 32, 32)
    layers = {
        "conv C->C 3x3": (nn.Conv2d(C, C, 3, padding=1, bias=False), plain_in),
        "conv 4C->4C 3x3": (nn.Conv2d(4 * C, 4 * C, 3, padding=1, bias=False), wide_in),
        "conv 1->C 3x3": (nn.Conv2d(1, C, 3, padding=1, bias=False), image),
        "p4 GroupConv2d C->C 3x3": (GroupConv2d(C, C, 3), p4_in),
        "p4 LiftConv2d 1->C 3x3": (LiftConv2d(1, C, 3), image),
        "p4m GroupConv2d C->C 3x3": (GroupConv2d(C, C, 3, group="p4m"), p4m_in),
        "conv C->C 5x5": (nn.Conv2d(C, C, 5, padding=2, bias=False), plain_in),
        "conv 4C->4C 5x5": (nn.Conv2d(4 * C, 4 * C, 5, padding=2, bias=False), wide_in),
        "HarmonicConv2d C->C 5x5": (HarmonicConv2d(C, C, 5, in_orders=(0, 1), out_orders=(0, 1)), harmonic_in),
        "network: SmallCNN": (SmallCNN(width=16).eval(), digits),
        "network: GroupCNN p4": (GroupCNN("p4", width=8).eval(), digits),
        "network: HarmonicCNN": (HarmonicCNN(width=12).eval(), digits),
    }
    candidates = {name: (lambda layer=layer, x=x: layer(x)) for name, (layer, x) in layers.items()}
    with torch.no_grad():
        return interleaved(candidates, rounds)


RATIOS = [
    ("p4 GroupConv2d C->C 3x3", "conv C->C 3x3", "same output channels C (16x the MACs)"),
    ("p4 GroupConv2d C->C 3x3", "conv 4C->4C 3x3", "same tensors and MACs: the filter expansion's price"),
    ("p4 LiftConv2d 1->C 3x3", "conv 1->C 3x3", "lifting layer, same output channels"),
    ("p4m GroupConv2d C->C 3x3", "conv C->C 3x3", "same output channels C (64x the MACs)"),
    ("HarmonicConv2d C->C 5x5", "conv C->C 5x5", "same channels C (orders 0, 1: 16x the real MACs)"),
    ("HarmonicConv2d C->C 5x5", "conv 4C->4C 5x5", "the real convolution it runs: filter synthesis, layout"),
    ("network: GroupCNN p4", "network: SmallCNN", "the experiment's networks, ~24k parameters each"),
    ("network: HarmonicCNN", "network: SmallCNN", "the experiment's networks, ~24k parameters each"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=25, processes=3)
    args = parser.parse_args()
    runs = child_or_runs(args, __file__, measure)
    if runs is None:
        return
    print(f"batch {B}, C = {C}, {S}x{S}, float32 forward; {torch.get_num_threads()} threads; {args.processes} "
          f"processes x {args.rounds} interleaved rounds (medians per process)")
    for name in runs[0]:
        times = " ".join(f"{run[name] * 1e3:7.2f}" for run in runs)
        print(f"  {name:28s} ms: {times}")
    print()
    for name, base, note in RATIOS:
        print(f"{name} / {base}: {ratio_summary(runs, name, base)}  [{note}]")


if __name__ == "__main__":
    main()
