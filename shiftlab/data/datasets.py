"""Small image datasets held in memory: the bundled photos, a folder of images, a .npz, a CIFAR-10 folder.

Every dataset comes out the same way: square images in pixel space ([0, 1], float32, (N, 3, S, S)),
resized (shorter side to S) and centre-cropped, so that crop-shift protocols can cut 224 windows from
256 images. Unreadable files are listed in ``ImageDataset.skipped`` with the reason, never dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shiftlab.data.arrays import _open_npz
from shiftlab.data.cifar import _cifar_arrays, _cifar_root
from shiftlab.data.images import BUNDLED_PHOTOS, _check_interpolation, bundled_photo, resize_and_crop
from shiftlab.data.labels import _integer_labels
from shiftlab.data.photos import BUNDLED_LABELS, imagenet_class_names
from shiftlab.data.sources import ImageArrays, open_images
from shiftlab.errors import InputError, ShapeError

__all__ = ["DEFAULT_IMAGE_SIZE", "ImageDataset", "load_dataset"]

DEFAULT_IMAGE_SIZE = 256
_CHUNK = 256  # images resized at once (bounds peak memory)


@dataclass
class ImageDataset:
    """Images with labels, in memory.

    Attributes:
        images: (N, 3, S, S) float32 in [0, 1] (pixel space, not normalised).
        labels: (N,) int64 class indices; -1 where unknown.
        names: one name per image (file path relative to the folder, photo name, or ``file[i]``).
        class_names: names of the label indices (ImageNet's for the bundled photos), or None.
        skipped: (path, reason) for every file that could not be used.
        source: what was loaded.
    """

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    class_names: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ShapeError(f"images must be (N, 3, S, S), got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],) or len(self.names) != self.images.shape[0]:
            raise ShapeError(f"{self.images.shape[0]} images but {tuple(self.labels.shape)} labels and "
                             f"{len(self.names)} names")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def has_labels(self) -> bool:
        """True when at least one image has a known label."""
        return bool((self.labels >= 0).any())

    def batches(self, batch_size: int = 32) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) in order, ``batch_size`` at a time.

        Shape:
            Output: (b, 3, S, S) images and (b,) labels, b <= batch_size.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        for start in range(0, len(self), batch_size):
            yield self.images[start:start + batch_size], self.labels[start:start + batch_size]

    def __repr__(self) -> str:
        labelled = int((self.labels >= 0).sum())
        return (f"ImageDataset({len(self)} images of {self.image_size}x{self.image_size}, {labelled} labelled, "
                f"{len(self.skipped)} skipped, source={self.source!r})")


def _fit(x: torch.Tensor, image_size: int | None, upscale: bool, interpolation: str, what: str) -> torch.Tensor:
    """(N, 3, H, W) float -> (N, 3, S, S): shorter side to S, centre crop. S = min(H, W) if image_size is None."""
    h, w = x.shape[-2:]
    size = min(h, w) if image_size is None else image_size
    if min(h, w) < size and not upscale:
        raise ShapeError(f"{what} are {h}x{w}, smaller than image_size {size}; "
                         f"pass a smaller image_size or upscale=True")
    if (h, w) == (size, size):
        return x.float()
    return torch.cat([resize_and_crop(x[i:i + _CHUNK].float(), size, resize_size=size, interpolation=interpolation)
                      for i in range(0, x.shape[0], _CHUNK)])


def _check_size(image_size) -> None:
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1):
        raise InputError(f"image_size must be a positive int, got {image_size!r}")


def _check_limit(limit) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InputError(f"limit must be a positive int, got {limit!r}")


def _array_to_nchw(images: np.ndarray, what: str) -> torch.Tensor:
    """An image array of (N, H, W), (N, H, W, C) or (N, C, H, W), C in {1, 3} -> (N, 3, H, W) float in [0, 1]."""
    if images.dtype == np.uint8:
        scale = 255.0
    elif np.issubdtype(images.dtype, np.floating):
        scale = None
    else:
        raise ShapeError(f"{what} must be uint8 (0-255) or float in [0, 1], got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        first, last = images.shape[1] in (1, 3), images.shape[-1] in (1, 3)
        if first and last:  # e.g. (N, 3, H, 3): uint8 arrays are channels-last, float ones channels-first
            channels_last = scale is not None
        elif first or last:
            channels_last = last
        else:
            raise ShapeError(f"{what} must have 1 or 3 channels, as (N, H, W, C) or (N, C, H, W); "
                             f"got shape {images.shape}")
        if channels_last:
            images = images.transpose(0, 3, 1, 2)
    else:
        raise ShapeError(f"{what} must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {images.shape}")
    if images.shape[0] == 0:
        raise InputError(f"{what} holds no images")
    x = torch.from_numpy(np.ascontiguousarray(images))
    if scale is not None:
        x = x.float() / scale
    else:
        x = x.float()
        if not bool(torch.isfinite(x).all()):
            raise ShapeError(f"{what} contain NaN or Inf")
        low, high = float(x.min()), float(x.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ShapeError(f"float {what} must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                             f"store uint8 0-255 or divide by 255")
        x = x.clamp(0.0, 1.0)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _labels_tensor(labels, n: int, what: str) -> torch.Tensor:
    return torch.as_tensor(_integer_labels(labels, n, what))


def _load_npz(path: Path, image_size, limit, upscale, interpolation) -> ImageDataset:
    source = _open_npz(path, limit)
    x = _array_to_nchw(source.array, f"the images in {path.name}")
    x = _fit(x, image_size, upscale, interpolation, f"the images in {path.name}")
    return ImageDataset(x, source.labels, source.names, source.class_names, [], str(path))


def _load_cifar(root: Path, split, image_size, limit, upscale, interpolation) -> ImageDataset:
    images, y, names, class_names = _cifar_arrays(root, split, limit)
    x = _fit(_array_to_nchw(images, "CIFAR-10 images"), image_size, upscale, interpolation, "CIFAR-10 images")
    return ImageDataset(x, _labels_tensor(y, x.shape[0], "CIFAR-10 labels"), names, class_names, [], str(root))


def _load_files(source, image_size, upscale, interpolation) -> ImageDataset:
    """Decode every image of a file source (a folder or a list) into one tensor; skip and list the unusable."""
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    skipped: list[tuple[str, str]] = list(source.skipped)
    images, labels, names = [], [], []
    for i in range(len(source)):
        try:
            image = source.load(i)
        except InputError as exc:
            skipped.append((source.path(i), str(exc)))
            continue
        h, w = image.shape[-2:]
        if min(h, w) < size and not upscale:
            skipped.append((source.path(i), f"{h}x{w} is smaller than image_size {size} (pass upscale=True)"))
            continue
        images.append(resize_and_crop(image[None], size, resize_size=size, interpolation=interpolation))
        labels.append(int(source.labels[i]))
        names.append(source.names[i])
    if not images:
        detail = f"; {len(skipped)} skipped, e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise InputError(f"no readable images in {source.description}{detail}")
    return ImageDataset(torch.cat(images), torch.tensor(labels, dtype=torch.int64), names, source.class_names,
                        skipped, source.description)


def _load_photos(image_size, limit, interpolation) -> ImageDataset:
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    names = list(BUNDLED_PHOTOS[:limit] if limit is not None else BUNDLED_PHOTOS)
    images = [resize_and_crop(torch.from_numpy(bundled_photo(n)).permute(2, 0, 1)[None].float(), size,
                              resize_size=size, interpolation=interpolation) for n in names]
    labels = torch.tensor([BUNDLED_LABELS.get(n, -1) for n in names], dtype=torch.int64)
    return ImageDataset(torch.cat(images), labels, names, imagenet_class_names(), [], "photos")


def load_dataset(spec=None, image_size: int | None = None, limit: int | None = None, upscale: bool = False,
                 interpolation: str = "bilinear", split: str | None = None) -> ImageDataset:
    """Load a small image dataset into memory as square [0, 1] images.

    Args:
        spec: ``None`` or ``"photos"``: the real photos bundled with scikit-image and scikit-learn, labelled
            with ImageNet classes where one fits (:data:`~shiftlab.data.photos.BUNDLED_LABELS`, else -1).
            A folder of images: flat (labels -1) or one subfolder per class (labels by sorted folder name;
            files outside the class folders are skipped); hidden files are ignored.
            A ``.npz`` file with ``images`` as (N, H, W, C) uint8 or (N, C, H, W) float in [0, 1]
            ((N, H, W) grey also), optional ``labels`` (N,) and ``class_names``.
            A CIFAR-10 python folder (``data_batch_1..5``, ``test_batch``, ``batches.meta``; or its parent).
        image_size: side S of the output. Default 256 for photos and folders (so 224 windows can be cut),
            the images' own (shorter) side for .npz and CIFAR-10.
        limit: load at most this many images.
        upscale: enlarge images smaller than ``image_size``. Without it, such an image in a folder is
            skipped (and listed in ``skipped``); in a .npz or CIFAR-10 it raises ShapeError. (The bundled
            photos, 300 px and more, are always resized to ``image_size``.)
        interpolation: ``"bilinear"`` (antialiased when shrinking), ``"bicubic"``, ``"area"``, ``"nearest"``.
        split: CIFAR-10 only: ``"test"`` (the default when present) or ``"train"``.

    Unreadable files are skipped and listed in ``.skipped`` as (path, reason); a folder with no readable
    image raises InputError. Grey images get 3 channels.

    Shape:
        Output ``images``: (N, 3, S, S) float32 in [0, 1]; ``labels``: (N,) int64.

    >>> data = load_dataset(limit=2)
    >>> data.images.shape, data.labels.tolist()
    (torch.Size([2, 3, 256, 256]), [285, 967])
    """
    _check_size(image_size)
    _check_limit(limit)
    _check_interpolation(interpolation)
    if spec is None or (isinstance(spec, str) and spec == "photos"):
        return _load_photos(image_size, limit, interpolation)
    path = Path(spec).expanduser() if isinstance(spec, (str, os.PathLike)) else None
    if path is not None and path.is_dir() and _cifar_root(path) is not None:
        return _load_cifar(_cifar_root(path), split, image_size, limit, upscale, interpolation)
    if path is not None and path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz(path, image_size, limit, upscale, interpolation)
    source = open_images(spec, limit=limit, split=split)
    if isinstance(source, ImageArrays):  # pragma: no cover - .npz and CIFAR-10 are handled above
        raise InputError(f"unexpected array source {spec}")
    return _load_files(source, image_size, upscale, interpolation)
