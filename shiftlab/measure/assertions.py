"""Assertions for other people's test suites: is a function shift-equivariant, or shift-invariant?

Measurement and assertion are separate (as in e3nn): the errors come from
:func:`shiftlab.metrics.feature_equivariance_error` / :func:`~shiftlab.metrics.feature_invariance_error`;
these functions only compare them with a tolerance that depends on the output dtype (1e-10 for float64,
1e-5 for float32, see ``shiftlab._checks.tolerance``).

>>> import torch
>>> conv = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular").double()
>>> assert_shift_equivariant(conv, torch.rand(2, 3, 8, 8, dtype=torch.float64))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from shiftlab._checks import check_bchw, check_finite, check_float, tolerance
from shiftlab.errors import ShapeError
from shiftlab.measure.metrics import equivariance_stats, invariance_stats, relative_errors

__all__ = ["assert_shift_equivariant", "assert_shift_invariant"]


def _shifts(shifts, stride: tuple[int, int]) -> list[tuple[int, int]]:
    if shifts is None:
        sy, sx = stride
        return [(sy, 0), (0, sx), (sy, sx), (-2 * sy, 3 * sx)]
    out = []
    for s in shifts:
        s = tuple(int(v) for v in s)
        if len(s) != 2:
            raise ShapeError(f"each shift must be a pair (dy, dx), got {s}")
        out.append(s)
    if not out:
        raise ShapeError("shifts is empty")
    return out


def _stride(x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    H, W = x.shape[-2:]
    h, w = y.shape[-2:]
    if H % h or W % w:
        raise ShapeError(f"output {h}x{w} does not divide the input {H}x{W}; pass stride= explicitly")
    return (H // h, W // w)


def _apply(f: Callable, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = f(x)
    if not isinstance(y, torch.Tensor):
        raise ShapeError(f"f must return a tensor, got {type(y).__name__}")
    return y


def assert_shift_equivariant(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                             shifts: Sequence[tuple[int, int]] | None = None,
                             stride: int | tuple[int, int] | None = None, rtol: float | None = None) -> None:
    """Assert ``f(roll(x, d)) == roll(f(x), d / stride)`` for circular shifts d, up to a dtype tolerance.

    The largest per-sample relative error ``||f(T x) - T' f(x)|| / ||f(x)||`` (the statistic behind
    :func:`~shiftlab.metrics.feature_equivariance_error`, summed in float64) must not exceed ``rtol``
    (default: ``tolerance(output dtype)``) for any shift. Default shifts: (s, 0), (0, s), (s, s),
    (-2s, 3s) with s the stride; the stride is inferred from the output size unless given. Shifts that
    are not multiples of the stride raise :class:`~shiftlab.errors.ShapeError` (they are not representable).

    Raises:
        AssertionError: naming the worst shift and its error.

    Shape:
        Input: x (B, C, H, W); f(x) (B, C', H/s, W/s).
    """
    check_bchw(x)
    check_float(x)
    check_finite(x)
    y = _apply(f, x)
    check_bchw(y, "f(x)")
    sy, sx = _stride(x, y) if stride is None else ((stride, stride) if isinstance(stride, int) else tuple(stride))
    tol = tolerance(y.dtype) if rtol is None else float(rtol)
    worst = (0.0, None)
    for dy, dx in _shifts(shifts, (sy, sx)):
        if dy % sy or dx % sx:
            raise ShapeError(f"shift ({dy}, {dx}) is not a multiple of the stride ({sy}, {sx}); T' is undefined")
        y_t = _apply(f, torch.roll(x, (dy, dx), dims=(-2, -1)))
        check_bchw(y_t, "f(T x)")
        if y_t.shape != y.shape:
            raise ShapeError(f"f changed its output shape under a shift: {tuple(y.shape)} vs {tuple(y_t.shape)}")
        err = float(relative_errors(*equivariance_stats(y, y_t, dy // sy, dx // sx)[:2]).max())
        if not err <= worst[0]:
            worst = (err, (dy, dx))
    if not worst[0] <= tol:
        raise AssertionError(f"not shift-equivariant: relative error {worst[0]:.3g} for shift {worst[1]} "
                             f"(stride {(sy, sx)}) exceeds the tolerance {tol:.1g} for {y.dtype}")


def assert_shift_invariant(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                           shifts: Sequence[tuple[int, int]] | None = None, rtol: float | None = None) -> None:
    """Assert ``f(roll(x, d)) == f(x)`` for circular shifts d, up to a dtype tolerance.

    The largest per-sample relative error ``||f(T x) - f(x)|| / ||f(x)||`` (the statistic behind
    :func:`~shiftlab.metrics.feature_invariance_error`) must not exceed ``rtol`` (default:
    ``tolerance(output dtype)``). Default shifts: (1, 0),
    (0, 1), (1, 1), (-2, 3).

    Raises:
        AssertionError: naming the worst shift and its error.

    Shape:
        Input: x (B, C, H, W); f(x) (B, ...) of any shape (maps are compared whole, not pooled).
    """
    check_bchw(x)
    check_float(x)
    check_finite(x)
    y = _apply(f, x)
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise ShapeError(f"f(x) must keep the batch dimension {x.shape[0]}, got shape {tuple(y.shape)}")
    tol = tolerance(y.dtype) if rtol is None else float(rtol)
    flat = y.reshape(y.shape[0], -1)
    worst = (0.0, None)
    for dy, dx in _shifts(shifts, (1, 1)):
        y_t = _apply(f, torch.roll(x, (dy, dx), dims=(-2, -1)))
        if y_t.shape != y.shape:
            raise ShapeError(f"f changed its output shape under a shift: {tuple(y.shape)} vs {tuple(y_t.shape)}")
        y_t = y_t.reshape(flat.shape)
        err = float(relative_errors(*invariance_stats(flat, y_t)).max())
        if not err <= worst[0]:
            worst = (err, (dy, dx))
    if not worst[0] <= tol:
        raise AssertionError(f"not shift-invariant: relative error {worst[0]:.3g} for shift {worst[1]} exceeds "
                             f"the tolerance {tol:.1g} for {y.dtype}")
