"""``shiftlab inspect``: the aliasing map of a model, layer by layer, in the order data flows."""

from __future__ import annotations

HELP = "list every layer of a model that subsamples or breaks shift equivariance, with its cumulative stride"


def add_arguments(parser) -> None:
    from shiftlab.cli.arguments import positive_int
    from shiftlab.cli.timm_flags import add_build_arguments, add_checkpoint_hint

    parser.epilog = "The --json format is described in docs/inspect-json.md."
    parser.add_argument("--model", required=True, metavar="SPEC",
                        help="timm:NAME, torchvision:NAME, pretrained:NAME, path/to/file.py:factory, or a file "
                             "written by shiftlab fix / finetune")
    parser.add_argument("--input-size", nargs="+", type=positive_int, metavar="N",
                        help="[C] H W: input height and width (timm's C H W also taken; use multiples of the total "
                             "stride for exact strides: another size is warned about, naming the nearest multiples)")
    parser.add_argument("--img-size", type=positive_int, metavar="PX", help="a square input: --input-size PX PX")
    parser.add_argument("--weights", metavar="PATH", help="optional local checkpoint (read with weights_only=True)")
    add_build_arguments(parser)
    add_checkpoint_hint(parser)
    parser.add_argument("--json", metavar="PATH", help="also write the findings as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite the --json file if it exists")


def render_table(headers, rows) -> str:
    """A plain-text table with left-aligned columns separated by two spaces."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _hw(hw) -> str:
    return "-" if hw is None else f"{hw[0]}x{hw[1]}"


def _conversion_lines(conversion) -> list[str]:
    """The layers a conversion (``shiftlab fix`` / ``finetune``) put in, with their kinds; none for a plain model."""
    if not conversion:
        return []
    where = f" in {conversion['file']}" if conversion.get("file") else ""
    layers = conversion["layers"]
    lines = ["", f"converted layers (fix {conversion['fix']}{where}): {len(layers)}"]
    if layers:
        width = max(len(layer["name"]) for layer in layers)
        lines += [f"  {layer['name'].ljust(width)}  {layer['kind']} ({layer['module_type']})" for layer in layers]
    return lines


def render_inspection(result) -> str:
    """The aliasing map as text: one row per layer call (its findings joined), then the total stride and a
    legend of the kinds that occur."""
    from shiftlab.measure.inspect import KINDS

    groups = []  # consecutive findings of one layer call share a row
    for f in result:
        if groups and groups[-1][0].name == f.name and groups[-1][0].input_hw == f.input_hw:
            groups[-1].append(f)
        else:
            groups.append([f])
    rows = []
    for i, group in enumerate(groups, 1):
        first = group[0]
        mark = "!" if any(f.breaks_equivariance for f in group) else "ok"
        rows.append([i, first.name, first.module_type, ", ".join(f.kind for f in group), mark,
                     _hw(first.cumulative_stride), f"{_hw(first.input_hw)} -> {_hw(first.output_hw)}",
                     "; ".join(f.detail for f in group)])
    headers = ["#", "layer", "type", "finding", "", "cum. stride", "map", "detail"]
    h, w = result.input_size
    lines = [f"aliasing map of {result.model_type} at {h}x{w} (layers in data-flow order)", ""]
    lines.append(render_table(headers, rows) if rows else "no layer subsamples or breaks shift equivariance")
    sy, sx = result.total_stride
    if result.stride_multiple:
        lines += ["", f"total stride {sy}x{sx}: circular shifts by multiples of it commute with every subsampling "
                      f"layer"]
    else:  # the guarantee holds only at sizes that are multiples of the total stride: said, never stated wrongly
        lines += ["", f"total stride {sy}x{sx}"]
    lines += [f"warning: {warning}" for warning in result.warnings]
    lines += _conversion_lines(result.conversion)
    counts = {}
    for f in result:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    if counts:
        lines += ["", "kinds (count):"]
        width = max(len(k) for k in counts)
        lines += [f"  {k.ljust(width)}  {n:3d}  {KINDS[k]}" for k, n in counts.items()]
    lines.append("" if not result.breaks_equivariance else
                 "\n'!' marks layers that break exact equivariance to circular shifts on their own")
    return "\n".join(lines).rstrip() + "\n"


def _input_size(args) -> tuple[int, int]:
    """(H, W) from --input-size [C] H W or --img-size PX (one of them), checked before any work."""
    from shiftlab.errors import InputError
    from shiftlab.models.preprocessing import check_input_size

    if (args.input_size is None) == (args.img_size is None):
        raise InputError("give the input size once: --input-size H W (or timm's C H W), or --img-size PX")
    if args.img_size is not None:
        return check_input_size(args.img_size, "--img-size")
    if len(args.input_size) not in (2, 3):
        count = len(args.input_size)
        raise InputError(f"--input-size takes H W (or timm's C H W), got {count} number{'s' if count != 1 else ''}")
    if len(args.input_size) == 3 and args.in_chans is not None and args.in_chans != args.input_size[0]:
        raise InputError(f"--input-size {' '.join(map(str, args.input_size))} and --in-chans {args.in_chans} "
                         f"disagree; give one of them")
    if len(args.input_size) == 3 and args.input_size[0] != 3 and args.in_chans is None:
        args.in_chans = args.input_size[0]  # timm's meaning: C is the input channels the model is built with
    return check_input_size(tuple(args.input_size[-2:]), "--input-size")


def run(args) -> int:
    from shiftlab._io import check_output_path, write_json
    from shiftlab.measure.inspect import inspect
    from shiftlab.cli.timm_flags import build_kwargs
    from shiftlab.models.fixed_checkpoint import load_any_model  # fixed checkpoints: the converted model

    size = _input_size(args)
    if args.json is not None:
        check_output_path(args.json, args.force, "--json", claim=True)
    model = load_any_model(args.model, weights=args.weights, **build_kwargs(args))
    result = inspect(model, size)
    print(render_inspection(result), end="")
    if args.json is not None:
        write_json(args.json, {"model": args.model, **result.to_dict()}, force=args.force)
        print(f"wrote {args.json}")
    return 0
