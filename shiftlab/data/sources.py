"""Image sources read one image at a time: what :func:`shiftlab.audit` streams through a ``DataLoader``.

An :class:`ImageSource` is a map-style ``torch.utils.data.Dataset``. Listing it is cheap (file names and
labels, or an array kept in its stored dtype); an image is decoded only when it is asked for, so memory does
not grow with the number of images. Every image comes out as a (C, H, W) float32 tensor in [0, 1] at its own
size; resizing to a model's input happens later, in the loader's workers.

Sources (:func:`open_images`):

- ``"photos"`` (or ``None``): the real photos bundled with scikit-image and scikit-learn, with ImageNet labels
  where one fits;
- a folder: flat (no labels), or one subfolder per class (ImageFolder layout: labels are the indices of the
  sorted folder names, files found recursively). Files are kept by extension, as torchvision does
  (:data:`IMAGE_EXTENSIONS`); other files are counted in ``ignored``, never reported as unreadable images;
- a text file (``.txt``, ``.lst``): one image path per line, optionally followed by a tab (or a space) and an
  integer label; relative paths are relative to the list file; ``#`` starts a comment;
- a ``.npz`` file with ``images`` ((N, H, W, C) uint8 or (N, C, H, W) float in [0, 1]), optional ``labels``
  and ``class_names``;
- a CIFAR-10 python folder (``data_batch_1..5``, ``test_batch``, ``batches.meta``).

Decoding is careful (:func:`decode_image`): 16-bit images are scaled by 65535 (not saturated), float images
must be in [0, 1], images over PIL's decompression-bomb limit are refused before they are decoded. A file
that cannot be used raises :class:`~shiftlab.errors.InputError` from :meth:`ImageSource.load`; the audit skips
it and counts it. Folders that cannot be listed are recorded in ``skipped`` while listing.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from shiftlab.errors import InputError, ShapeError

__all__ = ["IMAGE_EXTENSIONS", "ImageSource", "TensorImages", "ImageFiles", "ImageArrays", "BundledPhotos",
           "open_images", "decode_image", "is_image_file"]

#: file extensions read as images (torchvision's ``IMG_EXTENSIONS``), compared case-insensitively
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_LIST_SUFFIXES = (".txt", ".lst")


def is_image_file(path) -> bool:
    """True when the file name ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


# ------------------------------------------------------------------------------------------------ decoding


def _pixel_limit() -> int:
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS or 0)


def decode_image(path) -> np.ndarray:
    """Read one image file as float32 (H, W, 3) in [0, 1].

    8-bit images are divided by 255, 16-bit ones (PIL modes ``I;16*``, or ``I`` with values up to 65535) by
    65535; float images (mode ``F``) must already lie in [0, 1]. Grey and palette images get 3 channels, an
    alpha channel is dropped. An image with more pixels than PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``) is refused from its header, before decoding.

    Raises :class:`~shiftlab.errors.InputError` with a one-line reason for anything unusable.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                limit = _pixel_limit()
                if limit and w * h > limit:
                    raise InputError(f"{w}x{h} pixels is over the {limit / 1e6:.0f}-million-pixel limit for one "
                                     f"image (PIL's decompression-bomb guard)")
                im.load()
                return _pixels(im)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError("over PIL's decompression-bomb pixel limit") from None
    except UnidentifiedImageError:
        raise InputError("not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(f"cannot decode ({detail})") from None


def _pixels(im) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        top = float(a.max(initial=0.0))
        if float(a.min(initial=0.0)) < 0 or top > 65535:
            raise InputError(f"integer image with values in [{a.min():.0f}, {top:.0f}]; only 8- and 16-bit images "
                             f"are read")
        a = a / 65535.0
    elif mode == "F":
        a = np.asarray(im).astype(np.float64)
        if not np.isfinite(a).all():
            raise InputError("float image contains NaN or Inf")
        low, high = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if low < -1e-6 or high > 1 + 1e-6:
            raise InputError(f"float image with values in [{low:.3g}, {high:.3g}]; float images must be in [0, 1]")
        a = np.clip(a, 0.0, 1.0)
    else:
        if mode != "RGB":
            im = im.convert("RGB")
        a = np.multiply(np.asarray(im), np.float32(1.0 / 255.0), dtype=np.float32)  # one float32 buffer
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] < 3:
        raise InputError(f"unexpected pixel layout {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError("image has no pixels")
    if a.dtype == np.float32 and a.shape[-1] == 3 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a[..., :3], dtype=np.float32)


# ------------------------------------------------------------------------------------------------ sources


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
        from shiftlab.data.images import BUNDLED_PHOTOS
        from shiftlab.data.photos import BUNDLED_LABELS, imagenet_class_names

        names = list(BUNDLED_PHOTOS[:limit] if limit is not None else BUNDLED_PHOTOS)
        super().__init__([BUNDLED_LABELS.get(n, -1) for n in names], names, imagenet_class_names(), "imagenet",
                         description="photos")

    def load(self, index: int) -> torch.Tensor:
        from shiftlab.data.images import bundled_photo

        return torch.from_numpy(bundled_photo(self.names[index]).astype(np.float32)).permute(2, 0, 1)


# ------------------------------------------------------------------------------------------------ listing


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _walk_images(folder: Path, skipped: list) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursively, sorted, hidden entries left out) and the count of others.

    A folder that cannot be listed is recorded in ``skipped``; symbolic links to folders are followed once.
    """
    found: list[Path] = []
    ignored = 0
    seen: set = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            key = os.stat(current)
            key = (key.st_dev, key.st_ino)
            if key in seen:
                continue
            seen.add(key)
            with os.scandir(current) as it:
                entries = sorted((e for e in it if _visible(e.name)), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((str(current), f"folder cannot be read ({type(exc).__name__})"))
            continue
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(Path(entry.path))
            elif is_image_file(entry.name):
                found.append(Path(entry.path))
            else:
                ignored += 1
        stack.extend(reversed(subdirs))
    found.sort(key=lambda p: p.relative_to(folder).parts)
    return found, ignored


def _open_folder(root: Path, limit: int | None) -> ImageFiles:
    skipped: list = []
    try:
        with os.scandir(root) as it:
            entries = sorted((e for e in it if _visible(e.name)), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"cannot list folder {root} ({type(exc).__name__})") from None

    def is_dir(entry) -> bool:
        try:
            return entry.is_dir()
        except OSError:
            return False

    class_dirs = [Path(e.path) for e in entries if is_dir(e)]
    loose = [Path(e.path) for e in entries if not is_dir(e)]
    ignored = 0
    paths: list[Path] = []
    labels: list[int] = []
    if class_dirs:  # ImageFolder layout: one subfolder per class, labels by sorted folder name
        class_names = [d.name for d in class_dirs]
        for label, d in enumerate(class_dirs):
            files, other = _walk_images(d, skipped)
            ignored += other
            if not files and not any(s[0].startswith(str(d)) for s in skipped):
                skipped.append((str(d), "class folder holds no image files"))
            paths += files
            labels += [label] * len(files)
        for p in loose:
            if is_image_file(p.name):
                skipped.append((str(p), "not inside a class subfolder"))
            else:
                ignored += 1
    else:
        class_names = None
        paths = [p for p in loose if is_image_file(p.name)]
        ignored = len(loose) - len(paths)
        labels = [-1] * len(paths)
    if limit is not None:
        paths, labels = paths[:limit], labels[:limit]
    if not paths:
        detail = f"; e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        what = f" ({ignored} files without an image extension)" if ignored else ""
        raise InputError(f"no image files in folder {root}{what}{detail}; image extensions: "
                         f"{', '.join(IMAGE_EXTENSIONS)}")
    return ImageFiles(paths, labels, root, class_names, None, skipped, ignored, str(root))


def _open_list(path: Path, limit: int | None) -> ImageFiles:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the image list {path} ({type(exc).__name__})") from None
    paths: list[Path] = []
    labels: list[int] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        label = -1
        if "\t" in line:
            name, _, tail = line.rpartition("\t")
            if not re.fullmatch(r"\s*-?\d+\s*", tail):
                raise InputError(f"{path}, line {number}: the label after the tab must be an integer, got {tail!r}")
            label = int(tail)
        else:
            name = line.strip()
            head, _, tail = name.rpartition(" ")
            if head and re.fullmatch(r"-?\d+", tail) and not (path.parent / name).exists():
                name, label = head.rstrip(), int(tail)
        file = Path(name.strip()).expanduser()
        paths.append(file if file.is_absolute() else path.parent / file)
        labels.append(label)
        if limit is not None and len(paths) >= limit:
            break
    if not paths:
        raise InputError(f"the image list {path} names no files")
    if not any(p.is_file() for p in paths[:64]):
        raise InputError(f"the image list {path} names no files that exist (the first: {paths[0]}); give one image "
                         f"path per line, relative to the list's folder")
    return ImageFiles(paths, labels, path.parent, None, None, [], 0, str(path))


def _array_layout(images: np.ndarray, what: str) -> bool:
    """Check an image array; return whether it is channels-last."""
    if images.dtype == np.uint8:
        uint8 = True
    elif np.issubdtype(images.dtype, np.floating):
        uint8 = False
    else:
        raise ShapeError(f"{what} must be uint8 (0-255) or float in [0, 1], got dtype {images.dtype}")
    if images.ndim != 4:
        raise ShapeError(f"{what} must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {images.shape}")
    first, last = images.shape[1] in (1, 3), images.shape[-1] in (1, 3)
    if first and last:  # e.g. (N, 3, H, 3): uint8 arrays are channels-last, float ones channels-first
        return uint8
    if first or last:
        return last
    raise ShapeError(f"{what} must have 1 or 3 channels, as (N, H, W, C) or (N, C, H, W); got shape {images.shape}")


def _check_float_range(images: np.ndarray, what: str) -> None:
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise ShapeError(f"{what} contain NaN or Inf")
        low, high = float(images.min(initial=0.0)), float(images.max(initial=0.0))
        if low < -1e-6 or high > 1 + 1e-6:
            raise ShapeError(f"float {what} must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; store uint8 "
                             f"0-255 or divide by 255")


def _integer_labels(labels, n: int, what: str) -> np.ndarray:
    if labels is None:
        return np.full(n, -1, np.int64)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ShapeError(f"{what} must be a 1-d array of {n} labels, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        numeric = np.issubdtype(labels.dtype, np.floating) or labels.dtype == np.bool_
        if not numeric or not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ShapeError(f"{what} must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def _open_npz(path: Path, limit: int | None) -> ImageArrays:
    import zipfile

    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "images" not in keys:
                raise InputError(f"{path} has no 'images' array (it has: {', '.join(keys) or 'nothing'})")
            images = archive["images"]
            labels = archive["labels"] if "labels" in keys else None
            class_names = [str(c) for c in archive["class_names"]] if "class_names" in keys else None
    except InputError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise InputError(f"{path} holds object (pickled) arrays; shiftlab reads numeric arrays only") from None
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0][:160]}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"cannot read {path}: truncated or damaged archive ({type(exc).__name__})") from None
    if images.ndim == 3:
        images = images[:, None]
    what = f"the images in {path.name}"
    channels_last = _array_layout(images, what)
    if images.shape[0] == 0:
        raise InputError(f"{what} hold no images")
    y = _integer_labels(labels, images.shape[0], f"the labels in {path.name}")
    if limit is not None:
        images, y = images[:limit], y[:limit]
    _check_float_range(images, what)
    names = [f"{path.name}[{i}]" for i in range(images.shape[0])]
    return ImageArrays(images, channels_last, y, names, class_names, str(path))


def _open_cifar(root: Path, split: str | None, limit: int | None) -> ImageArrays:
    from shiftlab.data.datasets import _cifar_arrays

    images, labels, names, class_names = _cifar_arrays(root, split, limit)
    return ImageArrays(images, False, labels, names, class_names, str(root))


def open_images(spec=None, limit: int | None = None, split: str | None = None) -> ImageSource:
    """Open an image source without decoding its images (see the module docstring for the specs).

    Args:
        spec: ``None`` or ``"photos"``, a folder, a ``.txt``/``.lst`` list of paths, a ``.npz`` file, or a
            CIFAR-10 python folder (or its parent).
        limit: the first ``limit`` images only.
        split: CIFAR-10 only: ``"test"`` (the default when present) or ``"train"``.

    Raises :class:`~shiftlab.errors.InputError` for a spec that names nothing usable.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InputError(f"limit must be a positive int, got {limit!r}")
    if spec is None or (isinstance(spec, str) and spec == "photos"):
        if split is not None:
            raise InputError("split is for CIFAR-10 folders, not the bundled photos")
        return BundledPhotos(limit)
    if not isinstance(spec, (str, os.PathLike)):
        raise InputError(f"a data spec must be 'photos' or a path, got {type(spec).__name__}")
    if isinstance(spec, str) and not spec.strip():
        raise InputError("the data spec is empty; use 'photos', a folder, a .txt list, a .npz or a CIFAR-10 folder")
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(f"data not found: {path} (use 'photos', a folder of images, a .txt list of paths, a .npz "
                         f"or a CIFAR-10 folder)")
    if path.is_file():
        suffix = path.suffix.lower()
        if split is not None:
            raise InputError(f"split is for CIFAR-10 folders; {path} is a file")
        if suffix == ".npz":
            return _open_npz(path, limit)
        if suffix in _LIST_SUFFIXES:
            return _open_list(path, limit)
        if is_image_file(path):
            raise InputError(f"{path} is one image; name its folder, or list it in a .txt file")
        raise InputError(f"a data file must be a .npz or a .txt list of image paths, got {path.name}")
    from shiftlab.data.datasets import _cifar_root

    cifar = _cifar_root(path)
    if cifar is not None:
        return _open_cifar(cifar, split, limit)
    if split is not None:
        raise InputError(f"split is for CIFAR-10 folders; {path} is not one")
    return _open_folder(path, limit)
