"""``shiftlab finetune``: give a converted model its original's predictions back, without labels.

The original network is the teacher; the converted one (``--fix``, or a fixed checkpoint as ``--model``) learns
to match its softmax on the same shifted views (:func:`shiftlab.finetune`). Writes the fine-tuned model as a
fixed checkpoint (``--out``, loadable everywhere a model is named) and a JSON log of the run (``--log``).
Under ``torchrun --nproc_per_node N -m shiftlab finetune ...`` the processes share every batch
(DistributedDataParallel) and rank 0 writes the files. The flags become a
:class:`~shiftlab.runs.finetune.FinetuneRun`, which checks, loads, fine-tunes and writes; this module prints.
"""

from __future__ import annotations

import argparse

from shiftlab.cli.audit import seed_argument

HELP = "fine-tune a converted model to agree with the original (distillation on shifted views, no labels needed)"


def _number(kind, minimum):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
                from None
        if value < minimum or value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from shiftlab.cli.timm_flags import add_build_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  shiftlab finetune --model pretrained:efficientnet_lite0 --fix aps --data ./photos --steps 300 --out ft.pt\n"
        "  shiftlab finetune --model eff_blur.pt --data ./photos --steps 300 --out ft.pt   (a fixed checkpoint)\n"
        "  torchrun --nproc_per_node 4 -m shiftlab finetune ... --checkpoint ft.ckpt --resume\n\n"
        "Measure the result with: shiftlab audit --model ft.pt --reference TEACHER --data HELD_OUT ...\n"
        "The --log format is described in docs/finetune-log.md.")
    model = parser.add_argument_group("models")
    model.add_argument("--model", required=True, metavar="SPEC",
                       help="the model: with --fix, the original (the teacher, converted into the student); without, a "
                            "fixed checkpoint (the student; teacher: --teacher, or the original its recipe names)")
    model.add_argument("--weights", metavar="PATH", help="local checkpoint for --model (weights_only=True)")
    add_build_arguments(model)
    model.add_argument("--fix", metavar="METHOD", help="the conversion: blur, aps, lps, tips, ideal (each optionally "
                                                       ":circular), blur:before")
    model.add_argument("--teacher", metavar="SPEC", help="the teacher (default: --model with --fix; else the original "
                                                          "recorded in the fixed checkpoint)")
    model.add_argument("--teacher-weights", metavar="PATH", help="local checkpoint for --teacher")
    data = parser.add_argument_group("data and views")
    data.add_argument("--data", required=True, metavar="SPEC",
                      help="training images: a folder, a .txt list, a .npz, a CIFAR-10 folder or 'photos'; labels "
                           "are not needed")
    data.add_argument("--limit", type=_number(int, 1), metavar="N", help="the first N images only")
    data.add_argument("--views", metavar="SPEC",
                      help="the views, crop:S:M or circular:M (default: the images at the scale the model sees them: "
                           "crop:S:S/7 for a model that declares its input size S, e.g. crop:224:32; else "
                           "circular:S/8 at the images' own size S, never enlarged; so too for images under 2/3 of the "
                           "declared size)")
    data.add_argument("--image-size", "--img-size", type=_number(int, 1), metavar="PX",
                      help="model input size (default: the model's own)")
    data.add_argument("--class-map", metavar="FILE", help="JSON {data class: model class}, for --label-weight")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=_number(int, 1), metavar="N",
                       help="optimizer steps (default: about 10 passes over the data, 100 to 1000)")
    train.add_argument("-b", "--batch-size", type=_number(int, 1), default=32, metavar="N",
                       help="images per micro-batch and process (default 32)")
    train.add_argument("--accumulate", type=_number(int, 1), default=1, metavar="N",
                       help="micro-batches per optimizer step (gradient accumulation; default 1)")
    train.add_argument("--lr", type=_number(float, 0),
                       help="AdamW peak learning rate (default: 1e-3 for a network under a million parameters, "
                            "1e-4 for larger ones)")
    train.add_argument("--weight-decay", type=_number(float, 0), default=0.01,
                       help="AdamW weight decay, on weights of 2+ dimensions (0.01)")
    train.add_argument("--warmup", type=_number(int, 0), metavar="N",
                       help="linear warm-up steps before the cosine decay (default: 5%% of the steps)")
    train.add_argument("--temperature", type=_number(float, 0), default=2.0,
                       help="distillation temperature (2)")
    train.add_argument("--kl", type=_number(float, 0), default=1.0, metavar="W",
                       help="weight of the KL term to the teacher's softmax (1)")
    train.add_argument("--consistency", type=_number(float, 0), default=0.0, metavar="W",
                       help="weight of the consistency term between two shifted views (0: one view per image)")
    train.add_argument("--label-weight", type=_number(float, 0), default=0.0, metavar="W",
                       help="weight of cross-entropy on the data's labels, where they are the model's classes (0)")
    train.add_argument("--batch-norm", choices=("frozen", "train", "reestimate"), default="frozen",
                       help="frozen: keep the running statistics (default); train: batch statistics; reestimate: "
                            "frozen, then estimated afresh at the end")
    train.add_argument("--bn-batches", type=_number(int, 1), default=50, metavar="N",
                       help="batches for --batch-norm reestimate (50)")
    train.add_argument("--lps-temperature", type=_number(float, 0), nargs=2, default=(1.0, 0.1),
                       metavar=("START", "END"), help="with --fix lps: the Gumbel-softmax temperature of the LPS "
                                                      "layers, annealed geometrically from START to END (1.0 0.1)")
    train.add_argument("--tips-alpha", type=_number(float, 0), default=0.35, metavar="W",
                       help="with --fix tips: weight of TIPS's shift-equivariance term (0.35, the authors')")
    train.add_argument("--seed", type=seed_argument, default=0, help="seed of the image order and the views (0)")
    run = parser.add_argument_group("execution and output")
    run.add_argument("--out", required=True, metavar="FILE", help="the fine-tuned model (a fixed checkpoint, .pt)")
    run.add_argument("--log", metavar="FILE", help="JSON log of the run (default: --out with .json)")
    run.add_argument("--force", action="store_true", help="overwrite --out and --log")
    run.add_argument("--checkpoint", metavar="FILE", help="write the training state here every --checkpoint-every "
                                                          "steps (atomically)")
    run.add_argument("--checkpoint-every", type=_number(int, 1), default=50, metavar="N",
                     help="steps between checkpoints (50)")
    run.add_argument("--resume", action="store_true", help="continue from --checkpoint (from the start if it is "
                                                            "not there yet)")
    run.add_argument("--log-every", type=_number(int, 1), default=10, metavar="N",
                     help="steps per log entry (10)")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    run.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    run.add_argument("-j", "--workers", type=_number(int, 0), metavar="N", help="DataLoader worker processes")
    run.add_argument("--threads", type=_number(int, 1), metavar="N", help="intra-op threads of torch")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run_from_args(args: argparse.Namespace):
    """The :class:`~shiftlab.runs.finetune.FinetuneRun` the flags describe."""
    import shlex
    import sys

    from shiftlab.runs.finetune import FinetuneRun

    return FinetuneRun(
        model=args.model, data=args.data, out=args.out, weights=args.weights, num_classes=args.num_classes,
        in_chans=args.in_chans, fix=args.fix, teacher=args.teacher,
        teacher_weights=args.teacher_weights, limit=args.limit, views=args.views, image_size=args.image_size,
        class_map=args.class_map, steps=args.steps, batch_size=args.batch_size, accumulate=args.accumulate,
        lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, temperature=args.temperature, kl=args.kl,
        consistency=args.consistency, label_weight=args.label_weight, batch_norm=args.batch_norm,
        bn_batches=args.bn_batches, lps_temperature=tuple(args.lps_temperature), tips_alpha=args.tips_alpha,
        seed=args.seed, log=args.log, force=args.force, checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every, resume=args.resume, log_every=args.log_every, device=args.device,
        amp=args.amp, workers=args.workers, threads=args.threads,
        extra={"command": shlex.join(["shiftlab", *sys.argv[1:]]) if sys.argv[1:2] == ["finetune"] else None})


def print_outcome(outcome) -> None:
    """What the run did, on the terminal: its warnings, the last loss and agreement, where the files are."""
    import sys

    from shiftlab.errors import printable

    log = outcome.result.log
    final = log.get("final") or {}
    for warning in log.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    skipped = log.get("skipped") or {"count": 0, "files": []}
    for entry in skipped["files"][:10]:  # named, as audit does
        print(f"skipped {printable(entry['path'])}: {entry['reason']}", file=sys.stderr)
    if skipped["count"] > 10:
        print(f"... and {skipped['count'] - 10} more skipped files (all listed in {outcome.log})", file=sys.stderr)
    readable = f"{log['images']} images" + (f" ({skipped['count']} unreadable files skipped)"
                                            if skipped["count"] else "")
    if skipped.get("read", 0) < log.get("files", 0):  # a short run: the files it never reached were never opened
        readable += f" (its steps reached {skipped['read']} of the {log['files']} files: the others were not opened)"
    print(f"fine-tuned {log['student']} for {log['config']['steps']} steps on {readable} "
          f"({log['views']} views) in {log['seconds']:.0f} s: last loss "
          f"{final.get('loss', float('nan')):.4f}, running agreement with the teacher "
          f"{final.get('agreement', float('nan')):.1%} (training views)")
    print(f"saved the fine-tuned model to {outcome.out} (a fixed checkpoint: shiftlab audit {outcome.load_arguments} "
          f"...), the log to {outcome.log}")
    teacher = outcome.teacher_source
    if teacher.get("spec") and not teacher.get("weights"):
        print(f"measure it on held-out images: shiftlab audit {outcome.load_arguments} --reference {teacher['spec']} "
              f"--data HELD_OUT --transform ...")


def run(args: argparse.Namespace) -> int:
    outcome = run_from_args(args).execute(progress=not args.no_progress)
    if outcome.written:
        print_outcome(outcome)
    return 0
