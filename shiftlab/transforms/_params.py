"""Checks shared by every transformation: the image batch, per-sample parameters, sizes; one flat gather.

Private to :mod:`shiftlab.transforms`.
"""

from __future__ import annotations

import math
import numbers

import torch

from shiftlab._checks import check_bchw, check_finite, check_float
from shiftlab.errors import ShapeError


def _check_image(x, name: str = "x") -> torch.Tensor:
    check_bchw(x, name)
    check_float(x, name)
    check_finite(x, name)
    return x


def _int_param(value, batch: int, device: torch.device, name: str) -> int | torch.Tensor:
    """A python int, or an int64 tensor of shape (batch,) on ``device``."""
    if isinstance(value, bool):
        raise ShapeError(f"{name} must be an int or an integer tensor of shape (B,), got bool")
    if isinstance(value, numbers.Integral):  # int, numpy integers
        return int(value)
    if not isinstance(value, torch.Tensor):
        raise ShapeError(f"{name} must be an int or an integer tensor of shape (B,), got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ShapeError(f"{name} must be an integer tensor, got {value.dtype}")
    if value.ndim == 0:
        return int(value)
    if value.shape != (batch,):
        raise ShapeError(f"{name} must have shape ({batch},) (one value per sample), got {tuple(value.shape)}")
    return value.to(device=device, dtype=torch.int64)


def _float_param(value, batch: int, device: torch.device, name: str) -> float | torch.Tensor:
    """A python float, or a float64 tensor of shape (batch,) on ``device``; must be finite."""
    if isinstance(value, bool):
        raise ShapeError(f"{name} must be a number or a tensor of shape (B,), got bool")
    if isinstance(value, numbers.Real):  # int, float, numpy scalars
        value = float(value)
        if not math.isfinite(value):
            raise ShapeError(f"{name} must be finite, got {value}")
        return float(value)
    if not isinstance(value, torch.Tensor):
        raise ShapeError(f"{name} must be a number or a tensor of shape (B,), got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise ShapeError(f"{name} must be a real tensor, got {value.dtype}")
    if value.ndim == 0:
        return _float_param(float(value), batch, device, name)
    if value.shape != (batch,):
        raise ShapeError(f"{name} must have shape ({batch},) (one value per sample), got {tuple(value.shape)}")
    value = value.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(value).all()):
        raise ShapeError(f"{name} contains NaN or Inf")
    return value


def _as_vector(value, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.full((batch,), value, device=device, dtype=dtype)


def _size_pair(size, name: str) -> tuple[int, int]:
    if isinstance(size, bool):
        raise ShapeError(f"{name} must be an int or a pair (h, w), got bool")
    if isinstance(size, numbers.Integral):
        pair = (int(size), int(size))
    elif isinstance(size, (tuple, list, torch.Size)) and len(size) == 2 and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size):
        pair = (int(size[0]), int(size[1]))
    else:
        raise ShapeError(f"{name} must be an int or a pair of ints (h, w), got {size!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ShapeError(f"{name} must be positive, got {pair}")
    return pair


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Half precision is computed in float32 (FFT and grid sampling need it on CPU), then cast back."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _gather_2d(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[b, c, i, j] = x[b, c, rows[b, i], cols[b, j]]`` with one gather over the flattened image.

    rows: (B, h) int64 in [0, H), cols: (B, w) int64 in [0, W). One flat gather is several times faster than
    two gathers along H and W, and faster than a loop of ``torch.roll`` over the samples.
    """
    batch, channels, _, width = x.shape
    h, w = rows.shape[1], cols.shape[1]
    flat = (rows[:, :, None] * width + cols[:, None, :]).reshape(batch, 1, h * w).expand(batch, channels, h * w)
    return x.reshape(batch, channels, -1).gather(2, flat).view(batch, channels, h, w)


def _check_range(offset, low: int, high: int, name: str, what: str) -> None:
    if isinstance(offset, int):
        bad = not (low <= offset <= high)
        shown = offset
    else:
        outside = (offset < low) | (offset > high)
        bad = bool(outside.any())
        shown = int(offset[outside][0]) if bad else None
    if bad:
        raise ShapeError(f"{name}={shown} puts the {what} outside the image (allowed {low}..{high})")
