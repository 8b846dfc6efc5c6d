"""A real, small segmentation task: scikit-learn's handwritten digits on a black canvas, one class per digit.

:func:`digit_segmentation` reads the 1,797 real 8x8 digits that ship inside scikit-learn
(``sklearn.datasets.load_digits``; nothing is downloaded) the way :mod:`shiftlab.experiments.digits` does: grey
levels 0..16 scaled to [0, 1], upsampled to ``object_size`` (bilinear, ``align_corners=False``). Each image
holds ``digits_per_image`` digits pasted at top-left positions drawn uniformly from ``[0, canvas -
object_size]`` in both axes; where digits overlap, the brighter pixel wins (the image is the pixelwise maximum).

The mask: class 0 (background) everywhere except where the image is brighter than ``threshold`` (default 0.5,
half the full stroke intensity); there the class is ``d + 1`` for the digit ``d`` that gave the pixel its
value. 11 classes, no ignore pixels (the ignore index stays 255).

The 1,797 digits are split by identity with a permutation fixed by ``seed``: a ``test_fraction`` of them are
test digits, the rest train digits, and no digit image appears in both sets. Image ``i`` of a set uses digits
``i * k .. i * k + k - 1`` of its pool's permutation (cycling: every digit is used before any repeats) and its
positions depend only on ``(seed, set, i)`` (:func:`shiftlab.transforms.random_offsets`), so the same seed
gives the same images whatever ``n_train`` and ``n_test`` are.

Data spec (for ``shiftlab audit --data`` and :func:`shiftlab.data.sources.open_images`):
``digit-masks[:CANVAS[:DIGITS]]``, e.g. ``digit-masks`` (32 px, one digit of 16 px) or ``digit-masks:64:3``
(64 px, three digits of 32 px: the object is half the canvas); seed 0; ``split`` "test" (default, 300 images)
or "train" (1,000); ``limit`` sets the number of images.

>>> train, test = digit_segmentation(n_train=4, n_test=2)   # doctest: +SKIP
>>> train.load(0).shape, train.load_mask(0).shape, train.num_classes     # doctest: +SKIP
(torch.Size([1, 32, 32]), torch.Size([32, 32]), 11)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shiftlab._checks import check_int
from shiftlab.data.masks import TensorMasks
from shiftlab.errors import InputError

__all__ = ["DIGIT_CLASSES", "DIGIT_MASKS_SPEC", "DigitMasks", "digit_segmentation", "open_digit_masks"]

#: the classes of :func:`digit_segmentation`: background, then digits 0..9 as classes 1..10
DIGIT_CLASSES = ("background",) + tuple(str(d) for d in range(10))
#: the data spec's name: ``digit-masks[:CANVAS[:DIGITS]]``
DIGIT_MASKS_SPEC = "digit-masks"


class DigitMasks(TensorMasks):
    """:class:`~shiftlab.data.masks.TensorMasks` of the digit task, with where each digit came from.

    Attributes:
        digit_indices: (N, k) int64: index of each pasted digit among the 1,797 of ``load_digits``.
        digits: (N, k) int64: its class, 0..9 (mask class ``digit + 1``).
        positions: (N, k, 2) int64: its top-left (top, left) on the canvas.
        parameters: how the set was made (canvas, object size, threshold, seed, split, ...).
    """

    def __init__(self, images, masks, digit_indices, digits, positions, parameters: dict, description: str):
        super().__init__(images, masks, len(DIGIT_CLASSES), class_names=list(DIGIT_CLASSES),
                         names=[f"{description}[{i}]" for i in range(images.shape[0])], description=description)
        self.digit_indices, self.digits, self.positions = digit_indices, digits, positions
        self.parameters = dict(parameters)


def _load_digits(object_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    if object_size != 8:
        images = F.interpolate(images, size=(object_size, object_size), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0)[:, 0], torch.as_tensor(bunch.target, dtype=torch.int64)


def _compose(objects: torch.Tensor, digits: torch.Tensor, positions: torch.Tensor, canvas: int, threshold: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, canvas, canvas) and masks of objects (N, k, s, s) pasted at positions (N, k, 2); one indexed
    assignment for the whole batch, the maximum over the k layers, the mask from the winning layer."""
    n, k, s, _ = objects.shape
    layers = objects.new_zeros(n, k, canvas, canvas)
    rows = (positions[..., 0, None] + torch.arange(s))[:, :, :, None]  # (N, k, s, 1)
    cols = (positions[..., 1, None] + torch.arange(s))[:, :, None, :]  # (N, k, 1, s)
    layers[torch.arange(n)[:, None, None, None], torch.arange(k)[None, :, None, None], rows, cols] = objects
    image, which = layers.max(dim=1)  # ties: the first digit
    classes = torch.gather(digits + 1, 1, which.reshape(n, -1)).reshape(n, canvas, canvas)
    mask = torch.where(image > threshold, classes, torch.zeros_like(classes))
    return image, mask


def _make_set(objects, targets, pool, count, k, canvas, threshold, seed, name, channels, parameters) -> DigitMasks:
    from shiftlab.transforms import random_offsets

    s = objects.shape[-1]
    slots = torch.arange(count * k, dtype=torch.int64).reshape(count, k) % len(pool)
    chosen = pool[slots]  # (N, k) indices into the 1,797 digits
    positions = random_offsets(seed, torch.arange(count), 0, canvas - s, count=k)  # (N, k, 2)
    image, mask = _compose(objects[chosen], targets[chosen], positions, canvas, threshold)
    images = image[:, None].expand(-1, channels, -1, -1).contiguous()
    return DigitMasks(images, mask, chosen, targets[chosen], positions, parameters, name)


def digit_segmentation(canvas: int = 32, object_size: int = 16, digits_per_image: int = 1, n_train: int = 1000,
                       n_test: int = 300, seed: int = 0, threshold: float = 0.5, test_fraction: float = 0.25,
                       channels: int = 1) -> tuple[DigitMasks, DigitMasks]:
    """The digit segmentation task (see the module docstring): ``(train, test)`` sets of images and masks.

    Args:
        canvas: the image side in pixels. object_size: the side of each pasted digit (<= canvas).
        digits_per_image: digits pasted into each image. n_train, n_test: images in each set.
        seed: fixes the train/test split of the digits and every position. threshold: a pixel brighter than
            this (in [0, 1]) belongs to its digit. test_fraction: the share of the 1,797 digits kept for test.
        channels: 1 (grey) or 3 (the grey image repeated, for RGB networks).

    Shape:
        images: (N, channels, canvas, canvas) float32 in [0, 1]; masks: (N, canvas, canvas) int64 in 0..10.
    """
    check_int("canvas", canvas, 2)
    check_int("object_size", object_size, 2, canvas)
    check_int("digits_per_image", digits_per_image, 1)
    check_int("n_train", n_train, 1)
    check_int("n_test", n_test, 1)
    check_int("seed", seed)
    check_int("channels", channels, 1, 3)
    if channels == 2:
        raise InputError("channels must be 1 or 3, got 2")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
        raise InputError(f"threshold must be a number in [0, 1), got {threshold!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    objects, targets = _load_digits(object_size)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    n_test_digits = max(1, int(round(len(targets) * test_fraction)))
    test_pool, train_pool = order[:n_test_digits], order[n_test_digits:]
    common = {"data": "sklearn digits (1,797 real 8x8 handwritten digits)", "canvas": canvas,
              "object_size": object_size, "upsampling": "bilinear (align_corners=False)",
              "digits_per_image": digits_per_image, "threshold": float(threshold), "seed": seed,
              "test_fraction": float(test_fraction), "train_digits": len(train_pool), "test_digits": len(test_pool)}
    train = _make_set(objects, targets, train_pool, n_train, digits_per_image, canvas, float(threshold), seed,
                      "digit-masks/train", channels, {**common, "split": "train"})
    test = _make_set(objects, targets, test_pool, n_test, digits_per_image, canvas, float(threshold), seed + 7919,
                     "digit-masks/test", channels, {**common, "split": "test"})
    return train, test


def open_digit_masks(spec: str, limit: int | None = None, split: str | None = None) -> DigitMasks:
    """The set a ``digit-masks[:CANVAS[:DIGITS]]`` spec names (``split`` "test" by default, or "train")."""
    if not isinstance(spec, str) or spec.split(":")[0] != DIGIT_MASKS_SPEC:
        raise InputError(f"not a digit-masks spec: {spec!r}")
    parts = spec.split(":")[1:]
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise InputError(f"the digit-masks spec is digit-masks[:CANVAS[:DIGITS]] with integers, got {spec!r}")
    canvas = int(parts[0]) if parts else 32
    digits = int(parts[1]) if len(parts) > 1 else 1
    if split not in (None, "train", "test"):
        raise InputError(f"split for digit-masks is 'train' or 'test', got {split!r}")
    check_int("canvas", canvas, 4)
    check_int("limit", limit, 1, allow_none=True)
    wanted = limit if limit is not None else (1000 if split == "train" else 300)
    train_set, test_set = digit_segmentation(canvas, canvas // 2, digits, n_train=wanted if split == "train" else 1,
                                             n_test=1 if split == "train" else wanted)
    out = train_set if split == "train" else test_set
    out.description = spec if split in (None, "test") else f"{spec} (train)"
    return out
