"""Reading images: any PIL-readable file, and the real photos bundled with scikit-image and scikit-learn.

Everything here works offline: the bundled photos ship inside the installed packages.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shiftlab._checks import check_bchw, check_finite, check_float
from shiftlab.data.decoding import decode_image
from shiftlab.errors import InputError, ShapeError

__all__ = ["BUNDLED_PHOTOS", "INTERPOLATIONS", "bundled_photo", "center_crop", "load_image", "resize_and_crop",
           "resize_shorter_side", "to_tensor"]

# scikit-image's natural photos and scikit-learn's sample images. ("cat" is the same photo as "chelsea":
# still accepted by bundled_photo, but not listed twice.)
_SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "camera", "immunohistochemistry")
_SKIMAGE_ALIASES = {"cat": "chelsea"}
_SKLEARN_PHOTOS = ("china", "flower")
BUNDLED_PHOTOS: tuple[str, ...] = _SKIMAGE_PHOTOS + _SKLEARN_PHOTOS

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")


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


def _sklearn_sample_image(file_name: str) -> np.ndarray:
    # the file inside the installed scikit-learn (what sklearn.datasets.load_sample_image reads), read
    # directly: importing sklearn.datasets takes seconds
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder, "datasets", "images", file_name)
        if path.is_file():
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
    from sklearn.datasets import load_sample_image

    return load_sample_image(file_name)


def bundled_photo(name: str, mode: str = "RGB") -> np.ndarray:
    """A real photo bundled with scikit-image or scikit-learn, as float64 in [0, 1].

    Shape:
        Output: (H, W, 3) for ``mode="RGB"``, (H, W) for ``mode="L"``.
    """
    name = _SKIMAGE_ALIASES.get(name, name)
    if name in _SKIMAGE_PHOTOS:
        import skimage.data

        if name == "motorcycle_left":
            image = skimage.data.stereo_motorcycle()[0]
        else:
            image = getattr(skimage.data, name)()
    elif name in _SKLEARN_PHOTOS:
        image = _sklearn_sample_image(f"{name}.jpg")
    else:
        raise InputError(f"unknown bundled photo {name!r}; choose one of {', '.join(BUNDLED_PHOTOS)}")
    return _as_float(image, mode)


def load_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Read an image file (any format PIL reads) as float64 in [0, 1].

    16-bit images are scaled by 65535 and float images must lie in [0, 1]
    (:func:`shiftlab.data.decoding.decode_image`). Raises :class:`~shiftlab.errors.InputError` with a one-line
    message if the file is missing or not a readable image.

    Shape:
        Output: (H, W, 3) for ``mode="RGB"``, (H, W) for ``mode="L"``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if path.is_dir():
        raise InputError(f"expected an image file, got a directory: {path}")
    try:
        image = decode_image(path)
    except InputError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
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


def _check_pixel_batch(x, name: str = "x") -> torch.Tensor:
    check_bchw(x, name)
    check_float(x, name)
    return check_finite(x, name)


def _check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
    return interpolation


def _pair(size, name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise InputError(f"{name} must be a positive int or an (h, w) pair of them, got {size!r}")
    return pair


def resize_shorter_side(x: torch.Tensor, size: int, interpolation: str = "bilinear",
                        allow_upscale: bool = True) -> torch.Tensor:
    """Resize so that the shorter side is ``size`` pixels, keeping the aspect ratio.

    Downscaling is antialiased (for ``bilinear`` and ``bicubic``), and their results are clamped to the
    input's range, so images in [0, 1] stay in [0, 1]. With ``allow_upscale=False`` an image whose
    shorter side is below ``size`` raises :class:`~shiftlab.errors.ShapeError` instead of being enlarged.

    Shape:
        Input: (B, C, H, W) floating. Output: (B, C, H', W') with min(H', W') = size.

    >>> resize_shorter_side(torch.zeros(1, 3, 100, 200), 50).shape
    torch.Size([1, 3, 50, 100])
    """
    _check_pixel_batch(x)
    _check_interpolation(interpolation)
    if not isinstance(size, int) or size < 1:
        raise InputError(f"size must be a positive int, got {size!r}")
    h, w = x.shape[-2:]
    short = min(h, w)
    if short < size and not allow_upscale:
        raise ShapeError(f"image is {h}x{w}, smaller than the requested size {size}; "
                         f"use a smaller size or allow upscaling")
    if short == size:
        return x
    new_h, new_w = (size, max(1, round(w * size / h))) if h <= w else (max(1, round(h * size / w)), size)
    smooth = interpolation in ("bilinear", "bicubic")
    out = F.interpolate(x, size=(new_h, new_w), mode=interpolation,
                        align_corners=False if smooth else None, antialias=smooth and short > size)
    if smooth:  # bicubic overshoots, and antialiased bilinear can exceed the range by rounding
        out = out.clamp(x.amin(), x.amax())
    return out


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    """The central ``size`` window (offsets rounded down).

    Shape:
        Input: (B, C, H, W). Output: (B, C, h, w) with (h, w) = size.

    >>> center_crop(torch.arange(16.).reshape(1, 1, 4, 4), 2)[0, 0]
    tensor([[ 5.,  6.],
            [ 9., 10.]])
    """
    check_bchw(x)
    h, w = _pair(size, "size")
    height, width = x.shape[-2:]
    if h > height or w > width:
        raise ShapeError(f"cannot crop {h}x{w} from an image of {height}x{width}")
    top = (height - h) // 2
    left = (width - w) // 2
    return x[..., top:top + h, left:left + w]


def resize_and_crop(x: torch.Tensor, size, resize_size: int | None = None, interpolation: str = "bilinear",
                    allow_upscale: bool = True) -> torch.Tensor:
    """Resize the shorter side to ``resize_size`` then take the centre ``size`` crop, in pixel space.

    This is the standard ImageNet evaluation transform (resize 256, centre crop 224). ``resize_size``
    defaults to the shorter side of ``size`` (a square crop of the largest centred square, no border lost
    beyond that). No normalisation is applied: transforms act on [0, 1] images.

    Shape:
        Input: (B, C, H, W) floating. Output: (B, C, h, w) with (h, w) = size.

    >>> resize_and_crop(torch.rand(2, 3, 300, 451), 224, resize_size=256).shape
    torch.Size([2, 3, 224, 224])
    """
    h, w = _pair(size, "size")
    if resize_size is None:
        resize_size = max(h, w)
    if resize_size < max(h, w):
        raise InputError(f"resize_size {resize_size} is smaller than the crop {h}x{w}")
    return center_crop(resize_shorter_side(x, resize_size, interpolation, allow_upscale), (h, w))
