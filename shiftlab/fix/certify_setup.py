"""The parts of a float64 certificate (:func:`shiftlab.fix.certify.certify`): its result, the shift tables, the
checked arguments, the random inputs, the measured deviations and the verdict; shared by the classifier check
(:mod:`shiftlab.fix.certify`) and the dense one (:mod:`shiftlab.fix.certify_dense`)."""

from __future__ import annotations
import copy
import math
from dataclasses import asdict, dataclass
import torch
from torch import nn
from shiftlab._checks import FLOAT_DTYPES, check_int, tolerance
from shiftlab._progress import track
from shiftlab.errors import ArgumentShapeError, InputError
from shiftlab.fix.recipe import conversion_of
from shiftlab.layers import band_limit
from shiftlab.measure.inspect import input_channels, inspect
from shiftlab.models.preprocessing import check_input_size
from shiftlab.transforms import fourier_shift

__all__ = ["CertifyResult", "period_shifts", "subpixel_shifts", "fractional_tolerance", "refuse_learned_invariance"]

_SHIFTS_FORMS = "'period', 'subpixel:N', an int sample size or a list of (dy, dx) pairs (ints, or floats)"


def fractional_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of a fractional-shift certificate: ten times :func:`shiftlab._checks.tolerance`
    (1e-9 in float64, 1e-4 in float32), room for the FFT round-off of the shift and of the alias-free layers."""
    return 10 * tolerance(dtype)


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
        shift_kind: ``"integer"`` (circular rolls of standard-normal inputs) or ``"fractional"`` (Fourier shifts of
            band-limited inputs; ``worst_shift`` is then a pair of floats and ``full_period`` False).
        subpixel: ``N`` of ``shifts="subpixel:N"`` (the grid of every ``(i/N, j/N)``), else None.
        fractional_shifts: the ``(dy, dx)`` floats of an explicit fractional list, else None.
        band_limit: the random inputs' band limit as a fraction of the Nyquist frequency (1.0: every bin below
            Nyquist kept, the Nyquist bins removed) for fractional shifts; None for integer shifts, whose inputs
            are not band-limited.
        output_stride: for a dense output (B, K, H', W'), ``H / H'``: the output was compared with the unshifted
            output rolled by ``shift / output_stride`` (equivariance, :mod:`shiftlab.fix.certify_dense`); None for
            an invariance certificate.
        patch_size: for a transformer converted by :func:`shiftlab.antialias` (polyphase tokenization), its patch
            size ``p`` from the model's recipe: ``total_stride`` should be ``(p, p)``, and ``shifts="period"`` then
            checks all ``p x p`` offsets; None for other models.

    JSON (:meth:`to_dict`): every field above (pairs as lists, infinite deviations as null), with ``passed``,
    ``reason`` and ``nondeterministic``; the fields ``shift_kind``, ``subpixel``, ``fractional_shifts`` and
    ``band_limit`` were added for fractional shifts and are ``"integer"``, null, null, null otherwise.
    """

    max_abs_deviation: float
    max_rel_deviation: float
    worst_shift: tuple[int, int] | tuple[float, float] | None
    shifts_checked: int
    total_stride: tuple[int, int]
    input_size: tuple[int, int]
    n_inputs: int
    dtype: str
    tolerance: float
    full_period: bool
    non_finite: int = 0
    nondeterminism: float = 0.0
    shift_kind: str = "integer"
    subpixel: int | None = None
    fractional_shifts: tuple[tuple[float, float], ...] | None = None
    band_limit: float | None = None
    output_stride: int | None = None
    patch_size: int | None = None

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
            kind = " (fractional)" if self.shift_kind == "fractional" else ""
            return (f"relative deviation {self.max_rel_deviation:.3g} > {self.tolerance:.3g} at shift "
                    f"{self.worst_shift}{kind}")
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
        if d["fractional_shifts"] is not None:
            d["fractional_shifts"] = [list(pair) for pair in d["fractional_shifts"]]
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


def subpixel_shifts(n: int, include_zero: bool = False) -> torch.Tensor:
    """Every fractional shift of the ``subpixel:N`` grid: all ``(i / n, j / n)`` with ``0 <= i, j < n``.

    Returns:
        float64 tensor (n * n, 2), row-major, without ``(0, 0)`` unless ``include_zero``.

    >>> subpixel_shifts(2).tolist()
    [[0.0, 0.5], [0.5, 0.0], [0.5, 0.5]]
    """
    n = check_int("n", n, 1)
    steps = torch.arange(n, dtype=torch.float64) / n
    grid = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1).reshape(-1, 2)
    return grid if include_zero else grid[1:]


@dataclass(frozen=True)
class _ShiftPlan:
    """The shifts :func:`certify` checks: an (N, 2) table (int64 rolls, or float64 fractional shifts) and what
    the result records about them."""

    table: torch.Tensor
    full_period: bool
    kind: str = "integer"
    subpixel: int | None = None
    listed: tuple[tuple[float, float], ...] | None = None


def _parse_subpixel(text: str) -> _ShiftPlan:
    """``"subpixel:N"`` -> every (i/N, j/N) but (0, 0); N a whole number of at least 2."""
    value = text.removeprefix("subpixel:")
    if not value.strip().isdigit():
        raise InputError(f"shifts 'subpixel:N' needs a whole number N >= 2 (the grid of (i/N, j/N)), got {text!r}")
    n = int(value)
    if n < 2:
        raise InputError(f"shifts 'subpixel:N' needs N >= 2 (N = {n} has no shift besides (0, 0)), got {text!r}")
    return _ShiftPlan(subpixel_shifts(n), False, "fractional", subpixel=n)


def _parse_table(shifts) -> _ShiftPlan:
    """An explicit list of (dy, dx): integer pairs are rolls, any float makes the list fractional."""
    try:
        table = torch.as_tensor(shifts)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"shifts must be a list of (dy, dx) number pairs, got {shifts!r}") from None
    if table.ndim != 2 or table.shape[1] != 2 or table.shape[0] == 0:
        raise InputError(f"shifts must be a non-empty list of (dy, dx) number pairs, got shape {tuple(table.shape)}")
    if table.dtype == torch.bool or table.is_complex():
        raise InputError(f"shifts must be real numbers (dy, dx), got {table.dtype}")
    if not table.is_floating_point():
        return _ShiftPlan(table.to(torch.int64), False)
    # a Python list of floats would become float32 (the default dtype): read it again in float64, as given
    table = table.to(torch.float64) if isinstance(shifts, torch.Tensor) else torch.as_tensor(shifts,
                                                                                               dtype=torch.float64)
    if not bool(torch.isfinite(table).all()):
        raise InputError(f"fractional shifts must be finite numbers, got {shifts!r}")
    listed = tuple((float(dy), float(dx)) for dy, dx in table.tolist())
    return _ShiftPlan(table, False, "fractional", listed=listed)


def _parse_shifts(shifts, total_stride, seed: int) -> _ShiftPlan:
    period = period_shifts(total_stride)
    if isinstance(shifts, str):
        if shifts.startswith("subpixel:"):
            return _parse_subpixel(shifts)
        if shifts != "period":
            raise InputError(f"shifts must be {_SHIFTS_FORMS}; got {shifts!r}")
        return _ShiftPlan(period, True)
    if isinstance(shifts, bool):
        raise InputError(f"shifts must be {_SHIFTS_FORMS}, not a bool")
    if isinstance(shifts, int):
        if shifts < 1:
            raise InputError(f"the number of sampled shifts must be at least 1, got {shifts}")
        if shifts >= len(period):
            return _ShiftPlan(period, True)
        # the odd shift (1, 1) always, then a seeded uniform sample of the rest of the period
        is_one_one = (period == torch.tensor([1, 1])).all(dim=1)
        rest = period[~is_one_one]
        order = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[: shifts - 1]
        return _ShiftPlan(torch.cat([period[is_one_one], rest[order.sort().values]]), False)
    return _parse_table(shifts)


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


def _plan_shifts(setup: _Setup, shifts) -> tuple[tuple[int, int], _ShiftPlan]:
    """The model's total stride (by :func:`shiftlab.inspect`) and the shifts to check."""
    total_stride = inspect(setup.net, setup.size, channels=setup.channels).total_stride
    return total_stride, _parse_shifts(shifts, total_stride, setup.seed)


def _random_inputs(setup: _Setup, band_limited: bool = False) -> torch.Tensor:
    """``n_inputs`` seeded standard-normal inputs, drawn in float64 on the CPU (the same on every device), without
    their Nyquist bins when ``band_limited``; returned in float64 on the device (cast after shifting)."""
    generator = torch.Generator().manual_seed(setup.seed)
    x = torch.randn(setup.n_inputs, setup.channels, *setup.size, generator=generator, dtype=torch.float64)
    return (band_limit(x) if band_limited else x).to(setup.device)


def _shifted(x: torch.Tensor, chunk: torch.Tensor, fractional: bool) -> torch.Tensor:
    """Every input of ``x`` (n, C, H, W) moved by every shift of ``chunk`` (k, 2), shift-major: (k * n, C, H, W);
    a Fourier shift for fractional shifts, else an exact roll."""
    n, k = x.shape[0], chunk.shape[0]
    dy = chunk[:, 0].repeat_interleave(n).to(x.device)
    dx = chunk[:, 1].repeat_interleave(n).to(x.device)
    many = x.repeat(k, 1, 1, 1)
    return fourier_shift(many, dy, dx) if fractional else _roll_per_sample(many, dy, dx)


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


def _measure(setup: _Setup, plan: _ShiftPlan, progress: bool) -> _Deviations:
    """Move the random inputs by every shift of the plan (batched) and find the largest output deviations."""
    fractional = plan.kind == "fractional"
    x = _random_inputs(setup, band_limited=fractional)
    n = x.shape[0]
    worst_abs, worst_rel, worst_shift = 0.0, -1.0, None
    with torch.inference_mode():
        reference, scale, non_finite, nondeterminism = _reference_outputs(setup.net, x.to(setup.dtype))
        chunks = list(torch.split(plan.table, max(1, setup.batch // n)))
        for chunk in track(chunks, "certifying shifts", total=len(chunks), enabled=progress):
            k = chunk.shape[0]
            out = _as_output(setup.net(_shifted(x, chunk, fractional).to(setup.dtype)))
            out = out.reshape(k, n, -1).to(torch.float64)
            non_finite += _count_non_finite(out)
            deviation = (out - reference[None]).abs().amax(dim=2)  # (k, n)
            relative = (deviation / scale[None]).amax(dim=1)  # (k,)
            worst_abs = max(worst_abs, float(deviation.max()))
            i = int(relative.argmax())
            if float(relative[i]) > worst_rel:
                number = float if fractional else int
                worst_rel, worst_shift = float(relative[i]), (number(chunk[i, 0]), number(chunk[i, 1]))
    return _Deviations(worst_abs, max(worst_rel, 0.0), worst_shift, non_finite, nondeterminism)


def _verdict(setup: _Setup, found: _Deviations, total_stride, plan: _ShiftPlan) -> CertifyResult:
    """The :class:`CertifyResult`; NaN would compare false with every tolerance, so a model with non-finite
    outputs gets unbounded deviations."""
    unbounded = found.non_finite > 0
    return CertifyResult(
        max_abs_deviation=math.inf if unbounded else found.max_abs,
        max_rel_deviation=math.inf if unbounded else found.max_rel,
        worst_shift=found.worst_shift,
        shifts_checked=int(plan.table.shape[0]),
        total_stride=tuple(int(s) for s in total_stride),
        input_size=setup.size,
        n_inputs=setup.n_inputs,
        dtype=str(setup.dtype).removeprefix("torch."),
        tolerance=fractional_tolerance(setup.dtype) if plan.kind == "fractional" else tolerance(setup.dtype),
        full_period=plan.full_period,
        non_finite=found.non_finite,
        nondeterminism=found.nondeterminism,
        shift_kind=plan.kind,
        subpixel=plan.subpixel,
        fractional_shifts=plan.listed,
        band_limit=1.0 if plan.kind == "fractional" else None,
        patch_size=(conversion_of(setup.net) or {}).get("patch_size"),
    )
