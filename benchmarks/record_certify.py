"""Record the certification table: APS + circular padding vs the unconverted model, every shift of one period.

For each model (random weights, eval mode), ``shiftlab.certify`` rolls random inputs by every (dy, dx) in
[0, s)^2 (s = total stride, 32 here: 1023 shifts) and reports the largest relative deviation of the logits
from the unshifted logits, for the model converted with ``antialias(method="aps", circular=True)`` and for
the unconverted model, on the same inputs and shifts.

    OMP_NUM_THREADS=1 python benchmarks/record_certify.py                # full period, float64, 64x64
    python benchmarks/record_certify.py --dtype float32 --shifts 64      # a seeded sample of 64 shifts
    python benchmarks/record_certify.py --json certify.json              # also save the table

Slow by design (float64 on CPU): about 2k forward passes per model and variant.
"""

from __future__ import annotations

import argparse
import time

import torch

MODELS = ("torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v2", "timm:resnet18",
          "timm:tf_efficientnet_lite0")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--size", type=int, default=64, help="input H = W (a multiple of the total stride)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--shifts", type=int, default=0, help="0 = every shift of one period, else a sample")
    parser.add_argument("--n-inputs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    import shiftlab
    from shiftlab._checks import tolerance
    from shiftlab._io import write_json
    from shiftlab.fix.certify import certify

    dtype = getattr(torch, args.dtype)
    shifts = "period" if args.shifts == 0 else args.shifts
    header = (f"{'model':28s} {'stride':>6s} {'shifts':>6s} {'APS+circular':>13s} {'unconverted':>12s} "
              f"{'ratio':>9s} {'worst shift (unconv.)':>22s} {'time APS':>9s} {'time unconv.':>12s}")
    print(f"certify: {args.dtype}, {args.size}x{args.size}, {args.n_inputs} random input(s), relative deviation "
          f"max|f(roll(x)) - f(x)| / max|f(x)|; tolerance {tolerance(dtype):g}")
    print(header)
    rows = []
    for spec in args.models:
        torch.manual_seed(args.seed)
        model = shiftlab.load_model(spec)
        converted, report = shiftlab.antialias(model, method="aps", circular=True)
        kwargs = dict(shifts=shifts, dtype=dtype, n_inputs=args.n_inputs, batch=args.batch, seed=args.seed,
                      progress=args.progress)
        t0 = time.perf_counter()
        aps = certify(converted, args.size, **kwargs)
        t1 = time.perf_counter()
        base = certify(model, args.size, **kwargs)
        t2 = time.perf_counter()
        ratio = base.max_rel_deviation / max(aps.max_rel_deviation, 1e-300)
        print(f"{spec:28s} {aps.total_stride[0]:6d} {aps.shifts_checked:6d} {aps.max_rel_deviation:13.3e} "
              f"{base.max_rel_deviation:12.3e} {ratio:9.2e} {str(base.worst_shift):>22s} {t1 - t0:8.1f}s "
              f"{t2 - t1:11.1f}s", flush=True)
        rows.append({"model": spec, "replaced_layers": len(report), "aps_circular": aps.to_dict(),
                     "unconverted": base.to_dict(), "seconds": [t1 - t0, t2 - t1]})
    if args.json:
        write_json(args.json, {"dtype": args.dtype, "size": args.size, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
