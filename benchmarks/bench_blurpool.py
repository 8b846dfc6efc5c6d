"""BlurPool2d forward speed against timm's BlurPool2d, antialiased-cnns' BlurPool and a plain copy.

Input (8, 64, 112, 112) float32, filter 3, stride 2, reflect padding. Every candidate runs once per round,
in a rotating order (A and B interleaved); the script prints medians over the rounds and the ratios

    shiftlab / faster peer   (target <= 0.8)
    shiftlab / x.clone()     (the memory-bound floor; target <= 2.5)

It also times the alternatives considered for the implementation (depthwise conv2d, single-channel conv2d
on (B*C, 1, H, W)) and checks that all outputs agree. antialiased-cnns is not a dependency: install it
for the benchmark only (``pip install --no-deps --target /tmp/aacnn antialiased-cnns`` and run with
``PYTHONPATH=/tmp/aacnn``); without it that peer is skipped with a message.

Run: ``python benchmarks/bench_blurpool.py [--rounds 25] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from shiftlab.layers import BlurPool2d, binomial_filter

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
    channels = x.shape[1]
    ours = BlurPool2d(channels, filter_size=3, stride=2, padding_mode="reflect")
    weight = binomial_filter(3).expand(channels, 1, 3, 3).contiguous()

    def depthwise_conv():
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), weight, stride=2, groups=channels)

    def single_channel_conv():
        b, c, h, w = x.shape
        y = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="reflect")
        return F.conv2d(y, weight[:1], stride=2).reshape(b, c, (h + 1) // 2, (w + 1) // 2)

    candidates = {"shiftlab BlurPool2d": lambda: ours(x), "x.clone()": x.clone,
                  "alt: depthwise conv2d": depthwise_conv, "alt: single-channel conv2d": single_channel_conv}
    peers = []
    from timm.layers import BlurPool2d as TimmBlurPool2d
    timm_layer = TimmBlurPool2d(channels, filt_size=3, stride=2, pad_mode="reflect")
    candidates["timm BlurPool2d"] = lambda: timm_layer(x)
    peers.append("timm BlurPool2d")
    try:
        from antialiased_cnns import BlurPool as AacnnBlurPool
    except ImportError:
        print("antialiased-cnns not installed: skipping that peer "
              "(pip install --no-deps --target /tmp/aacnn antialiased-cnns; PYTHONPATH=/tmp/aacnn)")
    else:
        aacnn_layer = AacnnBlurPool(channels, filt_size=3, stride=2, pad_type="reflect")
        candidates["antialiased-cnns BlurPool"] = lambda: aacnn_layer(x)
        peers.append("antialiased-cnns BlurPool")

    with torch.no_grad():
        reference = ours(x)
        for name, fn in candidates.items():
            if name != "x.clone()":
                print(f"max |{name} - shiftlab| = {(fn() - reference).abs().max().item():.2e}")
        medians = interleaved(candidates, args.rounds)
    print(f"\ninput {tuple(x.shape)} float32, filter 3, stride 2, reflect; {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds (medians)")
    for name, t in medians.items():
        print(f"  {name:28s} {t * 1e3:8.2f} ms")
    best_peer = min(peers, key=medians.get)
    print(f"\nshiftlab / faster peer ({best_peer}): {medians['shiftlab BlurPool2d'] / medians[best_peer]:.2f}"
          "  (target <= 0.8)")
    print(f"shiftlab / x.clone():  {medians['shiftlab BlurPool2d'] / medians['x.clone()']:.2f}  (target <= 2.5)")


if __name__ == "__main__":
    main()
