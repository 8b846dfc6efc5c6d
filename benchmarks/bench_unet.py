"""U-Net inference: the APS-U fix against the original and against blur-only fixes; unpooling against interpolation.

U-Net (:func:`shiftlab.models.unet`, depth 4, width 16, 21 classes, circular padding), input (8, 3, 128, 128)
float32, eval mode, no grad. Candidates, each against the original (strided convolutions, transposed
convolutions):

- ``APS-U (antialias aps)``: the original converted by ``shiftlab.antialias(net, "aps", circular=True)``: APS (blur
  3) after each formerly strided conv, each transposed conv unpooled at its encoder's phase (blur 3);
- ``APS-U (built aps + unpool)``: ``unet(subsampling="aps", upsampling="unpool")``, no blur;
- ``blur only (antialias blur)``: the original converted by ``shiftlab.antialias(net, "blur", circular=True)``:
  BlurPool after each formerly strided conv and a blur after each transposed conv (no exact guarantee).

Layers, on (8, 64, 64, 64) -> (8, 64, 128, 128): ``aps_unpool2d`` (phase given; filter 1 and filter 3) against
``F.interpolate`` of the same output size (nearest, and bilinear).

Candidates run once per round in a rotating order (interleaved), medians per process, in several fresh processes
(``--processes``); the ratios printed are the medians of the per-process ratios.

Run: ``python benchmarks/bench_unet.py [--rounds 7] [--processes 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import child_or_runs, interleaved, print_runs, process_options, ratio_summary  # noqa: E402

ORIGINAL = "original (stride + transpose)"
NEAREST = "F.interpolate nearest x2"
NETWORKS = (ORIGINAL, "APS-U (antialias aps)", "APS-U (built aps + unpool)", "blur only (antialias blur)")
LAYERS = (NEAREST, "F.interpolate bilinear x2", "aps_unpool2d", "aps_unpool2d, filter 3")


def networks() -> dict:
    """The four U-Nets, same weights where the architecture allows (the conversions copy the original's)."""
    from shiftlab import antialias
    from shiftlab.models import unet

    torch.manual_seed(0)
    original = unet(4, 16, 21, 3, "stride", "transpose", circular=True).eval()
    aps, _ = antialias(original, method="aps", circular=True)
    blur, _ = antialias(original, method="blur", circular=True)
    built = unet(4, 16, 21, 3, "aps", "unpool", circular=True).eval()
    return dict(zip(NETWORKS, (original, aps.eval(), built, blur.eval())))


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of each candidate in this process."""
    from shiftlab.layers import aps_unpool2d

    torch.manual_seed(0)
    x = torch.rand(8, 3, 128, 128)
    y = torch.randn(8, 64, 64, 64)
    phase = torch.randint(0, 4, (8,))
    nets = networks()
    candidates = {name: (lambda net=net: net(x)) for name, net in nets.items()}
    candidates.update({
        NEAREST: lambda: F.interpolate(y, scale_factor=2, mode="nearest"),
        LAYERS[1]: lambda: F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False),
        LAYERS[2]: lambda: aps_unpool2d(y, phase),
        LAYERS[3]: lambda: aps_unpool2d(y, phase, filter_size=3),
    })
    with torch.no_grad():
        return interleaved(candidates, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=7, processes=3)
    args = parser.parse_args()
    runs = child_or_runs(args, __file__, measure)
    if runs is None:
        return
    print(f"U-Net depth 4 width 16, input (8, 3, 128, 128); unpooling (8, 64, 64, 64) -> 128x128; float32, "
          f"{torch.get_num_threads()} threads; {args.processes} processes x {args.rounds} interleaved rounds")
    print_runs(runs)
    print()
    for name in NETWORKS[1:]:
        print(f"{name} / original: {ratio_summary(runs, name, ORIGINAL)}")
    print(f"APS-U (antialias aps) / blur only: {ratio_summary(runs, NETWORKS[1], NETWORKS[3])}")
    for name in LAYERS[1:]:
        print(f"{name} / {NEAREST}: {ratio_summary(runs, name, NEAREST)}")


if __name__ == "__main__":
    main()
