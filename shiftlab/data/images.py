"""Reading images: any PIL-readable file, and the real photos bundled with scikit-image and scikit-learn.

Everything here works offline: the bundled photos ship inside the installed packages.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from shiftlab.errors import InputError

__all__ = ["BUNDLED_PHOTOS", "bundled_photo", "load_image", "to_tensor"]

# name -> (package, loader name). scikit-image's natural photos and scikit-learn's sample images.
_SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "camera", "cat", "immunohistochemistry")
_SKLEARN_PHOTOS = ("china", "flower")
BUNDLED_PHOTOS: tuple[str, ...] = _SKIMAGE_PHOTOS + _SKLEARN_PHOTOS


def _as_float(image: np.ndarray, mode: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float64) / 255.0
    else:
        image = image.astype(np.float64)
        if image.max(initial=0.0) > 1.0:
            image = image / 255.0
    if mode == "L":
        if image.ndim == 3:
            image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    elif mode == "RGB":
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = image[..., :3]
    else:
        raise InputError(f"unknown image mode {mode!r}; use 'RGB' or 'L'")
    return np.ascontiguousarray(image)


def bundled_photo(name: str, mode: str = "RGB") -> np.ndarray:
    """A real photo bundled with scikit-image or scikit-learn, as float64 in [0, 1].

    Shape:
        Output: (H, W, 3) for ``mode="RGB"``, (H, W) for ``mode="L"``.
    """
    if name in _SKIMAGE_PHOTOS:
        import skimage.data

        image = getattr(skimage.data, name)()
    elif name in _SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    else:
        raise InputError(f"unknown bundled photo {name!r}; choose one of {', '.join(BUNDLED_PHOTOS)}")
    return _as_float(image, mode)


def load_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Read an image file (any format PIL reads) as float64 in [0, 1].

    Raises :class:`~shiftlab.errors.InputError` with a one-line message if the file is missing
    or not a readable image.

    Shape:
        Output: (H, W, 3) for ``mode="RGB"``, (H, W) for ``mode="L"``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if path.is_dir():
        raise InputError(f"expected an image file, got a directory: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            image = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc.__class__.__name__}") from None
    return _as_float(image, mode)


def to_tensor(image: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Turn an (H, W) or (H, W, C) array into a (1, C, H, W) tensor.

    Shape:
        Input: (H, W) or (H, W, C). Output: (1, C, H, W).
    """
    t = torch.as_tensor(np.asarray(image), dtype=dtype)
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 3:
        t = t.permute(2, 0, 1)
    else:
        raise InputError(f"expected an (H, W) or (H, W, C) image, got shape {tuple(t.shape)}")
    return t[None].contiguous()
