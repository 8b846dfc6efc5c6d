"""Digits on a canvas: scikit-learn's 1,797 real 8x8 handwritten digits, placed where you choose.

The digits ship inside scikit-learn (``sklearn.datasets.load_digits``), so nothing is downloaded. Each
8x8 digit (grey levels 0..16) is scaled to [0, 1], upsampled to ``object_size`` (bilinear,
``align_corners=False``: smooth strokes, no blocky 2x2 pixels) and pasted, whole, into a black canvas at a
top-left position drawn from a region:

- ``"all"``: anywhere the object fits, tops and lefts in ``[0, R]`` with ``R = canvas - object_size``;
- ``"quadrant"``: the top-left quarter of those positions, ``[0, R // 2]`` in both axes;
- ``"band"``: a horizontal band at the top, rows ``[0, R // 4]``, any column;
- ``"centre"``: near the middle, ``R // 2 +- max(1, R // 8)`` in both axes (like MNIST's centred digits);
- or explicit inclusive ranges ``((top_lo, top_hi), (left_lo, left_hi))``.

The position of sample ``i`` depends only on ``(seed, i)`` (``shiftlab.transforms.random_offsets``), and the
train/test split is a permutation fixed by the seed, so every run with one seed sees the same data.

Instead of the digits, any labelled image set that :func:`shiftlab.data.load_dataset` reads (a CIFAR-10
python folder, a folder of class subfolders, a ``.npz``) can be used: its first 2,000 images are
downscaled (antialiased, centre-cropped) to ``object_size`` and pasted into the canvas the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shiftlab.errors import InputError, ShapeError

__all__ = [
    "REGIONS",
    "CanvasSet",
    "CanvasSplit",
    "load_objects",
    "region_bounds",
    "draw_positions",
    "place",
    "make_canvas_split",
]

REGIONS = ("all", "quadrant", "band", "centre")

Bounds = tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class CanvasSet:
    """Objects placed on a canvas.

    Attributes:
        images: (N, C, canvas, canvas) float32 in [0, 1].
        labels: (N,) int64 class indices.
        positions: (N, 2) int64 top-left (top, left) of each object.
        objects: (N, C, s, s) the objects before placement, to place them elsewhere (:meth:`place_at`).
        indices: (N,) int64 index of each sample in the source data set.
    """

    images: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    objects: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def canvas(self) -> int:
        return int(self.images.shape[-1])

    def place_at(self, top, left) -> torch.Tensor:
        """All objects of this set at one position (ints) or one position each ((N,) tensors).

        Shape:
            Output: (N, C, canvas, canvas).
        """
        return place(self.objects, top, left, self.canvas)


@dataclass(frozen=True)
class CanvasSplit:
    """A fixed train/test split of objects on a canvas, and how it was made."""

    train: CanvasSet
    test: CanvasSet
    num_classes: int
    source: str
    parameters: dict


def _digits(object_size: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if object_size != 8:
        images = F.interpolate(images, size=(object_size, object_size), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0), labels, 10, "sklearn digits (1,797 real 8x8 handwritten digits)"


def _dataset(spec: str, object_size: int, max_images: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    from shiftlab.data import load_dataset

    # load_dataset resizes the shorter side to object_size (antialiased) and centre-crops: (N, 3, s, s)
    dataset = load_dataset(spec, image_size=object_size, limit=max_images, upscale=True)
    labels = dataset.labels.to(torch.int64)
    if len(labels) == 0:
        raise InputError(f"data {spec!r} holds no readable images")
    if bool((labels < 0).any()):
        raise InputError(f"data {spec!r} has unlabelled images; the experiments need class labels "
                         "(class subfolders, a CIFAR-10 folder, or an .npz with 'labels')")
    num_classes = max(len(dataset.class_names or []), int(labels.max()) + 1)
    if num_classes < 2:
        raise InputError(f"data {spec!r} has a single class; the experiments need at least two")
    return dataset.images.float().clamp(0.0, 1.0), labels, num_classes, f"{spec} ({len(labels)} labelled images)"


def load_objects(data: str | None = None, object_size: int = 16,
                 max_images: int = 2000) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """The objects to place: the bundled digits (``data=None``) or a data set read by ``load_dataset``.

    A data set is read with ``shiftlab.data.load_dataset(data, image_size=object_size, limit=max_images)``:
    its first ``max_images`` images (CIFAR-10: of the test batch), shorter side resized to ``object_size``
    (antialiased) and centre-cropped, 3 channels.

    Returns ``(objects, labels, num_classes, description)``.

    Shape:
        objects: (N, C, object_size, object_size) float32 in [0, 1] (C = 1 for the digits, 3 otherwise).
        labels: (N,) int64.
    """
    if not isinstance(object_size, int) or object_size < 2:
        raise InputError(f"object_size must be an integer >= 2, got {object_size!r}")
    if data is None or data == "digits":
        return _digits(object_size)
    return _dataset(str(data), object_size, max_images)


def region_bounds(region: str | Bounds, canvas: int, object_size: int) -> Bounds:
    """Inclusive ranges ``((top_lo, top_hi), (left_lo, left_hi))`` of top-left positions in ``region``."""
    span = canvas - object_size
    if span < 0:
        raise InputError(f"an object of size {object_size} does not fit a canvas of {canvas}")
    if isinstance(region, str):
        if region == "all":
            return (0, span), (0, span)
        if region == "quadrant":
            return (0, span // 2), (0, span // 2)
        if region == "band":
            return (0, span // 4), (0, span)
        if region == "centre":
            half = max(1, span // 8)
            lo, hi = max(0, span // 2 - half), min(span, span // 2 + half)
            return (lo, hi), (lo, hi)
        raise InputError(f"unknown region {region!r}; use one of {REGIONS} or ((top_lo, top_hi), (left_lo, left_hi))")
    try:
        (y0, y1), (x0, x1) = ((int(a), int(b)) for a, b in region)
    except (TypeError, ValueError):
        raise InputError(f"region must be a name in {REGIONS} or ((top_lo, top_hi), (left_lo, left_hi)), "
                         f"got {region!r}") from None
    if not (0 <= y0 <= y1 <= span and 0 <= x0 <= x1 <= span):
        raise InputError(f"region {region!r} leaves the canvas: positions must lie in [0, {span}]")
    return (y0, y1), (x0, x1)


def draw_positions(region: str | Bounds, indices: torch.Tensor, canvas: int, object_size: int,
                   seed: int) -> torch.Tensor:
    """Top-left positions drawn uniformly from ``region``; sample ``i``'s draw depends only on ``(seed, i)``.

    Shape:
        indices: (N,) int64. Output: (N, 2) int64 (top, left).
    """
    from shiftlab.transforms import random_offsets

    (y0, y1), (x0, x1) = region_bounds(region, canvas, object_size)
    rows, cols = y1 - y0 + 1, x1 - x0 + 1
    # one uniform integer per sample over the rows*cols positions, split into (row, column)
    cell = random_offsets(seed, indices, 0, rows * cols - 1, count=1)[:, 0, 0]
    return torch.stack([y0 + cell // cols, x0 + cell % cols], dim=1).to(torch.int64)


def place(objects: torch.Tensor, top, left, canvas: int) -> torch.Tensor:
    """Paste each object, whole, into a black canvas with its top-left corner at (top, left).

    ``top`` and ``left`` are ints (one position for all) or (N,) integer tensors (one each).
    Vectorised: one indexed assignment for the whole batch.

    Shape:
        objects: (N, C, s, s). Output: (N, C, canvas, canvas).
    """
    if not isinstance(objects, torch.Tensor) or objects.ndim != 4:
        raise ShapeError(f"objects must have shape (N, C, s, s), got {getattr(objects, 'shape', type(objects))}")
    n, c, h, w = objects.shape
    top = torch.as_tensor(top, dtype=torch.int64).expand(n)
    left = torch.as_tensor(left, dtype=torch.int64).expand(n)
    if n and (int(top.min()) < 0 or int(left.min()) < 0 or int(top.max()) + h > canvas or int(left.max()) + w > canvas):
        raise ShapeError(f"an object of size {h}x{w} at the given positions leaves the {canvas}x{canvas} canvas")
    out = objects.new_zeros(n, c, canvas, canvas)
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, h, 1)
    cols = (left[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, w)
    out[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols] = objects
    return out


def _subset(objects, labels, indices, region, canvas, object_size, seed) -> CanvasSet:
    positions = draw_positions(region, indices, canvas, object_size, seed)
    return CanvasSet(place(objects, positions[:, 0], positions[:, 1], canvas), labels, positions, objects, indices)


def make_canvas_split(data: str | None = None, canvas: int = 32, object_size: int = 16,
                      train_region: str | Bounds = "all", test_region: str | Bounds | None = None,
                      test_fraction: float = 0.2, seed: int = 0, train_limit: int | None = None,
                      test_limit: int | None = None) -> CanvasSplit:
    """A seeded train/test split of objects placed on a canvas.

    The split is a permutation of the source fixed by ``seed``; ``train_limit``/``test_limit`` keep the first
    samples of each part (for quick runs). Train and test positions come from ``train_region`` and
    ``test_region`` (default: the same region), with independent draws.

    Shape:
        train.images, test.images: (N, C, canvas, canvas) float32 in [0, 1].
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    objects, labels, num_classes, source = load_objects(data, object_size)
    region_bounds(train_region, canvas, object_size)  # validate before any work
    test_region = train_region if test_region is None else test_region
    region_bounds(test_region, canvas, object_size)
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * test_fraction)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    if train_limit is not None:
        train_idx = train_idx[:train_limit]
    if test_limit is not None:
        test_idx = test_idx[:test_limit]
    train = _subset(objects[train_idx], labels[train_idx], train_idx, train_region, canvas, object_size, seed)
    test = _subset(objects[test_idx], labels[test_idx], test_idx, test_region, canvas, object_size, seed + 7919)
    parameters = {
        "data": source, "canvas": canvas, "object_size": object_size,
        "upsampling": "bilinear (align_corners=False)" if data in (None, "digits") else "bilinear, antialiased",
        "train_region": train_region, "test_region": test_region,
        "train_positions": [list(b) for b in region_bounds(train_region, canvas, object_size)],
        "test_positions": [list(b) for b in region_bounds(test_region, canvas, object_size)],
        "split_seed": seed, "n_train": len(train_idx), "n_test": len(test_idx),
    }
    return CanvasSplit(train, test, num_classes, source, parameters)
