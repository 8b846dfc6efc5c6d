"""Inference time of a blur-converted torchvision resnet18 over the original, beside the peers' ratios.

Batch 16 at 224x224, float32, eval mode, no_grad. All models run once per round in a rotating order;
medians over the rounds. Printed ratios (each converted model over its own baseline, same run):

    shiftlab antialias(resnet18, "blur", filter_size=3)               target <= 1.35
        (Zhang's placement: each strided conv at stride 1, the blur after its activation; the default keeps
        the stem conv strided, as Zhang 2019 and timm do)
    shiftlab, placement="before" (blur at stride 1, then the conv at its stride, as MosaicML Composer's
        blur_first)                                                   target about 1.05
    shiftlab, stem converted too (keep_stem=False)
    timm resnetblur18 / timm resnet18                                 (published about 1.56)
    antialiased-cnns resnet18(filter_size=3) / torchvision resnet18   (published about 1.50)

antialiased-cnns is optional (``pip install --no-deps --target /tmp/aacnn antialiased-cnns``, run with
``PYTHONPATH=/tmp/aacnn``); without it that peer is skipped with a message. No weights are downloaded.

The whole measurement is repeated in fresh processes (``--processes``, default 3), since the speed of the
same model can differ between processes by more than the effect measured; printed: each process's ratio
and their median.

Run: ``python benchmarks/bench_resnet_blur.py [--rounds 7] [--processes 3] [--batch 16] [--threads N]``

Measured (2-core AMD EPYC, torch 2.14 CPU, ``--threads 1`` because other jobs shared the machine, 3 processes
x 7 rounds): Zhang's placement 1.27 (per process 1.27 1.23 1.31), ``placement="before"`` 1.05 (1.05 1.04
1.17), stem converted too 2.42, timm resnetblur18 / resnet18 1.81.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
import torchvision

from shiftlab.fix.antialias import antialias

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    child_or_runs,
    interleaved,
    note_if_aacnn_missing,
    print_runs,
    process_options,
    ratio_summary,
)

BASELINE = "torchvision resnet18"
OURS = "shiftlab blur resnet18"
BEFORE = "shiftlab blur resnet18, placement=before"
STEM = "shiftlab blur resnet18, stem converted too"
AACNN = "antialiased-cnns resnet18 (filter 3)"


def measure(rounds: int, batch: int) -> dict[str, float]:
    """Median seconds per forward of each model in this process."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224)
    tv = torchvision.models.resnet18().eval()
    models = {
        BASELINE: tv,
        OURS: antialias(tv, "blur", filter_size=3)[0],
        BEFORE: antialias(tv, "blur", filter_size=3, placement="before")[0],
        STEM: antialias(tv, "blur", filter_size=3, keep_stem=False)[0],
        "timm resnet18": timm.create_model("resnet18", pretrained=False).eval(),
        "timm resnetblur18": timm.create_model("resnetblur18", pretrained=False).eval(),
    }
    try:
        import antialiased_cnns
    except ImportError:
        pass
    else:
        models[AACNN] = antialiased_cnns.resnet18(pretrained=False, filter_size=3).eval()

    def runner(model):
        def run():
            with torch.no_grad():
                model(x)
        return run

    return interleaved({name: runner(m) for name, m in models.items()}, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    process_options(parser, rounds=7, processes=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    if not args.child:
        note_if_aacnn_missing()
    runs = child_or_runs(args, __file__, measure, batch=args.batch)
    if runs is None:
        return
    print(f"batch {args.batch} at 224x224, float32, {torch.get_num_threads()} threads; {args.processes} processes x "
          f"{args.rounds} interleaved rounds (medians per process)")
    print_runs(runs, "ms", 44, 1)
    print()
    print(f"shiftlab blur resnet18 / torchvision resnet18:              {ratio_summary(runs, OURS, BASELINE)}"
          "  (target <= 1.35)")
    print(f"shiftlab blur resnet18, placement=before / torchvision:     {ratio_summary(runs, BEFORE, BASELINE)}"
          "  (target about 1.05)")
    print(f"shiftlab blur resnet18, stem converted too / torchvision:   {ratio_summary(runs, STEM, BASELINE)}")
    print(f"timm resnetblur18 / timm resnet18:                          "
          f"{ratio_summary(runs, 'timm resnetblur18', 'timm resnet18')}  (published about 1.56)")
    if AACNN in runs[0]:
        print(f"antialiased-cnns resnet18 (filter 3) / torchvision resnet18: {ratio_summary(runs, AACNN, BASELINE)}"
              "  (published about 1.50)")


if __name__ == "__main__":
    main()
