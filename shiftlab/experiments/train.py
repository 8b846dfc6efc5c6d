"""Training and evaluation on CPU, deterministic for a seed, with optional augmentation.

Training is plain Adam on cross-entropy with mini-batches in a seeded order. Everything random (the
initial weights, the batch order, each augmentation draw) is derived from the seed, and the initial
weights are drawn inside ``torch.random.fork_rng`` so the caller's global random state is untouched.
Evaluation runs in float64 on a copy of the model, so that exactness claims (APS) are not blurred by float32
rounding.

Learned subsampling trains as its authors do: the LPS Gumbel-softmax temperature anneals per epoch
(:data:`LPS_TEMPERATURE`), the scoring parameters of LPS and TIPS layers get no weight decay, and a model with
TIPS layers adds TIPS's shift term (:data:`TIPS_ALPHA` times the mean squared difference between each TIPS layer's
output on a shifted input and its shifted output). The returned record says which of these applied.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shiftlab._progress import track
from shiftlab.errors import InputError, ShapeError
from shiftlab.layers.lps import TemperatureSchedule, TIPSShiftTerm, has_learned_subsampling, parameter_groups

__all__ = ["TrainConfig", "ShiftAugment", "RotationAugment", "ScaleAugment", "BrightnessAugment",
           "build_model", "train_model", "train_segmentation", "pixel_cross_entropy", "predict"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train: epochs, batch size, Adam's peak learning rate (cosine decay to 0 over the run)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "optimizer": "Adam", "schedule": "cosine, per step"}


#: the LPS temperature schedule of the experiments: 1.0, times 0.7 per epoch, down to 0.1 (short runs; the
#: authors' long runs use 0.97 per epoch to 0.1)
LPS_TEMPERATURE = {"start": 1.0, "factor": 0.7, "every": 1, "floor": 0.1}
#: weight of TIPS's shift term (the authors' alpha)
TIPS_ALPHA = 0.35


def _uniform(seed: int, indices: torch.Tensor, low: float, high: float, steps: int = 1000) -> torch.Tensor:
    """Per-sample uniform values on a grid of ``steps + 1`` points in [low, high]; sample i's draw depends on
    (seed, i) only."""
    from shiftlab.transforms import random_offsets

    k = random_offsets(seed, indices, 0, steps, count=1)[:, 0, 0].to(torch.float64)
    return low + (high - low) * k / steps


class ShiftAugment:
    """Random translation by up to +-``max_shift`` pixels in each axis; black (zero) enters at the border.

    Implemented as a crop of the zero-padded image (``shiftlab.transforms.crop_shift``), which on a black
    canvas is exactly moving the content.

    Shape:
        x: (B, C, H, W); indices: (B,) int64 sample indices. Output: (B, C, H, W).
    """

    def __init__(self, max_shift: int):
        if max_shift < 0:
            raise InputError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = int(max_shift)

    def __call__(self, x: torch.Tensor, indices: torch.Tensor, seed: int) -> torch.Tensor:
        from shiftlab.transforms import crop_shift, random_offsets

        k = self.max_shift
        if k == 0:
            return x
        shift = random_offsets(seed, indices, -k, k, count=1)[:, 0]  # (B, 2): content moves by (dy, dx)
        padded = F.pad(x, (k, k, k, k))
        return crop_shift(padded, k - shift[:, 0], k - shift[:, 1], (x.shape[-2], x.shape[-1]))

    def describe(self) -> str:
        return f"shift +-{self.max_shift} px"


class RotationAugment:
    """Random rotation by an angle uniform in [-max_angle, max_angle] degrees (``shiftlab.transforms.rotate``).

    Shape:
        x: (B, C, H, W). Output: (B, C, H, W).
    """

    def __init__(self, max_angle: float = 180.0):
        self.max_angle = float(max_angle)

    def __call__(self, x, indices, seed):
        from shiftlab.transforms import rotate

        angle = _uniform(seed, indices, -self.max_angle, self.max_angle).to(x.dtype)
        return rotate(x, angle)

    def describe(self) -> str:
        return f"rotation +-{self.max_angle:g} deg"


class ScaleAugment:
    """Random zoom about the centre by a factor uniform in [low, high] (``shiftlab.transforms.zoom``).

    Shape:
        x: (B, C, H, W). Output: (B, C, H, W).
    """

    def __init__(self, low: float = 0.5, high: float = 1.5):
        self.low, self.high = float(low), float(high)

    def __call__(self, x, indices, seed):
        from shiftlab.transforms import zoom

        return zoom(x, _uniform(seed, indices, self.low, self.high).to(x.dtype))

    def describe(self) -> str:
        return f"zoom x{self.low:g}..x{self.high:g}"


class BrightnessAugment:
    """Random brightness factor uniform in [low, high] (``shiftlab.transforms.adjust_brightness``).

    Shape:
        x: (B, C, H, W). Output: (B, C, H, W).
    """

    def __init__(self, low: float = 0.25, high: float = 2.0):
        self.low, self.high = float(low), float(high)

    def __call__(self, x, indices, seed):
        from shiftlab.transforms import adjust_brightness

        return adjust_brightness(x, _uniform(seed, indices, self.low, self.high).to(x.dtype))

    def describe(self) -> str:
        return f"brightness x{self.low:g}..x{self.high:g}"


def build_model(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Call ``factory`` with the global generator seeded by ``seed``, without disturbing the caller's state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


class _DeterministicAlgorithms:
    """Turn on ``torch.use_deterministic_algorithms`` (warn only) for a block, then restore the caller's mode."""

    def __enter__(self):
        self.saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.saved[0], warn_only=self.saved[1])
        return False


def pixel_cross_entropy(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel cross-entropy of dense logits against masks, averaged over the pixels whose mask is not
    ``ignore_index`` (those pixels add nothing to the loss or its gradient).

    Shape:
        logits: (B, K, H, W); masks: (B, H, W) int64 in 0..K-1 or ``ignore_index``. Output: a scalar.
    """
    if logits.ndim != 4 or masks.shape != (logits.shape[0], *logits.shape[-2:]):
        raise ShapeError(f"logits (B, K, H, W) and masks (B, H, W) expected, got {tuple(logits.shape)} and "
                         f"{tuple(masks.shape)}")
    return F.cross_entropy(logits, masks, ignore_index=int(ignore_index))


def _loss_function(images: torch.Tensor, labels: torch.Tensor, ignore_index: int | None) -> Callable:
    """Cross-entropy of class scores against (N,) labels, or per pixel against (N, H, W) masks (``ignore_index``
    given)."""
    if images.ndim == 4 and ignore_index is None and labels.shape == (images.shape[0],):
        return F.cross_entropy
    if images.ndim == 4 and ignore_index is not None and labels.shape == (images.shape[0], *images.shape[-2:]):
        return lambda logits, masks: pixel_cross_entropy(logits, masks, ignore_index)
    raise InputError(f"images (N, C, H, W) and labels (N,) expected (masks (N, H, W) with ignore_index), got "
                     f"{tuple(images.shape)} and {tuple(labels.shape)}")


def train_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, seed: int,
                augment: Callable | None = None, progress: bool = False, description: str = "train",
                ignore_index: int | None = None) -> dict:
    """Train ``model`` in place with Adam and a cosine learning-rate decay.

    Returns ``{"losses": [mean loss per epoch], "seconds": float}``.

    Batch order and augmentation draws depend only on ``seed`` (and the epoch), so a run is repeatable
    (on one machine with one thread count: float reductions may round differently elsewhere). With
    ``ignore_index`` the labels are per-pixel masks and the loss is :func:`pixel_cross_entropy` (a dense model;
    see :func:`train_segmentation`); augmentations move images only, so they are refused then.

    Shape:
        images: (N, C, H, W) float; labels: (N,) int64, or (N, H, W) int64 masks with ``ignore_index``.
    """
    loss_of = _loss_function(images, labels, ignore_index)
    if ignore_index is not None and augment is not None:
        raise InputError("augmentations move the images but not the masks: train_segmentation takes none")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    learned = has_learned_subsampling(model)
    optimizer = torch.optim.Adam(parameter_groups(model, config.weight_decay), lr=config.lr)
    temperature = TemperatureSchedule(**LPS_TEMPERATURE) if learned["lps"] else None
    shift_term = TIPSShiftTerm(model, TIPS_ALPHA, generator=torch.Generator().manual_seed(seed)) \
        if learned["tips"] else None
    n = images.shape[0]
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total_steps = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total_steps) / total_steps)))
    steps = ((epoch, step) for epoch in range(config.epochs) for step in range(steps_per_epoch))
    losses, running, order = [], 0.0, None
    model.train()
    # the forward pass's own randomness (LPS's Gumbel noise, dropout) from the seed too, not the global state
    with _DeterministicAlgorithms(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + 17)
        for epoch, step in track(steps, description, total=total_steps, enabled=progress):
            if step == 0:
                order = torch.randperm(n, generator=generator)
                running = 0.0
                if temperature is not None:
                    temperature.apply(model, epoch)
            index = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = images[index]
            if augment is not None:
                x = augment(x, index, seed * 100_003 + epoch)
            loss = loss_of(model(x), labels[index])
            if shift_term is not None:
                loss = loss + shift_term.loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item() * len(index)
            if step == steps_per_epoch - 1:
                losses.append(running / n)
    if shift_term is not None:
        shift_term.remove()
    model.eval()
    record = {"losses": losses, "seconds": time.perf_counter() - start}
    if temperature is not None:
        record["lps_temperature"] = {**LPS_TEMPERATURE, "final": temperature.value(config.epochs - 1)}
    if shift_term is not None:
        record["tips_alpha"] = TIPS_ALPHA
    return record


def train_segmentation(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, config: TrainConfig, seed: int,
                       ignore_index: int = 255, progress: bool = False, description: str = "train") -> dict:
    """Train a dense model (output (B, K, H, W)) in place on per-pixel masks: :func:`train_model` with the loss
    :func:`pixel_cross_entropy` (pixels labelled ``ignore_index`` left out), the same optimiser, schedule, seeded
    batch order and LPS temperature schedule (:data:`LPS_TEMPERATURE`). Returns the training record.

    Shape:
        images: (N, C, H, W) float; masks: (N, H, W) int64.
    """
    return train_model(model, images, masks, config, seed, progress=progress, description=description,
                       ignore_index=int(ignore_index))


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500, dtype: torch.dtype = torch.float64,
            evaluator: nn.Module | None = None) -> torch.Tensor:
    """Logits of ``model`` (in eval mode, on a ``dtype`` copy) for ``images``, in batches.

    Pass ``evaluator`` (an :func:`evaluation_copy` of ``model``) to reuse it; its dtype then wins.

    Shape:
        images: (N, C, H, W). Output: (N, K) in ``dtype``.
    """
    net = evaluator if evaluator is not None else evaluation_copy(model, dtype)
    dtype = next(net.parameters()).dtype
    with torch.no_grad():
        return torch.cat([net(images[i:i + batch_size].to(dtype)) for i in range(0, images.shape[0], batch_size)])


def evaluation_copy(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy of ``model`` in eval mode and ``dtype``."""
    return copy.deepcopy(model).to(dtype).eval()
