"""Certify exact invariance to circular shifts: the proof that a conversion worked.

A network whose every subsampling is adaptive (APS) and whose every padding is circular, ending in global
pooling, is exactly invariant to circular integer shifts of its input: f(roll(x, (dy, dx))) = f(x). Because
the shifts of one period of the total stride s, (dy, dx) in [0, s)^2, include the generators (1, 0) and (0, 1)
of all circular shifts, checking them on random inputs is the strongest finite test of that claim; any
non-adaptive subsampling fails it at the odd shifts.

:func:`certify` measures the largest deviation; :func:`assert_certified` applies the dtype's tolerance
(1e-10 relative in float64, 1e-5 in float32).

A model whose output holds NaN or Inf (for the unshifted or any shifted input) is never certified: the
deviations of such outputs mean nothing (NaN compares false with everything), so the result then reports
infinite deviations, the count of non-finite values and a ``reason``, and ``passed`` is False. Nor is a
nondeterministic model (dropout left on, noise in ``forward``): the unshifted input is run twice, and when the two
outputs differ beyond the tolerance, ``reason`` says so instead of blaming the shifts.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from shiftlab._checks import FLOAT_DTYPES, check_int, tolerance
from shiftlab._progress import track
from shiftlab.errors import ArgumentShapeError, InputError
from shiftlab.measure.inspect import input_channels, inspect
from shiftlab.models.preprocessing import check_input_size

__all__ = ["CertifyResult", "certify", "assert_certified", "period_shifts"]


@dataclass(frozen=True)
class CertifyResult:
    """How far a model's output moves under circular shifts of its input.

    Attributes:
        max_abs_deviation: max over inputs, shifts and outputs of ``|f(roll(x, s)) - f(x)|``.
        max_rel_deviation: max over inputs and shifts of ``max|f(roll(x, s)) - f(x)| / max|f(x)|``.
        worst_shift: the ``(dy, dx)`` giving ``max_rel_deviation`` (``None`` if no shift was checked).
        shifts_checked: how many shifts were checked (the zero shift is the reference, not counted).
        total_stride: ``(sy, sx)``, the model's total stride found by :func:`shiftlab.inspect`.
        input_size: ``(H, W)`` of the random inputs.
        n_inputs: how many random inputs each shift was applied to.
        dtype: the dtype the model and inputs were cast to (``"float64"``).
        tolerance: the relative tolerance of that dtype (1e-10 for float64, 1e-5 for float32).
        full_period: whether every shift of one period was checked.
        non_finite: how many output values were NaN or Inf (unshifted and shifted inputs); any makes
            the deviations infinite and the certification fail.
        nondeterminism: max relative difference between two passes of the same unshifted inputs; above
            ``tolerance`` the model is ``nondeterministic`` and not certified.
    """

    max_abs_deviation: float
    max_rel_deviation: float
    worst_shift: tuple[int, int] | None
    shifts_checked: int
    total_stride: tuple[int, int]
    input_size: tuple[int, int]
    n_inputs: int
    dtype: str
    tolerance: float
    full_period: bool
    non_finite: int = 0
    nondeterminism: float = 0.0

    @property
    def nondeterministic(self) -> bool:
        """Whether two passes of the same unshifted input gave outputs further apart than the tolerance."""
        return not self.nondeterminism <= self.tolerance

    @property
    def passed(self) -> bool:
        """Whether every output was finite, the model deterministic and ``max_rel_deviation`` within the dtype's
        tolerance."""
        return self.non_finite == 0 and not self.nondeterministic and self.max_rel_deviation <= self.tolerance

    @property
    def reason(self) -> str | None:
        """Why the certification failed, in one line; None if it passed."""
        if self.non_finite:
            return (f"the model's output holds {self.non_finite} NaN or Inf value(s) on random {self.dtype} inputs; "
                    "a model with non-finite outputs cannot be certified")
        if self.nondeterministic:
            return (f"the model is nondeterministic: two passes of the same unshifted input differ by "
                    f"{self.nondeterminism:.3g} (relative; dropout left on, or noise in forward), so the deviations "
                    f"under shifts measure its randomness, not aliasing")
        if not self.passed:
            return (f"relative deviation {self.max_rel_deviation:.3g} > {self.tolerance:.3g} at shift "
                    f"{self.worst_shift}")
        return None

    def to_dict(self) -> dict:
        """The fields, ``passed`` and ``reason``, JSON-ready (infinite deviations become None)."""
        d = asdict(self)
        d["passed"] = self.passed
        d["reason"] = self.reason
        d["nondeterministic"] = self.nondeterministic
        for key in ("max_abs_deviation", "max_rel_deviation", "nondeterminism"):
            if not math.isfinite(d[key]):
                d[key] = None
        for key in ("worst_shift", "total_stride", "input_size"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


def period_shifts(total_stride, include_zero: bool = False) -> torch.Tensor:
    """Every shift of one period of the total stride: all ``(dy, dx)`` in ``[0, sy) x [0, sx)``.

    A stride of 1 along an axis (no subsampling) counts as 2 there, so every axis gets a shift of 1: a network
    without subsampling is checked at (0, 1), (1, 0) and (1, 1).

    Returns:
        int64 tensor (N, 2), row-major, without ``(0, 0)`` unless ``include_zero``.
    """
    sy, sx = (total_stride, total_stride) if isinstance(total_stride, int) else total_stride
    sy, sx = max(int(sy), 2), max(int(sx), 2)
    grid = torch.stack(torch.meshgrid(torch.arange(sy), torch.arange(sx), indexing="ij"), dim=-1).reshape(-1, 2)
    return grid if include_zero else grid[1:]


def _parse_shifts(shifts, total_stride, seed: int) -> tuple[torch.Tensor, bool]:
    period = period_shifts(total_stride)
    if isinstance(shifts, str):
        if shifts != "period":
            raise InputError(f"shifts must be 'period', an int sample size or a list of (dy, dx); got {shifts!r}")
        return period, True
    if isinstance(shifts, bool):
        raise InputError("shifts must be 'period', an int sample size or a list of (dy, dx), not a bool")
    if isinstance(shifts, int):
        if shifts < 1:
            raise InputError(f"the number of sampled shifts must be at least 1, got {shifts}")
        if shifts >= len(period):
            return period, True
        # the odd shift (1, 1) always, then a seeded uniform sample of the rest of the period
        is_one_one = (period == torch.tensor([1, 1])).all(dim=1)
        rest = period[~is_one_one]
        order = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[: shifts - 1]
        return torch.cat([period[is_one_one], rest[order.sort().values]]), False
    try:
        table = torch.as_tensor(shifts)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"shifts must be a list of (dy, dx) integer pairs, got {shifts!r}") from None
    if table.ndim != 2 or table.shape[1] != 2 or table.shape[0] == 0 or table.is_floating_point():
        raise InputError(f"shifts must be a non-empty list of (dy, dx) integer pairs, got shape {tuple(table.shape)}")
    return table.to(torch.int64), False


def _roll_per_sample(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """``torch.roll(x[b], (dy[b], dx[b]), (-2, -1))`` for every sample b at once."""
    B, C, H, W = x.shape
    rows = (torch.arange(H, device=x.device)[None, :] - dy[:, None]) % H
    cols = (torch.arange(W, device=x.device)[None, :] - dx[:, None]) % W
    x = x.gather(2, rows[:, None, :, None].expand(B, C, H, W))
    return x.gather(3, cols[:, None, None, :].expand(B, C, H, W))


def _as_output(out) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise InputError(f"certify needs a model that returns one tensor, got {type(out).__name__}")
    return out


def _count_non_finite(out: torch.Tensor) -> int:
    return int((~torch.isfinite(out)).sum())


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def refuse_learned_invariance(model: nn.Module) -> None:
    """Refuse (InputError) a model whose subsampling is TIPS: its invariance is learned, not guaranteed, so an
    exactness certificate is not what it claims; it is measured (``shiftlab audit``) instead."""
    from shiftlab.layers import TIPSPool2d

    tips = [name for name, m in model.named_modules() if isinstance(m, TIPSPool2d)]
    if tips:
        raise InputError(f"the model subsamples with TIPS ({tips[0]}{', ...' if len(tips) > 1 else ''}), whose "
                         "invariance is learned, not guaranteed: certify proves exact invariance and makes no claim "
                         "for it; measure it with shiftlab audit --transform circular:32:8 (and crop:...)")


@dataclass(frozen=True)
class _Setup:
    """The checked arguments of :func:`certify`, with the copy of the model it runs (cast, in eval mode)."""

    net: nn.Module
    size: tuple[int, int]
    channels: int
    device: torch.device
    dtype: torch.dtype
    n_inputs: int
    batch: int
    seed: int


@dataclass(frozen=True)
class _Deviations:
    """What :func:`_measure` found over every shift: the worst deviations, and the two guards."""

    max_abs: float
    max_rel: float
    worst_shift: tuple[int, int] | None
    non_finite: int
    nondeterminism: float


def _check_arguments(model, input_size, *, dtype, n_inputs, batch, seed, channels, device) -> _Setup:
    """Check :func:`certify`'s arguments (InputError for each bad value) and make the model's copy to run."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    refuse_learned_invariance(model)
    if dtype not in FLOAT_DTYPES:
        raise ArgumentShapeError(f"dtype must be a floating dtype, got {dtype}")
    n_inputs, batch = check_int("n_inputs", n_inputs, 1), check_int("batch", batch, 1)
    seed = check_int("seed", seed, 0)
    size = check_input_size(input_size, "input_size", error=ArgumentShapeError)
    channels = input_channels(model) if channels is None else check_int("channels", channels, 1)
    device = _model_device(model) if device is None else torch.device(device)
    net = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    return _Setup(net, size, channels, device, dtype, n_inputs, batch, seed)


def _plan_shifts(setup: _Setup, shifts) -> tuple[tuple[int, int], torch.Tensor, bool]:
    """The model's total stride (by :func:`shiftlab.inspect`), the (N, 2) table of shifts to check, and whether
    it is a whole period."""
    total_stride = inspect(setup.net, setup.size, channels=setup.channels).total_stride
    table, full_period = _parse_shifts(shifts, total_stride, setup.seed)
    return total_stride, table, full_period


def _random_inputs(setup: _Setup) -> torch.Tensor:
    """``n_inputs`` seeded standard-normal inputs (drawn in float64 on the CPU, the same on every device)."""
    generator = torch.Generator().manual_seed(setup.seed)
    x = torch.randn(setup.n_inputs, setup.channels, *setup.size, generator=generator, dtype=torch.float64)
    return x.to(setup.device, setup.dtype)


def _reference_outputs(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """The unshifted outputs (n, -1) in float64, their per-input scale, the count of non-finite values, and the
    nondeterminism: the unshifted input runs twice, as a model that is not a function of its input cannot be
    certified."""
    n = x.shape[0]
    reference = _as_output(net(x)).reshape(n, -1).to(torch.float64)
    non_finite = _count_non_finite(reference)
    again = _as_output(net(x)).reshape(n, -1).to(torch.float64)
    scale = reference.abs().amax(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    nondeterminism = float(((again - reference).abs().amax(dim=1) / scale).max()) if not non_finite else 0.0
    return reference, scale, non_finite, nondeterminism


def _measure(setup: _Setup, table: torch.Tensor, progress: bool) -> _Deviations:
    """Roll the random inputs by every shift of ``table`` (batched) and find the largest output deviations."""
    x = _random_inputs(setup)
    n = x.shape[0]
    worst_abs, worst_rel, worst_shift = 0.0, -1.0, None
    with torch.inference_mode():
        reference, scale, non_finite, nondeterminism = _reference_outputs(setup.net, x)
        chunks = list(torch.split(table, max(1, setup.batch // n)))
        for chunk in track(chunks, "certifying shifts", total=len(chunks), enabled=progress):
            k = chunk.shape[0]
            dy = chunk[:, 0].repeat_interleave(n).to(setup.device)
            dx = chunk[:, 1].repeat_interleave(n).to(setup.device)
            out = _as_output(setup.net(_roll_per_sample(x.repeat(k, 1, 1, 1), dy, dx)))
            out = out.reshape(k, n, -1).to(torch.float64)
            non_finite += _count_non_finite(out)
            deviation = (out - reference[None]).abs().amax(dim=2)  # (k, n)
            relative = (deviation / scale[None]).amax(dim=1)  # (k,)
            worst_abs = max(worst_abs, float(deviation.max()))
            i = int(relative.argmax())
            if float(relative[i]) > worst_rel:
                worst_rel, worst_shift = float(relative[i]), (int(chunk[i, 0]), int(chunk[i, 1]))
    return _Deviations(worst_abs, max(worst_rel, 0.0), worst_shift, non_finite, nondeterminism)


def _verdict(setup: _Setup, found: _Deviations, total_stride, *, shifts_checked: int,
             full_period: bool) -> CertifyResult:
    """The :class:`CertifyResult`; NaN would compare false with every tolerance, so a model with non-finite
    outputs gets unbounded deviations."""
    unbounded = found.non_finite > 0
    return CertifyResult(
        max_abs_deviation=math.inf if unbounded else found.max_abs,
        max_rel_deviation=math.inf if unbounded else found.max_rel,
        worst_shift=found.worst_shift,
        shifts_checked=shifts_checked,
        total_stride=tuple(int(s) for s in total_stride),
        input_size=setup.size,
        n_inputs=setup.n_inputs,
        dtype=str(setup.dtype).removeprefix("torch."),
        tolerance=tolerance(setup.dtype),
        full_period=full_period,
        non_finite=found.non_finite,
        nondeterminism=found.nondeterminism,
    )


def certify(
    model: nn.Module,
    input_size,
    shifts="period",
    *,
    n_inputs: int = 2,
    batch: int = 16,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    channels: int | None = None,
    device=None,
    progress: bool = False,
) -> CertifyResult:
    """Measure how far a model's output moves under circular shifts of random inputs.

    The model is deep-copied, cast to ``dtype``, put in eval mode and run under ``torch.inference_mode``;
    the caller's model is not changed. ``n_inputs`` standard-normal inputs (seeded) are each rolled by every
    shift and the outputs compared with the unshifted outputs.

    Args:
        model: a module returning one tensor (logits (B, K) for a classifier).
        input_size: ``H`` or ``(H, W)``; use a multiple of the total stride (APS needs it).
        shifts: ``"period"`` (every ``(dy, dx)`` in ``[0, s)^2``, s the total stride: 1023 shifts for s = 32),
            an int n (the odd shift (1, 1) and n - 1 others drawn from that period with ``seed``), or an
            explicit list of ``(dy, dx)``.
        n_inputs: random inputs per shift.
        batch: images per forward pass (shifts are batched).
        dtype: float64 to test exactness; float32 to see what deployment gets.
        seed: seeds the inputs and the shift sample.
        channels: input channels; by default the first ``Conv2d``'s ``in_channels``.
        device: where to run; by default where the model is.
        progress: show a progress bar on stderr.

    Returns:
        :class:`CertifyResult`; ``result.passed`` applies the dtype's tolerance and is False whenever an
        output holds NaN or Inf (``result.reason`` says so).

    Raises:
        InputError: a bad model, shifts, ``n_inputs``, ``batch``, ``seed``, ``channels``, ``dtype`` or
            ``input_size`` (the last two as :class:`~shiftlab.errors.ArgumentShapeError`, also a ``ShapeError``).

    Shape:
        - Random inputs: (n_inputs, C, H, W); shifted batches: (batch, C, H, W).
        - Output: any shape with batch first; deviations are taken over all non-batch entries.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> result = certify(net, (8, 8))
        >>> result.shifts_checked, result.passed
        (3, True)
    """
    setup = _check_arguments(model, input_size, dtype=dtype, n_inputs=n_inputs, batch=batch, seed=seed,
                             channels=channels, device=device)
    total_stride, table, full_period = _plan_shifts(setup, shifts)
    deviations = _measure(setup, table, progress)
    return _verdict(setup, deviations, total_stride, shifts_checked=int(table.shape[0]), full_period=full_period)


def assert_certified(model: nn.Module, input_size, shifts="period", *, rtol: float | None = None,
                     **kwargs) -> CertifyResult:
    """Raise ``AssertionError`` unless ``model`` is invariant to circular shifts within ``rtol``.

    Measures with :func:`certify` (other keyword arguments go to it) and returns what it measured, the
    :class:`CertifyResult`, when it passes (the rule of every shiftlab ``assert_*``: the measure function's value).
    ``rtol`` defaults to the dtype's tolerance (1e-10 relative in float64). The message of a failure gives the
    measured relative deviation. This function's frame is hidden from pytest tracebacks.

    Shape:
        - As :func:`certify`.
    """
    __tracebackhide__ = True
    result = certify(model, input_size, shifts, **kwargs)
    limit = result.tolerance if rtol is None else float(rtol)
    if result.non_finite or result.nondeterministic:
        raise AssertionError(f"not certified: {result.reason}")
    if not result.max_rel_deviation <= limit:
        raise AssertionError(
            f"not invariant to circular shifts: relative deviation {result.max_rel_deviation:.3g} > {limit:.3g} "
            f"at shift {result.worst_shift} ({result.shifts_checked} shifts, {result.dtype}, "
            f"total stride {result.total_stride[0]}x{result.total_stride[1]})")
    return result
