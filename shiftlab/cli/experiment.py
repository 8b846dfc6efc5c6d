"""``shiftlab experiment NAME``: train small networks on CPU to test the articles' claims."""

from __future__ import annotations

import argparse

HELP = ("train small CNNs on real handwritten digits to test a claim (architecture, positions, augmentation, rotation, "
        "subsampling, subpixel; segmentation: U-Nets on digit masks; transformer: a small ViT, baseline against "
        "polyphase tokenization)")

EXPERIMENTS = ("architecture", "unseen-positions", "augmentation", "rotation", "subsampling", "subpixel",
               "segmentation", "transformer")

# the experiments that train named SmallCNN variants (--variants)
_VARIANT_EXPERIMENTS = ("architecture", "unseen-positions", "subsampling")

# the columns of the summary table printed per experiment: (metric key, column title)
_COLUMNS = {
    "architecture": [("accuracy", "accuracy"), ("circular_consistency", "circular cons."),
                     ("crop_consistency", "crop cons."), ("top1_change", "P(top-1 change)")],
    "unseen-positions": [("inside", "acc. inside"), ("far", "acc. far"), ("outside", "acc. outside"),
                         ("spread", "max - min")],
    "augmentation": [("accuracy", "acc. centred"), ("accuracy_anywhere", "acc. anywhere"),
                     ("circular_consistency", "circular cons."), ("crop_consistency", "crop cons."),
                     ("top1_change", "P(top-1 change)")],
    "rotation": [("accuracy_at_0_deg", "0 deg"), ("accuracy_at_45_deg", "45 deg"), ("accuracy_at_90_deg", "90 deg"),
                 ("accuracy_at_180_deg", "180 deg"), ("mean_accuracy_over_angles", "mean over angles"),
                 ("quarter_turn_agreement", "same top-1 at 0/90/180/270"), ("inference_ms_per_image", "ms/image")],
    "subsampling": [("accuracy", "accuracy"), ("crop_consistency", "crop cons."),
                    ("circular_consistency", "circular cons."), ("top1_change", "P(top-1 change)")],
    "subpixel": [("accuracy", "accuracy"), ("worst_case_integer", "worst, integer"),
                 ("worst_case_half_pixel", "worst, half-pixel"), ("worst_case_fractional", "worst, fractional"),
                 ("worst_case_crop", "worst, crop")],
    "segmentation": [("miou", "mIoU"), ("massc_1px", "mASSC 1 px"), ("massc_circular", "mASSC circular"),
                     ("massc_crop", "mASSC crop")],
    "transformer": [("accuracy", "accuracy"), ("circular_consistency", "circular cons."),
                    ("crop_consistency", "crop cons."), ("worst_case_integer", "worst, integer"),
                    ("worst_case_crop", "worst, crop")],
}


# the figures each experiment writes, by file-name suffix
_FIGURES = {"architecture": ("", "_sweep"), "rotation": ("", "_cost"), "subsampling": ("",), "subpixel": ("",),
            "segmentation": ("", "_maps"), "transformer": ("",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "The format of NAME.json is described in docs/experiment-json.md."
    parser.add_argument("name", choices=EXPERIMENTS, help="which experiment to run")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for NAME.json and NAME*.png")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="train each network with seeds 0..N-1 (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small networks, few epochs, part of the data: seconds to a minute (for CI)")
    parser.add_argument("--data", default=None, metavar="SPEC",
                        help="labelled images instead of the bundled digits: a CIFAR-10 python folder, a folder of "
                             "class subfolders, or an .npz with images and labels")
    parser.add_argument("--variants", default=None, metavar="NAMES",
                        help="comma-separated networks DOWNSAMPLE-HEAD-PADDING to train instead of the default set "
                             f"(for {', '.join(_VARIANT_EXPERIMENTS)})")
    parser.add_argument("--force", action="store_true", help="overwrite existing result files")
    parser.add_argument("--no-progress", action="store_true", help="do not draw progress bars")


def _runner(name: str):
    if name == "architecture":
        from shiftlab.experiments.architecture import run_architecture as run
    elif name == "unseen-positions":
        from shiftlab.experiments.positions import run_unseen_positions as run
    elif name == "augmentation":
        from shiftlab.experiments.augmentation import run_augmentation as run
    elif name == "subsampling":
        from shiftlab.experiments.subsampling import run_subsampling as run
    elif name == "subpixel":
        from shiftlab.experiments.subpixel import run_subpixel as run
    elif name == "segmentation":
        from shiftlab.experiments.segmentation import run_segmentation as run
    elif name == "transformer":
        from shiftlab.experiments.transformer import run_transformer as run
    else:
        from shiftlab.experiments.rotation import run_rotation as run
    return run


def _table(result: dict) -> str:
    columns = _COLUMNS[result["experiment"]]
    rows = []
    for variant, entry in result["variants"].items():
        cells = []
        for key, _ in columns:
            stats = entry["summary"].get(key)
            cells.append("-" if stats is None else
                         f"{stats['mean']:.3f}" + (f" +- {stats['std']:.3f}" if len(stats["values"]) > 1 else ""))
        rows.append([variant, *cells])
    header = ["variant", *[title for _, title in columns]]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _variants(args: argparse.Namespace) -> list[str]:
    """The names given with --variants, each checked before any work."""
    from shiftlab.errors import InputError
    from shiftlab.experiments import parse_variant

    if args.name not in _VARIANT_EXPERIMENTS:
        raise InputError(f"--variants applies to {', '.join(_VARIANT_EXPERIMENTS)}, not to {args.name}")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not names:
        raise InputError("--variants names no variant")
    for name in names:
        parse_variant(name)
    return names


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shiftlab._io import check_output_path, save_figure, write_json
    from shiftlab.errors import InputError

    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    extra = {"variants": _variants(args)} if args.variants is not None else {}
    json_path = out / f"{args.name}.json"
    figure_paths = {suffix: out / f"{args.name}{suffix}.png" for suffix in _FIGURES.get(args.name, ("",))}
    for path in [json_path, *figure_paths.values()]:  # refuse before spending minutes
        check_output_path(path, args.force, "--out", claim=True)

    result = _runner(args.name)(seeds=seeds, quick=args.quick, data=args.data, progress=not args.no_progress, **extra)

    from shiftlab.report.experiment_plots import experiment_figures

    out.mkdir(parents=True, exist_ok=True)
    written = [write_json(json_path, result, force=args.force)]
    import matplotlib.pyplot as plt

    for suffix, fig in experiment_figures(result).items():
        written.append(save_figure(fig, figure_paths[suffix], force=args.force))
        plt.close(fig)
    cpu = result.get("cpu_seconds")
    print(f"{args.name}: {len(result['seeds'])} seed(s), {result['run_seconds']:.0f} s wall"
          f"{f', {cpu:.0f} s CPU' if cpu is not None else ''}{' (quick)' if args.quick else ''}; "
          f"data: {result['data']['data']}")
    print(_table(result))
    if result.get("statement"):
        print(result["statement"])
    for path in written:
        print(f"wrote {path}")
    return 0
