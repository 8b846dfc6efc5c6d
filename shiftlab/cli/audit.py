"""``shiftlab audit``: the shift metrics of a model on a dataset, as a table and a versioned JSON file.

Under ``torchrun --nproc_per_node N -m shiftlab audit ...`` every process audits its share of the batches and
rank 0 prints the table and writes the one JSON file, equal to the single-process one.
"""

from __future__ import annotations

import argparse

from shiftlab._sizes import INPUT_SIZE_RULE
from shiftlab.cli.arguments import non_negative_int, positive_int

HELP = "measure a model's shift consistency (and per-layer equivariance) on a dataset"

_TRANSFORM_HELP = (
    "measurement protocol (default: circular:32, or circular:3 for images under 64 px). "
    "circular:M[:P] two circular shifts per image, offsets uniform in [-M, M-1], P passes; "
    "crop:S:M[:P] two SxS crops of the (S+M)-px image at offsets in [0, M-1] (Zhang 2019; ImageNet: crop:224:32:5); "
    "diagonal:N[:crop|circular|canvas[:black|mean|inpaint]] 1-px diagonal steps 0..N (Azulay & Weiss 2019); "
    "sequence:M[:crop|circular] horizontal shifts -M..M (ImageNet-P: sequence:20); "
    "grid:N[:STEP[:circular|crop]] every shift of an NxN grid (worst case); "
    "worst-case grids (Michaeli et al. 2023): subpixel:N[:fourier|bilinear] every (i/N, j/N) | halfpixel[:M] "
    "(i/2, j/2), 1..M | fractional[:N] every m/n, n <= N | intgrid:M | cropattack:S:M (every crop offset); "
    "rotate:A,B,.. (degrees) | scale:F,G,.. | brightness:F,G,.. (first value is the reference)"
)
_METRICS = ("consistency, top1_change, mean_abs_change, flip_probability, top5_distance, worst_case_stability, "
            "worst_case_accuracy, agreement, accuracy, reference_agreement; dense outputs: equivariance, massc, miou")


def _maps_argument(text: str) -> int:
    """--maps: an integer from 0 to 16 (one line naming the flag otherwise)."""
    from shiftlab.errors import InputError
    from shiftlab.measure.dense import MAX_MAPS
    from shiftlab.runs.audit import check_maps

    try:
        return check_maps(int(text))
    except (ValueError, InputError):
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_MAPS}, got {text[:24]!r}") from None


SEED_MAX = 2 ** 63 - 1


def seed_argument(text: str) -> int:
    """A seed: an integer in [0, 2**63 - 1] (what torch and the counter-based offsets take), else one line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        shown = text if len(text) <= 24 else f"{text[:20]}... ({len(text.strip().lstrip('+-'))} digits)"
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**63 - 1, got {shown}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --weights, --seed: how every command names a model."""
    parser.add_argument("--model", required=True, metavar="SPEC",
                        help="timm:NAME, torchvision:NAME, pretrained:efficientnet_lite0 or path/to/file.py:factory")
    parser.add_argument("--weights", metavar="PATH", help="local checkpoint (read with weights_only=True); timm's "
                        "--checkpoint")
    from shiftlab.cli.timm_flags import add_build_arguments

    add_build_arguments(parser)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the engine shared by audit and report: data, preprocessing, execution."""
    parser.add_argument("--data", default="photos", metavar="SPEC",
                        help="image folder (flat or one subfolder per class), a .txt list of image paths, a .npz, "
                             "a CIFAR-10 python folder, or 'photos' (bundled; default)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="audit only the first N images")
    parser.add_argument("--class-map", metavar="FILE",
                        help="JSON {\"data class name or label\": model class index}, for accuracy when the data's "
                             "labels are not the model's classes")
    parser.add_argument("--image-size", "--img-size", type=positive_int, metavar="PX",
                        help=f"model input size (default: the model's own, from timm's pretrained_cfg or "
                             f"torchvision's weight metadata; {INPUT_SIZE_RULE}; at most 4096)")
    parser.add_argument("--mean", type=float, nargs="+", metavar="M", help="normalisation mean (1 or 3 numbers; "
                        "default: the model's)")
    parser.add_argument("--std", type=float, nargs="+", metavar="S", help="normalisation std (1 or 3 numbers)")
    parser.add_argument("--interpolation", choices=("bilinear", "bicubic", "area", "nearest"),
                        help="resampling used to resize images (default: the model's)")
    parser.add_argument("--crop-pct", type=float, metavar="F",
                        help="input size / resize size, e.g. 0.875 for a 224 crop of a 256 resize (default: the model's)")
    parser.add_argument("--no-resize", action="store_true",
                        help="centre-crop images without resizing them (images too small are skipped)")
    parser.add_argument("--seed", type=seed_argument, default=0,
                        help="seed of the random offsets and of a random initialisation (default 0)")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=32,
                        help="model inputs per forward pass, copies included (default 32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--amp", action="store_true", help="mixed precision on CUDA (metrics stay float64)")
    parser.add_argument("-j", "--workers", type=non_negative_int, metavar="N",
                        help="DataLoader worker processes (default: one per spare core, up to 4; 0 for data in memory)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="intra-op threads of torch (default: torch's; 1 per process under torchrun)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    from shiftlab.cli.timm_flags import add_execution_arguments

    add_execution_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  shiftlab audit --model pretrained:efficientnet_lite0 --transform crop:224:32\n"
        "  shiftlab audit --model timm:resnet50 --weights r50.pt --data ./val --transform diagonal:8 --json a.json\n"
        "  shiftlab audit --model pretrained:efficientnet_lite0 --fix aps:circular --transform circular:32\n"
        "  torchrun --nproc_per_node 8 -m shiftlab audit --model ... --data ./val --checkpoint ckpt/ --json a.json\n\n"
        "The JSON format (schema_version 2) is described in docs/audit-json.md. Exit code 2 on bad input."
    )
    add_model_arguments(parser)
    parser.add_argument("--fix", metavar="METHOD",
                        help="audit a converted copy: blur, aps, lps, tips, ideal (each also :circular; blur:before) "
                             "(adds agreement with the original)")
    parser.add_argument("--reference", metavar="SPEC",
                        help="a second model run on the same views, with the model's classes: adds "
                             "reference_agreement (not with --fix, whose reference is the unconverted model)")
    parser.add_argument("--transform", metavar="SPEC", help=_TRANSFORM_HELP)
    parser.add_argument("--metrics", metavar="LIST", help=f"comma-separated, from: {_METRICS} "
                        "(default: the protocol's own; accuracy when the labels fit the model)")
    parser.add_argument("--layers", metavar="LIST",
                        help="per-layer equivariance errors: 'all' (every leaf module), 'stages' (blocks along the "
                             "depth), layer names (comma-separated) or a torch.nn type name such as Conv2d")
    parser.add_argument("--margin", type=non_negative_int, help="border (input px) left out of layer errors for "
                        "non-circular protocols (default 16, at most 1/8 of the input's side)")
    parser.add_argument("--output-key", metavar="KEY", help="element of a tuple (int) or dict (str) model output")
    parser.add_argument("--maps", type=_maps_argument, default=0, metavar="N",
                        help="dense outputs: keep the per-pixel disagreement map (the protocol's first compared "
                             "pair) and copy 0's top-1 map of the first N images (0..16) in the JSON (key maps)")
    parser.add_argument("--predictions", action="store_true",
                        help="also store every view's top-1 and the tracked class's probability in the JSON")
    add_run_arguments(parser)
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="write partial results to DIR every --checkpoint-every batches; rerun the same command "
                             "to resume after a kill (not timm's --checkpoint: a weights file is --weights)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=20, metavar="N",
                        help="batches between checkpoints (default 20)")
    parser.add_argument("--json", metavar="PATH",
                        help="write the results as JSON (refuses to overwrite without --force)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")


def _metrics_arg(text: str | None):
    from shiftlab.errors import InputError

    if text is None:
        return None
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise InputError(f"--metrics {text!r} names no metric; choose from: {_METRICS}")
    return names


def run_from_args(args: argparse.Namespace):
    """The :class:`~shiftlab.runs.AuditRun` the flags describe (checked)."""
    import shlex
    import sys

    from shiftlab.cli.timm_flags import input_size
    from shiftlab.runs import AuditRun

    in_chans, image_size = input_size(args)
    run = AuditRun(
        model=args.model, data=args.data, transform=args.transform, weights=args.weights, fix=args.fix,
        reference=args.reference, metrics=_metrics_arg(args.metrics), layers=args.layers, seed=args.seed,
        limit=args.limit, batch_size=args.batch_size, output_key=args.output_key, margin=args.margin,
        no_resize=args.no_resize, image_size=image_size, mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None, interpolation=args.interpolation, crop_pct=args.crop_pct,
        class_map=args.class_map, predictions=args.predictions, maps=args.maps, threads=args.threads, device=args.device,
        workers=args.workers, amp=args.amp, checkpoint=args.checkpoint, num_classes=args.num_classes, in_chans=in_chans,
        amp_dtype=args.amp_dtype, channels_last=args.channels_last, torchcompile=args.torchcompile,
        checkpoint_every=args.checkpoint_every,
        extra={"command": shlex.join(["shiftlab", *sys.argv[1:]]) if sys.argv[1:2] == ["audit"] else None})
    run.check()
    return run


def print_result(result, console=None) -> None:
    """The terminal table of an audit: metrics, left-out metrics, warnings, layers, skipped files.

    Every outside string (paths, specs, layer names) is shown literally: no rich markup is interpreted, and
    control characters come out escaped (:func:`shiftlab.errors.printable`).
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from shiftlab.errors import printable
    from shiftlab.measure.audit import format_value

    console = console or Console(soft_wrap=False)
    proto = result.protocol
    title = f"shiftlab audit: {result.model} on {result.data}, {proto['spec']}, {result.n} images"
    if result.skipped:
        title += f" ({len(result.skipped)} unreadable files skipped)"
    table = Table(title=Text(printable(title)))
    for col in ("metric", "value", "95% interval", "n", "images"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in result.summary_rows():
        table.add_row(*(Text(printable(c)) for c in row))
    console.print(table)

    def say(text: str) -> None:
        console.file.write(printable(text) + "\n")  # plain text: no markup, no wrapping, no control characters

    for name, why in result.omitted.items():
        say(f"{name}: left out: {why}")
    for warning in result.warnings:
        say(f"warning: {warning}")
    if any(mv.extra.get("flag") for mv in result.metrics.values()):
        say("values marked ! are good by construction for this model (see the warning) and do not measure invariance")
    for note in result.notes:
        say(f"note: {note}")
    layers = result.layers
    if layers:
        lt = Table(title=Text("layers: relative error ||phi(Tx) - T'phi(x)|| / ||phi(x)|| (mean, n compared pairs)"))
        for col in ("layer", "stride", "equivariance", "n", "not representable", "pooled invariance"):
            lt.add_column(col, justify="left" if col == "layer" else "right")
        for name, entry in layers.items():
            info = result.layer_info[name]
            eq = entry.get("equivariance")
            inv = entry["pooled_invariance"]
            stride = "-" if info.get("stride") is None else "x".join(map(str, info["stride"]))
            cells = [name, stride, "-" if eq is None else format_value(eq.value), "-" if eq is None else str(eq.n),
                     "-" if eq is None else str(eq.extra.get("unrepresentable", 0)), format_value(inv.value)]
            lt.add_row(*(Text(printable(c)) for c in cells))
        console.print(lt)
        if any(e.get("equivariance") is not None and e["equivariance"].n == 0
               and e["equivariance"].extra.get("unrepresentable", 0) > 0 for e in layers.values()):
            say("layers with n = 0: no pair's shift was a multiple of their stride; for deep layers use a protocol "
                "with such shifts, e.g. --transform grid:2:32 or diagonal:32:circular")
        if any(e.get("equivariance") is not None and e["equivariance"].extra.get("margin_excluded", 0) > 0
               for e in layers.values()):
            size = "x".join(map(str, (result.preprocessing or {}).get("model_input") or ["?"]))
            say(f"layers with pairs left out by the margin: --margin {result.margin} (input px at the border) leaves "
                f"nothing of their maps at a {size} input; use a smaller --margin")
    for path, reason in result.skipped[:10]:
        say(f"skipped {path}: {reason}")
    return None


def run(args: argparse.Namespace) -> int:
    from shiftlab._io import check_output_path, write_json
    from shiftlab.measure import distributed

    out = check_output_path(args.json, args.force, "--json", claim=True) if args.json is not None else None
    audit_run = run_from_args(args)
    world = distributed.init_from_environment()
    result = audit_run.execute(progress=not args.no_progress and world.is_main)
    if not world.is_main:
        return 0
    print_result(result)
    if len(result.skipped) > 10:
        more = len(result.skipped) - 10
        print(f"... and {more} more skipped files" + (f" (all listed in {out})" if out else " (--json lists them all)"))
    if out is not None:
        doc = result.to_dict()
        doc["command"] = audit_run.command()
        write_json(out, doc, force=args.force)
    return 0
