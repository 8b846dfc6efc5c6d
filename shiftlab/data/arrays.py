"""Images stored in one ``.npz`` archive: its members checked, read as an :class:`ImageArrays` source."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shiftlab.data.labels import _integer_labels
from shiftlab.data.source_types import ImageArrays
from shiftlab.errors import InputError, ShapeError


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
