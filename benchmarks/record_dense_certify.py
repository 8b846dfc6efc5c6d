"""Record the dense certificate of torchvision's segmentation models: unconverted vs converted by antialias.

For each model (random weights, ``weights=None, weights_backbone=None``, 3 classes, eval mode, float64),
``shiftlab.certify`` rolls one random input by circular shifts of one period of the total stride (16 for the
MobileNetV3 models, 8 for the dilated ResNet-50s) and reports the largest relative deviation of the output map
``out`` from the unshifted map rolled by the same shift, for three variants on the same input and shifts:

- ``unconverted``: the model as torchvision builds it (strides, zero padding, bilinear ``F.interpolate``);
- ``aps``: ``antialias(method="aps", circular=False)``: APS subsampling and the final interpolation at the
  encoder's phase (:mod:`shiftlab.fix.segmentation`), zero padding kept;
- ``aps+circular``: the same with every padding circular.

    python benchmarks/record_dense_certify.py                          # 64 px MobileNets, 32 px ResNets, samples
    python benchmarks/record_dense_certify.py --shifts 0               # every shift of a period (slow)

Slow by design (float64 on CPU).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

#: model -> input size (a multiple of the total stride with maps of at least 4x4)
MODELS = {"lraspp_mobilenet_v3_large": 64, "deeplabv3_mobilenet_v3_large": 64, "fcn_resnet50": 32,
          "deeplabv3_resnet50": 32}


#: models whose random backbone's activations vanish (~1e-8 at the head's input): the output map is then the last
#: conv's bias plus a variation 1e-9 of it, and every deviation relative to it is tiny; the bias is zeroed
ZERO_BIAS = ("deeplabv3_mobilenet_v3_large",)


def _variants(name: str):
    import torchvision

    from shiftlab import antialias

    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                           num_classes=3).double().eval()
    if name in ZERO_BIAS:
        with torch.no_grad():
            model.classifier[-1].bias.zero_()
    yield "unconverted", model
    yield "aps", antialias(model, "aps", circular=False)[0].eval()
    yield "aps+circular", antialias(model, "aps", circular=True)[0].eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--shifts", type=int, default=16, help="0 = every shift of one period, else a sample")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    from shiftlab import certify
    from shiftlab.models import SelectOutput

    rows = []
    print(f"{'model':30s} {'variant':14s} {'size':>5s} {'shifts':>6s} {'max rel deviation':>18s} {'passed':>6s} "
          f"{'s':>6s}")
    for name in args.models:
        size = MODELS[name]
        for variant, model in _variants(name):
            start = time.perf_counter()
            r = certify(SelectOutput(model, "out"), (size, size), shifts=args.shifts or "period", n_inputs=1)
            row = {"model": name, "variant": variant, "size": size, "shifts": r.shifts_checked,
                   "full_period": r.full_period, "max_rel_deviation": r.max_rel_deviation,
                   "worst_shift": r.worst_shift, "passed": r.passed, "seconds": time.perf_counter() - start}
            rows.append(row)
            print(f"{name:30s} {variant:14s} {size:5d} {r.shifts_checked:6d} {r.max_rel_deviation:18.3e} "
                  f"{str(r.passed):>6s} {row['seconds']:6.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
