"""Ideal (FFT) subsampling speed: ``ideal_downsample2d`` against the same filter written from its definition,
BlurPool2d and a plain stride-2 slice; and the alias-free activation against ``nn.GELU``.

Subsampling, input (8, 64, 112, 112) float32, stride 2. Candidates: ``ideal_downsample2d`` (the spectrum cropped
to the output's band, one inverse FFT at the output size), the plain implementation from the definition (rfft2,
multiply by the mask |k| < N / 4, irfft2 at full size, then ``[::2, ::2]``: the peer of the target), BlurPool2d
(stride 2, filter 3, reflect padding as in antialiased-cnns) and ``x[..., ::2, ::2].contiguous()``. Target:
``ideal_downsample2d`` at most 1.2x the plain implementation.

Activation, input (8, 64, 56, 56) float32: ``AliasFreeActivation`` (2x Fourier upsampling, the quadratic, ideal
downsampling) against ``nn.GELU``; reported, no target (it is the price of the 2x grid).

Candidates run once per round in a rotating order (interleaved); medians over the rounds, in several fresh
processes; the script prints each process's medians and the median of the per-process ratios. Before timing,
each process checks that the plain implementation and ``ideal_downsample2d`` agree.

Run: ``python benchmarks/bench_ideal.py [--rounds 15] [--processes 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from shiftlab.layers import AliasFreeActivation, BlurPool2d, ideal_downsample2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import child_or_runs, interleaved, print_runs, process_options, ratio_summary  # noqa: E402

SLICE = "x[..., ::2, ::2].contiguous()"
IDEAL = "ideal_downsample2d"
PLAIN = "plain FFT (definition)"
BLUR = "BlurPool2d(stride 2, filter 3)"
AF_ACT = "AliasFreeActivation (56x56)"
GELU = "nn.GELU (56x56)"


def plain_ideal_downsample(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """From the definition: rfft2, keep |k| < N / (2 stride) on each axis, irfft2 at full size, then slice."""
    height, width = x.shape[-2:]
    ky = torch.fft.fftfreq(height, 1 / height, device=x.device).abs() < height / (2 * stride)
    kx = torch.fft.rfftfreq(width, 1 / width, device=x.device).abs() < width / (2 * stride)
    spectrum = torch.fft.rfft2(x) * (ky[:, None] & kx[None, :])
    return torch.fft.irfft2(spectrum, s=(height, width))[..., ::stride, ::stride]


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of each candidate in this process."""
    torch.manual_seed(0)
    x = torch.randn(8, 64, 112, 112)
    small = torch.randn(8, 64, 56, 56)
    blur = BlurPool2d(filter_size=3, stride=2)
    activation, gelu = AliasFreeActivation(), nn.GELU()
    with torch.no_grad():
        difference = (ideal_downsample2d(x) - plain_ideal_downsample(x)).abs().max().item()
        if difference > 1e-4:
            raise SystemExit(f"ideal_downsample2d and the plain implementation differ by {difference:.2e}")
        candidates = {
            SLICE: lambda: x[..., ::2, ::2].contiguous(),
            IDEAL: lambda: ideal_downsample2d(x, 2),
            PLAIN: lambda: plain_ideal_downsample(x, 2),
            BLUR: lambda: blur(x),
            GELU: lambda: gelu(small),
            AF_ACT: lambda: activation(small),
        }
        return interleaved(candidates, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=15, processes=3)
    args = parser.parse_args()
    runs = child_or_runs(args, __file__, measure)
    if runs is None:
        return
    print(f"subsampling (8, 64, 112, 112) float32, stride 2; activation (8, 64, 56, 56) float32; "
          f"{torch.get_num_threads()} threads; {args.processes} processes x {args.rounds} interleaved rounds "
          f"(medians per process)")
    print_runs(runs, width=34, decimals=2)
    print()
    print(f"{IDEAL} / plain FFT: {ratio_summary(runs, IDEAL, PLAIN)}  (target <= 1.2)")
    print(f"{IDEAL} / BlurPool2d: {ratio_summary(runs, IDEAL, BLUR)}")
    print(f"{IDEAL} / slice: {ratio_summary(runs, IDEAL, SLICE)}")
    print(f"plain FFT / BlurPool2d: {ratio_summary(runs, PLAIN, BLUR)}")
    print(f"BlurPool2d / slice: {ratio_summary(runs, BLUR, SLICE)}")
    print(f"AliasFreeActivation / nn.GELU: {ratio_summary(runs, AF_ACT, GELU)}")


if __name__ == "__main__":
    main()
