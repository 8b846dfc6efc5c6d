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

Fractional shifts (``shifts="subpixel:N"``, every ``(i/N, j/N)`` with ``0 <= i, j < N`` as the audit protocol of
that name, or a list of ``(dy, dx)`` floats) are certified on band-limited inputs: the random inputs lose their
Nyquist bins (:func:`shiftlab.layers.band_limit`, ``band_limit = 1.0`` of Nyquist in the result), so that the
Fourier shift (:func:`shiftlab.transforms.fourier_shift`) is an exact group action on them, and the shifted copies
are made by that shift. A network built only of circular stride-1 convolutions and the alias-free layers of
:mod:`shiftlab.layers.alias_free`, ending in a global average pool, gives the same logits under every such shift;
any pointwise non-linearity on the sampled grid (ReLU, GELU) or any subsampling that folds frequencies (a stride,
BlurPool, APS) does not, and fails by far more than the tolerance. The tolerance of a fractional certificate is
:func:`fractional_tolerance`: ten times the integer one (1e-9 relative in float64, 1e-4 in float32), because the
shifted copy is made by an FFT and every alias-free layer adds two to four FFTs, each with a relative round-off
of about ``eps * log2(H W)`` (~1e-14 in float64 at 32x32). Measured at 16x16 and 32x32 on the test network and on
:func:`shiftlab.models.alias_free_resnet` / ``alias_free_convnext``, the alias-free deviations stay at or below
1e-15 (six orders under 1e-9), while the same networks with APS, BlurPool, strided subsampling or a GELU move the
logits by 2e-3 or more. Models that are not circular are still measured, and simply fail.
"""

from __future__ import annotations

import torch
from torch import nn

from shiftlab.fix.certify_dense import certify_dense_setup, is_dense_output
from shiftlab.fix.certify_setup import (CertifyResult, _check_arguments, _measure, _plan_shifts, _random_inputs,
                                        _verdict, fractional_tolerance, period_shifts, subpixel_shifts)

__all__ = ["CertifyResult", "certify", "assert_certified", "period_shifts", "subpixel_shifts", "fractional_tolerance"]


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
    shift and the outputs compared with the unshifted outputs. For fractional shifts the inputs are band-limited
    (:func:`shiftlab.layers.band_limit`) and moved by :func:`shiftlab.transforms.fourier_shift`, and the tolerance
    is :func:`fractional_tolerance` (1e-9 relative in float64; see the module's docstring for why).

    Args:
        model: a module returning one tensor (logits (B, K) for a classifier).
        input_size: ``H`` or ``(H, W)``; use a multiple of the total stride (APS needs it).
        shifts: ``"period"`` (every ``(dy, dx)`` in ``[0, s)^2``, s the total stride: 1023 shifts for s = 32),
            an int n (the odd shift (1, 1) and n - 1 others drawn from that period with ``seed``),
            ``"subpixel:N"`` (every fractional ``(i/N, j/N)``, ``0 <= i, j < N``, but ``(0, 0)``: N * N - 1 shifts;
            N >= 2), or an explicit list of ``(dy, dx)``: integer pairs are rolls, a list holding any float is
            fractional.
        n_inputs: random inputs per shift.
        batch: images per forward pass (shifts are batched).
        dtype: float64 to test exactness; float32 to see what deployment gets.
        seed: seeds the inputs and the shift sample.
        channels: input channels; by default the first ``Conv2d``'s ``in_channels``.
        device: where to run; by default where the model is.
        progress: show a progress bar on stderr.

    Returns:
        :class:`CertifyResult`; ``result.passed`` applies the dtype's tolerance (for fractional shifts,
        :func:`fractional_tolerance`) and is False whenever an output holds NaN or Inf (``result.reason`` says so).
        ``result.shift_kind``, ``subpixel``, ``fractional_shifts`` and ``band_limit`` say what was shifted.

    Raises:
        InputError: a bad model, shifts (``subpixel:0``, ``subpixel:x``, a non-number or non-finite shift, ...),
            ``n_inputs``, ``batch``, ``seed``, ``channels``, ``dtype`` or
            ``input_size`` (the last two as :class:`~shiftlab.errors.ArgumentShapeError`, also a ``ShapeError``).

    Shape:
        - Random inputs: (n_inputs, C, H, W); shifted batches: (batch, C, H, W).
        - Output: any shape with batch first; deviations are taken over all non-batch entries. A dense output
          (B, K, H', W') with ``H' * W' > 1`` is certified for equivariance instead, ``f(roll(x, d)) =
          roll(f(x), d / o)`` (:mod:`shiftlab.fix.certify_dense`; ``result.output_stride`` is ``o``).

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
    total_stride, plan = _plan_shifts(setup, shifts)
    if plan.kind == "integer":  # a dense output (B, K, H', W') must move with the input: shiftlab.fix.certify_dense
        with torch.inference_mode():
            probe = setup.net(_random_inputs(setup)[:1].to(setup.dtype))
        if is_dense_output(probe):
            return certify_dense_setup(setup, plan, total_stride, probe, progress)
    deviations = _measure(setup, plan, progress)
    return _verdict(setup, deviations, total_stride, plan)


def assert_certified(model: nn.Module, input_size, shifts="period", *, rtol: float | None = None,
                     **kwargs) -> CertifyResult:
    """Raise ``AssertionError`` unless ``model`` is invariant to circular (integer or fractional) shifts within
    ``rtol``.

    Measures with :func:`certify` (other keyword arguments go to it) and returns what it measured, the
    :class:`CertifyResult`, when it passes (the rule of every shiftlab ``assert_*``: the measure function's value).
    ``rtol`` defaults to the result's tolerance (1e-10 relative in float64; 1e-9 for fractional shifts). The
    message of a failure gives the measured relative deviation. This function's frame is hidden from pytest tracebacks.

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
            f"not invariant to {'fractional ' if result.shift_kind == 'fractional' else ''}circular shifts: "
            f"relative deviation {result.max_rel_deviation:.3g} > {limit:.3g} "
            f"at shift {result.worst_shift} ({result.shifts_checked} shifts, {result.dtype}, "
            f"total stride {result.total_stride[0]}x{result.total_stride[1]})")
    return result
