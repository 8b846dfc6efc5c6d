"""One ``shiftlab finetune`` run as data: its options, the checks before any work, and its execution.

The CLI parses its flags into a :class:`FinetuneRun` and calls :meth:`FinetuneRun.execute`, which checks every
option and output path before anything is loaded, loads the teacher and the student, fine-tunes through
:func:`shiftlab.finetune` and (on rank 0 of a torchrun job) writes the fixed checkpoint and the JSON log. What
the run did comes back as a :class:`FinetuneOutcome`; printing it is the CLI's part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shiftlab.errors import InputError

__all__ = ["FinetuneRun", "FinetuneOutcome", "count_readable"]


def count_readable(log: dict, source) -> None:
    """Count only the readable images in ``log`` and name the files skipped, as an audit's JSON does.

    ``images`` becomes the files of ``source`` less those the run could not read (``unreadable``: path -> reason,
    recorded by the training loop); ``files`` is the number of files; ``skipped`` is ``{"count", "files": [{"path",
    "reason"}], "read"}`` with the files the listing left out too (broken links, ...); ``read`` is how many files the
    run's steps reached at most (under ``files``: an unreadable file among the others is not known). The loop's
    ``unreadable`` record is taken into ``skipped``.
    """
    unreadable = log.pop("unreadable", None) or {}
    listed = [{"path": str(p), "reason": str(r)} for p, r in getattr(source, "skipped", None) or []]
    files = len(source)
    config = log.get("config") or {}
    read = (int(config.get("steps") or 0) * int(config.get("accumulate") or 1) * int(config.get("batch_size") or 0)
            * int(log.get("world_size") or 1))
    log["files"] = files
    log["images"] = files - len(unreadable)
    log["skipped"] = {"count": len(listed) + len(unreadable),
                      "files": listed + [{"path": p, "reason": r} for p, r in unreadable.items()],
                      "read": min(read, files)}


@dataclass(frozen=True)
class FinetuneOutcome:
    """What a :class:`FinetuneRun` did: the result, where it was written, the teacher's source, and the
    arguments that load the saved model in other commands (``None`` and ``written=False`` on ranks other than 0)."""

    result: object  # a FinetuneResult
    out: Path
    log: Path
    teacher_source: dict
    load_arguments: str | None
    written: bool


@dataclass(frozen=True)
class FinetuneRun:
    """The options of one fine-tuning run (CLI flags, without the dashes); defaults are the CLI's defaults.

    With ``fix``, ``model`` is the original (the teacher, converted into the student); without, a fixed
    checkpoint (the student; its teacher is ``teacher``, or the original its recipe records).
    """

    model: str
    data: str
    out: str
    weights: str | None = None
    num_classes: int | None = None  # timm's --num-classes / --in-chans: how --model (and a registry teacher) is built
    in_chans: int | None = None
    fix: str | None = None
    teacher: str | None = None
    teacher_weights: str | None = None
    limit: int | None = None
    views: str | None = None
    image_size: int | None = None
    class_map: str | None = None
    steps: int | None = None
    batch_size: int = 32
    accumulate: int = 1
    lr: float | None = None
    weight_decay: float = 0.01
    warmup: int | None = None
    temperature: float = 2.0
    kl: float = 1.0
    consistency: float = 0.0
    label_weight: float = 0.0
    batch_norm: str = "frozen"
    bn_batches: int = 50
    lps_temperature: tuple[float, float] = (1.0, 0.1)
    tips_alpha: float = 0.35
    seed: int = 0
    log: str | None = None
    force: bool = False
    checkpoint: str | None = None
    checkpoint_every: int = 50
    resume: bool = False
    log_every: int = 10
    device: str | None = None
    amp: bool = False
    workers: int | None = None
    threads: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def claim_outputs(self) -> tuple[Path, Path]:
        """``out`` and the log (default: ``out`` with ``.json``), checked writable and claimed for this process."""
        from shiftlab._io import check_output_path

        out = check_output_path(self.out, self.force, "--out", claim=True)
        log_path = check_output_path(self.log if self.log is not None else Path(self.out).with_suffix(".json"),
                                     self.force, "--log", claim=True)
        if log_path.resolve() == out.resolve():
            raise InputError("--log and --out name the same file")
        return out, log_path

    def config(self):
        """The :class:`~shiftlab.fix.finetune.FinetuneConfig` of these options (checked by its constructor)."""
        from shiftlab.fix.finetune import FinetuneConfig

        return FinetuneConfig(steps=self.steps, batch_size=self.batch_size, accumulate=self.accumulate, lr=self.lr,
                              weight_decay=self.weight_decay, warmup=self.warmup, temperature=self.temperature,
                              kl=self.kl, consistency=self.consistency, labels=self.label_weight, views=self.views,
                              batch_norm=self.batch_norm, bn_batches=self.bn_batches, seed=self.seed,
                              lps_temperature=tuple(self.lps_temperature), tips_alpha=self.tips_alpha)

    def check(self) -> None:
        """Every option is valid (one-line errors naming the flag), before anything is loaded."""
        from shiftlab.fix.recipe import parse_fix

        from shiftlab.models.loading import check_build_options

        if self.teacher_weights is not None and self.teacher is None:
            raise InputError("--teacher-weights needs --teacher")
        check_build_options(self.model, self.num_classes, self.in_chans)
        if self.fix is not None:
            parse_fix(self.fix)
        from shiftlab.runs.audit import check_device

        check_device(self.device, self.amp)
        self.config()
        if self.views is not None:
            from shiftlab.measure.protocols import parse_protocol

            parse_protocol(self.views)

    def build(self) -> dict:
        """--num-classes / --in-chans, as keyword arguments of the model loader (only those given)."""
        from shiftlab.models.loading import given_build_options

        return given_build_options(self)

    def check_checkpoint(self) -> None:
        """``checkpoint`` is a fine-tuning checkpoint of this kind (or not there yet); ``resume`` needs one."""
        if self.checkpoint is not None:
            from shiftlab.fix.finetune import FinetuneCheckpoint

            FinetuneCheckpoint(self.checkpoint, {}).check(self.resume)
        elif self.resume:
            raise InputError("--resume needs --checkpoint FILE")

    def load(self):
        """The teacher and the keyword arguments that name the student for :func:`shiftlab.finetune`."""
        from shiftlab.fix.recipe import conversion_of, is_converted, recipe_spec
        from shiftlab.models.fixed_checkpoint import load_any_model as load_model

        model = load_model(self.model, weights=self.weights, seed=self.seed, **self.build())
        fixed = is_converted(model)
        if self.fix is not None:
            if fixed:
                raise InputError(f"{self.weights or self.model} is a fixed checkpoint already "
                                 f"({recipe_spec(conversion_of(model))}); drop --fix to fine-tune it further")
            teacher = model if self.teacher is None else self.load_teacher(None)
            return teacher, {"fix": self.fix}
        if not fixed:
            raise InputError(f"{self.model} is not converted: name the conversion with --fix blur|aps|aps:circular, "
                             f"or pass a fixed checkpoint (shiftlab fix --out FILE)")
        return self.load_teacher(model), {"student": model}

    def load_teacher(self, student):
        """The teacher of a fixed checkpoint given as ``model``: ``teacher``, or the original its recipe records."""
        from shiftlab.models.fixed_checkpoint import load_any_model as load_model
        from shiftlab.models.loading import file_sha256, is_registry_spec, shown_arg

        from shiftlab.models.loading import build_options

        if self.teacher is not None:
            return load_model(self.teacher, weights=self.teacher_weights,
                              **build_options(self.teacher, self.build()))
        original = (getattr(student, "shiftlab_source", None) or {}).get("original") or {}
        spec, weights = original.get("spec"), original.get("weights")
        if spec is None:
            raise InputError(f"{self.weights or self.model} does not record its original model; name the teacher "
                             f"with --teacher SPEC")
        if not is_registry_spec(spec):
            # the recipe names the user's own code (evil.py:f, or whatever models.py sits here): a file's word never
            # runs it; the architecture the user named with --model SPEC --weights FILE is the original's
            if self.weights is None:
                raise InputError(f"{self.model} was made from {shown_arg(spec)}, code that a checkpoint never runs on "
                                 f"its own: name the teacher with --teacher {shown_arg(spec)}"
                                 + (f" --teacher-weights {shown_arg(weights)}" if weights is not None else ""))
            spec = self.model
        if weights is not None and (not Path(weights).is_file()
                                    or file_sha256(weights) != original.get("weights_sha256")):
            raise InputError(f"the original weights {weights} that {self.weights or self.model} was made from are "
                             f"not there (or changed); name the teacher with --teacher SPEC --teacher-weights FILE")
        return load_model(spec, weights=weights, **build_options(spec, original))

    def execute(self, progress: bool = False) -> FinetuneOutcome:
        """Check, load, fine-tune and (rank 0) write ``out`` and the log; ``progress`` shows a bar on rank 0."""
        from shiftlab.data.sources import open_images
        from shiftlab.fix.finetune import finetune
        from shiftlab.measure import distributed

        out, log_path = self.claim_outputs()
        self.check()
        class_map = None
        if self.class_map is not None:
            from shiftlab.measure.labels import read_class_map

            class_map = read_class_map(self.class_map)
        source = open_images(self.data, limit=self.limit)
        self.check_checkpoint()
        world = distributed.init_from_environment()
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        teacher, student = self.load()
        result = finetune(teacher, source, config=self.config(), device=self.device, amp=self.amp,
                          image_size=self.image_size, class_map=class_map, workers=self.workers,
                          checkpoint=self.checkpoint, checkpoint_every=self.checkpoint_every, resume=self.resume,
                          log_every=self.log_every, progress=progress and world.is_main,
                          command=self.extra.get("command"), **student)
        count_readable(result.log, source)
        teacher_source = getattr(teacher, "shiftlab_source", None) or {}
        if not world.is_main:
            return FinetuneOutcome(result, out, log_path, teacher_source, None, written=False)
        return FinetuneOutcome(result, out, log_path, teacher_source, self.write(result, out, log_path), written=True)

    def write(self, result, out: Path, log_path: Path) -> str:
        """Save the fine-tuned model at ``out`` and the log at ``log_path``; return the arguments that load it."""
        import shlex

        from shiftlab._io import write_json
        from shiftlab.models.fixed_checkpoint import load_arguments, read_fixed

        result.save(out, force=self.force)
        result.log["out"] = str(out)
        write_json(log_path, result.log, force=self.force)
        return shlex.join(load_arguments(out, read_fixed(out)["recipe"]["model"].get("spec")))

