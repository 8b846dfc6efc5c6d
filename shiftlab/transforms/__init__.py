"""Exact image transformations: how inputs move.

Every function acts on a batch of images in pixel space, a floating tensor shaped (B, C, H, W) with values
in [0, 1], and returns a tensor of the same dtype on the same device. Nothing loops over pixels or samples:
per-sample parameters (one shift, angle or factor per image) are applied with index gathers and batched
sampling grids.

Shift convention (``torch.roll``): a shift (dy, dx) moves the content DOWN by dy and RIGHT by dx,
``out[..., i, j] = x[..., i - dy, j - dx]``.

Integer translations (:mod:`~shiftlab.transforms.shifts`)
    :func:`circular_shift` (a group action), :func:`crop_shift` (windows of a larger image, a camera pan),
    :func:`canvas_embed` (Azulay & Weiss: a downscaled object pasted into a canvas), :func:`pad_to_multiple`.
Sub-pixel translations (:mod:`~shiftlab.transforms.subpixel`)
    :func:`fourier_shift` and :func:`lanczos_shift`.
Rotation, flips, zoom (:mod:`~shiftlab.transforms.geometry`)
    :func:`rotate`, :func:`hflip`, :func:`vflip`, :func:`zoom`.
Lighting (:mod:`~shiftlab.transforms.photometric`)
    :func:`adjust_brightness`, :func:`adjust_contrast`, :func:`adjust_gamma`.
Sweeps, parameter tensors (:mod:`~shiftlab.transforms.sweeps`)
    :func:`diagonal_offsets`, :func:`imagenet_p_offsets`, :func:`shift_grid`, :func:`random_offsets`,
    :func:`angle_sweep`, :func:`scale_sweep`, :func:`brightness_sweep`.

>>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
>>> circular_shift(x, 1, 0)[0, 0, :, 0]
tensor([12.,  0.,  4.,  8.])
"""

import torch  # the namespace of the examples below, which doctest.testmod(shiftlab.transforms) runs

from shiftlab.transforms.geometry import _rotate_interpolated  # noqa: F401 (tests check the interpolated path)
from shiftlab.transforms.geometry import hflip, rotate, vflip, zoom
from shiftlab.transforms.photometric import adjust_brightness, adjust_contrast, adjust_gamma
from shiftlab.transforms.shifts import canvas_embed, circular_shift, crop_shift, pad_to_multiple
from shiftlab.transforms.subpixel import bilinear_shift, fourier_shift, lanczos_shift
from shiftlab.transforms.sweeps import (angle_sweep, brightness_sweep, diagonal_offsets, imagenet_p_offsets,
                                        random_offsets, scale_sweep, shift_grid)

__all__ = [
    "circular_shift",
    "crop_shift",
    "canvas_embed",
    "fourier_shift",
    "lanczos_shift",
    "bilinear_shift",
    "rotate",
    "hflip",
    "vflip",
    "zoom",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
    "pad_to_multiple",
    "diagonal_offsets",
    "imagenet_p_offsets",
    "shift_grid",
    "random_offsets",
    "angle_sweep",
    "scale_sweep",
    "brightness_sweep",
]

# the examples of every public function are this package's doctests, wherever the function is defined
__test__ = {name: globals()[name] for name in __all__}
