"""``shiftlab report``: the main job. Measure a real pretrained network on real photos and write a web page.

The flags become a :class:`~shiftlab.report.job.ReportJob`: checked before any work, its audits run by every
process of a torchrun job, the folder written by rank 0.
"""

from __future__ import annotations

import argparse

from shiftlab._sizes import INPUT_SIZE_RULE
from shiftlab.cli.arguments import positive_int
from shiftlab.cli.audit import seed_argument

HELP = "measure the pretrained network on the bundled photos (or yours) and write an HTML report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from shiftlab.cli.timm_flags import add_build_arguments, add_checkpoint_hint
    from shiftlab.report.job import DEFAULT_MODEL, DEFAULT_OUT

    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC",
                        help=f"model to measure (default {DEFAULT_MODEL}; also timm:NAME, torchvision:NAME, "
                             "file.py:factory)")
    parser.add_argument("--weights", metavar="PATH", help="local checkpoint for --model (read with weights_only=True)")
    add_build_arguments(parser)
    add_checkpoint_hint(parser)
    parser.add_argument("--data", default=None, metavar="SPEC",
                        help="images: a folder, a .txt list, a .npz, a CIFAR-10 folder, images with masks (a VOC folder, "
                             "images/ + masks/, digit-masks) (default: the bundled photos); a model whose output is a "
                             "(B, K, H, W) map gets a dense report (mASSC, equivariance, mIoU with masks, maps)")
    parser.add_argument("--image-size", "--img-size", type=positive_int, metavar="PX",
                        help=f"model input size (default: the model's own; {INPUT_SIZE_RULE})")
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


def job_from_args(args: argparse.Namespace):
    """The :class:`~shiftlab.report.job.ReportJob` the flags describe."""
    from shiftlab.report.job import ReportJob

    return ReportJob(model=args.model, weights=args.weights, num_classes=args.num_classes, in_chans=args.in_chans,
                     data=args.data, image_size=args.image_size, out=args.out,
                     quick=args.quick, seed=args.seed, experiments=args.experiments, device=args.device,
                     force=args.force, finetune_steps=args.finetune_steps, finetune_fix=args.finetune_fix,
                     finetune_data=args.finetune_data)


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from shiftlab.errors import printable
    from shiftlab.measure import distributed

    job = job_from_args(args)
    checked = job.check()  # refuse before spending minutes
    world = distributed.init_from_environment()
    started = time.perf_counter()
    progress = not args.no_progress and world.is_main
    if progress:
        print(printable(f"shiftlab: measuring {args.model} on {args.data or 'the bundled photos'}"), file=sys.stderr)
    files: dict = {}
    results = job.measure(checked, progress=progress, files=files)
    if not world.is_main:
        return 0
    page = job.write(checked, results, progress=progress, files=files)
    seconds = time.perf_counter() - started
    print(f"shiftlab: report written to {page} ({seconds:.0f} s); open it in a browser: "
          f"{Path(page).resolve().as_uri()}", file=sys.stderr)
    for warning in results.get("warnings", []):
        print(f"shiftlab: warning: {printable(warning)}", file=sys.stderr)
    return 0
