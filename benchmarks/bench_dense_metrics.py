"""The cost of the dense metrics in an audit: equivariance only, against equivariance + massc + miou (+ maps).

A small fully convolutional segmentation net (4 conv layers, 32 channels, 21 classes) on 32 random 64 x 64
images with random masks, protocol ``circular:8``, batch size 32, on the CPU. Candidates run once per round in
a rotating order (interleaved); medians over the rounds, repeated in fresh processes (``--processes``).

Run: ``python benchmarks/bench_dense_metrics.py [--rounds 5] [--processes 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import shiftlab
from shiftlab.data.masks import TensorMasks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import child_or_runs, interleaved, print_runs, process_options, ratio_summary  # noqa: E402

BASE = "equivariance"


def net(classes: int = 21) -> torch.nn.Module:
    layers, c = [], 3
    for _ in range(3):
        layers += [torch.nn.Conv2d(c, 32, 3, padding=1), torch.nn.ReLU()]
        c = 32
    return torch.nn.Sequential(*layers, torch.nn.Conv2d(32, classes, 1)).eval()


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of each candidate's audit in this process."""
    torch.manual_seed(0)
    images = torch.rand(32, 3, 64, 64)
    masks = torch.randint(0, 21, (32, 64, 64))
    data = TensorMasks(images, masks, num_classes=21)
    model = net()
    kw = dict(transform="circular:8", normalize=False, batch_size=32, workers=0)
    candidates = {
        BASE: lambda: shiftlab.audit(model, data, metrics=["equivariance"], **kw),
        "equivariance + massc + miou": lambda: shiftlab.audit(model, data, **kw),
        "... + maps=16": lambda: shiftlab.audit(model, data, maps=16, **kw).to_dict(),
    }
    return interleaved(candidates, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=5, processes=3)
    args = parser.parse_args()
    runs = child_or_runs(args, __file__, measure)
    if runs is None:
        return
    print(f"32 images 64x64, 21 classes, circular:8; {torch.get_num_threads()} threads; {args.processes} processes "
          f"x {args.rounds} interleaved rounds (medians per process)")
    print_runs(runs)
    for name in list(runs[0])[1:]:
        print(f"{name} / {BASE}: {ratio_summary(runs, name, BASE)}")


if __name__ == "__main__":
    main()
