"""The cost of an alias-free network against a plain one of the same size: inference and one training step.

The networks are the `subpixel` experiment's (:func:`shiftlab.models.alias_free_resnet`, depth (1, 1, 1), width 16,
10 classes, 1 x 32 x 32 digits canvases, batch 64): ``baseline`` (strided convs, ReLU, batch norm) against
``alias-free`` (ideal subsampling, the polynomial activation on a 2x grid, the alias-free layer norm), with BlurPool
and APS beside them. Candidates run once per round in a rotating order (interleaved), medians per process, several
fresh processes. No target: the issue asks for the cost reported honestly (the 2x grid of every activation costs
FFTs that a ReLU does not).

Run: ``python benchmarks/bench_alias_free_net.py [--rounds 9] [--processes 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import child_or_runs, interleaved, print_runs, process_options, ratio_summary  # noqa: E402

VARIANTS = {
    "baseline": {"subsampling": "stride", "activation": "relu", "norm": "batch"},
    "blurpool": {"subsampling": "blur", "activation": "relu", "norm": "batch"},
    "aps": {"subsampling": "aps", "activation": "relu", "norm": "batch"},
    "alias-free": {"subsampling": "ideal", "activation": "alias_free", "norm": "alias_free"},
}


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of an inference pass and a training step of each network, in this process."""
    from shiftlab.models import alias_free_resnet

    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 32, 32), torch.randint(0, 10, (64,))
    candidates = {}
    for name, choice in VARIANTS.items():
        net = alias_free_resnet((1, 1, 1), 16, 10, in_channels=1, **choice)
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)

        def infer(net=net):
            net.eval()
            with torch.inference_mode():
                net(x)

        def train_step(net=net, optimizer=optimizer):
            net.train()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()

        candidates[f"{name} inference"] = infer
        candidates[f"{name} training step"] = train_step
    return interleaved(candidates, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=9, processes=3)
    args = parser.parse_args()
    runs = child_or_runs(args, __file__, measure)
    if runs is None:
        return
    print(f"alias_free_resnet((1, 1, 1), width 16), batch 64 x 1 x 32 x 32 float32; {torch.get_num_threads()} threads; "
          f"{args.processes} processes x {args.rounds} interleaved rounds (medians per process)")
    print_runs(runs, width=34, decimals=1)
    print()
    for kind in ("inference", "training step"):
        for name in ("blurpool", "aps", "alias-free"):
            print(f"{name} / baseline, {kind}: {ratio_summary(runs, f'{name} {kind}', f'baseline {kind}')}")


if __name__ == "__main__":
    main()
