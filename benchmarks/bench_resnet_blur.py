"""Inference time of a blur-converted torchvision resnet18 over the original, beside the peers' ratios.

Batch 16 at 224x224, float32, eval mode, no_grad. All models run once per round in a rotating order;
medians over the rounds. Printed ratios (each converted model over its own baseline, same run):

    shiftlab antialias(resnet18, "blur", filter_size=3)               target <= 1.35
        (the default keeps the stem conv strided, as Zhang 2019 and timm do)
    shiftlab, stem converted too (keep_stem=False)
    timm resnetblur18 / timm resnet18                                 (published about 1.56)
    antialiased-cnns resnet18(filter_size=3) / torchvision resnet18   (published about 1.50)

antialiased-cnns is optional (``pip install --no-deps --target /tmp/aacnn antialiased-cnns``, run with
``PYTHONPATH=/tmp/aacnn``); without it that peer is skipped with a message. No weights are downloaded.

Run: ``python benchmarks/bench_resnet_blur.py [--rounds 7] [--batch 16] [--threads N]``
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
from _timing import interleaved  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224)
    tv = torchvision.models.resnet18().eval()
    models = {
        "torchvision resnet18": tv,
        "shiftlab blur resnet18": antialias(tv, "blur", filter_size=3)[0],
        "shiftlab blur resnet18, stem converted too": antialias(tv, "blur", filter_size=3, keep_stem=False)[0],
        "timm resnet18": timm.create_model("resnet18", pretrained=False).eval(),
        "timm resnetblur18": timm.create_model("resnetblur18", pretrained=False).eval(),
    }
    try:
        import antialiased_cnns
    except ImportError:
        print("antialiased-cnns not installed: skipping that peer "
              "(pip install --no-deps --target /tmp/aacnn antialiased-cnns; PYTHONPATH=/tmp/aacnn)")
    else:
        models["antialiased-cnns resnet18 (filter 3)"] = antialiased_cnns.resnet18(pretrained=False,
                                                                                 filter_size=3).eval()

    def runner(model):
        def run():
            with torch.no_grad():
                model(x)
        return run

    medians = interleaved({name: runner(m) for name, m in models.items()}, args.rounds)
    print(f"batch {args.batch} at 224x224, float32, {torch.get_num_threads()} threads, {args.rounds} interleaved "
          "rounds (medians)")
    for name, t in medians.items():
        print(f"  {name:40s} {t * 1e3:9.1f} ms")
    base = medians["torchvision resnet18"]
    print()
    print(f"shiftlab blur resnet18 / torchvision resnet18:             {medians['shiftlab blur resnet18'] / base:.2f}"
          "  (target <= 1.35)")
    print("shiftlab blur resnet18, stem converted too / torchvision:    "
          f"{medians['shiftlab blur resnet18, stem converted too'] / base:.2f}")
    print(f"timm resnetblur18 / timm resnet18:                         "
          f"{medians['timm resnetblur18'] / medians['timm resnet18']:.2f}  (published about 1.56)")
    if "antialiased-cnns resnet18 (filter 3)" in medians:
        print(f"antialiased-cnns resnet18 (filter 3) / torchvision resnet18: "
              f"{medians['antialiased-cnns resnet18 (filter 3)'] / base:.2f}  (published about 1.50)")


if __name__ == "__main__":
    main()
