"""Validation at the API boundary. Private: used by every public function of tensors."""

from __future__ import annotations

import torch

from shiftlab.errors import InputError, ShapeError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Relative tolerance used wherever a claim is "exact up to rounding", by dtype.
_TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for exactness claims in ``dtype`` (1e-10 for float64, 1e-5 for float32)."""
    return _TOLERANCE.get(dtype, 1e-5)


def check_tensor(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_bchw(x, name: str = "x", channels: int | None = None, min_size: int = 1) -> torch.Tensor:
    """Check ``x`` is a (B, C, H, W) floating tensor with finite values."""
    check_tensor(x, name)
    if x.ndim != 4:
        raise ShapeError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ShapeError(f"{name} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise ShapeError(f"{name} must be at least {min_size}x{min_size}, got {x.shape[-2]}x{x.shape[-1]}")
    return x


def check_float(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if x.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{name} must be a floating tensor, got {x.dtype}")
    return x


def check_finite(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Raise ShapeError if ``x`` holds NaN or Inf.

    NaN and Inf always survive a sum, so a finite sum proves a finite tensor (the cheap path); only
    a non-finite sum (which may also be plain overflow) triggers the full element-wise check.
    """
    if not x.is_floating_point() or x.numel() == 0:
        return x
    if bool(torch.isfinite(x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32))):
        return x
    if not bool(torch.isfinite(x).all()):
        raise ShapeError(f"{name} contains NaN or Inf")
    return x


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None, *,
              allow_none: bool = False, error: type[InputError] = InputError) -> int | None:
    """``value`` as an int, or :class:`~shiftlab.errors.InputError` naming ``name`` (bools are not integers).

    The one integer checker of shiftlab's arguments: ``minimum``/``maximum`` are inclusive bounds; ``None``
    passes through when ``allow_none``. ``error`` is the :class:`~shiftlab.errors.InputError` class raised:
    :class:`~shiftlab.errors.ArgumentShapeError` where an argument check raised ``ShapeError`` before the
    rule of :mod:`shiftlab.errors`.
    """
    import numbers

    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise error(f"{name} must be an integer <= {maximum}, got {value!r}")
    return value
