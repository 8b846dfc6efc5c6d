"""CIFAR-10 python folders (``data_batch_1..5``, ``test_batch``, ``batches.meta``), unpickled safely.

Only dicts, lists, bytes and numpy arrays are unpickled (:class:`_ArrayUnpickler`); a batch that is not a
regular file is refused without being opened.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import numpy as np

from shiftlab.data.decoding import _open_regular
from shiftlab.data.labels import _integer_labels
from shiftlab.data.source_types import ImageArrays
from shiftlab.errors import InputError, ShapeError

_CIFAR_FILES = re.compile(r"^(data_batch_[1-5]|test_batch)$")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a CIFAR batch needs nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise InputError(f"refusing to unpickle {module}.{name}: not a CIFAR-10 batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with _open_regular(path) as f:  # a fifo named data_batch_2 is refused, never opened (it would block)
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except InputError as exc:
        raise InputError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as exc:
        raise InputError(f"cannot read CIFAR-10 batch {path}: {exc.__class__.__name__}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path} is not a CIFAR-10 batch (it holds a {type(obj).__name__})")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_root(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if candidate.is_dir() and any(_CIFAR_FILES.match(p.name) for p in candidate.iterdir() if p.is_file()):
            return candidate
    return None


def _cifar_arrays(root: Path, split, limit) -> tuple[np.ndarray, np.ndarray, list[str], list[str] | None]:
    """The uint8 (N, 3, 32, 32) images, labels, names and class names of a CIFAR-10 python folder's split."""
    if split is None:
        split = "test" if (root / "test_batch").is_file() else "train"
    if split == "test":
        files = [root / "test_batch"]
    elif split == "train":
        files = sorted(p for p in root.iterdir() if re.match(r"^data_batch_[1-5]$", p.name))
    else:
        raise InputError(f"unknown split {split!r}; use 'test' or 'train'")
    if not files or not files[0].is_file():
        raise InputError(f"no CIFAR-10 {split} batch in {root}")
    class_names = _cifar_class_names(root)
    # every image is labelled, 0-9 (or one of the meta file's names): anything else is refused, never a "miss"
    num_classes = len(class_names) if class_names else 10
    arrays, labels, names = [], [], []
    for file in files:
        batch = _unpickle(file)
        if "data" not in batch or "labels" not in batch:
            raise InputError(f"{file} is not a CIFAR-10 batch (keys: {', '.join(map(str, batch))})")
        data = np.asarray(batch["data"])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
            raise ShapeError(f"{file}: CIFAR-10 data must be uint8 (N, 3072), got {data.dtype} {data.shape}")
        file_labels = _integer_labels(batch["labels"], data.shape[0], f"the labels in {file}", num_classes,
                                      unlabelled=False)
        arrays.append(data.reshape(-1, 3, 32, 32))
        labels.append(file_labels)
        file_names = batch.get("filenames")
        names += ([n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in file_names]
                  if isinstance(file_names, (list, tuple, np.ndarray)) and len(file_names) == data.shape[0]
                  else [f"{file.name}[{i}]" for i in range(data.shape[0])])
        if limit is not None and sum(len(a) for a in arrays) >= limit:
            break
    images, y = np.concatenate(arrays), np.concatenate(labels)
    if limit is not None:
        images, y, names = images[:limit], y[:limit], names[:limit]
    return images, y, names, class_names


def _cifar_class_names(root: Path) -> list[str] | None:
    """The ``label_names`` of ``batches.meta``, or None without one."""
    if not (root / "batches.meta").is_file():
        return None
    names = _unpickle(root / "batches.meta").get("label_names")
    if names is None:
        return None
    if not isinstance(names, (list, tuple, np.ndarray)) or not all(isinstance(n, (bytes, str)) for n in names) \
            or not len(names):
        raise InputError(f"{root / 'batches.meta'}: 'label_names' must be a list of class names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def _open_cifar(root: Path, split: str | None, limit: int | None) -> ImageArrays:
    images, labels, names, class_names = _cifar_arrays(root, split, limit)
    return ImageArrays(images, False, labels, names, class_names, str(root))
