"""Reading one image file safely: only regular files are opened, then decoded by PIL to float32 pixels.

Every file of the user's data is opened through :func:`_open_regular`'s checks (a fifo,
socket or device node is refused from its ``stat``, never opened); :func:`decode_image` adds PIL's
decompression-bomb guard, the EXIF orientation and the bit depth. Nothing here knows about folders, lists
or data sets.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np

from shiftlab.errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "decode_image", "is_image_file", "read_image_file"]

#: file extensions read as images (torchvision's ``IMG_EXTENSIONS``), compared case-insensitively
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(path) -> bool:
    """True when the file name ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)



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
    return read_image_file(Path(path), lambda im: (im.load(), _pixels(_exif_upright(im)))[1])


def read_image_file(path: Path, read):
    """``read(im)`` on the PIL image of the regular file ``path``, refused from its header when it has more pixels
    than PIL's decompression-bomb limit; every failure is an :class:`~shiftlab.errors.InputError` with a one-line
    reason (images and masks are read through it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open_regular(path) as file, Image.open(file) as im:
                w, h = im.size
                limit = _pixel_limit()
                if limit and w * h > limit:
                    raise InputError(f"{w}x{h} pixels is over the {limit / 1e6:.0f}-million-pixel limit for one "
                                     f"image (PIL's decompression-bomb guard)")
                return read(im)
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

