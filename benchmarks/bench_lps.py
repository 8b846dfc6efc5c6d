"""LPSPool2d at inference against APSPool2d and against a plain implementation of the LPS definition.

Input (8, 64, 112, 112) float32, stride 2, a scorer of hidden width 8 (``--hidden``). The plain peer is the
paper's definition written directly: stack the 4 polyphase components, score each with the same scoring network,
keep the argmax by a gather. Candidates run once per round in a rotating order (interleaved); medians over the
rounds; the whole measurement repeats in fresh processes and the script prints each process's ratios and their
median. Targets (issue 19): LPSPool2d at most 1.3x APSPool2d.

With ``--train``: one training step (forward, backward, SGD) of torchvision's ResNet-18 converted with LPS against the
same network converted with APS (batch 8 at 112x112, circular padding): the cost of learning the choice.

Run: ``python benchmarks/bench_lps.py [--rounds 15] [--processes 3] [--hidden 8] [--train]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from shiftlab.layers import APSPool2d, LPSPool2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import child_or_runs, in_fresh_processes, interleaved, process_options, ratio_summary  # noqa: E402

SLICE = "x[..., ::2, ::2].contiguous()"


def plain_lps(x: torch.Tensor, scorer: torch.nn.Module) -> torch.Tensor:
    """The definition: stack the components, score each, gather the best (no energy prior, no tie rule)."""
    comps = torch.stack([x[..., i::2, j::2] for i in range(2) for j in range(2)], dim=1)  # (B, 4, C, h, w)
    b, k = comps.shape[:2]
    logits = scorer(comps.flatten(0, 1)).reshape(b, k)
    index = logits.argmax(1).reshape(b, 1, 1, 1, 1).expand(b, 1, *comps.shape[2:])
    return comps.gather(1, index).squeeze(1)


def measure(rounds: int, hidden: int = 8) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(8, 64, 112, 112)
    aps = APSPool2d(stride=2)
    lps = LPSPool2d(64, hidden=hidden).eval()
    with torch.no_grad():
        for p in lps.scorer.parameters():
            p.normal_(0, 0.1)
    candidates = {
        SLICE: lambda: x[..., ::2, ::2].contiguous(),
        "APSPool2d": lambda: aps(x),
        "LPSPool2d": lambda: lps(x),
        "plain LPS (definition)": lambda: plain_lps(x, lps.scorer),
    }
    with torch.no_grad():
        return interleaved(candidates, rounds)


def measure_train(rounds: int) -> dict[str, float]:
    import torchvision

    from shiftlab.fix.antialias import antialias

    torch.manual_seed(0)
    base = torchvision.models.resnet18()
    x, y = torch.randn(8, 3, 112, 112), torch.randint(0, 1000, (8,))
    steps = {}
    for method in ("aps", "lps"):
        net = antialias(base, method, circular=True)[0].train()
        optimiser = torch.optim.SGD(net.parameters(), lr=1e-3)

        def step(net=net, optimiser=optimiser):
            optimiser.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimiser.step()
        steps[f"{method.upper()} ResNet-18 training step"] = step
    return interleaved(steps, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=15, processes=3)
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--train", action="store_true", help="time a training step of LPS vs APS ResNet-18")
    args = parser.parse_args()
    if args.train:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.child:
            print(json.dumps(measure_train(args.rounds)))
            return
        command = [__file__, "--child", "--train", "--rounds", str(args.rounds)]
        runs = in_fresh_processes(command + (["--threads", str(args.threads)] if args.threads else []), args.processes)
        print(f"torchvision resnet18, batch 8 at 112x112, circular; {args.processes} processes x {args.rounds} rounds")
        for name in runs[0]:
            print(f"  {name:32s} ms: " + " ".join(f"{run[name] * 1e3:8.1f}" for run in runs))
        print(f"LPS / APS training step: {ratio_summary(runs, 'LPS ResNet-18 training step', 'APS ResNet-18 training step')}")
        return
    runs = child_or_runs(args, __file__, measure, hidden=args.hidden)
    if runs is None:
        return
    print(f"input (8, 64, 112, 112) float32, stride 2, scorer hidden {args.hidden}; {torch.get_num_threads()} threads; "
          f"{args.processes} processes x {args.rounds} interleaved rounds (medians per process)")
    for name in runs[0]:
        print(f"  {name:28s} ms: " + " ".join(f"{run[name] * 1e3:7.2f}" for run in runs))
    print()
    print(f"APSPool2d / slice: {ratio_summary(runs, 'APSPool2d', SLICE)}")
    print(f"LPSPool2d / APSPool2d: {ratio_summary(runs, 'LPSPool2d', 'APSPool2d')}  (target <= 1.3)")
    print(f"LPSPool2d / plain LPS: {ratio_summary(runs, 'LPSPool2d', 'plain LPS (definition)')}")


if __name__ == "__main__":
    main()
