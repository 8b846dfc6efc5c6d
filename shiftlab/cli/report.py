"""``shiftlab report``: the main job. Measure a real pretrained network on real photos and write a web page."""

from __future__ import annotations

import argparse

from shiftlab.cli.audit import seed_argument

HELP = "measure the pretrained network on the bundled photos (or yours) and write an HTML report"

DEFAULT_MODEL = "pretrained:efficientnet_lite0"
DEFAULT_OUT = "shiftlab-report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC",
                        help=f"model to measure (default {DEFAULT_MODEL}; also timm:NAME, torchvision:NAME, "
                             "file.py:factory)")
    parser.add_argument("--weights", metavar="PATH", help="local checkpoint for --model (read with weights_only=True)")
    parser.add_argument("--data", default=None, metavar="SPEC",
                        help="images: a folder, a .txt list, a .npz, a CIFAR-10 folder (default: the bundled photos)")
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help="model input size (default: the model's own; 224 for a model that declares none)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"report folder (default {DEFAULT_OUT}/)")
    parser.add_argument("--quick", action="store_true", help="two photos and fewer views: a preview in seconds")
    parser.add_argument("--seed", type=seed_argument, default=0, help="seed of the random crops and shifts (default 0)")
    parser.add_argument("--experiments", default=None, metavar="DIR",
                        help="also render the training-experiment results (JSON) found in DIR")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--force", action="store_true",
                        help="accepted for compatibility; it changes nothing: a report replaces only an earlier "
                             "shiftlab report (with nothing else in it), never a folder holding other files")
    parser.add_argument("--no-progress", action="store_true", help="do not draw progress bars")
    parser.add_argument("--finetune-steps", type=int, default=0, metavar="N",
                        help="also fine-tune one fix for N steps (shiftlab finetune) and add its row 'after "
                             "fine-tuning' to the fixes table; the model is saved in the report folder (default 0: "
                             "none; on 2 CPU cores a step of the default network takes about a second)")
    parser.add_argument("--finetune-fix", default="aps", metavar="FIX",
                        help="the fix to fine-tune: blur, aps (default), aps:circular")
    parser.add_argument("--finetune-data", default=None, metavar="SPEC",
                        help="images to fine-tune on (default: the report's own images; other images make the row "
                             "a held-out measurement)")


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from shiftlab.errors import InputError, printable
    from shiftlab.measure import distributed
    from shiftlab.report.html import check_output_folder

    from shiftlab._io import claim_output

    inputs = [("--data", args.data), ("--model", args.model), ("--weights", args.weights),
              ("--experiments", args.experiments), ("--finetune-data", args.finetune_data)]
    out = check_output_folder(args.out, force=args.force, inputs=inputs)  # refuse before spending minutes
    claim_output(out, "--out")  # a second report into the same folder at the same time is refused now, not later
    if args.image_size is not None:
        from shiftlab.models.preprocessing import check_input_size

        check_input_size(args.image_size, "--image-size")
    training = load_experiment_results(args.experiments) if args.experiments is not None else None
    if args.finetune_steps < 0:
        raise InputError(f"--finetune-steps must be 0 or more, got {args.finetune_steps}")
    if args.finetune_steps:
        from shiftlab.runs import parse_fix

        try:
            parse_fix(args.finetune_fix)
        except InputError as exc:
            raise InputError(f"--finetune-fix: {exc}") from None
        if args.finetune_data is not None:
            from shiftlab.data.sources import open_images

            open_images(args.finetune_data)
    finetune_name = f"finetuned-{args.finetune_fix.replace(':', '-')}.pt"
    world = distributed.init_from_environment()

    from shiftlab.experiments.pretrained import run_report_experiments, thumbnails
    from shiftlab.report.html import write_report

    started = time.perf_counter()
    progress = not args.no_progress and world.is_main
    if progress:
        print(printable(f"shiftlab: measuring {args.model} on {args.data or 'the bundled photos'}"), file=sys.stderr)
    files: dict = {}
    results = run_report_experiments(args.model, args.data, quick=args.quick, seed=args.seed, progress=progress,
                                     device=args.device, weights=args.weights, image_size=args.image_size,
                                     finetune_steps=args.finetune_steps, finetune_fix=args.finetune_fix,
                                     finetune_data=args.finetune_data, finetune_file=str(out / finetune_name),
                                     files=files)
    if not world.is_main:
        return 0
    results["classic"], classic_figures = classic_demonstrations(progress)
    if training:
        results["training_experiments"] = training
    size = tuple(results["model"]["input_size"])
    pre = results["model"].get("preprocessing") or {}
    thumbs = thumbnails(results["settings"]["data"], results["data"]["indices"], size,
                        pre.get("interpolation", "bilinear"), limit=results["settings"]["budget"].get("max_images"))
    page = write_report(results, out, force=True, extra_figures=classic_figures, progress=progress,
                        images={f"thumb:{i}": a for i, a in thumbs.items()},
                        files={Path(name).name: data for name, data in files.items()})
    seconds = time.perf_counter() - started
    print(f"shiftlab: report written to {page} ({seconds:.0f} s); open it in a browser: "
          f"{Path(page).resolve().as_uri()}", file=sys.stderr)
    for warning in results.get("warnings", []):
        print(f"shiftlab: warning: {printable(warning)}", file=sys.stderr)
    return 0


def classic_demonstrations(progress: bool = False) -> tuple[dict, dict]:
    """The articles' demonstrations (issue 2): their numbers, and their figures (key -> matplotlib figure)."""
    from shiftlab import classic
    from shiftlab._progress import track
    from shiftlab.report import classic_plots

    runs = {
        "pixel": (classic.pixel_experiment, classic_plots.plot_pixel_experiment),
        "edges": (classic.edge_experiment, classic_plots.plot_edge_experiment),
        "pooling": (classic.pooling_experiment, classic_plots.plot_pooling_experiment),
        "tandem": (classic.tandem_experiment, classic_plots.plot_tandem_experiment),
    }
    numbers, figures = {}, {}
    for name, (experiment, plot) in track(runs.items(), "the articles' demonstrations", total=len(runs),
                                          enabled=progress):
        result = experiment()
        numbers[name] = result.to_dict()
        figures[f"classic_{name}"] = plot(result)
    return numbers, figures


def _check_experiment_result(data: dict, path) -> None:
    """Refuse, before any work, an experiment result the report could not render (damaged or hand-edited)."""
    from shiftlab.errors import InputError
    from shiftlab.report import experiment_plots

    name = data["experiment"]
    where = f"--experiments: {path} (experiment {name!r})"
    if name not in experiment_plots.TITLES:
        raise InputError(f"{where}: unknown experiment; expected one of {', '.join(experiment_plots.TITLES)}")
    variants = data["variants"]
    if not isinstance(variants, dict) or not variants:
        raise InputError(f"{where}: 'variants' must map each variant's name to its results, "
                         f"got {type(variants).__name__}")
    bad = [str(k) for k, v in variants.items() if not isinstance(v, dict) or not isinstance(v.get("summary"), dict)]
    if bad:
        raise InputError(f"{where}: variant {bad[0]!r} has no 'summary' of results")
    try:  # the figures are cheap; drawing them now finds any other damage before minutes of audits
        figures = experiment_plots.experiment_figures(data)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is not what the report needs
        raise InputError(f"{where}: cannot be rendered ({type(exc).__name__}: {str(exc)[:120]}); write it again "
                         f"with shiftlab experiment {name}") from None
    import matplotlib.pyplot as plt

    for figure in figures.values():
        plt.close(figure)


def load_experiment_results(folder) -> dict:
    """The training-experiment results (``shiftlab experiment`` JSON files) in ``folder``: name -> result.

    Files that are not experiment results are left out; a folder with none raises InputError.
    """
    import json
    from pathlib import Path

    from shiftlab.errors import InputError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--experiments: {folder} is not a folder")
    found = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("experiment"), str) and "variants" in data:
            _check_experiment_result(data, path)
            found[path.stem] = data
    if not found:
        raise InputError(f"--experiments: no experiment results (JSON written by shiftlab experiment) in {folder}")
    return found
