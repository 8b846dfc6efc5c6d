"""``shiftlab fix``: convert a model to anti-aliased (BlurPool) or polyphase (APS) subsampling and save it.

The file is a fixed checkpoint (:mod:`shiftlab.fix.checkpoint`): the weights and the recipe of the conversion,
so that ``--model FILE`` (in ``audit``, ``inspect``, ``report``, ``finetune``) and ``shiftlab.load_model(FILE)``
give back the converted model.
"""

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
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="where to save the converted model: its weights and the recipe (a fixed checkpoint, .pt)")
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


def _load_instructions(out) -> str:
    return "\n".join([
        "use it with:",
        f"    shiftlab audit --model {out} ...        (also inspect, report, finetune)",
        f"    model = shiftlab.load_model({str(out)!r})   # converted again, weights loaded strictly",
    ])


def run(args) -> int:
    from shiftlab._io import check_output_path
    from shiftlab.cli.inspect import render_table
    from shiftlab.errors import InputError
    from shiftlab.fix.antialias import antialias, replacement_counts
    from shiftlab.fix.checkpoint import load_model, recipe_spec, save_fixed

    if args.filter_size is not None and args.filter_size < 1:
        raise InputError(f"--filter-size must be at least 1, got {args.filter_size}")
    if args.shifts < 0:
        raise InputError(f"--shifts must be 0 (all) or more, got {args.shifts}")
    out = check_output_path(args.out, args.force, "--out")  # refuse before the (slow) conversion, not after
    model = load_model(args.model, weights=args.weights)
    if getattr(model, "shiftlab_fix", None) is not None:
        raise InputError(f"{args.weights or args.model} is a fixed checkpoint already "
                         f"({recipe_spec(model.shiftlab_fix)}); convert the original model")
    converted, report = antialias(model, inplace=True, **_conversion_kwargs(args))

    if report:
        rows = [[i, r.name, r.before, r.after] for i, r in enumerate(report, 1)]
        print(render_table(["#", "layer", "before", "after"], rows))
        counts = replacement_counts(report)
        print(f"\n{counts['replaced']} layer(s) replaced, {counts['kept']} kept "
              f"({args.method}{', circular padding' if args.circular else ''})")
    else:
        print("no layer needed replacing: the model has no subsampling layer this method converts")

    save_fixed(converted, out, force=args.force)
    recipe = recipe_spec(converted.shiftlab_fix)
    print(f"saved {len(converted.state_dict())} tensors and the recipe ({recipe}) to {out}")
    print(_load_instructions(out))

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
