"""Reading one segmentation mask file: class indices per pixel, exactly as stored (no colour conversion).

How a PNG mask's pixels become classes (:func:`decode_mask`):

- mode ``"P"`` (palette): the palette *indices* are the classes, whatever colours the palette shows
  (PASCAL VOC: index = class, 255 = the object borders, left out as the ignore index);
- mode ``"L"`` (8-bit grey), ``"I;16"``/``"I"`` (16-bit) and ``"1"``: the grey values are the classes;
- mode ``"RGB"`` (or ``"RGBA"``, alpha dropped): each colour is looked up in a palette, by default the PASCAL
  VOC colour map of 256 entries (:func:`voc_colormap`: class ``i`` has colour ``voc_colormap()[i]``, so the
  VOC border colour (224, 224, 192) is 255, the ignore index), or a user palette ``{(r, g, b): class}``. A
  colour that is not in the palette is an :class:`~shiftlab.errors.InputError` naming the file, the colour
  and where it is.

The file is opened with the same care as an image (regular files only, PIL's decompression-bomb guard) and
turned upright by its EXIF orientation tag, like its image. Nothing is resampled: a mask is never resized,
converted or interpolated here.

>>> tuple(int(v) for v in voc_colormap()[15])   # class 15, "person"
(192, 128, 128)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shiftlab.data.decoding import _exif_upright, read_image_file
from shiftlab.errors import InputError

__all__ = ["VOC_CLASSES", "MaskPalette", "decode_mask", "image_size", "voc_colormap"]

#: the 21 classes of PASCAL VOC segmentation, index = class (255 is the ignore index of object borders)
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

_GREY_MODES = ("L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N")


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, generated from its definition: the bits of a class index ``c`` are dealt
    in turn to red, green and blue, from each colour's highest bit down (bit ``3k`` of ``c`` is bit ``7 - k``
    of red, ``3k + 1`` of green, ``3k + 2`` of blue). All 256 colours are distinct.

    Shape:
        Output: (n, 3) uint8.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 256:
        raise InputError(f"n must be an integer in 1..256, got {n!r}")
    c = np.arange(n, dtype=np.int64)
    rgb = np.zeros((n, 3), dtype=np.int64)
    for k in range(8):  # the 8 bit positions of a colour, not pixels
        for channel in range(3):
            rgb[:, channel] |= ((c >> (3 * k + channel)) & 1) << (7 - k)
    return rgb.astype(np.uint8)


class MaskPalette:
    """A lookup from RGB colours to classes, for RGB masks.

    ``MaskPalette(None)`` or ``MaskPalette("voc")`` is the VOC colour map (colour ``i`` -> class ``i``);
    ``MaskPalette({(r, g, b): class, ...})`` a user palette; ``MaskPalette(array)`` with an (K, 3) array of
    colours maps colour ``k`` to class ``k``. Lookup is one ``searchsorted`` over the packed colours.
    """

    def __init__(self, palette=None):
        if palette is None or (isinstance(palette, str) and palette == "voc"):
            colours, classes, self.name = voc_colormap(), np.arange(256), "the VOC colour map"
        elif isinstance(palette, dict):
            if not palette:
                raise InputError("the palette is empty; give {(r, g, b): class, ...}")
            colours = [_colour(k) for k in palette]
            classes = [_class(v, k) for k, v in palette.items()]
            self.name = f"the palette of {len(palette)} colours"
        elif isinstance(palette, str):
            raise InputError(f"unknown palette {palette!r}; use 'voc', {{(r, g, b): class}} or a (K, 3) array")
        else:
            try:
                colours = np.asarray(palette)
            except (TypeError, ValueError):
                colours = None
            if colours is None or colours.ndim != 2 or colours.shape[1] != 3 or not len(colours):
                raise InputError("a palette must be 'voc', a dict {(r, g, b): class} or a (K, 3) array of colours, "
                                 f"got {type(palette).__name__}")
            colours = [_colour(c) for c in colours.tolist()]
            classes, self.name = np.arange(len(colours)), f"the palette of {len(colours)} colours"
        codes = _pack(np.asarray(colours, dtype=np.int64).reshape(-1, 3))
        if len(np.unique(codes)) != len(codes):
            raise InputError("the palette gives one colour two classes")
        order = np.argsort(codes)
        self.codes = codes[order]
        self.classes = np.asarray(classes, dtype=np.int64)[order]

    def lookup(self, rgb: np.ndarray, where: str) -> np.ndarray:
        """The class of each pixel of an (H, W, 3) colour array; InputError naming ``where`` for an unknown colour.

        Shape:
            Input: (H, W, 3) integers 0..255. Output: (H, W) int64.
        """
        codes = _pack(rgb.astype(np.int64))
        at = np.searchsorted(self.codes, codes).clip(max=len(self.codes) - 1)
        known = self.codes[at] == codes
        if not bool(known.all()):
            y, x = (int(v[0]) for v in np.nonzero(~known))
            unknown = np.unique(codes[~known])
            colour = tuple(int(v) for v in rgb[y, x])
            raise InputError(f"{where}: colour {colour} at row {y}, column {x} is not in {self.name} "
                             f"({len(unknown)} unknown colour{'s' if len(unknown) > 1 else ''}); give the mask's "
                             f"palette as {{(r, g, b): class}}")
        return self.classes[at]


def _pack(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colour(value) -> tuple[int, int, int]:
    try:
        r, g, b = (int(v) for v in value)
        ok = all(0 <= v <= 255 and float(v) == float(u) for v, u in zip((r, g, b), value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"a palette colour must be (r, g, b) with integers 0..255, got {value!r}")
    return r, g, b


def _class(value, colour) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"the class of colour {colour!r} must be an integer >= 0, got {value!r}")
    return int(value)


def _upright_size(im) -> tuple[int, int]:
    """(H, W) of ``im`` once turned by its EXIF orientation tag (read from the header only)."""
    w, h = im.size
    if "exif" not in im.info:  # no EXIF block in the header (PIL's PNG getexif() would decode the pixels to look)
        return h, w
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except (OSError, ValueError, TypeError, SyntaxError):
        orientation = 1
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def image_size(path) -> tuple[int, int]:
    """(H, W) of an image or mask file as :func:`decode_image` / :func:`decode_mask` return it (EXIF orientation
    applied), from its header alone: no pixel is decoded. InputError with a reason if it cannot be read."""
    return read_image_file(Path(path), _upright_size)


def decode_mask(path, palette: MaskPalette | None = None) -> np.ndarray:
    """Read one mask file as (H, W) int64 class indices (see the module docstring for the modes).

    ``palette`` (a :class:`MaskPalette`, default the VOC colour map) is used for RGB masks only.
    Raises :class:`~shiftlab.errors.InputError` with a one-line reason for anything unusable.

    Shape:
        Output: (H, W) int64.
    """
    path = Path(path)

    def read(im):
        im.load()
        im = _exif_upright(im)
        mode = im.mode
        if mode in ("P", *_GREY_MODES):
            a = np.asarray(im).astype(np.int64)
            if a.ndim != 2:
                raise InputError(f"mask mode {mode} gave pixels of shape {a.shape}")
            if a.size and int(a.min()) < 0:
                raise InputError(f"mask holds negative value {int(a.min())}; classes are 0 or more")
            return a
        if mode in ("RGB", "RGBA"):
            rgb = np.asarray(im)[..., :3]
            return (palette or MaskPalette()).lookup(rgb, f"mask {path}")
        raise InputError(f"mask mode {mode} is not read; a mask is a palette (P), grey (L, I;16) or RGB PNG")

    return read_image_file(path, read)
