"""Assertions for other people's test suites: is a function shift-equivariant, or shift-invariant?

Measurement and assertion are separate (as in e3nn): :func:`shift_equivariance_error` and
:func:`shift_invariance_error` measure the worst per-sample relative error over circular shifts (the
statistic behind :func:`shiftlab.metrics.feature_equivariance_error` / :func:`~shiftlab.metrics.feature_invariance_error`,
whose means they would give), as a :class:`WorstShift`; :func:`assert_shift_equivariant` and
:func:`assert_shift_invariant` compare it with a tolerance that depends on the output dtype (1e-10 for
float64, 1e-5 for float32, see ``shiftlab._checks.tolerance``) and return the measured :class:`WorstShift`:
every shiftlab ``assert_*`` returns the value of its measure function and hides its own frame from pytest
tracebacks.

>>> import torch
>>> conv = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular").double()
>>> assert_shift_equivariant(conv, torch.rand(2, 3, 8, 8, dtype=torch.float64)).rel_error < 1e-10
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from shiftlab._checks import check_bchw, check_finite, check_float, check_int, tolerance
from shiftlab.errors import ArgumentShapeError, InputError, ShapeError
from shiftlab.measure.metrics import equivariance_stats, invariance_stats, relative_errors

__all__ = ["WorstShift", "shift_equivariance_error", "shift_invariance_error", "assert_shift_equivariant",
           "assert_shift_invariant"]


@dataclass(frozen=True)
class WorstShift:
    """The largest per-sample relative error over the circular shifts checked, and where it was.

    Attributes:
        rel_error: max over shifts and samples of ``||f(T x) - T' f(x)|| / ||T' f(x)||`` (``T'`` the identity
            for invariance), summed in float64.
        shift: the input shift ``(dy, dx)`` that gave it (``None`` when every error is 0).
        stride: ``(sy, sx)``, the output's stride (``(1, 1)`` for invariance).
        shifts_checked: how many shifts were checked.
        dtype: the dtype of the outputs, e.g. ``"torch.float64"`` (the default tolerance follows it).
    """

    rel_error: float
    shift: tuple[int, int] | None
    stride: tuple[int, int]
    shifts_checked: int
    dtype: str

    def to_dict(self) -> dict:
        return asdict(self)


def _shifts(shifts, stride: tuple[int, int]) -> list[tuple[int, int]]:
    if shifts is None:
        sy, sx = stride
        return [(sy, 0), (0, sx), (sy, sx), (-2 * sy, 3 * sx)]
    out = []
    for s in shifts:
        s = tuple(s)
        if len(s) != 2:
            raise ArgumentShapeError(f"each shift must be a pair (dy, dx), got {s}")
        out.append((check_int("dy", s[0], error=ArgumentShapeError), check_int("dx", s[1], error=ArgumentShapeError)))
    if not out:
        raise ArgumentShapeError("shifts is empty")
    return out


def _check_stride(stride) -> tuple[int, int]:
    pair = (stride, stride) if not isinstance(stride, (tuple, list)) else tuple(stride)
    if len(pair) != 2:
        raise InputError(f"stride must be an int or a pair (sy, sx), got {stride!r}")
    return check_int("stride", pair[0], 1), check_int("stride", pair[1], 1)


def _inferred_stride(x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
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


def _checked_input(x) -> torch.Tensor:
    check_bchw(x)
    check_float(x)
    return check_finite(x)


def _shifted_output(f: Callable, x: torch.Tensor, shift: tuple[int, int], y: torch.Tensor) -> torch.Tensor:
    y_t = _apply(f, torch.roll(x, shift, dims=(-2, -1)))
    if y_t.shape != y.shape:
        raise ShapeError(f"f changed its output shape under a shift: {tuple(y.shape)} vs {tuple(y_t.shape)}")
    return y_t


def _worst(errors: list[tuple[float, tuple[int, int]]], stride, dtype: torch.dtype) -> WorstShift:
    worst = (0.0, None)
    for err, shift in errors:
        if not err <= worst[0]:  # NaN is worse than anything
            worst = (err, shift)
    return WorstShift(worst[0], worst[1], tuple(stride), len(errors), str(dtype))


def shift_equivariance_error(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                             shifts: Sequence[tuple[int, int]] | None = None,
                             stride: int | tuple[int, int] | None = None) -> WorstShift:
    """Measure ``f(roll(x, d))`` against ``roll(f(x), d / stride)`` for circular shifts d: the worst sample.

    Default shifts: (s, 0), (0, s), (s, s), (-2s, 3s) with s the stride; the stride is inferred from the
    output size unless given. Shifts that are not multiples of the stride are not representable: an
    :class:`~shiftlab.errors.InputError` (:class:`~shiftlab.errors.ArgumentShapeError`, also a ``ShapeError``).

    Returns:
        :class:`WorstShift`: the largest per-sample ``||f(T x) - T' f(x)|| / ||T' f(x)||`` and its shift.

    Shape:
        Input: x (B, C, H, W); f(x) (B, C', H/s, W/s).
    """
    y = _apply(f, _checked_input(x))
    check_bchw(y, "f(x)")
    sy, sx = _inferred_stride(x, y) if stride is None else _check_stride(stride)
    errors = []
    for dy, dx in _shifts(shifts, (sy, sx)):
        if dy % sy or dx % sx:
            raise ArgumentShapeError(f"shift ({dy}, {dx}) is not a multiple of the stride ({sy}, {sx}); "
                                     "T' is undefined")
        y_t = _shifted_output(f, x, (dy, dx), y)
        check_bchw(y_t, "f(T x)")
        errors.append((float(relative_errors(*equivariance_stats(y, y_t, dy // sy, dx // sx)[:2]).max()), (dy, dx)))
    return _worst(errors, (sy, sx), y.dtype)


def shift_invariance_error(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                           shifts: Sequence[tuple[int, int]] | None = None) -> WorstShift:
    """Measure ``f(roll(x, d))`` against ``f(x)`` for circular shifts d: the worst sample.

    Default shifts: (1, 0), (0, 1), (1, 1), (-2, 3). Maps are compared whole, not pooled.

    Returns:
        :class:`WorstShift`: the largest per-sample ``||f(T x) - f(x)|| / ||f(x)||`` and its shift.

    Shape:
        Input: x (B, C, H, W); f(x) (B, ...) of any shape.
    """
    y = _apply(f, _checked_input(x))
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise ShapeError(f"f(x) must keep the batch dimension {x.shape[0]}, got shape {tuple(y.shape)}")
    flat = y.reshape(y.shape[0], -1)
    errors = []
    for dy, dx in _shifts(shifts, (1, 1)):
        y_t = _shifted_output(f, x, (dy, dx), y).reshape(flat.shape)
        errors.append((float(relative_errors(*invariance_stats(flat, y_t)).max()), (dy, dx)))
    return _worst(errors, (1, 1), y.dtype)


def _tolerance(measured: WorstShift, rtol: float | None) -> float:
    if rtol is not None:
        return float(rtol)
    return tolerance(getattr(torch, measured.dtype.removeprefix("torch.")))


def assert_shift_equivariant(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                             shifts: Sequence[tuple[int, int]] | None = None,
                             stride: int | tuple[int, int] | None = None, rtol: float | None = None) -> WorstShift:
    """Assert ``f(roll(x, d)) == roll(f(x), d / stride)`` for circular shifts d, up to a dtype tolerance.

    Measures with :func:`shift_equivariance_error` (arguments as there) and returns what it measured, the
    :class:`WorstShift` (the rule of every shiftlab ``assert_*``: the measure function's value). Its
    ``rel_error`` must not exceed ``rtol`` (default: ``tolerance(output dtype)``). This function's frame is
    hidden from pytest tracebacks.

    Raises:
        AssertionError: naming the worst shift and its measured error.

    Shape:
        Input: x (B, C, H, W); f(x) (B, C', H/s, W/s).
    """
    __tracebackhide__ = True
    measured = shift_equivariance_error(f, x, shifts, stride)
    tol = _tolerance(measured, rtol)
    if not measured.rel_error <= tol:
        raise AssertionError(f"not shift-equivariant: relative error {measured.rel_error:.3g} for shift "
                             f"{measured.shift} (stride {measured.stride}) exceeds the tolerance {tol:.1g} for "
                             f"{measured.dtype}")
    return measured


def assert_shift_invariant(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                           shifts: Sequence[tuple[int, int]] | None = None, rtol: float | None = None) -> WorstShift:
    """Assert ``f(roll(x, d)) == f(x)`` for circular shifts d, up to a dtype tolerance.

    Measures with :func:`shift_invariance_error` (arguments as there) and returns what it measured, the
    :class:`WorstShift` (the rule of every shiftlab ``assert_*``). Its ``rel_error`` must not exceed ``rtol``
    (default: ``tolerance(output dtype)``). This function's frame is hidden from pytest tracebacks.

    Raises:
        AssertionError: naming the worst shift and its measured error.

    Shape:
        Input: x (B, C, H, W); f(x) (B, ...) of any shape (maps are compared whole, not pooled).
    """
    __tracebackhide__ = True
    measured = shift_invariance_error(f, x, shifts)
    tol = _tolerance(measured, rtol)
    if not measured.rel_error <= tol:
        raise AssertionError(f"not shift-invariant: relative error {measured.rel_error:.3g} for shift "
                             f"{measured.shift} exceeds the tolerance {tol:.1g} for {measured.dtype}")
    return measured
