"""``shiftlab fix``: convert a model to anti-aliased (BlurPool) or polyphase (APS) subsampling and save it.

The file is a fixed checkpoint (:mod:`shiftlab.models.fixed_checkpoint`): the weights and the recipe of the conversion,
so that ``--model FILE`` (in ``audit``, ``inspect``, ``report``, ``finetune``) and ``shiftlab.load_model(FILE)``
give back the converted model.

A conversion that replaced nothing is refused and writes no file (a compiled model, subsampling written only as
functions in a forward, no strided layer, a blur stem kept alone); subsampling that could not be replaced beside
what was is listed as NOT replaced and warned about on stderr, and the file is saved.
"""

from __future__ import annotations

HELP = ("convert a model's subsampling (blur, aps, lps, tips, ideal), save the converted weights, print what was "
        "replaced")


def add_arguments(parser) -> None:
    from shiftlab.cli.timm_flags import add_build_arguments, add_checkpoint_hint

    parser.add_argument("--model", required=True, metavar="SPEC",
                        help="timm:NAME, torchvision:NAME, pretrained:NAME or path/to/file.py:factory")
    parser.add_argument("--weights", metavar="PATH", help="optional local checkpoint to convert (weights_only=True)")
    add_build_arguments(parser)
    add_checkpoint_hint(parser)
    parser.add_argument("--method", required=True, choices=("aps", "blur", "lps", "tips", "ideal"),
                        help="blur: low-pass before subsampling (Zhang 2019); aps: adaptive polyphase (Chaman 2021); "
                             "lps: learnable polyphase (Rojas-Gomez 2022; chooses as aps until fine-tuned); tips: "
                             "learned polyphase mixture (Saha 2025; invariance learned, not guaranteed); ideal: ideal "
                             "FFT low-pass subsampling (Michaeli 2023; activations kept, so not alias-free)")
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


def _load_instructions(out, spec=None) -> str:
    import shlex

    from shiftlab.models.fixed_checkpoint import load_arguments

    arguments = load_arguments(out, spec)
    call = repr(str(out)) if len(arguments) == 2 else f"{arguments[1]!r}, weights={str(out)!r}"
    return "\n".join([
        "use it with:",
        f"    shiftlab audit {shlex.join(arguments)} ...        (also inspect, report, finetune)",
        f"    model = shiftlab.load_model({call})   # converted again, weights loaded strictly",
    ])


def _listed(unreplaced) -> str:
    return "; ".join(f"{r.before} [{r.name}]" for r in unreplaced)


def _replaced_text(report, counts) -> str:
    """``N layer(s) replaced``: distinct layers; the blocks around them that the table lists too are named apart."""
    from shiftlab.fix.replacement import replaced_layers

    layers = set(replaced_layers(report))
    around = list(dict.fromkeys(r.name for r in report if not (r.kept or r.unreplaced or r.name in layers)))
    text = f"{counts['replaced']} layer(s) replaced"
    if around:
        text += (f" ({counts.get('changes', len(layers) + len(around))} changes: also the block(s) "
                 f"{', '.join(around)} around them)")
    return text


def _nothing_replaced(report, args) -> str:
    """The one-line refusal of a conversion that replaced nothing (no file is written)."""
    unreplaced = [r for r in report if r.unreplaced]
    kept = [r for r in report if r.kept]
    if unreplaced:
        return (f"nothing to save: {args.model} subsamples only where --method {args.method} cannot replace it: "
                f"{_listed(unreplaced)}; write that subsampling as layers (nn.MaxPool2d, nn.AvgPool2d, a strided "
                f"nn.Conv2d) to fix it; {args.out} was not written")
    if kept:
        return (f"nothing to save: the only strided layer of {args.model}, the stem {kept[0].name}, is kept by "
                f"default with --method {args.method}; pass --stem convert to convert it; {args.out} was not written")
    return (f"nothing to save: {args.model} has no subsampling layer (strided Conv2d, MaxPool2d, AvgPool2d) for "
            f"--method {args.method} to replace; {args.out} was not written")


def _why_not_certified(args, total_stride) -> str:
    """The likeliest reason a certificate failed, from the arguments: a size that is not a multiple of the total
    stride, or zero padding (no --circular)."""
    h, w = args.certify
    sy, sx = total_stride
    if h % sy or w % sx:
        return (f"; {h}x{w} is not a multiple of the total stride, so the guarantee does not hold at this size "
                f"(certify at {max(sy, -(-h // sy) * sy)}x{max(sx, -(-w // sx) * sx)})")
    if not args.circular:
        return "; zero padding breaks circular shifts at the borders (add --circular for an exact certificate)"
    return ""


def _input_size(model) -> tuple[int, int]:
    """The input size the model declares (its timm / torchvision configuration), else 224x224."""
    from shiftlab.models import preprocessing

    prep = preprocessing(model)
    return tuple(int(v) for v in prep.input_size) if prep.fixed_size else (224, 224)


def _check_runs(converted, size: tuple[int, int], args) -> None:
    """One forward pass of the converted model on a blank input of ``size`` before anything is written: a
    conversion that cannot run there (e.g. ideal subsampling of a map that is not a whole number of periods) is
    refused with the reason, not saved."""
    import torch

    from shiftlab.errors import InputError, ShiftlabError
    from shiftlab.measure.inputs import first_conv_channels

    parameter = next(converted.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    x = torch.zeros(1, first_conv_channels(converted) or 3, *size, dtype=dtype,
                    device=parameter.device if parameter is not None else "cpu")
    try:
        with torch.no_grad():
            converted.eval()(x)
    except (ShiftlabError, RuntimeError) as exc:
        where = "--certify size" if args.certify is not None else "the model's input size"
        raise InputError(f"--method {args.method}: the converted model does not run at {size[0]}x{size[1]} ({where}): "
                         f"{str(exc).splitlines()[0]}; {args.out} was not written") from None


def run(args) -> int:
    from shiftlab._io import check_output_path
    from shiftlab.cli.inspect import render_table
    from shiftlab.errors import InputError
    from shiftlab.fix.antialias import antialias, replacement_counts
    from shiftlab.fix.checkpoint import save_fixed
    from shiftlab.fix.recipe import conversion_of, is_converted, recipe_spec
    from shiftlab.cli.timm_flags import build_kwargs
    from shiftlab.models.fixed_checkpoint import load_any_model

    if args.filter_size is not None and args.filter_size < 1:
        raise InputError(f"--filter-size must be at least 1, got {args.filter_size}")
    if args.shifts < 0:
        raise InputError(f"--shifts must be 0 (all) or more, got {args.shifts}")
    if args.certify is not None and args.method == "tips":
        raise InputError("--certify with --method tips: TIPS's invariance is learned, not guaranteed, so there is no "
                         "exactness to certify; leave out --certify and measure it with shiftlab audit")
    if args.certify is not None:  # every value is checked before --out is (and long before it is written)
        from shiftlab.models.preprocessing import check_input_size

        check_input_size(tuple(args.certify), "--certify H W")
    out = check_output_path(args.out, args.force, "--out", claim=True)  # refuse before the (slow) conversion
    model = load_any_model(args.model, weights=args.weights, **build_kwargs(args))
    if is_converted(model):
        raise InputError(f"{args.weights or args.model} is a fixed checkpoint already "
                         f"({recipe_spec(conversion_of(model))}); convert the original model")
    size = _input_size(model)  # (before the conversion, which may drop the model's own configuration)
    converted, report = antialias(model, inplace=True, **_conversion_kwargs(args))
    counts = replacement_counts(report)
    if not counts["replaced"]:  # never save a "fix" that changed nothing
        raise InputError(_nothing_replaced(report, args))
    _check_runs(converted, tuple(args.certify) if args.certify is not None else size, args)

    rows = [[i, r.name, r.before, r.after] for i, r in enumerate(report, 1)]
    print(render_table(["#", "layer", "before", "after"], rows))
    unreplaced = [r for r in report if r.unreplaced]
    print(f"\n{_replaced_text(report, counts)}, {counts['kept']} kept"
          f"{f', {len(unreplaced)} NOT replaced' if unreplaced else ''} "
          f"({args.method}{', circular padding' if args.circular else ''})")
    if unreplaced:  # saved, since something was fixed, but said plainly: the model still aliases there
        import sys

        print(f"shiftlab: warning: {len(unreplaced)} subsampling(s) could not be replaced, so the saved model still "
              f"aliases there: {_listed(unreplaced)}", file=sys.stderr)

    certified = None
    if args.certify is not None:  # before --out is written: a model certify refuses leaves no file behind
        from shiftlab.fix.certify import certify

        certified = certify(converted, tuple(args.certify), shifts="period" if args.shifts == 0 else args.shifts)
    save_fixed(converted, out, force=args.force)
    recipe = recipe_spec(conversion_of(converted))
    print(f"saved {len(converted.state_dict())} tensors and the recipe ({recipe}) to {out}")
    print(_load_instructions(out, (getattr(model, "shiftlab_source", None) or {}).get("spec")))

    if certified is not None:
        result = certified
        if result.non_finite or result.nondeterministic:
            print(f"certify at {args.certify[0]}x{args.certify[1]}: NOT certified: {result.reason}")
            return 0
        verdict = "invariant" if result.passed else "NOT invariant"
        print(f"certify at {args.certify[0]}x{args.certify[1]}: {verdict} to circular shifts: max relative deviation "
              f"{result.max_rel_deviation:.3g} over {result.shifts_checked} shifts ({result.dtype}, tolerance "
              f"{result.tolerance:g}, total stride {result.total_stride[0]}x{result.total_stride[1]})"
              + ("" if result.passed else _why_not_certified(args, result.total_stride)))
    return 0
