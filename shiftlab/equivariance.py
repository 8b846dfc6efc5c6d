"""The definitions of equivariance and invariance as executable checks.

A function ``f`` is *equivariant* to a transformation when transforming the input transforms the
output in a known way, ``f(T_in x) = T_out f(x)``; it is *invariant* when ``f(T x) = f(x)``.
:func:`equivariance_error` and :func:`invariance_error` measure how far a function is from either
(numbers, no verdict); :func:`assert_equivariant` and :func:`assert_invariant` measure with them, apply a
tolerance that depends on the dtype the outputs were computed in (see :func:`shiftlab._checks.tolerance`) and
return the measured :class:`EquivarianceError`: every shiftlab ``assert_*`` returns the value of its measure
function and hides its own frame from pytest tracebacks.

Example:
    >>> import torch
    >>> x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    >>> shift = lambda t: torch.roll(t, (1, 2), dims=(-2, -1))
    >>> err = equivariance_error(lambda t: 2 * t, x, shift)
    >>> err.max_abs
    0.0
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from shiftlab._checks import check_int, tolerance
from shiftlab.errors import InputError, ShapeError

_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}
_DTYPES_BY_NAME = {str(d): d for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}

__all__ = [
    "EquivarianceError",
    "equivariance_error",
    "invariance_error",
    "assert_equivariant",
    "assert_invariant",
]


@dataclass(frozen=True)
class EquivarianceError:
    """How far ``f(T_in x)`` is from ``T_out f(x)``.

    Attributes:
        max_abs: max |a - b| over the compared elements.
        max_rel: ``max_abs / max(max |a|, max |b|)`` (0 when both outputs are zero).
        rel_l2: ``||a - b|| / max(||a||, ||b||)`` (0 when both outputs are zero).
        scale: ``max(max |a|, max |b|)``, the size the relative errors are measured against.
        compared: number of elements compared (after ``margin`` and ``mask``).
        dtype: the dtype the outputs were computed in, e.g. ``"torch.float64"``.
    """

    max_abs: float
    max_rel: float
    rel_l2: float
    scale: float
    compared: int
    dtype: str

    def to_dict(self) -> dict:
        return asdict(self)


def _to_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return torch.as_tensor(np.asarray(value))
    raise ShapeError(f"{name} must be a torch tensor or a numpy array, got {type(value).__name__}")


def _cast_input(x, dtype):
    if dtype is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    if isinstance(x, np.ndarray):
        if dtype not in _NUMPY_DTYPES:
            raise InputError(f"cannot cast a numpy array to {dtype}")
        return x.astype(_NUMPY_DTYPES[dtype])
    raise ShapeError(f"x must be a torch tensor or a numpy array, got {type(x).__name__}")


def _normalise_margin(margin) -> tuple[int, int]:
    pair = (margin, margin) if isinstance(margin, numbers.Integral) else margin
    try:
        my, mx = pair
    except (TypeError, ValueError):
        raise InputError(f"margin must be an int or a pair (rows, cols), got {margin!r}") from None
    return check_int("margin rows", my, 0), check_int("margin cols", mx, 0)


def _compare(a, b, margin=0, mask=None) -> EquivarianceError:
    a = _to_tensor(a, "the transformed output")
    b = _to_tensor(b, "the reference output")
    if a.shape != b.shape:
        raise ShapeError(f"f(T_in x) has shape {tuple(a.shape)} but T_out f(x) has shape {tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    work = torch.float64 if dtype == torch.float64 or not dtype.is_floating_point else dtype
    a = a.to(device="cpu", dtype=torch.float64)
    b = b.to(device="cpu", dtype=torch.float64)
    if mask is not None:
        m = _to_tensor(mask, "mask").to(device="cpu", dtype=torch.bool)
        try:
            m = torch.broadcast_to(m, a.shape)
        except RuntimeError:
            raise ShapeError(
                f"mask of shape {tuple(m.shape)} does not broadcast to the output {tuple(a.shape)}") from None
    my, mx = _normalise_margin(margin)
    if my or mx:
        if a.ndim < 2:
            raise ShapeError(f"margin needs outputs with at least 2 dimensions, got shape {tuple(a.shape)}")
        if 2 * my >= a.shape[-2] or 2 * mx >= a.shape[-1]:
            raise ShapeError(f"margin {(my, mx)} leaves nothing of a {a.shape[-2]}x{a.shape[-1]} output")
        crop = (..., slice(my, a.shape[-2] - my), slice(mx, a.shape[-1] - mx))
        a, b = a[crop], b[crop]
        if mask is not None:
            m = m[crop]
    if mask is not None:
        a, b = a[m], b[m]
    if a.numel() == 0:
        raise ShapeError("nothing to compare: the margin or mask excludes every output element")
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ShapeError("the outputs contain NaN or Inf")
    diff = a - b
    max_abs = float(diff.abs().max())
    scale = float(torch.maximum(a.abs().max(), b.abs().max()))
    norm = float(torch.maximum(torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)))
    return EquivarianceError(
        max_abs=max_abs,
        max_rel=max_abs / scale if scale > 0 else 0.0,
        rel_l2=float(torch.linalg.vector_norm(diff)) / norm if norm > 0 else 0.0,
        scale=scale,
        compared=int(a.numel()),
        dtype=str(work),
    )


def _prepare_f(f: Callable, dtype):
    if not callable(f):
        raise InputError(f"f must be callable, got {type(f).__name__}")
    if dtype is not None and isinstance(f, torch.nn.Module):
        f = copy.deepcopy(f).to(dtype)
    return f


def equivariance_error(
    f: Callable,
    x,
    transform_in: Callable,
    transform_out: Callable | None = None,
    *,
    dtype: torch.dtype | None = None,
    margin=0,
    mask=None,
) -> EquivarianceError:
    """Measure how far ``f(transform_in(x))`` is from ``transform_out(f(x))``.

    Args:
        f: a function (or ``nn.Module``) of a tensor or array.
        x: the input, a torch tensor or numpy array.
        transform_in: the transformation of inputs, e.g. ``lambda t: torch.roll(t, (1, 2), (-2, -1))``.
        transform_out: its action on outputs; default the same as ``transform_in``.
        dtype: if given, cast ``x`` (and a copy of ``f`` if it is an ``nn.Module``) to it first, e.g.
            ``torch.float64`` to check an exactness claim without float32 rounding.
        margin: int or (rows, cols): compare only outputs at least this far from the border of the last
            two dimensions (the protocol for zero-padded or valid convolutions).
        mask: optional boolean array broadcastable to the output: compare only where True.

    Returns:
        :class:`EquivarianceError` with ``max_abs``, ``max_rel``, ``rel_l2`` (plain floats).

    Shape:
        - x: any shape ``f`` accepts; outputs of ``f(transform_in(x))`` and ``transform_out(f(x))`` must
          have the same shape (the last two dimensions are (H, W) when ``margin`` is used).
    """
    f = _prepare_f(f, dtype)
    x = _cast_input(x, dtype)
    if transform_out is None:
        transform_out = transform_in
    with torch.no_grad():
        moved = f(transform_in(x))
        reference = transform_out(f(x))
    return _compare(moved, reference, margin=margin, mask=mask)


def invariance_error(
    f: Callable,
    x,
    transform: Callable,
    *,
    dtype: torch.dtype | None = None,
    margin=0,
    mask=None,
) -> EquivarianceError:
    """Measure how far ``f(transform(x))`` is from ``f(x)`` (see :func:`equivariance_error`).

    Shape:
        - x: any shape ``f`` accepts; ``f(transform(x))`` and ``f(x)`` must have the same shape.
    """
    return equivariance_error(f, x, transform, lambda y: y, dtype=dtype, margin=margin, mask=mask)


def _verdict(err: EquivarianceError, what: str, atol: float | None, rtol: float | None) -> EquivarianceError:
    __tracebackhide__ = True
    if rtol is None:
        rtol = tolerance(_DTYPES_BY_NAME.get(err.dtype, torch.float32))
    if atol is None:
        atol = 0.0
    allowed = atol + rtol * err.scale
    if not err.max_abs <= allowed:
        raise AssertionError(
            f"not {what}: max |difference| {err.max_abs:.3e} > allowed {allowed:.3e} "
            f"(atol {atol:.1e} + rtol {rtol:.1e} x scale {err.scale:.3e}; max_rel {err.max_rel:.3e}, "
            f"{err.compared} elements, {err.dtype})"
        )
    return err


def assert_equivariant(
    f: Callable,
    x,
    transform_in: Callable,
    transform_out: Callable | None = None,
    *,
    dtype: torch.dtype | None = None,
    margin=0,
    mask=None,
    atol: float | None = None,
    rtol: float | None = None,
) -> EquivarianceError:
    """Raise ``AssertionError`` unless ``f(transform_in(x))`` equals ``transform_out(f(x))`` within tolerance.

    Measures with :func:`equivariance_error` and returns what it measured, the :class:`EquivarianceError`
    (the rule of every shiftlab ``assert_*``: the measure function's value). Passes when
    ``max_abs <= atol + rtol * scale`` with ``scale = max |output|``; by default ``atol = 0`` and
    ``rtol = tolerance(dtype of the outputs)`` (1e-10 in float64, 1e-5 in float32). The message of a failure
    gives the measured errors; this function's frame is hidden from pytest tracebacks. Arguments as in
    :func:`equivariance_error`.

    Shape:
        - As :func:`equivariance_error`.
    """
    __tracebackhide__ = True
    err = equivariance_error(f, x, transform_in, transform_out, dtype=dtype, margin=margin, mask=mask)
    return _verdict(err, "equivariant", atol, rtol)


def assert_invariant(
    f: Callable,
    x,
    transform: Callable,
    *,
    dtype: torch.dtype | None = None,
    margin=0,
    mask=None,
    atol: float | None = None,
    rtol: float | None = None,
) -> EquivarianceError:
    """Raise ``AssertionError`` unless ``f(transform(x))`` equals ``f(x)`` within tolerance.

    Measures with :func:`invariance_error` and returns what it measured, the :class:`EquivarianceError`
    (the rule of every shiftlab ``assert_*``). Tolerance as in :func:`assert_equivariant`; this function's
    frame is hidden from pytest tracebacks.

    Shape:
        - As :func:`invariance_error`.
    """
    __tracebackhide__ = True
    err = invariance_error(f, x, transform, dtype=dtype, margin=margin, mask=mask)
    return _verdict(err, "invariant", atol, rtol)
