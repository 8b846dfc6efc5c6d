"""Rotation, mirror flips and zoom about the image centre: exact for multiples of 90 degrees and for flips,
bilinear resampling otherwise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shiftlab.errors import ShapeError
from shiftlab.transforms._params import _as_vector, _check_image, _compute_dtype, _float_param

__all__ = ["hflip", "rotate", "vflip", "zoom"]


def _sample_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling of x on the grid theta @ [x, y, 1] (normalised coordinates, zero padding)."""
    work = _compute_dtype(x)
    theta = theta.to(work)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.to(work), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)


def _rotate_interpolated(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate counter-clockwise by ``angle`` degrees (B,) about the image centre, bilinear, zero padding."""
    height, width = x.shape[-2:]
    radians = angle.to(torch.float64) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    # output pixel -> input pixel is the inverse rotation; normalised coordinates scale x by W/2 and y by H/2
    theta = torch.stack([
        torch.stack([cos, -sin * (height / width), zero], dim=-1),
        torch.stack([sin * (width / height), cos, zero], dim=-1),
    ], dim=1)  # (B, 2, 3)
    return _sample_affine(x, theta)


def rotate(x: torch.Tensor, angle) -> torch.Tensor:
    """Rotate images counter-clockwise by ``angle`` degrees about their centre.

    Multiples of 90 degrees use ``torch.rot90`` and are exact (values are only moved); ``rotate(x, 0)``
    returns a copy of x. Other angles sample bilinearly (``grid_sample``, ``align_corners=False``) with
    zero padding: corners rotated in from outside the image are 0 (black in pixel space), and the bilinear
    interpolation blurs slightly. The interpolated path is never used at a multiple of 90 degrees.

    Args:
        x: images.
        angle: degrees, float or tensor of shape (B,) (one angle per sample).

    Shape:
        - Input: (B, C, H, W); angle: float or (B,)
        - Output: (B, C, H, W); a scalar odd multiple of 90 on a non-square image gives (B, C, W, H)
          like ``torch.rot90``. Per-sample angles on a non-square image may not contain odd multiples of 90
          (ShapeError).

    >>> rotate(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), 90)
    tensor([[[[2., 4.],
              [1., 3.]]]])
    """
    _check_image(x)
    batch, _, height, width = x.shape
    angle = _float_param(angle, batch, x.device, "angle")
    if isinstance(angle, float):
        quarter = angle / 90.0
        if quarter == round(quarter):
            return torch.rot90(x, int(round(quarter)) % 4, dims=(-2, -1))
        return _rotate_interpolated(x, _as_vector(angle, batch, x.device, torch.float64))
    quarter = angle / 90.0
    exact = quarter == torch.round(quarter)
    turns = torch.remainder(torch.round(quarter), 4).to(torch.int64)
    if height != width and bool((exact & (turns % 2 == 1)).any()):
        raise ShapeError(f"per-sample rotation by an odd multiple of 90 degrees needs a square image, "
                         f"got {height}x{width}")
    out = _rotate_interpolated(x, angle)
    for k in range(4):  # the four exact cases, not a loop over samples
        chosen = exact & (turns == k)
        if bool(chosen.any()):
            out = torch.where(chosen.view(batch, 1, 1, 1), torch.rot90(x, k, dims=(-2, -1)), out)
    return out


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror images left-right: ``out[..., j] = x[..., W - 1 - j]`` (exact).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    return x.flip(-1)


def vflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror images top-bottom: ``out[..., i, :] = x[..., H - 1 - i, :]`` (exact).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    return x.flip(-2)


def zoom(x: torch.Tensor, factor) -> torch.Tensor:
    """Scale image content by ``factor`` about the image centre, keeping the output size.

    ``factor > 1`` magnifies (the border is cropped away), ``factor < 1`` shrinks (the border is filled with 0,
    black in pixel space). Bilinear sampling (``grid_sample``, ``align_corners=False``) without antialiasing,
    so strong shrinking aliases. ``factor == 1`` returns a copy of x exactly.

    Args:
        x: images.
        factor: positive float or tensor of shape (B,).

    Shape:
        - Input: (B, C, H, W); factor: float or (B,)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    batch = x.shape[0]
    factor = _float_param(factor, batch, x.device, "factor")
    if (factor <= 0) if isinstance(factor, float) else bool((factor <= 0).any()):
        raise ShapeError("zoom factor must be positive")
    if isinstance(factor, float) and factor == 1.0:
        return x.clone()
    scale = 1.0 / _as_vector(factor, batch, x.device, torch.float64)
    zero = torch.zeros_like(scale)
    theta = torch.stack([torch.stack([scale, zero, zero], dim=-1), torch.stack([zero, scale, zero], dim=-1)], dim=1)
    out = _sample_affine(x, theta)
    if isinstance(factor, torch.Tensor):
        out = torch.where((factor == 1.0).view(batch, 1, 1, 1), x, out)
    return out
