"""Image sources read one image at a time: what :func:`shiftlab.audit` streams through a ``DataLoader``.

An :class:`ImageSource` is a map-style ``torch.utils.data.Dataset``. Listing it is cheap (file names and
labels, or an array kept in its stored dtype); an image is decoded only when it is asked for, so memory does
not grow with the number of images. Every image comes out as a (C, H, W) float32 tensor in [0, 1] at its own
size; resizing to a model's input happens later, in the loader's workers.

This module reads the spec and opens the matching source; the work lives one job per module below it:
:mod:`~shiftlab.data.decoding` (one file), :mod:`~shiftlab.data.source_types` (the source classes),
:mod:`~shiftlab.data.folders` (folders and lists), :mod:`~shiftlab.data.arrays` (``.npz``),
:mod:`~shiftlab.data.cifar` (CIFAR-10) and :mod:`~shiftlab.data.labels` (label checks).

Sources (:func:`open_images`):

- ``"photos"`` (or ``None``): the real photos bundled with scikit-image and scikit-learn, with ImageNet labels
  where one fits;
- a folder: flat (no labels), or one subfolder per class (ImageFolder layout: labels are the indices of the
  sorted folder names, files found recursively). Files are kept by extension, as torchvision does
  (:data:`IMAGE_EXTENSIONS`); other files are counted in ``ignored``, never reported as unreadable images.
  Links: a symbolic link into the folder itself or to one of its parents is never followed (a cycle, or a
  second name of an image listed already); links to files and folders outside it are followed; a file
  with two names (hard or symbolic links) is counted once. Fifos, sockets and device nodes are listed in
  ``skipped`` and never opened (see :class:`shiftlab.data.folders._Walk`);
- a text file (``.txt``, ``.lst``): one image path per line, optionally followed by a tab (or a space) and an
  integer label (a class index, 0 or more; leave it out for an unlabelled image); relative paths are relative
  to the list file; ``#`` starts a comment;
- a ``.npz`` file with ``images`` ((N, H, W, C) uint8 or (N, C, H, W) float in [0, 1]), optional ``labels``
  (class indices, -1 for an unlabelled image) and ``class_names``; numeric arrays only (``allow_pickle=False``);
- a CIFAR-10 python folder (``data_batch_1..5``, ``test_batch``, ``batches.meta``);
- images with masks (a :class:`~shiftlab.data.mask_files.MaskFiles`, see :func:`~shiftlab.data.mask_files.open_masks`):
  a PASCAL VOC folder (``JPEGImages/``, ``SegmentationClass/``; ``split`` names ``ImageSets/Segmentation/{split}.txt``)
  or a folder with ``images/`` and ``masks/`` (pairs by name), never read as two classes;
- ``digit-masks[:CANVAS[:DIGITS]]``: the digit segmentation task (:mod:`~shiftlab.data.digit_masks`), ``split``
  "test" (default) or "train".

A label out of range (negative, at or beyond the number of class names, beyond int64) is refused in one
line naming the file and the line or image: it is never scored as a miss.

Decoding is careful (:func:`decode_image`): only regular files are opened, the EXIF orientation is applied,
16-bit images are scaled by 65535 (not saturated), float images must be in [0, 1], images over PIL's
decompression-bomb limit are refused before they are decoded. A file that cannot be used
raises :class:`~shiftlab.errors.InputError` from :meth:`ImageSource.load`; the audit skips it and
counts it. Folders that cannot be listed are recorded in ``skipped`` while listing.
"""

from __future__ import annotations

import os
from pathlib import Path

from shiftlab.data.arrays import _open_npz
from shiftlab.data.cifar import _cifar_root, _open_cifar
from shiftlab.data.decoding import IMAGE_EXTENSIONS, _file_kind, decode_image, is_image_file
from shiftlab.data.digit_masks import DIGIT_MASKS_SPEC, open_digit_masks
from shiftlab.data.folders import _open_folder, _open_list
from shiftlab.data.mask_files import mask_layout, open_masks
from shiftlab.data.source_types import BundledPhotos, ImageArrays, ImageFiles, ImageSource, TensorImages
from shiftlab.errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "ImageSource", "TensorImages", "ImageFiles", "ImageArrays", "BundledPhotos",
           "open_images", "decode_image", "is_image_file"]

_LIST_SUFFIXES = (".txt", ".lst")


def open_images(spec=None, limit: int | None = None, split: str | None = None) -> ImageSource:
    """Open an image source without decoding its images (see the module docstring for the specs).

    Args:
        spec: ``None`` or ``"photos"``, a folder, a ``.txt``/``.lst`` list of paths, a ``.npz`` file, or a
            CIFAR-10 python folder (or its parent).
        limit: the first ``limit`` images only.
        split: CIFAR-10 only: ``"test"`` (the default when present) or ``"train"``; also a VOC split, or the
            digit-masks set (``"test"``, ``"train"``).

    Raises :class:`~shiftlab.errors.InputError` for a spec that names nothing usable.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InputError(f"limit must be a positive int, got {limit!r}")
    if spec is None or (isinstance(spec, str) and spec == "photos"):
        if split is not None:
            raise InputError("split is for CIFAR-10 folders, not the bundled photos")
        return BundledPhotos(limit)
    if isinstance(spec, str) and spec.split(":")[0] == DIGIT_MASKS_SPEC:  # the digit segmentation task
        return open_digit_masks(spec, limit, split)
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
    cifar = _cifar_root(path)
    if cifar is not None:
        return _open_cifar(cifar, split, limit)
    if mask_layout(path) is not None:  # images with masks (VOC, or images/ + masks/): a MaskFiles
        return open_masks(path, split=split, limit=limit)
    if split is not None:
        raise InputError(f"split is for CIFAR-10 folders; {path} is not one")
    return _open_folder(path, limit)
