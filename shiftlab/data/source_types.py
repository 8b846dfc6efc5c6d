"""The kinds of image source: a map-style ``Dataset`` of images decoded one at a time, with their labels.

:class:`ImageSource` is the common interface; :class:`TensorImages` holds tensors already in memory,
:class:`ImageFiles` decodes files on demand, :class:`ImageArrays` reads one stored array (a ``.npz`` or a
CIFAR-10 folder), :class:`BundledPhotos` the photos that ship with scikit-image and scikit-learn. Which
kind a data spec opens is decided by :func:`shiftlab.data.sources.open_images`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shiftlab.data.decoding import decode_image
from shiftlab.data.images import BUNDLED_PHOTOS, bundled_photo
from shiftlab.data.photos import BUNDLED_LABELS, imagenet_class_names
from shiftlab.errors import ShapeError

__all__ = ["BundledPhotos", "ImageArrays", "ImageFiles", "ImageSource", "TensorImages"]


class ImageSource(torch.utils.data.Dataset):
    """Images decoded one at a time, with their labels.

    Attributes:
        labels: (N,) int64 class indices, -1 where unknown.
        names: one name per image (a path relative to the folder, a photo name, ``file[i]``).
        class_names: names of the label indices, or ``None``.
        label_space: ``"imagenet"`` when the labels are ImageNet-1k class indices, else ``None``.
        skipped: (path, reason) for what could not be listed (a folder that cannot be read, an empty class).
        ignored: files left out because their extension is not an image's.
        description: what was opened (the spec).
        in_memory: the pixels are already in memory (no decoding; workers would not help).

    ``load(i)`` returns image ``i`` as (C, H, W) float32 in [0, 1], or raises InputError; ``source[i]`` is
    ``(load(i), label)``.
    """

    in_memory = False

    def __init__(self, labels, names, class_names=None, label_space=None, skipped=None, ignored: int = 0,
                 description: str = ""):
        self.labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        self.names = [str(n) for n in names]
        if len(self.names) != len(self.labels):
            raise ShapeError(f"{len(self.names)} names for {len(self.labels)} labels")
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.label_space = label_space
        self.skipped = list(skipped or [])
        self.ignored = int(ignored)
        self.description = description

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index), int(self.labels[index])

    def path(self, index: int) -> str:
        """What to name in a 'skipped' entry for image ``index``."""
        return self.names[index]

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {int((self.labels >= 0).sum())} labelled, "
                f"{len(self.skipped)} skipped, source={self.description!r})")


class TensorImages(ImageSource):
    """Images already in memory: a (N, C, H, W) float tensor in [0, 1], or a list of (C, H, W) tensors."""

    in_memory = True

    def __init__(self, images, labels=None, names=None, class_names=None, label_space=None,
                 description: str = "tensor"):
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise ShapeError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
            if not images.is_floating_point():
                raise ShapeError(f"images must be a floating tensor in [0, 1], got {images.dtype}")
            n = images.shape[0]
        else:
            images = list(images)
            for i, im in enumerate(images):
                if not isinstance(im, torch.Tensor) or im.ndim != 3:
                    raise ShapeError(f"image {i} must be a (C, H, W) tensor, got "
                                     f"{tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__}")
                if not im.is_floating_point():
                    raise ShapeError(f"image {i} must be a floating tensor in [0, 1], got {im.dtype}")
            n = len(images)
        self.images = images
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.int64)
        else:
            labels = torch.as_tensor(labels)
            if labels.is_floating_point() or labels.is_complex():
                raise ShapeError(f"labels must be integers, got {labels.dtype}")
            labels = labels.reshape(-1).to(torch.int64)
            if labels.shape[0] != n:
                raise ShapeError(f"got {labels.shape[0]} labels for {n} images")
        super().__init__(labels, names if names is not None else [f"{description}[{i}]" for i in range(n)],
                         class_names, label_space, description=description)

    def load(self, index: int) -> torch.Tensor:
        return self.images[index]

    @property
    def uniform(self) -> bool:
        if isinstance(self.images, torch.Tensor):
            return True
        return len({tuple(im.shape) for im in self.images}) <= 1


class ImageFiles(ImageSource):
    """Image files, decoded on demand with :func:`decode_image`."""

    def __init__(self, paths, labels, root: Path, class_names=None, label_space=None, skipped=None,
                 ignored: int = 0, description: str = ""):
        self.paths = [Path(p) for p in paths]
        self.root = Path(root)
        names = []
        for p in self.paths:
            try:
                names.append(str(p.relative_to(self.root)))
            except ValueError:
                names.append(str(p))
        super().__init__(labels, names, class_names, label_space, skipped, ignored, description)

    def load(self, index: int) -> torch.Tensor:
        return torch.from_numpy(decode_image(self.paths[index])).permute(2, 0, 1)

    def path(self, index: int) -> str:
        return str(self.paths[index])


class ImageArrays(ImageSource):
    """Images in one array ((N, C, H, W) or (N, H, W, C), uint8 0-255 or float in [0, 1]), kept in its dtype."""

    in_memory = True

    def __init__(self, array: np.ndarray, channels_last: bool, labels, names, class_names=None,
                 description: str = ""):
        self.array = array
        self.channels_last = bool(channels_last)
        super().__init__(labels, names, class_names, None, description=description)

    def load(self, index: int) -> torch.Tensor:
        a = np.asarray(self.array[index])
        if self.channels_last:
            a = a.transpose(2, 0, 1)
        x = torch.from_numpy(np.ascontiguousarray(a))
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0.0, 1.0)
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x


class BundledPhotos(ImageSource):
    """The real photos that ship with scikit-image and scikit-learn (:data:`~shiftlab.data.BUNDLED_PHOTOS`)."""

    def __init__(self, limit: int | None = None):
        names = list(BUNDLED_PHOTOS[:limit] if limit is not None else BUNDLED_PHOTOS)
        super().__init__([BUNDLED_LABELS.get(n, -1) for n in names], names, imagenet_class_names(), "imagenet",
                         description="photos")

    def load(self, index: int) -> torch.Tensor:
        return torch.from_numpy(bundled_photo(self.names[index]).astype(np.float32)).permute(2, 0, 1)
