"""Streaming an image source into the audit: a ``DataLoader`` whose workers decode and resize. Private.

The audited images are cut into *batches* in dataset-index order: batch ``b`` holds the images
``selection[b * per_batch:(b + 1) * per_batch]``. A batch is the unit of work everywhere: a process of a
``torchrun`` launch takes the batches ``b`` with ``b % world_size == rank``, a checkpoint records which
batches are done, and every per-image statistic is tagged with its batch. Because a batch holds the same
images however the work is split, any split (processes, machines, resumed runs) computes each image in the
same batch as the single-process run, which is what makes their results equal exactly.

Each worker turns one image into the protocol's *source size*: the shorter side resized (antialiased when
shrinking) to ``short_side``, then a centre crop; or, with resizing off, a centre crop only. An image that
cannot be read or used becomes a *failure* (its index, path and reason), which the audit counts and lists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shiftlab.errors import ShiftlabError

__all__ = ["Sizing", "PreparedImages", "PreparedMaskedImages", "LoadedBatch", "collate", "batch_plan",
           "default_workers", "make_loader", "normalizer", "first_readable_image", "size_image"]


def first_readable_image(src, indices, data_desc: str) -> torch.Tensor:
    """The first image among the first 64 of ``indices`` that can be read: a (C, H, W) tensor, checked.

    ``src`` is an :class:`~shiftlab.data.sources.ImageSource` or an indexable data set of images or
    (image, label) pairs; unreadable ones are passed over, and none readable raises an InputError naming
    ``data_desc``. Checking one image before the work finds the wrong kind of data in seconds, not minutes.
    """
    from shiftlab.data.sources import ImageSource
    from shiftlab.errors import InputError, ShapeError

    first = list(indices[:64])
    for i in first:
        try:
            item = src.load(int(i)) if isinstance(src, ImageSource) else src[int(i)]
        except ShiftlabError:
            continue
        probe = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(probe, torch.Tensor) or probe.ndim != 3:
            raise ShapeError(f"images must be (C, H, W) tensors, got "
                             f"{getattr(probe, 'shape', type(probe).__name__)}")
        return probe
    raise InputError(f"none of the first {len(first)} images of {data_desc} could be read")


def normalizer(normalize, preprocessing, channels: int):
    """The function that normalises a batch before the model, or ``None``.

    ``normalize`` is True (the model's own mean and std, from ``preprocessing``; its channels must match the
    images' ``channels``), False or None (the images are fed as they are), or a callable of a (B, C, H, W) batch.
    """
    from shiftlab.errors import InputError, ShapeError

    if normalize is True:
        if channels != len(preprocessing.mean):
            raise ShapeError(f"the model's preprocessing normalises {len(preprocessing.mean)} channels, but the "
                             f"images have {channels}; pass normalize=False or a callable (CLI: --mean/--std)")
        return preprocessing.normalize
    if callable(normalize):
        return normalize
    if normalize not in (False, None):
        raise InputError(f"normalize must be True, False or a callable, got {normalize!r}")
    return None


@dataclass(frozen=True)
class Sizing:
    """How a worker sizes an image: to ``source`` (H, W), shorter side first to ``short_side`` if ``resize``."""

    source: tuple[int, int]
    short_side: int
    interpolation: str
    resize: bool
    channels: int
    min_side: int = 0  # images whose shorter side is below this are failures (too small to measure), not enlarged


def size_image(image: torch.Tensor, sizing: Sizing) -> tuple[torch.Tensor, bool]:
    """One (C, H, W) image in [0, 1] -> the source size; also whether it had to be enlarged."""
    from shiftlab.data.images import resize_shorter_side

    if not isinstance(image, torch.Tensor) or image.ndim != 3 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ShiftlabError(f"not a floating (C, H, W) image tensor: {shape}")
    c, h, w = image.shape
    if c != sizing.channels:
        if c == 1:
            image = image.expand(sizing.channels, -1, -1)
        elif c == 4 and sizing.channels == 3:
            image = image[:3]
        elif c in (3, 4) and sizing.channels == 1:  # grey model, colour file: luminance (ITU-R 601)
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype).view(3, 1, 1)
            image = (image[:3] * weights).sum(0, keepdim=True)
        else:
            raise ShiftlabError(f"has {c} channels, the model takes {sizing.channels}")
    if min(h, w) < sizing.min_side:
        raise ShiftlabError(f"is {h}x{w}, under the {sizing.min_side}-px minimum side: too small to measure")
    sh, sw = sizing.source
    upscaled = False
    if sizing.resize:
        upscaled = min(h, w) < sizing.short_side
        if min(h, w) != sizing.short_side:
            image = resize_shorter_side(image[None].float(), sizing.short_side, sizing.interpolation)[0]
        h, w = image.shape[-2:]
        if h < sh or w < sw:  # a very elongated image: the shorter side fits but not the other
            image = resize_shorter_side(image[None], max(sh, sw), sizing.interpolation)[0]
            h, w = image.shape[-2:]
    elif h < sh or w < sw:
        raise ShiftlabError(f"is {h}x{w}, smaller than the {sh}x{sw} the protocol needs (resizing is off)")
    top, left = (h - sh) // 2, (w - sw) // 2
    return image[:, top:top + sh, left:left + sw].contiguous(), upscaled


class PreparedImages(torch.utils.data.Dataset):
    """``source[i]`` sized for the audit: ``(i, image or None, label, failure reason or None, upscaled)``."""

    def __init__(self, source, sizing: Sizing):
        self.source = source
        self.sizing = sizing

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        from shiftlab.data.sources import ImageSource

        try:
            if isinstance(self.source, ImageSource):
                image, label = self.source.load(index), int(self.source.labels[index])
            else:
                item = self.source[index]
                image, label = (item[0], int(item[1])) if isinstance(item, (tuple, list)) else (item, -1)
            image, upscaled = size_image(image, self.sizing)
        except ShiftlabError as exc:
            return index, None, -1, str(exc), False
        return index, image, label, None, upscaled


class PreparedMaskedImages(PreparedImages):
    """As :class:`PreparedImages` for a :class:`~shiftlab.data.masks.MaskedImages`, each item ending in its mask
    (or None), cut as its image by nearest neighbour (:func:`shiftlab.measure.dense.size_mask`)."""

    def __getitem__(self, index: int):
        from shiftlab.data.masks import check_mask
        from shiftlab.measure.dense import size_mask

        src = self.source
        try:
            image = src.load(index)
            mask = size_mask(check_mask(src.load_mask(index), tuple(image.shape[-2:]), src.num_classes,
                                        src.ignore_index, f"mask {index}"), self.sizing)
            image, upscaled = size_image(image, self.sizing)
        except ShiftlabError as exc:
            return index, None, -1, str(exc), False, None
        return index, image, int(src.labels[index]), None, upscaled, mask


@dataclass
class LoadedBatch:
    """What the loader hands the audit for one batch."""

    number: int
    indices: np.ndarray  # the images that loaded, in order
    images: torch.Tensor | None  # (b, C, H, W) at the source size, or None when none loaded
    labels: torch.Tensor  # (b,) as stored in the data (-1: none)
    failures: list  # (index, reason) of the images that did not load
    upscaled: int
    masks: torch.Tensor | None = None  # (b, H, W) int64 at the source size, for data with masks

    def pin_memory(self):
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


class _Collate:
    """Collate prepared items into a :class:`LoadedBatch`; picklable for worker processes."""

    def __init__(self, numbers: dict[tuple[int, ...], int] | None = None):
        self.numbers = numbers or {}

    def __call__(self, items) -> LoadedBatch:
        key = tuple(int(i[0]) for i in items)
        ok = [i for i in items if i[1] is not None]
        failures = [(int(i[0]), i[3]) for i in items if i[1] is None]
        images = torch.stack([i[1] for i in ok]) if ok else None
        labels = torch.tensor([i[2] for i in ok], dtype=torch.int64)
        masks = torch.stack([i[5] for i in ok]) if ok and len(ok[0]) > 5 else None
        return LoadedBatch(self.numbers.get(key, -1), np.asarray([int(i[0]) for i in ok], np.int64), images,
                           labels, failures, sum(bool(i[4]) for i in ok), masks)


collate = _Collate()


def batch_plan(selection: np.ndarray, per_batch: int) -> list[np.ndarray]:
    """The batches of an audit: consecutive runs of ``per_batch`` selected indices."""
    return [selection[s:s + per_batch] for s in range(0, len(selection), per_batch)]


MIN_BATCHES_FOR_WORKERS = 8  # starting a worker process costs about a second: not worth it for a few batches


def default_workers(source, n_batches: int) -> int:
    """Loader worker processes: none for data in memory or fewer than 8 batches; else one per spare core, up
    to 4."""
    from shiftlab.data.sources import ImageSource

    if n_batches < MIN_BATCHES_FOR_WORKERS or (isinstance(source, ImageSource) and source.in_memory):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores - 1))


def make_loader(source, sizing: Sizing, batches: Sequence[tuple[int, np.ndarray]], workers: int,
                pin_memory: bool) -> torch.utils.data.DataLoader:
    """A DataLoader yielding one :class:`LoadedBatch` per ``(number, indices)`` in ``batches``, in order."""
    batch_indices = [[int(i) for i in idx] for _, idx in batches]
    numbers = {tuple(idx): int(b) for (b, _), idx in zip(batches, batch_indices)}
    kwargs = {}
    if workers > 0:
        from shiftlab._runtime import loader_worker_allocator

        kwargs = {"prefetch_factor": 2, "persistent_workers": False, "worker_init_fn": loader_worker_allocator}
    prepared = (PreparedMaskedImages if getattr(source, "has_masks", False) else PreparedImages)(source, sizing)
    return torch.utils.data.DataLoader(prepared, batch_sampler=batch_indices,
                                       num_workers=int(workers), collate_fn=_Collate(numbers),
                                       pin_memory=bool(pin_memory), **kwargs)

