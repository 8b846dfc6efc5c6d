"""BlurPool2d forward speed against timm's BlurPool2d, antialiased-cnns' BlurPool and a plain copy.

Input (8, 64, 112, 112) float32, filter 3, stride 2, reflect padding. Every candidate runs once per round,
in a rotating order (A and B interleaved); the script prints medians over the rounds and the ratios

    shiftlab / faster peer   (target <= 0.8)
    shiftlab / x.clone()     (the memory-bound floor; target <= 2.5)

It also times the alternatives considered for the implementation (depthwise conv2d, single-channel conv2d
on (B*C, 1, H, W)) and checks that all outputs agree. The measurement is repeated in fresh processes
(``--processes``): the speed of a strided copy depends on where the input was allocated, which changes
from one process to the next (x.clone() alone by up to 5x here); printed are each process's times and the
median of the ratios. antialiased-cnns is not a dependency: install it for the benchmark only
(``pip install --no-deps --target /tmp/aacnn antialiased-cnns`` and run with ``PYTHONPATH=/tmp/aacnn``);
without it that peer is skipped with a message.

Run: ``python benchmarks/bench_blurpool.py [--rounds 25] [--processes 5] [--threads N]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from shiftlab.layers import BlurPool2d, binomial_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    child_or_runs,
    interleaved,
    note_if_aacnn_missing,
    print_runs,
    process_options,
    ratio_summary,
)

OURS = "shiftlab BlurPool2d"
CLONE = "x.clone()"
PEERS = ("timm BlurPool2d", "antialiased-cnns BlurPool")


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of each candidate in this process (outputs checked against shiftlab's first)."""
    torch.manual_seed(0)
    x = torch.randn(8, 64, 112, 112)
    channels = x.shape[1]
    ours = BlurPool2d(channels, filter_size=3, stride=2, padding_mode="reflect")
    weight = binomial_filter(3).expand(channels, 1, 3, 3).contiguous()

    def depthwise_conv():
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), weight, stride=2, groups=channels)

    def single_channel_conv():
        b, c, h, w = x.shape
        y = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="reflect")
        return F.conv2d(y, weight[:1], stride=2).reshape(b, c, (h + 1) // 2, (w + 1) // 2)

    candidates = {OURS: lambda: ours(x), CLONE: x.clone,
                  "alt: depthwise conv2d": depthwise_conv, "alt: single-channel conv2d": single_channel_conv}
    from timm.layers import BlurPool2d as TimmBlurPool2d
    timm_layer = TimmBlurPool2d(channels, filt_size=3, stride=2, pad_mode="reflect")
    candidates[PEERS[0]] = lambda: timm_layer(x)
    try:
        from antialiased_cnns import BlurPool as AacnnBlurPool
    except ImportError:
        pass
    else:
        aacnn_layer = AacnnBlurPool(channels, filt_size=3, stride=2, pad_type="reflect")
        candidates[PEERS[1]] = lambda: aacnn_layer(x)
    with torch.no_grad():
        reference = ours(x)
        for name, fn in candidates.items():
            if name != CLONE:
                difference = (fn() - reference).abs().max().item()
                if difference > 1e-5:
                    raise SystemExit(f"{name} differs from shiftlab by {difference:.2e}")
        return interleaved(candidates, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=25, processes=5)
    args = parser.parse_args()
    if not args.child:
        note_if_aacnn_missing()
    runs = child_or_runs(args, __file__, measure)
    if runs is None:
        return
    print(f"input (8, 64, 112, 112) float32, filter 3, stride 2, reflect; {torch.get_num_threads()} threads; "
          f"{args.processes} processes x {args.rounds} interleaved rounds (medians per process); all outputs agree "
          "with shiftlab's to 1e-5")
    print_runs(runs, "ms", 28, 2)
    peers = [p for p in PEERS if p in runs[0]]
    best_peer = min(peers, key=lambda p: statistics.median(run[p] for run in runs))
    print(f"\nshiftlab / faster peer ({best_peer}): {ratio_summary(runs, OURS, best_peer)}  (target <= 0.8)")
    print(f"shiftlab / x.clone():  {ratio_summary(runs, OURS, CLONE)}  (target <= 2.5)")
    for peer in peers:
        if peer != best_peer:
            print(f"shiftlab / {peer}: {ratio_summary(runs, OURS, peer)}")


if __name__ == "__main__":
    main()
