"""Certify exact equivariance of dense outputs: ``f(roll(x, d)) = roll(f(x), d / o)`` for circular shifts.

A segmentation or image-to-image network returns a map (B, K, H', W'), not logits: it should move its output
with its input, not keep it. :func:`shiftlab.certify` hands such models (an integer-shift certificate of a model
whose output is 4-D with a spatial size above 1x1) to :func:`certify_dense`, which compares the output of every
shifted input with the unshifted output rolled by the same shift, scaled by the output stride ``o = H / H'``
(1 for a U-Net, whose output has the input's size). Only shifts that are multiples of ``o`` can be compared; the
checked shifts are those of one period of the total stride ``s`` (every ``(dy, dx)`` in ``[0, s)^2`` that is a
multiple of ``o``; a network without subsampling is checked at (0, 1), (1, 0) and (1, 1)), which include the
generators of every circular shift when ``o = 1``.

Tolerance: the integer certificate's, :func:`shiftlab._checks.tolerance` (1e-10 relative to the largest output in
float64, 1e-5 in float32). Exactness is claimed, so only rounding may differ: a circularly padded convolution of a
rolled map computes each output pixel from the same values in the same order (the deviations measured on a
converted U-Net are 0 to 3e-16), and every adaptive choice is exact (:mod:`shiftlab.layers.aps`). What breaks
exactness fails by orders of magnitude more: zero padding at the border, a strided or fixed-phase subsampling or
upsampling (measured 1e-4 to 1e-2 on a random U-Net), bilinear interpolation, which clamps at the border instead of
wrapping and assumes phase 0 (``F.interpolate``, with or without ``align_corners``), and dilated convolutions with
zero padding, as in torchvision's DeepLabV3 and FCN backbones. Converted by ``antialias(model, "aps",
circular=True)`` (:mod:`shiftlab.fix.segmentation`), torchvision's FCN, DeepLabV3 and LR-ASPP pass: 4e-16 to 2e-14
(``docs/dense.md``, ``benchmarks/record_dense_certify.py``).

The result is a :class:`~shiftlab.fix.certify.CertifyResult` with ``output_stride`` set (None for invariance
certificates).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from shiftlab._progress import track
from shiftlab.errors import InputError
from shiftlab.fix.certify_setup import (
    CertifyResult,
    _as_output,
    _check_arguments,
    _count_non_finite,
    _Deviations,
    _random_inputs,
    _reference_outputs,
    _roll_per_sample,
    _Setup,
    _plan_shifts,
    _ShiftPlan,
    period_shifts,
)
from shiftlab._checks import tolerance

__all__ = ["certify_dense", "is_dense_output", "output_stride"]


def is_dense_output(out) -> bool:
    """Whether a model's output is a dense map: a (B, K, H', W') tensor with ``H' * W' > 1``."""
    return isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-2] * out.shape[-1] > 1


def output_stride(input_size: tuple[int, int], out: torch.Tensor) -> int:
    """``H / H'`` (equal to ``W / W'``), or InputError when the output is not the input's size divided by one
    integer."""
    h, w = input_size
    oh, ow = out.shape[-2:]
    if h % oh or w % ow or h // oh != w // ow:
        raise InputError(f"the dense output {oh}x{ow} is not the input {h}x{w} divided by one integer stride: its "
                         "pixels cannot be matched with the input's after a shift")
    return h // oh


def _dense_shifts(plan: _ShiftPlan, total_stride, stride: int) -> _ShiftPlan:
    """The plan's shifts that are multiples of the output stride (a full period of the total stride if none is)."""
    table = plan.table
    keep = (table % stride == 0).all(dim=1)
    if not bool(keep.any()):
        sy, sx = (max(int(s), 2) * stride for s in total_stride)
        table = period_shifts((sy, sx))
        keep = (table % stride == 0).all(dim=1)
    return _ShiftPlan(table[keep], plan.full_period, "integer")


def _measure_dense(setup: _Setup, plan: _ShiftPlan, stride: int, progress: bool) -> _Deviations:
    """Every input moved by every shift of the plan against the reference output rolled by shift / stride."""
    x = _random_inputs(setup)
    n = x.shape[0]
    worst_abs, worst_rel, worst_shift = 0.0, -1.0, None
    with torch.inference_mode():
        reference, scale, non_finite, nondeterminism = _reference_outputs(setup.net, x.to(setup.dtype))
        maps = _as_output(setup.net(x.to(setup.dtype))).to(torch.float64)
        chunks = list(torch.split(plan.table, max(1, setup.batch // n)))
        for chunk in track(chunks, "certifying shifts", total=len(chunks), enabled=progress):
            k = chunk.shape[0]
            dy, dx = chunk[:, 0].repeat_interleave(n), chunk[:, 1].repeat_interleave(n)
            out = _as_output(setup.net(_roll_per_sample(x.repeat(k, 1, 1, 1), dy.to(x.device), dx.to(x.device))
                                       .to(setup.dtype))).to(torch.float64)
            expected = _roll_per_sample(maps.repeat(k, 1, 1, 1), (dy // stride).to(x.device),
                                        (dx // stride).to(x.device))
            non_finite += _count_non_finite(out)
            deviation = (out - expected).abs().reshape(k, n, -1).amax(dim=2)  # (k, n)
            relative = (deviation / scale[None]).amax(dim=1)
            worst_abs = max(worst_abs, float(deviation.max()))
            i = int(relative.argmax())
            if float(relative[i]) > worst_rel:
                worst_rel, worst_shift = float(relative[i]), (int(chunk[i, 0]), int(chunk[i, 1]))
    return _Deviations(worst_abs, max(worst_rel, 0.0), worst_shift, non_finite, nondeterminism)


def certify_dense_setup(setup: _Setup, plan: _ShiftPlan, total_stride, probe: torch.Tensor,
                        progress: bool = False) -> CertifyResult:
    """:func:`certify_dense` from :func:`shiftlab.certify`'s checked setup, its shift plan and one probe output."""
    stride = output_stride(setup.size, probe)
    plan = _dense_shifts(plan, total_stride, stride)
    found = _measure_dense(setup, plan, stride, progress)
    unbounded = found.non_finite > 0
    return CertifyResult(
        max_abs_deviation=math.inf if unbounded else found.max_abs,
        max_rel_deviation=math.inf if unbounded else found.max_rel,
        worst_shift=found.worst_shift, shifts_checked=int(plan.table.shape[0]),
        total_stride=tuple(int(s) for s in total_stride), input_size=setup.size, n_inputs=setup.n_inputs,
        dtype=str(setup.dtype).removeprefix("torch."), tolerance=tolerance(setup.dtype),
        full_period=plan.full_period and stride == 1, non_finite=found.non_finite,
        nondeterminism=found.nondeterminism, output_stride=stride)


def certify_dense(model: nn.Module, input_size, shifts="period", *, n_inputs: int = 2, batch: int = 16,
                  dtype: torch.dtype = torch.float64, seed: int = 0, channels: int | None = None, device=None,
                  progress: bool = False) -> CertifyResult:
    """Measure how far a dense model's output map is from moving with circular shifts of random inputs.

    The arguments are those of :func:`shiftlab.certify` (integer shifts only), which calls this function for
    models with a dense output. ``result.passed`` applies the dtype's tolerance.

    Shape:
        - Random inputs: (n_inputs, C, H, W). Output: (B, K, H / o, W / o), o the output stride.

    >>> net = torch.nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular")
    >>> r = certify_dense(net, (8, 8)); r.passed, r.output_stride
    (True, 1)
    """

    setup = _check_arguments(model, input_size, dtype=dtype, n_inputs=n_inputs, batch=batch, seed=seed,
                             channels=channels, device=device)
    total_stride, plan = _plan_shifts(setup, shifts)
    if plan.kind != "integer":
        raise InputError("a dense certificate checks integer circular shifts; fractional shifts are for classifiers")
    with torch.inference_mode():
        probe = _as_output(setup.net(_random_inputs(setup)[:1].to(setup.dtype)))
    if not is_dense_output(probe):
        raise InputError(f"certify_dense needs a model whose output is (B, K, H', W') with H' * W' > 1, got shape "
                         f"{tuple(probe.shape)}; use shiftlab.certify")
    return certify_dense_setup(setup, plan, total_stride, probe, progress)
