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
  (:data:`IMAGE_EXTENSIONS`); other files are counted in ``ignored``, never reported as unreadable images.
  Links: a symbolic link into the folder itself or to one of its parents is never followed (a cycle, or a
  second name of an image listed already); links to files and folders outside it are followed; a file
  with two names (hard or symbolic links) is counted once. Fifos, sockets and device nodes are listed in
  ``skipped`` and never opened (see :class:`_Walk`);
- a text file (``.txt``, ``.lst``): one image path per line, optionally followed by a tab (or a space) and an
  integer label (a class index, 0 or more; leave it out for an unlabelled image); relative paths are relative
  to the list file; ``#`` starts a comment;
- a ``.npz`` file with ``images`` ((N, H, W, C) uint8 or (N, C, H, W) float in [0, 1]), optional ``labels``
  (class indices, -1 for an unlabelled image) and ``class_names``; numeric arrays only (``allow_pickle=False``);
- a CIFAR-10 python folder (``data_batch_1..5``, ``test_batch``, ``batches.meta``).

A label out of range (negative, at or beyond the number of class names, beyond int64) is refused in one
line naming the file and the line or image: it is never scored as a miss.

Decoding is careful (:func:`decode_image`): only regular files are opened, the EXIF orientation is applied,
16-bit images are scaled by 65535 (not saturated), float images must be in [0, 1], images over PIL's
decompression-bomb limit are refused before they are decoded. A file
that cannot be used raises :class:`~shiftlab.errors.InputError` from :meth:`ImageSource.load`; the audit skips
it and counts it. Folders that cannot be listed are recorded in ``skipped`` while listing.
"""

from __future__ import annotations

import os
import re
import stat
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


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def _not_regular(mode: int) -> str:
    return f"{_file_kind(mode)}, not a regular file: not opened"


def _open_regular(path: Path):
    """``path`` opened for reading (binary) if it is a regular file (or a link to one).

    A fifo, socket or device node is refused from its ``stat``, without being opened: opening a fifo waits
    for a writer forever, reading a device may never end. The file is opened non-blocking and checked again,
    so swapping it for a fifo between the two steps does not hang either.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError("file not found") from None
    except OSError as exc:
        raise InputError(f"cannot be read ({type(exc).__name__})") from None
    if not stat.S_ISREG(mode):
        raise InputError(_not_regular(mode))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise InputError(f"cannot be read ({type(exc).__name__})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InputError(_not_regular(mode))
    return os.fdopen(fd, "rb")


def _exif_upright(im):
    """``im`` turned as its EXIF orientation tag says (a phone photo taken sideways comes out upright)."""
    from PIL import ImageOps

    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except (OSError, ValueError, TypeError, SyntaxError):  # a damaged EXIF block: the pixels as stored
        return im
    return ImageOps.exif_transpose(im) if orientation in range(2, 9) else im


def decode_image(path) -> np.ndarray:
    """Read one image file as float32 (H, W, 3) in [0, 1], upright.

    8-bit images are divided by 255, 16-bit ones (PIL modes ``I;16*``, or ``I`` with values up to 65535) by
    65535; float images (mode ``F``) must already lie in [0, 1]. Grey and palette images get 3 channels, an
    alpha channel is dropped. The EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), so an
    image is seen as a photo viewer shows it. An image with more pixels than PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``) is refused from its header, before decoding. Only regular files are
    opened: a fifo, socket or device node is refused without opening it.

    Raises :class:`~shiftlab.errors.InputError` with a one-line reason for anything unusable.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open_regular(path) as file, Image.open(file) as im:
                w, h = im.size
                limit = _pixel_limit()
                if limit and w * h > limit:
                    raise InputError(f"{w}x{h} pixels is over the {limit / 1e6:.0f}-million-pixel limit for one "
                                     f"image (PIL's decompression-bomb guard)")
                im.load()
                return _pixels(_exif_upright(im))
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


class _Walk:
    """Listing one data folder without following a link back into it, and without counting a file twice.

    The rules (one place for the flat and the class-folder layouts):

    - a symbolic link (to a file or a folder) whose target is the data folder, lies inside it, or is one of its
      parents is not followed: what it points to is either listed under its own name already, or it is a
      cycle (``loop -> ..``) that would list the other classes' images again under this label. It is recorded
      in ``skipped`` with the reason;
    - a link to a file or folder outside the data folder is followed (a folder of links into a dataset store is
      a common layout); each folder is walked once (by ``(st_dev, st_ino)``), so links among outside folders
      cannot loop either;
    - a file is counted once, by ``(st_dev, st_ino)``: a second name of the same file (a hard link, two links
      to one outside file) is recorded in ``skipped`` as "the same file as ...", in sorted order, so the first
      name (and its class) counts;
    - only regular files are taken as images: a fifo, socket or device node with an image extension is recorded
      in ``skipped`` (never opened: opening a fifo blocks forever); files without an image extension are counted
      in ``ignored``.
    """

    def __init__(self, root: Path):
        self.root = root
        self.real = root.resolve()
        self.skipped: list = []
        self.ignored = 0
        self.folders: set = set()
        for folder in (self.real, *self.real.parents):  # a bind mount of a parent is a cycle too
            try:
                info = os.stat(folder)
            except OSError:
                continue
            self.folders.add((info.st_dev, info.st_ino))
        self.folders.discard(self._key(self.real))  # the root itself is walked (once)
        self.files: dict = {}

    @staticmethod
    def _key(path) -> tuple | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return (info.st_dev, info.st_ino)

    def entries(self, folder: Path) -> list[tuple[str, Path]] | None:
        """``(kind, path)`` of the visible entries of ``folder`` in name order, kind ``"dir"``, ``"image"`` or
        ``"other"``; ``None`` when the folder cannot be listed (recorded) or was walked already."""
        key = self._key(folder)
        if key is None or key in self.folders:
            if key is None:
                self.skipped.append((str(folder), "folder cannot be read"))
            elif folder != self.root:
                self.skipped.append((str(folder), "a folder listed already (a link cycle or a second link to it): "
                                                  "not listed again"))
            return None
        self.folders.add(key)
        try:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it if _visible(e.name))
        except OSError as exc:
            if folder == self.root:
                raise InputError(f"cannot list folder {folder} ({type(exc).__name__})") from None
            self.skipped.append((str(folder), f"folder cannot be read ({type(exc).__name__})"))
            return None
        out = []
        for name in names:
            kind = self.kind(folder / name)
            if kind is not None:
                out.append((kind, folder / name))
        return out

    def kind(self, path: Path) -> str | None:
        """What ``path`` is, from ``lstat``/``stat`` only (nothing is opened); ``None``: left out (recorded)."""
        image = is_image_file(path.name)
        try:
            info = os.lstat(path)
        except OSError as exc:
            self.skipped.append((str(path), f"cannot be read ({type(exc).__name__})"))
            return None
        if stat.S_ISLNK(info.st_mode):
            try:
                target = path.resolve(strict=True)
                info = os.stat(path)
            except (OSError, RuntimeError):  # RuntimeError: a link loop, in Python < 3.13
                if not image:
                    self.ignored += 1
                    return None
                self.skipped.append((str(path), "a broken link (its target does not exist)"))
                return None
            if target == self.real or self.real in target.parents or target in self.real.parents:
                if stat.S_ISDIR(info.st_mode) or image:
                    cycle = target == self.real or target in self.real.parents
                    where = "the data folder or a parent of it (a cycle)" if cycle else "inside the data folder"
                    self.skipped.append((str(path), f"a link to {where}: not followed, so no image is counted "
                                                    f"twice"))
                else:
                    self.ignored += 1
                return None
        if stat.S_ISDIR(info.st_mode):
            return "dir"
        if not image:
            self.ignored += 1
            return None
        if not stat.S_ISREG(info.st_mode):
            self.skipped.append((str(path), _not_regular(info.st_mode)))
            return None
        return "image"

    def images_under(self, folder: Path) -> list[Path]:
        """The image files under ``folder``, recursively, in sorted order of their path below it."""
        found: list[Path] = []
        stack = [folder]
        while stack:
            entries = self.entries(stack.pop())
            if entries is None:
                continue
            found += [p for kind, p in entries if kind == "image"]
            stack.extend(reversed([p for kind, p in entries if kind == "dir"]))
        found.sort(key=lambda p: p.relative_to(folder).parts)
        return found

    def once(self, path: Path) -> bool:
        """True the first time a file is seen (by device and inode); a second name is recorded in skipped."""
        key = self._key(path)
        if key is None:
            return True  # gone since it was listed: decoding will say so
        first = self.files.setdefault(key, path)
        if first is not path:
            self.skipped.append((str(path), f"the same file as {first}: counted once"))
            return False
        return True


def _open_folder(root: Path, limit: int | None) -> ImageFiles:
    """A folder of images, flat or one subfolder per class, listed by :class:`_Walk` (see there for links)."""
    walk = _Walk(root)
    entries = walk.entries(root) or []
    class_dirs = [p for kind, p in entries if kind == "dir"]
    loose = [p for kind, p in entries if kind == "image"]
    paths: list[Path] = []
    labels: list[int] = []
    if class_dirs:  # ImageFolder layout: one subfolder per class, labels by sorted folder name
        class_names = [d.name for d in class_dirs]
        for label, d in enumerate(class_dirs):
            files = [f for f in walk.images_under(d) if walk.once(f)]
            if not files and not any(s[0].startswith(str(d)) for s in walk.skipped):
                walk.skipped.append((str(d), "class folder holds no image files"))
            paths += files
            labels += [label] * len(files)
        for p in loose:
            walk.skipped.append((str(p), "not inside a class subfolder"))
    else:
        class_names = None
        paths = [p for p in loose if walk.once(p)]
        labels = [-1] * len(paths)
    skipped, ignored = walk.skipped, walk.ignored
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
            label = _list_label(tail.strip(), path, number)
        else:
            name = line.strip()
            head, _, tail = name.rpartition(" ")
            if head and re.fullmatch(r"-?\d+", tail) and not (path.parent / name).exists():
                name, label = head.rstrip(), _list_label(tail, path, number)
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


_INT64_MAX = int(np.iinfo(np.int64).max)


def _list_label(text: str, path: Path, number: int) -> int:
    """The label on line ``number`` of a list file: a class index, 0 or more, that fits in an int64."""
    value = int(text)
    if value < 0:
        raise InputError(f"{path}, line {number}: label {value} is negative; a label is a class index, 0 or more "
                         f"(leave the label out for an unlabelled image)")
    if value > _INT64_MAX:
        raise InputError(f"{path}, line {number}: label {text[:30]}{'...' if len(text) > 30 else ''} is out of "
                         f"range (a class index, at most {_INT64_MAX})")
    return value


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


def _integer_labels(labels, n: int, what: str, num_classes: int | None = None, unlabelled: bool = True) -> np.ndarray:
    """``labels`` as (n,) int64 class indices, every one in range, or a one-line error naming the first bad one.

    A label must lie in ``[0, num_classes)`` (``num_classes``: the number of class names, when known) and fit
    in an int64; ``-1`` marks an unlabelled image where ``unlabelled`` (a ``.npz``), and is refused elsewhere
    (CIFAR-10 labels every image). Out-of-range labels are refused, never wrapped, clipped or counted as misses.
    """
    if labels is None:
        return np.full(n, -1, np.int64)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ShapeError(f"{what} must be a 1-d array of {n} labels, got shape {labels.shape}")
    if labels.dtype == object:  # a list of Python ints (a pickled CIFAR batch): any size
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in labels):
            raise ShapeError(f"{what} must be integers")
    elif labels.size and not np.issubdtype(labels.dtype, np.integer):
        numeric = np.issubdtype(labels.dtype, np.floating) or labels.dtype == np.bool_
        if not numeric or not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ShapeError(f"{what} must be integers, got dtype {labels.dtype}")
    low = -1 if unlabelled else 0
    high = _INT64_MAX if num_classes is None else num_classes - 1
    values = labels.tolist()  # Python numbers: compared exactly, whatever the dtype (uint64, float, object)
    bad = next((i for i, v in enumerate(values) if not low <= v <= high), None)
    if bad is not None:
        v = values[bad]
        shown = f"{int(v)}" if abs(v) < 1e30 else f"{v:.3g}"
        allowed = (f"the {num_classes} classes are 0-{num_classes - 1}" if num_classes is not None
                   else f"a class index is 0-{_INT64_MAX}")
        extra = "; -1 marks an unlabelled image" if unlabelled else ""
        raise InputError(f"{what}: label {shown} (image {bad}) is out of range: {allowed}{extra}")
    return np.asarray(values, dtype=np.int64).reshape(n)


def _npz_array(value, path: Path, member: str) -> np.ndarray:
    """A member of a .npz, which must be a numeric (or, for ``class_names``, text) numpy array.

    ``np.load`` hands back the raw bytes of a member that is not a ``.npy`` file, and object arrays need pickle
    (never loaded: ``allow_pickle=False``); both are refused here, in one line naming the member.
    """
    if not isinstance(value, np.ndarray):
        raise InputError(f"{path}: '{member}' is not a numpy array (a {type(value).__name__} member, not a .npy "
                         f"file); store arrays with numpy.savez")
    if member == "labels" and value.dtype.kind not in "biuf":
        what = "text" if value.dtype.kind in "US" else f"dtype {value.dtype}"
        raise InputError(f"{path}: 'labels' holds {what}; labels must be integers (class indices; names go in "
                         f"'class_names')")
    if member == "class_names" and value.dtype.kind not in "biuUS":
        raise InputError(f"{path}: 'class_names' must be an array of names, got dtype {value.dtype}")
    return value


def _npz_class_names(value: np.ndarray, path: Path) -> list[str]:
    if value.ndim != 1 or value.shape[0] == 0:
        raise InputError(f"{path}: 'class_names' must be a 1-d array of names, got shape {value.shape}")
    return [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in value.tolist()]


def _open_npz(path: Path, limit: int | None) -> ImageArrays:
    import zipfile

    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a .npz archive (not a zip file)")
    member = ""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "images" not in keys:
                raise InputError(f"{path} has no 'images' array (it has: {', '.join(keys) or 'nothing'})")
            found = {}
            for member in ("images", "labels", "class_names"):
                if member in keys:
                    found[member] = _npz_array(archive[member], path, member)
    except InputError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise InputError(f"{path}: '{member}' is an object array (it needs pickle, which shiftlab never "
                             f"loads); store numeric arrays") from None
        raise InputError(f"cannot read {path}: '{member}': {str(exc).splitlines()[0][:160]}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"cannot read {path}: truncated or damaged archive ({type(exc).__name__})") from None
    images, labels = found["images"], found.get("labels")
    class_names = _npz_class_names(found["class_names"], path) if "class_names" in found else None
    if images.ndim == 3:
        images = images[:, None]
    what = f"the images in {path.name}"
    channels_last = _array_layout(images, what)
    if images.shape[0] == 0:
        raise InputError(f"{what} hold no images")
    y = _integer_labels(labels, images.shape[0], f"the labels in {path.name}",
                        None if class_names is None else len(class_names))
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
    if not path.is_file() and not path.is_dir():
        raise InputError(f"data {path} is {_file_kind(os.stat(path).st_mode)}, not a file or a folder: not opened")
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
