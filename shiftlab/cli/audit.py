"""``shiftlab audit``: the shift metrics of a model on a dataset, as a table and a versioned JSON file."""

from __future__ import annotations

import argparse

HELP = "measure a model's shift consistency (and per-layer equivariance) on a dataset"

_TRANSFORM_HELP = (
    "measurement protocol (default: circular:32, or circular:3 for images under 64 px). "
    "circular:M[:P] two circular shifts per image, offsets uniform in [-M, M-1], P passes; "
    "crop:S:M[:P] two SxS crops of the (S+M)-px image at offsets in [0, M-1] (Zhang 2019; ImageNet: crop:224:32); "
    "diagonal:N[:crop|circular|canvas] 1-px diagonal steps 0..N (Azulay & Weiss 2019); "
    "sequence:M[:crop|circular] horizontal shifts -M..M (ImageNet-P: sequence:20); "
    "grid:N[:STEP[:circular|crop]] every shift of an NxN grid (worst case); "
    "rotate:A,B,.. (degrees) | scale:F,G,.. | brightness:F,G,.. (first value is the reference)"
)
_METRICS = ("consistency, top1_change, mean_abs_change, flip_probability, top5_distance, worst_case_stability, "
            "agreement, accuracy, equivariance (dense outputs)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  shiftlab audit --model torchvision:resnet18 --data photos --transform crop:224:32\n"
        "  shiftlab audit --model pretrained:efficientnet_lite0 --data ./images --transform diagonal:8 "
        "--layers all --json audit.json\n\n"
        "The JSON format (schema_version 1) is described in docs/audit-json.md. Exit code 2 on bad input."
    )
    parser.add_argument("--model", required=True, metavar="SPEC",
                        help="timm:NAME, torchvision:NAME, pretrained:efficientnet_lite0 or path/to/file.py:factory")
    parser.add_argument("--weights", metavar="PATH", help="local checkpoint (read with weights_only=True)")
    parser.add_argument("--data", default="photos", metavar="SPEC",
                        help="image folder, .npz file, CIFAR-10 python folder, or 'photos' (bundled; default)")
    parser.add_argument("--transform", metavar="SPEC", help=_TRANSFORM_HELP)
    parser.add_argument("--metrics", metavar="LIST", help=f"comma-separated, from: {_METRICS} "
                        "(default: the protocol's own; accuracy when the data has labels)")
    parser.add_argument("--layers", metavar="LIST",
                        help="per-layer equivariance errors: 'all' (every leaf module), layer names (comma-separated) "
                             "or a torch.nn type name such as Conv2d")
    parser.add_argument("--json", metavar="PATH",
                        help="write the results as JSON (refuses to overwrite without --force)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    parser.add_argument("--batch-size", type=int, default=32, help="model inputs per forward pass (default 32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random offsets (default 0)")
    parser.add_argument("--limit", type=int, metavar="N", help="audit only the first N images")
    parser.add_argument("--output-key", metavar="KEY", help="element of a tuple (int) or dict (str) model output")
    parser.add_argument("--margin", type=int, help="border (input px) left out of layer errors for non-circular "
                        "protocols (default 16)")
    parser.add_argument("--resize", action="store_true",
                        help="resize every image to the protocol's size (default: only when sizes differ)")
    parser.add_argument("--image-size", type=int, metavar="PX", help="model input size when resizing "
                        "(default: the model's preprocessing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _layers_arg(text: str | None, model):
    if text is None:
        return None
    if text.strip() == "all":
        return "all"
    import torch.nn as nn

    names = [n.strip() for n in text.split(",") if n.strip()]
    module_names = {n for n, _ in model.named_modules()}
    types = [getattr(nn, n) for n in names if n not in module_names and isinstance(getattr(nn, n, None), type)]
    if types and len(types) == len(names):
        return tuple(types)
    return names


def _output_key(text: str | None):
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False)
    proto = result.protocol
    title = f"shiftlab audit: {result.model} on {result.data}, {proto['spec']}, {result.n} images"
    if result.skipped:
        title += f" ({len(result.skipped)} unreadable files skipped)"
    table = Table(title=title)
    for col in ("metric", "value", "95% interval", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in result.summary_rows():
        table.add_row(*row)
    console.print(table)
    layers = result.layers
    if layers:
        from shiftlab.measure.audit import _fmt

        lt = Table(title="layers: relative error ||phi(Tx) - T'phi(x)|| / ||phi(x)|| (mean, n compared pairs)")
        for col in ("layer", "stride", "equivariance", "n", "not representable", "pooled invariance"):
            lt.add_column(col, justify="left" if col == "layer" else "right")
        for name, entry in layers.items():
            info = result.layer_info[name]
            eq = entry.get("equivariance")
            inv = entry["pooled_invariance"]
            stride = "-" if info.get("stride") is None else "x".join(map(str, info["stride"]))
            lt.add_row(name, stride, "-" if eq is None else _fmt(eq.value), "-" if eq is None else str(eq.n),
                       "-" if eq is None else str(eq.extra.get("unrepresentable", 0)), _fmt(inv.value))
        console.print(lt)
        if any(e.get("equivariance") is not None and e["equivariance"].n == 0
               and e["equivariance"].extra.get("unrepresentable", 0) > 0 for e in layers.values()):
            console.print("layers with n = 0: no pair's shift was a multiple of their stride; for deep layers use a "
                          "protocol with such shifts, e.g. --transform grid:2:32 or diagonal:32:circular",
                          markup=False, highlight=False)
    for path, reason in result.skipped[:10]:
        console.print(f"skipped {path}: {reason}", markup=False, highlight=False)
    if len(result.skipped) > 10:
        console.print(f"... and {len(result.skipped) - 10} more skipped files (all listed in the JSON)")


def run(args: argparse.Namespace) -> int:
    from shiftlab._io import check_writable, write_json
    from shiftlab.data import load_dataset
    from shiftlab.errors import InputError
    from shiftlab.measure.audit import audit
    from shiftlab.models import load_model

    if args.json:
        check_writable(args.json, args.force)  # fail before the (long) audit, not after it
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    model = load_model(args.model, weights=args.weights, device=args.device, output_key=_output_key(args.output_key))
    dataset = load_dataset(args.data, limit=args.limit)
    if len(dataset) == 0:
        raise InputError(f"no readable images in {args.data}")
    metrics = None if args.metrics is None else [m.strip() for m in args.metrics.split(",") if m.strip()]
    result = audit(model, dataset, transform=args.transform, metrics=metrics, batch_size=args.batch_size,
                   device=args.device, layers=_layers_arg(args.layers, model), seed=args.seed,
                   margin=args.margin, resize=True if args.resize else None, image_size=args.image_size,
                   progress=not args.no_progress)
    result.model, result.data = args.model, args.data
    _table(result)
    if args.json:
        doc = result.to_dict()
        doc["command"] = {"model": args.model, "weights": args.weights, "data": args.data,
                          "transform": result.protocol["spec"], "metrics": list(result.metric_names),
                          "layers": args.layers, "seed": args.seed, "limit": args.limit, "batch_size": args.batch_size,
                          "output_key": args.output_key, "margin": args.margin, "resize": args.resize,
                          "image_size": args.image_size}
        write_json(args.json, doc, force=args.force)
    return 0
