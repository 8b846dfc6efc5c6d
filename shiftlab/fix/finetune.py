"""Label-free fine-tuning of a converted model: the original network teaches the converted one.

:func:`shiftlab.antialias` keeps every trained weight, but the features the later layers were trained on
change, and the converted network's predictions move away from the original's. :func:`finetune` distils them
back: the original model is the teacher (in eval mode, under ``torch.inference_mode``), the converted model the
student, and on the very same views the student learns to match the teacher's softmax at a temperature T::

    loss = kl * T^2 KL(softmax(teacher / T) || softmax(student / T))
         + consistency * (KL(p0 || p1) + KL(p1 || p0)) / 2      p0, p1: the student on two shifted views (at T)
         + labels * cross_entropy(student, label)                where the data has labels in the model's classes

No label is needed: any images of the kind the model will see do. The views are the audit protocols' own
(:mod:`shiftlab.measure.protocols`): ``crop:S:M`` (two S x S windows of an (S+M)-px image at random offsets)
or ``circular:M`` (two circular shifts); with ``consistency=0`` only the first view of each pair is used.
The offsets depend only on the seed and the sample's place in the stream of training samples, and the
order of the images is a seeded permutation per epoch, so a run is a function of its seed.

Optimisation: AdamW (weight decay on weights of two or more dimensions only), a linear warm-up then a
cosine decay to 0, ``accumulate`` micro-batches per step. Batch norm is handled deliberately
(``batch_norm=``): ``"frozen"`` (the default) keeps the running statistics and uses them in training too (the
layers stay in eval mode; their affine weights still learn); ``"train"`` uses batch statistics and updates
the running ones; ``"reestimate"`` trains as ``"frozen"``, then estimates the running statistics afresh
(cumulative average over ``bn_batches`` batches of views). Measured on digits (docs/finetune.md), frozen
and batch statistics distil equally well there; frozen is the default because it keeps the teacher's
statistics, which batch statistics of a few images of the user's data would replace.

Scale. The images stream through a ``DataLoader`` whose workers decode and size them
(:mod:`shiftlab.measure.loader`); memory does not grow with the data set. Under ``torchrun`` each process
takes its own slice of every global batch and the student is wrapped in ``DistributedDataParallel``: ``W``
processes with ``batch_size`` B compute the gradient of a single process with batch ``W * B``. On CUDA,
``amp=True`` runs both models in float16 autocast with a gradient scaler.

Checkpoints. With ``checkpoint=FILE`` the state (student, optimizer, schedule, scaler, step, every rank's
random state, the log so far) is written every ``checkpoint_every`` steps and at the end, atomically
(temporary file, fsync, rename): a kill at any moment leaves the previous checkpoint or the new one.
``resume=True`` continues from it; the resumed run ends with the very weights of an uninterrupted one (same
threads, same device). A checkpoint of another run (other settings, conversion, teacher, data or process
count; the data known by its names, file sizes and modification times) is refused with what differs, and a
damaged one (truncated, edited, keys missing or of the wrong type) with one line, before the student changes.

Speed on CPU: denormal floats are flushed to zero during the run (``torch.set_flush_denormal``; a pretrained
network's gradients are full of them, measured here: 22 s -> 1 s for a backward pass of EfficientNet-Lite0),
and set back to off at the end.

The run in stages (:func:`finetune` calls them in order): the arguments are checked, the models set up
(:func:`_set_up_models`), the data and views prepared as for an audit (:func:`_prepare_data_and_views`), both
models probed once, the defaults that follow the model and the data chosen, the optimiser built, a checkpoint
opened or resumed, and the loop run (:mod:`shiftlab.fix.finetune_loop`). The pieces live beside it: the stream
of views, the losses and batch norm in :mod:`shiftlab.fix.distill`, the checkpoint in
:mod:`shiftlab.fix.finetune_checkpoint`, the agreement check in :mod:`shiftlab.fix.agreement`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from shiftlab.errors import InputError, ShapeError
from shiftlab.fix.agreement import _agreement_warning, _AgreementCheck
from shiftlab.fix.distill import BATCH_NORM_MODES, _Distiller, _forward, _param_groups, _Stream
from shiftlab.fix.finetune_checkpoint import CHECKPOINT_FORMAT, FinetuneCheckpoint, _recipe_text, _restore
from shiftlab.fix.finetune_loop import _Models, _Optimisation, _train, _Training

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "read_log", "FinetuneCheckpoint", "BATCH_NORM_MODES",
           "CHECKPOINT_FORMAT"]

LOG_KIND = "shiftlab.finetune"


@dataclass(frozen=True)
class FinetuneConfig:
    """What a fine-tuning run does (everything that decides its weights, besides the models and the data).

    Attributes:
        steps: optimizer steps (default: about 10 passes over the data, between 100 and 1000).
        batch_size: images per micro-batch and process (each image gives one view, or two with consistency).
        accumulate: micro-batches per optimizer step (gradient accumulation).
        lr: AdamW's peak learning rate (default: 1e-3 for a student under a million parameters, as on digits;
            1e-4 for larger, pretrained networks); weight_decay: AdamW's decoupled weight decay.
        warmup: steps of linear warm-up (default: 5% of the steps, at least 1).
        temperature: T of the distillation and consistency terms.
        kl, consistency, labels: weights of the three loss terms.
        views: the views, a pair protocol spec (``"crop:S:M"``, ``"circular:M"``); default: the data at the
            scale the model sees it: ``crop:S:M`` with ``M = S / 7`` (``crop:224:32``) for a model that declares
            its input size S (or ``image_size``), the standard evaluation resize; else ``circular:S // 8`` at
            the images' own size S (no resampling), as for images under ``1 / ENLARGEMENT`` of the declared
            side (a 224 default configuration on 32-px digits: a log warning says so).
        batch_norm: ``"frozen"``, ``"train"`` or ``"reestimate"`` (module docstring).
        bn_batches: batches of views for ``"reestimate"``.
        seed: the image order and the views.
    """

    steps: int | None = None
    batch_size: int = 32
    accumulate: int = 1
    lr: float | None = None
    weight_decay: float = 0.01
    warmup: int | None = None
    temperature: float = 2.0
    kl: float = 1.0
    consistency: float = 0.0
    labels: float = 0.0
    views: str | None = None
    batch_norm: str = "frozen"
    bn_batches: int = 50
    seed: int = 0
    lps_temperature: tuple[float, float] = (1.0, 0.1)
    tips_alpha: float = 0.35

    def __post_init__(self):
        for name, minimum in (("steps", 1), ("batch_size", 1), ("accumulate", 1), ("bn_batches", 1)):
            value = getattr(self, name)
            if name == "steps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.warmup is not None and (isinstance(self.warmup, bool) or not isinstance(self.warmup, int)
                                        or not 0 <= self.warmup <= (self.steps or self.warmup)):
            raise InputError(f"warmup must be an integer in [0, steps = {self.steps}], got {self.warmup!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 63:
            raise InputError(f"seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")
        for name in ("lr", "weight_decay", "temperature", "kl", "consistency", "labels"):
            value = getattr(self, name)
            if name == "lr" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        if (self.lr is not None and self.lr <= 0) or self.temperature <= 0:
            raise InputError(f"lr and temperature must be positive, got {self.lr!r} and {self.temperature!r}")
        if self.kl + self.consistency + self.labels <= 0:
            raise InputError("every loss weight is 0 (kl, consistency, labels): nothing to learn")
        if self.batch_norm not in BATCH_NORM_MODES:
            raise InputError(f"batch_norm must be one of {', '.join(BATCH_NORM_MODES)}, got {self.batch_norm!r}")
        start_end = self.lps_temperature
        if (not isinstance(start_end, (tuple, list)) or len(start_end) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
                       for v in start_end) or start_end[1] > start_end[0]):
            raise InputError(f"lps_temperature must be (start, end) with start >= end > 0, got {start_end!r}")
        if (isinstance(self.tips_alpha, bool) or not isinstance(self.tips_alpha, (int, float))
                or not math.isfinite(self.tips_alpha) or self.tips_alpha < 0):
            raise InputError(f"tips_alpha must be a finite number >= 0, got {self.tips_alpha!r}")
        if self.views is not None and not isinstance(self.views, str):
            raise InputError(f"views must be a protocol spec such as 'crop:224:32' or 'circular:4', got {self.views!r}")

    @property
    def warmup_steps(self) -> int | None:
        if self.warmup is None and self.steps is None:
            return None  # chosen with the steps, from the data (:func:`finetune`)
        return max(1, round(0.05 * self.steps)) if self.warmup is None else self.warmup

    def lr_factor(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (from 0) as a fraction of ``lr``."""
        warm = self.warmup_steps
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, self.steps - warm)))

    def lps_temperature_at(self, step: int) -> float:
        """The LPS Gumbel-softmax temperature at optimizer step ``step``: geometric from start to end over the run."""
        start, end = self.lps_temperature
        return start * (end / start) ** (min(step, self.steps) / max(1, self.steps))

    def to_dict(self) -> dict:
        return {**asdict(self), "lps_temperature": list(self.lps_temperature), "warmup": self.warmup_steps,
                "optimizer": "AdamW", "schedule": "linear warm-up, cosine"}


@dataclass
class FinetuneResult:
    """A fine-tuned student (``model``, in eval mode) and the log of its run (``log``, JSON-serialisable)."""

    model: nn.Module
    log: dict = field(repr=False)

    def summary(self) -> dict:
        """What a fixed checkpoint records about the fine-tuning (plain values)."""
        keys = ("teacher", "data", "images", "views", "config", "steps_done", "final", "world_size")
        return {k: self.log.get(k) for k in keys}

    def save(self, path, force: bool = False) -> Path:
        """Write the student as a fixed checkpoint (:func:`shiftlab.save_fixed`) that records this run."""
        from shiftlab.fix.checkpoint import save_fixed

        return save_fixed(self.model, path, force=force, finetune=self.summary())



def _default_views(crop: bool, side: int) -> str:
    """The default views at input side ``side``: ``crop:S:M`` with the margin of the standard evaluation (the
    224 crop of a 256 resize: ``M = S / 7``) where the model declares its input size, so that the views are
    at the scale of that evaluation; else circular shifts by up to ``S // 8`` of the images at their own size
    (a crop view would have to enlarge them to ``S + M``: a zoom the model never saw)."""
    if crop:
        return f"crop:{side}:{max(1, round(side / 7))}"
    return f"circular:{max(1, side // 8)}"


#: images whose shorter side, enlarged this many times, is still under the model's declared input side are not
#: enlarged by the default views: they are fine-tuned at their own size (a 224 default configuration on 32-px digits)
ENLARGEMENT = 1.5


#: a student below this many parameters is a small network (trained from scratch, e.g. on digits)
SMALL_NETWORK = 1_000_000


def _default_lr(student: nn.Module) -> float:
    """1e-3 for a small network (measured on digits: docs/finetune.md), 1e-4 for a large pretrained one."""
    params = sum(p.numel() for p in student.parameters() if p.requires_grad)
    return 1e-3 if params < SMALL_NETWORK else 1e-4


def _default_steps(images: int, config: FinetuneConfig, world_size: int) -> int:
    """About 10 passes over the data, between 100 and 1000 optimizer steps."""
    per_step = config.batch_size * config.accumulate * max(1, world_size)
    return int(min(1000, max(100, math.ceil(10 * images / per_step))))



@dataclass
class _Prepared:
    """The data and the views of a run, prepared as for an audit: the image source and its description, the
    dtypes, the preprocessing, the views protocol and the sizes, how a loader worker sizes an image, the views
    function ``views(images, positions)`` (normalised), and the first readable image at the source size."""

    src: object
    data_desc: str
    images: int
    dtype: torch.dtype
    teacher_dtype: torch.dtype
    prep: object
    protocol: object
    sizes: object
    sizing: object
    copies: list[int]
    views: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    first: torch.Tensor
    scale_warning: str | None


def _check_arguments(config, settings: dict, checkpoint, checkpoint_every, log_every, resume) -> FinetuneConfig:
    """The run's :class:`FinetuneConfig` (``config``, with ``settings`` over it), once the loop's arguments are checked."""
    if config is None:
        known = {f.name for f in fields(FinetuneConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InputError(f"unknown fine-tuning setting(s) {', '.join(unknown)}; settings: "
                             f"{', '.join(sorted(known))}")
        config = FinetuneConfig(**settings)
    elif settings:
        config = replace(config, **settings)
    for name, value, minimum in (("checkpoint_every", checkpoint_every, 1), ("log_every", log_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if resume and checkpoint is None:
        raise InputError("resume needs a checkpoint file (CLI: --checkpoint FILE)")
    return config


def _set_up_models(teacher, fix, student, device, amp: bool, seed: int, world) -> _Models:
    """The device, the teacher (loaded, eval mode, frozen) and the student (a converted copy, or the one given)."""
    from shiftlab.fix.antialias import antialias
    from shiftlab.fix.checkpoint import parse_fix
    from shiftlab.measure import distributed
    from shiftlab.models import resolve_device

    dev = distributed.rank_device(device) if world.size > 1 else resolve_device(device)
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if amp and dev.type != "cuda":
        raise InputError("mixed precision (--amp) needs a CUDA device")
    teacher = _load(teacher, seed)
    if not isinstance(teacher, nn.Module):
        raise InputError(f"teacher must be a torch.nn.Module or a model spec, got {type(teacher).__name__}")
    if (fix is None) == (student is None):
        raise InputError("name the conversion (fix='aps', CLI: --fix) or pass a converted student, not both")
    if student is None:
        kwargs = parse_fix(fix) if isinstance(fix, str) else dict(fix)
        student, _ = antialias(copy.deepcopy(teacher), **kwargs)
    if not isinstance(student, nn.Module):
        raise InputError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    if student is teacher:
        raise InputError("the student must be another module than the teacher")
    teacher_was_training = teacher.training
    teacher.to(dev).eval()
    student.to(dev)
    teacher_grads = [p.requires_grad for p in teacher.parameters()]
    for p in teacher.parameters():
        p.requires_grad_(False)
    return _Models(teacher, student, dev, teacher_was_training, teacher_grads)


def _prepare_data_and_views(models: _Models, data, config: FinetuneConfig, normalize, image_size, resize) -> _Prepared:
    """The data and the views, through the audit's first look at the images (:mod:`shiftlab.measure.inputs`):
    the same source, channel check and size rule; then the views protocol and the normaliser."""
    from shiftlab.measure import loader
    from shiftlab.measure.inputs import first_conv_channels, look_at_images
    from shiftlab.measure.prepare import model_dtype
    from shiftlab.measure.stride_probe import with_model_stride
    from shiftlab.models import preprocessing as model_preprocessing

    images = look_at_images(data, model_preprocessing(models.teacher), first_conv_channels(models.student),
                            image_size=image_size, sample_sizes=image_size is None, purpose="fine-tune on")
    images = with_model_stride(images, models.teacher)  # a model that declares no size: the size rule's stride
    prep = images.preprocessing
    if images.wanted_size is not None:  # the size asked for is fixed, even where it is the model's default
        prep = prep.with_overrides(input_size=images.wanted_size)
    scale_warning = _scale_warning(config, images, prep)
    if scale_warning:
        prep = replace(prep, fixed_size=False)
    images = replace(images, preprocessing=prep)
    protocol = _views_protocol(config, images, resize)
    sizes = images.input_sizes(protocol, resize)
    reason = protocol.fits(sizes.model_in) if hasattr(protocol, "fits") else None
    if reason:
        raise InputError(reason)
    norm_fn = loader.normalizer(normalize, prep, images.channels)
    sizing = loader.Sizing(sizes.source, sizes.short_side, prep.interpolation, sizes.resize, images.channels)
    copies = [0, 1] if config.consistency > 0 else [0]

    def views(batch: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = protocol.make(batch, positions, config.seed, copies=copies).inputs
        return norm_fn(x) if norm_fn is not None else x

    first, _ = loader.size_image(images.probe, sizing)
    return _Prepared(images.source, images.description, len(images.source), model_dtype(models.student),
                     model_dtype(models.teacher), prep, protocol, sizes, sizing, copies, views, first, scale_warning)


def _scale_warning(config: FinetuneConfig, images, prep) -> str | None:
    """Why the default views do not enlarge small images to the model's declared input (None when they may).

    A size the data never had (a timm default_cfg of 224 on 32-px digits): enlarging the images 7x would distil
    the teacher on a scale it may never have seen; the default views follow the data instead."""
    own = images.own_size
    if config.views is not None or not images.from_files or images.wanted_size is not None or not prep.fixed_size:
        return None
    if min(own) * ENLARGEMENT >= min(prep.input_size):
        return None
    return (f"the images ({own[0]}x{own[1]}) are much smaller than the model's declared input "
            f"({prep.input_size[0]}x{prep.input_size[1]}): fine-tuned at their own size, not enlarged "
            f"{min(prep.input_size) / min(own):.1f}x; measure it at that size too (--image-size "
            f"{min(own)}), or give --image-size {min(prep.input_size)} to fine-tune at the declared size")


def _views_protocol(config: FinetuneConfig, images, resize):
    """The views: ``config.views``, or the default that follows the data (:func:`_default_views`)."""
    from shiftlab.measure.protocols import CircularShiftPair, CropShiftPair, parse_protocol

    if config.views is None:
        natural = images.input_sizes(CircularShiftPair(1), resize).model_in
        declared = bool(images.preprocessing.fixed_size) or images.wanted_size is not None
        protocol = parse_protocol(_default_views(images.from_files and declared, min(natural)))
    else:
        protocol = parse_protocol(config.views)
    if not isinstance(protocol, (CropShiftPair, CircularShiftPair)) or protocol.passes != 1:
        raise InputError(f"views must be a pair of shifts, crop:S:M or circular:M (one pass), got {config.views!r}")
    return protocol


def _probe_classes(models: _Models, prepared: _Prepared) -> int:
    """The number of classes, once both models give class scores of one shape on the first image's view."""
    with torch.inference_mode():
        x0 = prepared.views(prepared.first[None].to(models.dev, prepared.dtype), torch.zeros(1, dtype=torch.long))
        t0 = _forward(models.teacher, x0.to(prepared.teacher_dtype))
        was = models.student.training
        models.student.eval()
        s0 = _forward(models.student, x0)
        models.student.train(was)
    if t0.shape != s0.shape:
        raise ShapeError(f"the teacher gives scores of shape {tuple(t0.shape[1:])}, the student {tuple(s0.shape[1:])}")
    return int(t0.shape[1])


def _labels(config: FinetuneConfig, src, classes: int, class_map) -> tuple[torch.Tensor | None, str | None]:
    """For the label term: the data's labels in the model's classes (None: the items' own) and how they were found."""
    from shiftlab.data.sources import ImageSource

    if config.labels <= 0:
        return None, None
    if not isinstance(src, ImageSource):
        return None, "item labels below the class count taken as the model's class indices"
    from shiftlab.measure.labels import resolve_labels

    mapping = resolve_labels(src.labels, src.class_names, src.label_space, classes, class_map)
    if not mapping.usable:
        raise InputError(f"the label term (labels={config.labels:g}) needs labels in the model's classes: "
                         f"{mapping.how}")
    return mapping.labels, mapping.how


def _with_defaults(config: FinetuneConfig, student: nn.Module, images: int, world_size: int) -> FinetuneConfig:
    """The settings left to follow the model and the data, chosen (before the fingerprint: a resumed run must agree)."""
    chosen = {}
    if config.lr is None:
        chosen["lr"] = _default_lr(student)
    if config.steps is None:
        chosen["steps"] = _default_steps(images, config, world_size)
    return replace(config, **chosen) if chosen else config


def _optimisation(student: nn.Module, config: FinetuneConfig, amp: bool) -> _Optimisation:
    """AdamW over the parameter groups, the warm-up and cosine schedule, and a gradient scaler under ``amp``."""
    optimizer = torch.optim.AdamW(_param_groups(student, config.weight_decay), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
    return _Optimisation(optimizer, schedule, torch.amp.GradScaler("cuda") if amp else None)


def _fingerprint(config: FinetuneConfig, fix, models: _Models, prepared: _Prepared, normalize, class_map, world,
                 amp: bool, labels_how: str | None) -> dict:
    """Everything that decides the weights: resuming with any of it changed would save one run's weights under
    another's recipe (a checkpoint of --fix aps resumed with --fix blur)."""
    from shiftlab.fix.recipe import conversion_of
    from shiftlab.measure.checkpoint import data_identity, fingerprint_model

    recipe = conversion_of(models.student) if fix is None else fix
    src, n_total = prepared.src, prepared.images
    return {"config": config.to_dict(), "fix": _recipe_text(recipe, True),
            "fix_recipe": _recipe_text(recipe, False), "teacher_spec": _describe(models.teacher),
            "teacher": fingerprint_model(models.teacher), "student": fingerprint_model(models.student),
            "student_type": type(models.student).__name__, "data": str(prepared.data_desc), "images": int(n_total),
            **data_identity(src, range(n_total)), "views": prepared.protocol.spec(),
            "input": list(prepared.sizes.model_in), "preprocessing": prepared.prep.to_dict(),
            "resize": prepared.sizes.resize, "normalize": _normalize_text(normalize),
            "class_map": None if class_map is None else {str(k): v for k, v in class_map.items()},
            "world_size": int(world.size), "dtype": str(prepared.dtype), "amp": bool(amp), "labels": labels_how}


def _normalize_text(normalize) -> str:
    if normalize is True:
        return "model"
    if normalize is False:
        return "none"
    return f"{getattr(normalize, '__module__', '')}.{getattr(normalize, '__qualname__', 'custom')}"


def _open_checkpoint(checkpoint, resume: bool, fingerprint: Callable[[], dict]):
    """The run's checkpoint file (None without ``checkpoint``) and, with ``resume``, the state it holds."""
    if checkpoint is None:
        return None, None
    store = FinetuneCheckpoint(checkpoint, fingerprint())
    store.check(resume)
    return store, store.load() if resume else None


def _new_log(models: _Models, prepared: _Prepared, config: FinetuneConfig, labels_how, world, amp: bool) -> dict:
    """The log of a run that starts (a resumed run's comes from its checkpoint)."""
    log = {"kind": LOG_KIND, "schema_version": 1, "teacher": _describe(models.teacher),
           "student": _describe(models.student), "data": str(prepared.data_desc), "images": int(prepared.images),
           "views": prepared.protocol.spec(), "input_size": list(prepared.sizes.model_in), "config": config.to_dict(),
           "labels": labels_how, "world_size": int(world.size), "device": str(models.dev), "amp": bool(amp),
           "dtype": str(prepared.dtype), "threads": torch.get_num_threads(), "entries": [], "resumed_at": [],
           "skipped_images": 0}
    if prepared.scale_warning:
        log["warnings"] = [prepared.scale_warning]
    return log


def _resume(store, saved: dict | None, log: dict, models: _Models, optimisation: _Optimisation,
            config: FinetuneConfig, world) -> tuple[int, dict, torch.Tensor]:
    """Where the run starts: ``(step, log, window)``, from the checkpoint's state when it resumes, else from 0."""
    # loss, kl, consistency, labels, agreeing views, views, micro-batches since the last log entry
    window = torch.zeros(7, dtype=torch.float64, device=models.dev)
    if saved is None:
        return 0, log, window
    if isinstance(saved.get("rng"), list) and len(saved["rng"]) != world.size:
        raise InputError("the checkpoint was written by another number of processes")
    return _restore(store.path, saved, models.student, optimisation.optimizer, optimisation.schedule,
                    optimisation.scaler, config.steps, world.size, models.dev)


def _check_agreement_before(models: _Models, prepared: _Prepared, config: FinetuneConfig, log: dict,
                            resumed: bool) -> _AgreementCheck:
    """The agreement check, measured before the first step (a resumed run has it in its log already)."""
    agreement = _AgreementCheck(prepared.src, prepared.sizing, prepared.views, models.dev, prepared.dtype,
                                prepared.teacher_dtype)
    if not resumed:
        log["agreement_check"] = {"images": 0 if agreement.images is None else len(agreement.images),
                                  "views": prepared.protocol.spec(), "lr": config.lr,
                                  "before": agreement(models.teacher, models.student)}
    return agreement


def _distributed(student: nn.Module, world, dev: torch.device) -> nn.Module:
    """The student as the loop trains it: wrapped in ``DistributedDataParallel`` under torchrun."""
    if world.size <= 1:
        return student
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(student, device_ids=[dev.index] if dev.type == "cuda" else None)


def _finish(run: _Training, agreement: _AgreementCheck, started: float, command: str | None) -> FinetuneResult:
    """The end of the log: the agreement after, its warning, the final entry, time, command and versions."""
    from shiftlab.measure.result import versions

    log, models = run.log, run.models
    log["steps_done"] = run.config.steps
    check = log.get("agreement_check")
    if isinstance(check, dict):
        check["after"] = agreement(models.teacher, models.student)
        warning = _agreement_warning(check)
        if warning:
            log.setdefault("warnings", []).append(warning)
    log["final"] = log["entries"][-1] if log["entries"] else None
    log["seconds"] = round(time.perf_counter() - started, 2)
    log["command"] = command
    log["versions"] = versions()
    return FinetuneResult(models.student, log)


def _training_run(models: _Models, prepared: _Prepared, optimisation: _Optimisation, config: FinetuneConfig, world,
                  amp: bool, workers: int | None, labels_table, classes: int, resumed: tuple, store, saved,
                  every: tuple[int, int]) -> _Training:
    """The run ready to train: the student as the loop trains it, the loader's workers, the stream, the distiller.
    ``resumed`` is ``(start, log, window)``; ``every`` is ``(checkpoint_every, log_every)``."""
    from shiftlab.measure import loader

    start, log, window = resumed
    net = _distributed(models.student, world, models.dev)
    if workers is None:
        workers = loader.default_workers(prepared.src, (config.steps - start) * config.accumulate)
    stream = _Stream(prepared.src, config.seed, labels_table, classes)
    distil = _Distiller(models.teacher, net, config, prepared.views, len(prepared.copies), amp, optimisation.scaler,
                        prepared.teacher_dtype)
    return _Training(models, net, optimisation, distil, stream, prepared.sizing, prepared.views, config, world,
                     prepared.dtype, workers, log, window, start, store,
                     None if saved is None else saved["rng"][world.rank], *every)


def finetune(teacher, data, *, fix=None, student: nn.Module | None = None, config: FinetuneConfig | None = None,
             device=None, amp: bool = False, normalize: bool | Callable = True, image_size=None,
             resize: bool | None = None, class_map: dict | None = None, workers: int | None = None,
             checkpoint=None, checkpoint_every: int = 50, resume: bool = False, log_every: int = 10,
             progress: bool | str = False, command: str | None = None, **settings) -> FinetuneResult:
    """Fine-tune a converted model to give the original model's predictions, without labels.

    Args:
        teacher: the original (unconverted) model: an ``nn.Module`` or a spec for :func:`shiftlab.load_model`.
            Never changed.
        data: training images in pixel space [0, 1], as for :func:`shiftlab.audit`: a data spec (a folder, a
            ``.txt`` list, a ``.npz``, ``"photos"``), an image source, a (N, C, H, W) tensor, ``(images, labels)``.
        fix: the conversion, a spec (``"blur"``, ``"aps"``, ``"aps:circular"``, ``"blur:before"``) or a dict of
            :func:`shiftlab.antialias` arguments: the student is a converted copy of the teacher.
        student: instead of ``fix``, a model already converted (e.g. loaded from a fixed checkpoint); it is
            trained in place.
        config: a :class:`FinetuneConfig`; or give its fields as keyword arguments (``steps=200, lr=3e-4``).
        device: ``"cpu"``, ``"cuda"``, ...; under torchrun each process takes ``cuda:LOCAL_RANK``.
        amp: float16 autocast and a gradient scaler (CUDA only).
        normalize, image_size, resize, class_map, workers: as in :func:`shiftlab.audit`.
        checkpoint: a file for the run's checkpoints; with ``resume=True`` the run continues from it.
        checkpoint_every: optimizer steps between checkpoints.
        log_every: optimizer steps per log entry (mean losses, running agreement with the teacher, lr).
        progress: a progress bar on stderr showing the loss and the running agreement.
        command: the command line to record in the log.

    Returns:
        a :class:`FinetuneResult`: the student in eval mode and the run's log. ``result.save(FILE)`` writes a
        fixed checkpoint that records the fine-tuning. The numbers that judge the result come from
        :func:`shiftlab.audit` (``reference=teacher`` for the agreement), not from the training log.

    Shape:
        Input: images (N, C, H, W) or (C, H, W) each; both models' outputs (B, K).
    """
    from shiftlab.measure import distributed

    started = time.perf_counter()
    config = _check_arguments(config, settings, checkpoint, checkpoint_every, log_every, resume)
    world = distributed.world()
    models = _set_up_models(teacher, fix, student, device, amp, config.seed, world)
    prepared = _prepare_data_and_views(models, data, config, normalize, image_size, resize)
    classes = _probe_classes(models, prepared)
    labels_table, labels_how = _labels(config, prepared.src, classes, class_map)
    config = _with_defaults(config, models.student, prepared.images, world.size)
    optimisation = _optimisation(models.student, config, amp)
    store, saved = _open_checkpoint(checkpoint, resume, lambda: _fingerprint(
        config, fix, models, prepared, normalize, class_map, world, amp, labels_how))
    log = _new_log(models, prepared, config, labels_how, world, amp)
    resumed = _resume(store, saved, log, models, optimisation, config, world)
    agreement = _check_agreement_before(models, prepared, config, resumed[1], saved is not None)
    run = _training_run(models, prepared, optimisation, config, world, amp, workers, labels_table, classes, resumed,
                        store, saved, (checkpoint_every, log_every))
    _train(run, progress)
    return _finish(run, agreement, started, command)


def _load(spec, seed):
    """A teacher given as a spec, loaded (fixed checkpoints included); a module as it is."""
    from shiftlab.models.fixed_checkpoint import load_any_model

    return load_any_model(spec, seed=seed) if isinstance(spec, (str, os.PathLike)) else spec


def _describe(model: nn.Module) -> str:
    source = getattr(model, "shiftlab_source", None) or {}
    if source.get("spec"):
        return source["spec"] + (f" (fix {source['fix']})" if source.get("fix") else "")
    return type(model).__name__


def read_log(path) -> dict:
    """A fine-tuning log (JSON) as written by ``shiftlab finetune``."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the fine-tuning log {path} ({type(exc).__name__})") from None
    if not isinstance(doc, Mapping) or doc.get("kind") != LOG_KIND:
        raise InputError(f"{path} is not a shiftlab fine-tuning log")
    return dict(doc)
