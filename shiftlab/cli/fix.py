"""``shiftlab fix``: convert a model to anti-aliased (BlurPool) or polyphase (APS) subsampling and save it."""

from __future__ import annotations

HELP = "convert a model's subsampling to BlurPool or APS, save the converted weights, print what was replaced"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="SPEC",
                        help="timm:NAME, torchvision:NAME, pretrained:NAME or path/to/file.py:factory")
    parser.add_argument("--weights", metavar="PATH", help="optional local checkpoint to convert (weights_only=True)")
    parser.add_argument("--method", required=True, choices=("aps", "blur"),
                        help="blur: low-pass before subsampling (Zhang 2019); aps: adaptive polyphase (Chaman 2021)")
    parser.add_argument("--filter-size", type=int, metavar="N", default=None,
                        help="binomial filter size (default: shiftlab.antialias's default)")
    parser.add_argument("--circular", action="store_true",
                        help="make every padding circular (with --method aps: exact invariance to circular shifts)")
    parser.add_argument("--stem", choices=("keep", "convert"), default=None,
                        help="the first strided conv: kept strided by default with blur (as Zhang 2019 and timm "
                             "do), converted by default with aps")
    parser.add_argument("--placement", choices=("after", "before"), default=None,
                        help="with --method blur, where the blur of a strided conv goes: after (default, Zhang 2019: "
                             "the conv at stride 1, the blur after its activation) or before (the cheaper blur_first "
                             "of MosaicML Composer: blur at stride 1, then the conv at its stride)")
    parser.add_argument("--out", required=True, metavar="FILE", help="where to save the converted state_dict (.pt)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--certify", nargs=2, type=int, metavar=("H", "W"), default=None,
                        help="also certify invariance to circular shifts at this input size (float64)")
    parser.add_argument("--shifts", type=int, default=8, metavar="N",
                        help="with --certify: how many shifts of one period to check (default 8; 0 = all)")


def _conversion_kwargs(args) -> dict:
    kwargs = {"method": args.method, "circular": bool(args.circular)}
    if args.filter_size is not None:
        kwargs["filter_size"] = args.filter_size
    if args.stem is not None:
        kwargs["keep_stem"] = args.stem == "keep"
    if args.placement is not None:
        kwargs["placement"] = args.placement
    return kwargs


def _load_instructions(args) -> str:
    kwargs = ", ".join(f"{k}={v!r}" for k, v in _conversion_kwargs(args).items())
    return "\n".join([
        "load it with:",
        "    import torch, shiftlab",
        f"    model, _ = shiftlab.antialias(shiftlab.load_model({args.model!r}), {kwargs})",
        f"    model.load_state_dict(torch.load({str(args.out)!r}, weights_only=True))",
    ])


def run(args) -> int:
    import io

    import torch

    from shiftlab._io import atomic_write_bytes, check_writable
    from shiftlab.cli.inspect import render_table
    from shiftlab.errors import InputError
    from shiftlab.fix.antialias import antialias
    from shiftlab.models import load_model

    if args.filter_size is not None and args.filter_size < 1:
        raise InputError(f"--filter-size must be at least 1, got {args.filter_size}")
    if args.shifts < 0:
        raise InputError(f"--shifts must be 0 (all) or more, got {args.shifts}")
    check_writable(args.out, args.force)  # refuse before the (slow) conversion, not after
    model = load_model(args.model, weights=args.weights)
    converted, report = antialias(model, inplace=True, **_conversion_kwargs(args))

    if report:
        rows = [[i, r.name, r.before, r.after] for i, r in enumerate(report, 1)]
        print(render_table(["#", "layer", "before", "after"], rows))
        print(f"\n{len(report)} layer(s) replaced ({args.method}{', circular padding' if args.circular else ''})")
    else:
        print("no layer needed replacing: the model has no subsampling layer this method converts")

    buffer = io.BytesIO()
    state = converted.state_dict()
    torch.save(state, buffer)
    atomic_write_bytes(args.out, buffer.getvalue(), force=args.force)
    print(f"saved {len(state)} tensors to {args.out}")
    print(_load_instructions(args))

    if args.certify is not None:
        from shiftlab.fix.certify import certify

        shifts = "period" if args.shifts == 0 else args.shifts
        result = certify(converted, tuple(args.certify), shifts=shifts)
        if result.non_finite:
            print(f"certify at {args.certify[0]}x{args.certify[1]}: NOT certified: {result.reason}")
            return 0
        verdict = "invariant" if result.passed else "NOT invariant"
        print(f"certify at {args.certify[0]}x{args.certify[1]}: {verdict} to circular shifts: max relative deviation "
              f"{result.max_rel_deviation:.3g} over {result.shifts_checked} shifts ({result.dtype}, tolerance "
              f"{result.tolerance:g}, total stride {result.total_stride[0]}x{result.total_stride[1]})")
    return 0
