"""One fine-tuning step of ``shiftlab.finetune`` over a plain training step of the student alone.

The fine-tuning step is the code ``finetune`` runs for each micro-batch (``shiftlab.fix.finetune._Distiller``):
the views (``crop:S:32`` crops of the batch), the teacher's forward pass under ``torch.inference_mode``, the
student's forward pass, the KL loss at temperature 2 and its backward pass, then AdamW's step. The plain step
is the same student on the same views with cross-entropy on labels: forward, backward, AdamW's step. Both with
the student in train mode and its batch norms frozen (``batch_norm="frozen"``, the default), denormals flushed
as ``finetune`` does. Data loading, the same for both, is left out. Also printed: the step with the
consistency term (two views per image, so twice the forward and backward work).

Run: ``python benchmarks/bench_finetune.py [--model pretrained:efficientnet_lite0] [--fix aps] [--batch 8]
[--rounds 5] [--processes 3] [--threads N]``

Target: fine-tuning step / plain step <= 1.5.

Measured (2-core AMD EPYC, torch 2.14 CPU, ``--threads 2``, 3 processes x 5 rounds, EfficientNet-Lite0
converted with aps, batch 8 at 224): see docs/finetune.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import child_or_runs, interleaved, print_runs, process_options, ratio_summary  # noqa: E402

PLAIN = "plain training step (student alone, cross-entropy)"
FINETUNE = "fine-tuning step (teacher in inference_mode + KL)"
CONSISTENCY = "fine-tuning step with the consistency term (2 views)"


def measure(rounds: int, model: str, fix: str, batch: int) -> dict[str, float]:
    """Median seconds per step of each kind in this process."""
    from shiftlab._runtime import tune_allocator

    tune_allocator()  # as the CLI does: without it every step pays page faults for its large tensors
    from shiftlab.fix.antialias import antialias
    from shiftlab.fix.checkpoint import load_model, parse_fix
    from shiftlab.fix.distill import _Distiller, _param_groups, _set_batch_norm
    from shiftlab.fix.finetune import FinetuneConfig
    from shiftlab.measure.protocols import parse_protocol
    from shiftlab.models import preprocessing

    torch.set_flush_denormal(True)
    teacher = load_model(model)
    prep = preprocessing(teacher)
    side = prep.input_size[0]
    protocol = parse_protocol(f"crop:{side}:32")
    torch.manual_seed(0)
    images = torch.rand(batch, 3, side + 32, side + 32)
    positions = torch.arange(batch)
    labels = torch.randint(0, 10, (batch,))

    def views(copies):
        return lambda x, pos: prep.normalize(protocol.make(x, pos, 0, copies=copies).inputs)

    def student():
        net, _ = antialias(copy.deepcopy(teacher), **parse_fix(fix))
        _set_batch_norm(net, "frozen")
        return net, torch.optim.AdamW(_param_groups(net, 0.01), lr=1e-6)

    plain_net, plain_opt = student()
    plain_views = views([0])

    def plain():
        plain_opt.zero_grad(set_to_none=True)
        out = plain_net(plain_views(images, positions))
        F.cross_entropy(out, labels).backward()
        plain_opt.step()

    def distiller(consistency: float):
        net, opt = student()
        config = FinetuneConfig(consistency=consistency)
        copies = [0, 1] if consistency else [0]
        step = _Distiller(teacher, net, config, views(copies), len(copies), False, None)

        def run():
            opt.zero_grad(set_to_none=True)
            step(images, positions, labels)
            opt.step()
        return run

    return interleaved({PLAIN: plain, FINETUNE: distiller(0.0), CONSISTENCY: distiller(1.0)}, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=5, processes=3)
    parser.add_argument("--model", default="pretrained:efficientnet_lite0")
    parser.add_argument("--fix", default="aps")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    runs = child_or_runs(args, __file__, measure, model=args.model, fix=args.fix, batch=args.batch)
    if runs is None:
        return
    print(f"{args.model} converted with {args.fix}, batch {args.batch}, float32, {torch.get_num_threads()} threads; "
          f"{args.processes} processes x {args.rounds} interleaved rounds (medians per process)")
    print_runs(runs, "s", 54, 3)
    print()
    print(f"fine-tuning step / plain training step:                   {ratio_summary(runs, FINETUNE, PLAIN)}"
          "  (target <= 1.5)")
    print(f"with the consistency term (2 views) / plain training step: {ratio_summary(runs, CONSISTENCY, PLAIN)}")


if __name__ == "__main__":
    main()
