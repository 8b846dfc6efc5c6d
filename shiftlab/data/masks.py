"""Images with per-pixel label maps (segmentation masks): the data of dense-output networks.

A :class:`MaskedImages` is an :class:`~shiftlab.data.source_types.ImageSource` whose every image comes with a
(H, W) map of class indices of the image's own size; pixels equal to ``ignore_index`` (255 by default, the
PASCAL VOC convention for object borders) are left out of every per-pixel comparison. Images carry no
image-level label (``labels`` are all -1). :class:`TensorMasks` holds images and masks already in memory.
Files: :mod:`~shiftlab.data.mask_files` (``MaskFiles``, ``open_masks``: VOC and ``images/`` + ``masks/``
folders), :mod:`~shiftlab.data.mask_decoding` (one mask file to classes, the VOC colour map); the digit
segmentation task: :mod:`~shiftlab.data.digit_masks`. Conventions: ``docs/masks.md``.

>>> import torch
>>> data = TensorMasks(torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long), num_classes=2)
>>> data.load_mask(0).shape, data.ignore_index
(torch.Size([8, 8]), 255)
"""

from __future__ import annotations

import torch

from shiftlab._checks import check_int
from shiftlab.data.source_types import ImageSource, TensorImages
from shiftlab.errors import InputError, ShapeError

__all__ = ["DEFAULT_IGNORE_INDEX", "MaskedImages", "TensorMasks", "check_mask"]

#: the label of pixels no comparison counts (PASCAL VOC's object borders)
DEFAULT_IGNORE_INDEX = 255


def check_mask(mask, image_hw: tuple[int, int], num_classes: int, ignore_index: int, name: str = "mask"
               ) -> torch.Tensor:
    """``mask`` as a (H, W) int64 tensor of the image's size whose values are class indices below
    ``num_classes`` or ``ignore_index``; a clear :class:`~shiftlab.errors.ShapeError` otherwise.

    Shape:
        Input: (H, W) integers. Output: (H, W) int64.
    """
    if not isinstance(mask, torch.Tensor):
        raise ShapeError(f"{name} must be a tensor, got {type(mask).__name__}")
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise ShapeError(f"{name} must hold integer class indices, got {mask.dtype}")
    if mask.ndim != 2:
        raise ShapeError(f"{name} must have shape (H, W), got {tuple(mask.shape)}")
    if tuple(mask.shape) != tuple(image_hw):
        raise ShapeError(f"{name} is {mask.shape[0]}x{mask.shape[1]} but its image is {image_hw[0]}x{image_hw[1]}")
    mask = mask.to(torch.int64)
    bad = ((mask < 0) | (mask >= num_classes)) & (mask != ignore_index)
    if bool(bad.any()):
        value = int(mask[bad][0])
        raise ShapeError(f"{name} holds class {value}, outside 0..{num_classes - 1} and not the ignore index "
                         f"{ignore_index}")
    return mask


class MaskedImages(ImageSource):
    """An image source whose images come with per-pixel class maps.

    Attributes (besides :class:`~shiftlab.data.source_types.ImageSource`'s):
        num_classes: the number of classes of the masks (class indices 0..num_classes - 1).
        ignore_index: the mask value of pixels that no comparison counts.
        class_names: names of the classes, or ``None``.

    ``load_mask(i)`` returns mask ``i`` as (H, W) int64 of image ``i``'s size, or raises InputError.
    """

    has_masks = True

    def __init__(self, names, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX, class_names=None,
                 skipped=None, ignored: int = 0, description: str = ""):
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.ignore_index = check_int("ignore_index", ignore_index)
        if 0 <= self.ignore_index < self.num_classes:
            raise InputError(f"ignore_index {self.ignore_index} is one of the {self.num_classes} classes")
        if class_names is not None and len(class_names) != self.num_classes:
            raise InputError(f"{len(class_names)} class names for {self.num_classes} classes")
        names = list(names)
        super().__init__(torch.full((len(names),), -1, dtype=torch.int64), names, class_names,
                         skipped=skipped, ignored=ignored, description=description)

    def load_mask(self, index: int) -> torch.Tensor:
        raise NotImplementedError


class TensorMasks(MaskedImages):
    """Images and masks in memory: images (N, C, H, W) float in [0, 1] (or a list of (C, H, W)), masks (N, H, W)
    integers (or a list of (H, W)).

    Shape:
        Input: images (N, C, H, W), masks (N, H, W).
    """

    in_memory = True

    def __init__(self, images, masks, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 class_names=None, names=None, description: str = "tensor"):
        self._images = TensorImages(images, names=names, description=description)
        n = len(self._images)
        masks = list(masks) if not isinstance(masks, torch.Tensor) else masks
        if len(masks) != n:
            raise ShapeError(f"got {len(masks)} masks for {n} images")
        super().__init__(self._images.names, num_classes, ignore_index, class_names, description=description)
        self.masks = [check_mask(m, tuple(self._images.load(i).shape[-2:]), self.num_classes, self.ignore_index,
                                 f"mask {i}") for i, m in enumerate(masks)]

    def load(self, index: int) -> torch.Tensor:
        return self._images.load(index)

    def load_mask(self, index: int) -> torch.Tensor:
        return self.masks[index]

    @property
    def uniform(self) -> bool:
        return self._images.uniform
