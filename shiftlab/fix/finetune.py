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
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.errors import InputError, ShapeError

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "BATCH_NORM_MODES", "CHECKPOINT_FORMAT"]

BATCH_NORM_MODES = ("frozen", "train", "reestimate")
CHECKPOINT_FORMAT = "shiftlab.finetune-checkpoint"
CHECKPOINT_VERSION = 2  # 2: the fingerprint holds the conversion, the teacher's spec and the data's content
LOG_KIND = "shiftlab.finetune"
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


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


# ------------------------------------------------------------------------------------------------ the stream


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64), for per-epoch generators."""
    z = 0x9E3779B97F4A7C15
    for v in values:
        z = (z ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        z = (z ^ (z >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return z & 0x7FFFFFFFFFFFFFFF


class _Stream(torch.utils.data.Dataset):
    """Sample ``p`` of the training stream: image ``perm_e[p % N]`` of epoch ``e = p // N``, with its label.

    Each epoch is a seeded permutation of the images (one kept in memory at a time, per worker). Labels are
    already in the model's classes (-1: none).
    """

    def __init__(self, source, seed: int, labels: torch.Tensor | None, classes: int):
        from shiftlab.data.sources import ImageSource

        self.source, self.seed, self.labels, self.classes = source, int(seed), labels, int(classes)
        self.n = len(source)
        self.image_source = isinstance(source, ImageSource)
        self._epoch, self._perm = None, None

    def __len__(self) -> int:
        return 1 << 62

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.n)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
            self._perm, self._epoch = torch.randperm(self.n, generator=generator), epoch
        return int(self._perm[offset])

    def __getitem__(self, position: int):
        i = self.index(position)
        if self.image_source:
            image = self.source.load(i)
            label = -1 if self.labels is None else int(self.labels[i])
        else:
            item = self.source[i]
            image, label = (item[0], int(item[1])) if isinstance(item, (tuple, list)) else (item, -1)
            if self.labels is None and not 0 <= label < self.classes:
                label = -1
        return image, label


class _Positions:
    """The batch sampler: micro-batch ``u`` of this rank holds stream positions ``(u W + r) B ... + B - 1``."""

    def __init__(self, start: int, stop: int, world: int, rank: int, batch: int):
        self.start, self.stop, self.world, self.rank, self.batch = start, stop, world, rank, batch

    def __iter__(self):
        for u in range(self.start, self.stop):
            base = (u * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _loader(stream: _Stream, sizing, start: int, stop: int, world, batch: int, workers: int, pin: bool):
    from shiftlab.measure.loader import PreparedImages, collate

    kwargs = {}
    if workers > 0:
        from shiftlab._runtime import loader_worker_allocator

        kwargs = {"prefetch_factor": 2, "persistent_workers": False, "worker_init_fn": loader_worker_allocator}
    # a private generator: creating the loader must not draw from the global random state (dropout's), or a
    # resumed run would diverge from an uninterrupted one
    return torch.utils.data.DataLoader(PreparedImages(stream, sizing),
                                       batch_sampler=_Positions(start, stop, world.size, world.rank, batch),
                                       num_workers=int(workers), collate_fn=collate, pin_memory=bool(pin),
                                       generator=torch.Generator().manual_seed(0), **kwargs)


# ------------------------------------------------------------------------------------------------ pieces


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), mean over samples."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def _symmetric_kl(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    la = F.log_softmax(a.float() / temperature, dim=-1)
    lb = F.log_softmax(b.float() / temperature, dim=-1)
    return 0.5 * (F.kl_div(lb, la, log_target=True, reduction="batchmean")
                  + F.kl_div(la, lb, log_target=True, reduction="batchmean")) * temperature ** 2


def _set_batch_norm(model: nn.Module, mode: str) -> None:
    """Train mode everywhere (dropout), except batch norms under ``"frozen"``/``"reestimate"``."""
    model.train()
    if mode != "train":
        for m in model.modules():
            if isinstance(m, _BN_TYPES):
                m.eval()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on weight matrices and kernels; none on biases, norms and the scoring layers of LPS/TIPS (as their
    authors train them)."""
    from shiftlab.layers import scoring_parameters

    scoring = {id(p) for p in scoring_parameters(model)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in scoring else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _forward(model, x):
    from shiftlab.models import select_output

    out = select_output(model(x))
    if out.ndim != 2:
        raise ShapeError(f"fine-tuning needs class scores (B, K); the model returns shape {tuple(out.shape)}")
    return out


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


# ------------------------------------------------------------------------------------------------ checkpoints


class FinetuneCheckpoint:
    """The run's checkpoint file: written by rank 0, atomically; read by every rank."""

    def __init__(self, path, fingerprint: dict):
        self.path = Path(path).expanduser()
        self.fingerprint = fingerprint
        self.writes = 0

    def check(self, resume: bool) -> None:
        from shiftlab._io import check_output_path

        if self.path.is_dir():
            raise InputError(f"--checkpoint {self.path} is a folder; name a file")
        if self.path.exists() and not resume:
            raise InputError(f"--checkpoint {self.path} exists: pass --resume to continue from it, or delete it to "
                             f"start over")
        check_output_path(self.path, True, "--checkpoint")

    def load(self) -> dict | None:
        from shiftlab.measure.checkpoint import read_checkpoint_file

        return read_checkpoint_file(self.path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, self.fingerprint,
                                    "fine-tuning run", "another --checkpoint")

    def save(self, state: dict) -> None:
        from shiftlab.measure.checkpoint import write_checkpoint_file

        self.writes += 1
        write_checkpoint_file(self.path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, self.fingerprint, state, self.writes)


def _recipe_text(recipe, short: bool) -> str | None:
    """A conversion (a spec, or a dict of :func:`shiftlab.antialias` arguments) as its short name or in full."""
    if recipe is None or isinstance(recipe, str):
        return recipe
    if short and isinstance(recipe, dict):
        from shiftlab.fix.checkpoint import recipe_spec

        return recipe_spec(recipe)
    try:
        return json.dumps(recipe, sort_keys=True, default=repr)
    except TypeError:
        return repr(recipe)


def _restore(path, saved: dict, student, optimizer, schedule, scaler, config: FinetuneConfig, world_size: int,
             dev) -> tuple[int, dict, torch.Tensor]:
    """Load a checkpoint's state into the run (student, optimizer, schedule, scaler): ``(step, log, window)``.

    The state is checked first, so a damaged checkpoint (truncated, edited, keys missing or of the wrong type) is
    refused with one line and leaves the student as it was."""
    from shiftlab.measure.checkpoint import damaged

    def bad(detail: str):
        return damaged(path, detail, "another --checkpoint")

    try:
        weights, step, window, rng = saved["student"], saved["step"], saved["window"], saved["rng"]
        log = json.loads(saved["log"])
        if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise bad("its student weights are not a state dict")
        own = student.state_dict()
        if set(weights) != set(own) or any(tuple(weights[k].shape) != tuple(v.shape) for k, v in own.items()):
            raise bad("its student weights do not fit the student")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= config.steps:
            raise bad(f"its step {step!r} is not in [0, {config.steps}]")
        if not isinstance(window, torch.Tensor) or tuple(window.shape) != (7,):
            raise bad("its running statistics are malformed")
        if not isinstance(rng, list) or len(rng) != world_size or not all(
                isinstance(r, dict) and isinstance(r.get("cpu"), torch.Tensor) and r["cpu"].dtype == torch.uint8
                and r["cpu"].shape == torch.get_rng_state().shape for r in rng):
            raise bad("its random states are malformed")
        if not isinstance(log, dict) or not isinstance(log.get("entries"), list) or not isinstance(
                log.get("skipped_images"), int):
            raise bad("its log is malformed")
        if not isinstance(saved["optimizer"], dict) or not isinstance(saved["schedule"], dict):
            raise bad("its optimizer state is malformed")
        backup = {k: v.detach().clone() for k, v in own.items()}
        try:
            student.load_state_dict(weights, strict=True)
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            if scaler is not None and saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
        except Exception:
            student.load_state_dict(backup, strict=True)
            raise
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise bad(f"its state is incomplete or malformed ({type(exc).__name__})") from None
    log["resumed_at"] = [*(log.get("resumed_at") or []), step]
    return step, log, window.to(dev)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ------------------------------------------------------------------------------------------------ progress


class _Bar:
    """A progress bar on stderr with the loss and the running agreement (rich), or nothing."""

    def __init__(self, enabled: bool, total: int, done: int, label: str):
        self.enabled, self.total, self.done, self.label = enabled, total, done, label
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                     console=Console(stderr=True))
            self.progress.__enter__()
            self.task = self.progress.add_task(self.label, total=self.total, completed=self.done, status="")
        return self

    def advance(self, status: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, status=status)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False


# ------------------------------------------------------------------------------------------------ the run


def _load(spec, seed):
    from shiftlab.fix.checkpoint import load_model

    return load_model(spec, seed=seed) if isinstance(spec, (str, os.PathLike)) else spec


def _describe(model: nn.Module) -> str:
    source = getattr(model, "shiftlab_source", None) or {}
    if source.get("spec"):
        return source["spec"] + (f" (fix {source['fix']})" if source.get("fix") else "")
    return type(model).__name__


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
    from shiftlab.data.sources import ImageSource, TensorImages
    from shiftlab.fix.antialias import antialias
    from shiftlab.fix.checkpoint import parse_fix
    from shiftlab.measure import distributed, loader
    from shiftlab.measure.audit import (
        _as_source,
        _first_conv_channels,
        _model_dtype,
        _sizes,
    )
    from shiftlab.measure.checkpoint import _fault, fingerprint_model
    from shiftlab.measure.protocols import (
        CircularShiftPair,
        CropShiftPair,
        parse_protocol,
    )
    from shiftlab.models import preprocessing as model_preprocessing
    from shiftlab.models._device import resolve_device

    started = time.perf_counter()
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
    world = distributed.world()

    # ---------------------------------------------------------------------------- models
    dev = distributed.rank_device(device) if world.size > 1 else resolve_device(device)
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if amp and dev.type != "cuda":
        raise InputError("mixed precision (--amp) needs a CUDA device")
    teacher = _load(teacher, config.seed)
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
    dtype = _model_dtype(student)

    # ---------------------------------------------------------------------------- the data and the views
    src, data_desc = _as_source(data)
    n_total = len(src)
    if n_total == 0:
        raise InputError("no images to fine-tune on")
    probe = loader.first_readable_image(src, range(n_total), data_desc)
    from_files = not isinstance(src, TensorImages)
    uniform = src.uniform if isinstance(src, TensorImages) else False
    C = int(probe.shape[0])
    want_c = _first_conv_channels(student)
    if want_c is not None and want_c != C and not (from_files and C in (1, 3, 4) and want_c in (1, 3)):
        raise ShapeError(f"the model's first convolution takes {want_c} channels, but the images have {C}")
    C = want_c if (want_c is not None and from_files) else C
    prep = model_preprocessing(teacher)
    wanted_size = None
    if image_size is not None:
        from shiftlab.models.preprocessing import check_input_size

        wanted_size = check_input_size(image_size, "image_size (CLI: --image-size)")
        prep = prep.with_overrides(input_size=wanted_size)
    own = tuple(int(v) for v in probe.shape[-2:])
    if from_files:  # as the audit: never sized from the first image alone, never probed with a tiny one
        from shiftlab.measure.audit import _data_size

        probe, own, _ = _data_size(src, range(n_total), data_desc, probe, sample=wanted_size is None)
    scale_warning = None
    if config.views is None and from_files and wanted_size is None and prep.fixed_size and (
            min(own) * ENLARGEMENT < min(prep.input_size)):
        # a size the data never had (a timm default_cfg of 224 on 32-px digits): enlarging the images 7x would
        # distil the teacher on a scale it may never have seen; the default views follow the data instead
        scale_warning = (f"the images ({own[0]}x{own[1]}) are much smaller than the model's declared input "
                         f"({prep.input_size[0]}x{prep.input_size[1]}): fine-tuned at their own size, not enlarged "
                         f"{min(prep.input_size) / min(own):.1f}x; measure it at that size too (--image-size "
                         f"{min(own)}), or give --image-size {min(prep.input_size)} to fine-tune at the declared size")
        prep = replace(prep, fixed_size=False)
    if config.views is None:
        natural = _sizes(CircularShiftPair(1), prep, own, wanted_size, resize, from_files, uniform).model_in
        declared = bool(prep.fixed_size) or wanted_size is not None
        protocol = parse_protocol(_default_views(from_files and declared, min(natural)))
    else:
        protocol = parse_protocol(config.views)
    if not isinstance(protocol, (CropShiftPair, CircularShiftPair)) or protocol.passes != 1:
        raise InputError(f"views must be a pair of shifts, crop:S:M or circular:M (one pass), got {config.views!r}")
    sizes = _sizes(protocol, prep, own, wanted_size, resize, from_files, uniform)
    reason = protocol.fits(sizes.model_in) if hasattr(protocol, "fits") else None
    if reason:
        raise InputError(reason)
    norm_fn = loader.normalizer(normalize, prep, C)
    sizing = loader.Sizing(sizes.source, sizes.short_side, prep.interpolation, sizes.resize, C)
    copies = [0, 1] if config.consistency > 0 else [0]

    def views(images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = protocol.make(images, positions, config.seed, copies=copies).inputs
        return norm_fn(x) if norm_fn is not None else x

    # the probe: both models give class scores of one shape
    first, _ = loader._prepare(probe, sizing)
    with torch.inference_mode():
        x0 = views(first[None].to(dev, dtype), torch.zeros(1, dtype=torch.long))
        t0 = _forward(teacher, x0.to(_model_dtype(teacher)))
        was = student.training
        student.eval()
        s0 = _forward(student, x0)
        student.train(was)
    if t0.shape != s0.shape:
        raise ShapeError(f"the teacher gives scores of shape {tuple(t0.shape[1:])}, the student {tuple(s0.shape[1:])}")
    classes = int(t0.shape[1])

    labels_table = None
    labels_how = None
    if config.labels > 0:
        if isinstance(src, ImageSource):
            from shiftlab.measure.labels import resolve_labels

            mapping = resolve_labels(src.labels, src.class_names, src.label_space, classes, class_map)
            if not mapping.usable:
                raise InputError(f"the label term (labels={config.labels:g}) needs labels in the model's classes: "
                                 f"{mapping.how}")
            labels_table, labels_how = mapping.labels, mapping.how
        else:
            labels_how = "item labels below the class count taken as the model's class indices"

    # the defaults that follow the model and the data (before the fingerprint: a resumed run must agree)
    chosen = {}
    if config.lr is None:
        chosen["lr"] = _default_lr(student)
    if config.steps is None:
        chosen["steps"] = _default_steps(n_total, config, world.size)
    if chosen:
        config = replace(config, **chosen)

    # ---------------------------------------------------------------------------- optimisation
    optimizer = torch.optim.AdamW(_param_groups(student, config.weight_decay), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    # everything that decides the weights: resuming with any of it changed would save one run's weights under
    # another's recipe (a checkpoint of --fix aps resumed with --fix blur)
    from shiftlab.measure.checkpoint import data_identity

    recipe = getattr(student, "shiftlab_fix", None) if fix is None else fix

    def fingerprint() -> dict:
        return {"config": config.to_dict(), "fix": _recipe_text(recipe, True),
                "fix_recipe": _recipe_text(recipe, False), "teacher_spec": _describe(teacher),
                "teacher": fingerprint_model(teacher), "student": fingerprint_model(student),
                "student_type": type(student).__name__, "data": str(data_desc), "images": int(n_total),
                **data_identity(src, range(n_total)), "views": protocol.spec(), "input": list(sizes.model_in),
                "preprocessing": prep.to_dict(), "resize": sizes.resize,
                "normalize": "model" if normalize is True else ("none" if normalize is False else
                                                                  f"{getattr(normalize, '__module__', '')}."
                                                                  f"{getattr(normalize, '__qualname__', 'custom')}"),
                "class_map": None if class_map is None else {str(k): v for k, v in class_map.items()},
                "world_size": int(world.size), "dtype": str(dtype), "amp": bool(amp), "labels": labels_how}

    store = None
    saved = None
    if checkpoint is not None:
        store = FinetuneCheckpoint(checkpoint, fingerprint())
        store.check(resume)
        if resume:
            saved = store.load()
    log = {"kind": LOG_KIND, "schema_version": 1, "teacher": _describe(teacher), "student": _describe(student),
           "data": str(data_desc), "images": int(n_total), "views": protocol.spec(),
           "input_size": list(sizes.model_in), "config": config.to_dict(), "labels": labels_how,
           "world_size": int(world.size), "device": str(dev), "amp": bool(amp), "dtype": str(dtype),
           "threads": torch.get_num_threads(), "entries": [], "resumed_at": [], "skipped_images": 0}
    if scale_warning:
        log["warnings"] = [scale_warning]
    start = 0
    # loss, kl, consistency, labels, agreeing views, views, micro-batches since the last log entry
    window = torch.zeros(7, dtype=torch.float64, device=dev)
    if saved is not None:
        if isinstance(saved.get("rng"), list) and len(saved["rng"]) != world.size:
            raise InputError("the checkpoint was written by another number of processes")
        start, log, window = _restore(store.path, saved, student, optimizer, schedule, scaler, config, world.size,
                                      dev)

    agreement = _AgreementCheck(src, sizing, views, dev, dtype, _model_dtype(teacher))
    if saved is None:
        log["agreement_check"] = {"images": 0 if agreement.images is None else len(agreement.images),
                                  "views": protocol.spec(), "lr": config.lr, "before": agreement(teacher, student)}
    net = student
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(student, device_ids=[dev.index] if dev.type == "cuda" else None)
    if workers is None:
        workers = loader.default_workers(src, (config.steps - start) * config.accumulate)
    stream = _Stream(src, config.seed, labels_table, classes)
    distil = _Distiller(teacher, net, config, views, len(copies), amp, scaler)

    def save(step: int) -> None:
        rngs = distributed.gather(_rng_state(dev))
        if world.is_main:
            store.save({"step": step, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                        "rng": rngs, "log": json.dumps(log), "window": window.cpu()})
        distributed.barrier()

    from shiftlab.layers import has_learned_subsampling, set_temperature

    lps_layers = has_learned_subsampling(student)["lps"]
    flush_supported = torch.set_flush_denormal(True)
    label = progress if isinstance(progress, str) else "fine-tuning"
    steps_seen = 0
    # the run's own random state (dropout, stochastic depth): seeded per process, saved in every checkpoint;
    # the caller's is left as it was
    rng = torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [])
    rng.__enter__()
    if saved is None:
        torch.manual_seed(_mix(config.seed, world.rank, 1))
    else:
        _set_rng_state(saved["rng"][world.rank], dev)
    try:
        _set_batch_norm(student, config.batch_norm)
        data_loader = _loader(stream, sizing, start * config.accumulate, config.steps * config.accumulate, world,
                              config.batch_size, workers, dev.type == "cuda")
        batches = iter(data_loader)
        with _Bar(bool(progress) and world.is_main, config.steps, start, label) as bar:
            for step in range(start, config.steps):
                if lps_layers:
                    set_temperature(student, config.lps_temperature_at(step))
                optimizer.zero_grad(set_to_none=True)
                for micro in range(config.accumulate):
                    loaded = next(batches)
                    log["skipped_images"] += len(loaded.failures)
                    if loaded.images is None:
                        if world.size > 1:  # the other processes would wait for this one's gradients forever
                            raise InputError(f"no image of a batch could be read (e.g. {loaded.failures[0][1]})")
                        continue
                    images = loaded.images.to(dev, dtype, non_blocking=dev.type == "cuda")
                    last = micro == config.accumulate - 1
                    window += distil(images, torch.as_tensor(loaded.indices), loaded.labels, last)
                lr = optimizer.param_groups[0]["lr"]
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                schedule.step()
                done = step + 1
                if done % log_every == 0 or done == config.steps:
                    totals = _all_reduce(window.cpu(), world)
                    micro_batches = max(1.0, totals[6].item())
                    log["entries"].append({
                        "step": done, "lr": lr, "loss": totals[0].item() / micro_batches,
                        "kl": totals[1].item() / micro_batches,
                        "consistency": totals[2].item() / micro_batches, "labels": totals[3].item() / micro_batches,
                        "agreement": totals[4].item() / max(1.0, totals[5].item()),
                        **({"lps_temperature": config.lps_temperature_at(step)} if lps_layers else {})})
                    window.zero_()
                entry = log["entries"][-1] if log["entries"] else None
                bar.advance("" if entry is None else f"loss {entry['loss']:.3f}  agreement {entry['agreement']:.1%}")
                if store is not None and (done % checkpoint_every == 0 or done == config.steps):
                    save(done)
                steps_seen += 1
                if _fault("kill-after-step") == steps_seen:
                    os.kill(os.getpid(), signal.SIGKILL)
        del batches, data_loader
        if config.batch_norm == "reestimate":
            _reestimate(student, stream, sizing, views, dev, dtype, config, world)
    finally:
        if distil.shift_term is not None:
            distil.shift_term.remove()
        rng.__exit__(None, None, None)
        if flush_supported:
            torch.set_flush_denormal(False)
        student.eval()
        teacher.train(teacher_was_training)
        for p, flag in zip(teacher.parameters(), teacher_grads):
            p.requires_grad_(flag)
    log["steps_done"] = config.steps
    check = log.get("agreement_check")
    if isinstance(check, dict):
        check["after"] = agreement(teacher, student)
        warning = _agreement_warning(check)
        if warning:
            log.setdefault("warnings", []).append(warning)
    log["final"] = log["entries"][-1] if log["entries"] else None
    log["seconds"] = round(time.perf_counter() - started, 2)
    log["command"] = command
    log["versions"] = _versions()
    return FinetuneResult(student, log)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _autocast(amp: bool):
    return torch.autocast(device_type="cuda", dtype=torch.float16) if amp else _nothing()


def _loss(out, target, labels, config: FinetuneConfig, k: int):
    zero = out.new_zeros((), dtype=torch.float32)
    kl = _kl(out, target, config.temperature) if config.kl > 0 else zero
    cons = zero
    if config.consistency > 0 and k == 2:
        a, b = out.chunk(2)
        cons = _symmetric_kl(a, b, config.temperature)
    ce = zero
    if config.labels > 0:
        known = labels >= 0
        ce = F.cross_entropy(out.float(), labels.clamp(min=0), reduction="none").mul(known).sum() / known.sum().clamp(
            min=1)
    loss = config.kl * kl + config.consistency * cons + config.labels * ce
    return loss, (kl, cons, ce)


class _Distiller:
    """One micro-batch of fine-tuning: the views, the teacher's softmax (``inference_mode``), the student's loss
    and its backward pass. Returns the micro-batch's statistics for the log (a tensor on the device:
    loss, kl, consistency, labels, agreeing views, views, 1), so that nothing waits for the device."""

    def __init__(self, teacher, net, config: FinetuneConfig, views, copies: int, amp: bool, scaler):
        from shiftlab.measure.audit import _model_dtype

        self.teacher, self.net, self.config, self.views, self.copies = teacher, net, config, views, copies
        self.amp, self.scaler = amp, scaler
        self.teacher_dtype = _model_dtype(teacher)
        from shiftlab.layers import TIPSShiftTerm, has_learned_subsampling

        # TIPS's own training term on the student's TIPS layers (their invariance is learned from it)
        self.shift_term = (TIPSShiftTerm(net, config.tips_alpha, generator=torch.Generator().manual_seed(config.seed))
                           if has_learned_subsampling(net)["tips"] and config.tips_alpha > 0 else None)

    def __call__(self, images: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor,
                 sync: bool = True) -> torch.Tensor:
        x = self.views(images, positions)
        labels = labels.to(x.device).repeat(self.copies)
        net = self.net
        context = net.no_sync() if not sync and hasattr(net, "no_sync") else _nothing()
        with context:
            with _autocast(self.amp):
                with torch.inference_mode():
                    target = _forward(self.teacher, x if self.amp else x.to(self.teacher_dtype))
                target = target.clone()  # a normal tensor: usable in the autograd graph
                out = _forward(net, x)
            loss, parts = _loss(out, target, labels, self.config, self.copies)
            if self.shift_term is not None:
                loss = loss + self.shift_term.loss()
            scaled = loss / self.config.accumulate
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        with torch.no_grad():
            agree = (out.argmax(1) == target.argmax(1)).sum()
            return torch.stack([loss.detach().double(), *(p.detach().double() for p in parts), agree.double(),
                                torch.tensor(float(out.shape[0]), dtype=torch.float64, device=out.device),
                                torch.ones((), dtype=torch.float64, device=out.device)])


#: images (the first readable ones) on which the student's agreement with the teacher is measured before and after
AGREEMENT_IMAGES = 64
#: agreement must rise by at least this much (unless already this close to 1) or the run says it did not rise
AGREEMENT_RISE = 0.01


class _AgreementCheck:
    """The student's top-1 agreement with the teacher, both in eval mode, on the first view of the first
    ``AGREEMENT_IMAGES`` readable training images: measured before the first step and after the last, so that
    a run whose agreement does not rise says so (a log warning, and the CLI prints it)."""

    def __init__(self, src, sizing, views, dev, dtype, teacher_dtype):
        from shiftlab.data.sources import ImageSource
        from shiftlab.errors import ShiftlabError
        from shiftlab.measure.loader import _prepare

        images, positions = [], []
        for i in range(len(src)):
            if len(images) == AGREEMENT_IMAGES:
                break
            try:
                item = src.load(i) if isinstance(src, ImageSource) else src[i]
                image = item[0] if isinstance(item, (tuple, list)) else item
                images.append(_prepare(image, sizing)[0])
                positions.append(i)
            except ShiftlabError:
                continue
        self.images = torch.stack(images) if images else None
        self.positions = torch.as_tensor(positions, dtype=torch.long)
        self.views, self.dev, self.dtype, self.teacher_dtype = views, dev, dtype, teacher_dtype

    def __call__(self, teacher, student) -> float | None:
        if self.images is None:
            return None
        was = student.training
        student.eval()
        agree = total = 0
        try:
            with torch.no_grad():
                for k in range(0, len(self.images), 16):
                    x = self.views(self.images[k:k + 16].to(self.dev, self.dtype), self.positions[k:k + 16])
                    t = _forward(teacher, x.to(self.teacher_dtype)).argmax(1)
                    s = _forward(student, x).argmax(1)
                    agree += int((t == s).sum())
                    total += int(t.numel())
        finally:
            student.train(was)
        return agree / max(1, total)


def _agreement_warning(check: dict) -> str | None:
    before, after = check.get("before"), check.get("after")
    if before is None or after is None or after >= min(1.0, before + AGREEMENT_RISE):
        return None
    return (f"agreement with the teacher did not rise: {before:.1%} before fine-tuning, {after:.1%} after "
            f"({check['images']} training images, eval mode); try more --steps, another --lr (it was "
            f"{check['lr']:g}), or --views that show the images as the model was trained on them (these: "
            f"{check['views']})")


def _all_reduce(values: torch.Tensor, world) -> torch.Tensor:
    if world.size <= 1:
        return values
    from shiftlab.measure.distributed import gather

    return torch.stack(gather(values)).sum(0)


def _reestimate(student, stream, sizing, views, dev, dtype, config, world) -> None:
    """Running statistics of every batch norm afresh: the cumulative average over ``bn_batches`` batches of
    views that follow the training stream (each process its slice; the means and variances are then averaged)."""
    norms = [m for m in student.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    begin = config.steps * config.accumulate
    data_loader = _loader(stream, sizing, begin, begin + config.bn_batches, world, config.batch_size, 0, False)
    student.eval()
    for m in norms:
        m.train()
    try:
        with torch.no_grad():
            for loaded in data_loader:
                if loaded.images is not None:
                    _forward(student, views(loaded.images.to(dev, dtype), torch.as_tensor(loaded.indices)))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    if world.size > 1:
        from shiftlab.measure.distributed import gather

        for m in norms:
            for buf in (m.running_mean, m.running_var):
                buf.copy_(torch.stack(gather(buf.cpu())).mean(0).to(buf.device))


def _versions() -> dict:
    from shiftlab.measure.audit import _versions as versions

    return versions()


def read_log(path) -> dict:
    """A fine-tuning log (JSON) as written by ``shiftlab finetune``."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the fine-tuning log {path} ({type(exc).__name__})") from None
    if not isinstance(doc, Mapping) or doc.get("kind") != LOG_KIND:
        raise InputError(f"{path} is not a shiftlab fine-tuning log")
    return dict(doc)

