"""Alias-free layers (shiftlab.layers.alias_free): exact equivariance to fractional circular shifts, in float64.

Every layer is checked against :func:`shiftlab.transforms.fourier_shift` (the shift of the trigonometric
interpolant) on band-limited random maps, for half, quarter, third and seventh pixel shifts and integer ones, on
odd, even and non-square sizes; the same check must fail for the layers that alias (a pointwise GELU or ReLU,
``[::2, ::2]``, BlurPool2d with stride 2, a low-pass that keeps the bin at its cutoff) and for the layer norm on
a map that is not band-limited. Then the definitions (the down/upsampler against the low-pass and slicing, the
activation against its polynomial and GELU, the norm's statistics), gradients, errors and dtypes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from shiftlab.errors import InputError, ShapeError
from shiftlab.layers import (GELU_FIT, AliasFreeActivation, AliasFreeLayerNorm, BlurPool2d, IdealDownsample2d,
                             IdealLowpass2d, IdealUpsample2d, alias_free_activation, alias_free_layer_norm,
                             band_limit, ideal_downsample2d, ideal_lowpass2d, ideal_upsample2d)
from shiftlab.transforms import fourier_shift

F64 = torch.float64
EXACT = 1e-12  # float64 rounding of a few FFTs on maps of unit size is ~1e-15; the controls fail by > 1e-2
SHIFTS = [(0.5, 0.25), (1 / 3, 2 / 7), (0.5, 0.5), (-0.75, 1.2), (1, 2), (-3, 0)]
FRACTIONAL = SHIFTS[:4]
SIZES = [(16, 16), (18, 30), (15, 21), (12, 9)]  # even square, even non-square, odd, mixed


def maps(height, width, seed=0, batch=2, channels=3, device="cpu", dtype=F64):
    """Standard normal maps, not band-limited (even sizes have energy at their Nyquist bins)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, height, width, generator=g, dtype=F64).to(device=device, dtype=dtype)


def band_limited(height, width, seed=0, **kwargs):
    return band_limit(maps(height, width, seed, **kwargs))


def rel_error(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def down_error(layer, x, stride, ty, tx) -> float:
    """A downsampler moved by (ty, tx) when its input moves by stride * (ty, tx)."""
    return rel_error(layer(fourier_shift(x, stride * ty, stride * tx)), fourier_shift(layer(x), ty, tx))


def same_size_error(layer, x, ty, tx) -> float:
    return rel_error(layer(fourier_shift(x, ty, tx)), fourier_shift(layer(x), ty, tx))


def up_error(layer, x, factor, ty, tx) -> float:
    return rel_error(layer(fourier_shift(x, ty, tx)), fourier_shift(layer(x), factor * ty, factor * tx))


# ---- feature: every layer commutes with fractional and integer Fourier shifts of band-limited maps ----------

SAME_SIZE = {
    "ideal_lowpass2d 0.5": lambda t: ideal_lowpass2d(t, 0.5),
    "ideal_lowpass2d 0.3": lambda t: ideal_lowpass2d(t, 0.3),
    "band_limit": band_limit,
    "alias_free_activation": alias_free_activation,
    "alias_free_activation, other coefficients": lambda t: alias_free_activation(t, (-0.2, 1.3, -0.7)),
    "alias_free_layer_norm": alias_free_layer_norm,
    "AliasFreeLayerNorm, affine": lambda t: alias_free_layer_norm(
        t, torch.tensor([0.5, -2.0, 1.5], dtype=t.dtype, device=t.device),
        torch.tensor([0.1, 0.0, -3.0], dtype=t.dtype, device=t.device)),
}


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("name", list(SAME_SIZE))
def test_feature_same_size_layers_commute_with_fourier_shifts(name, size, device):
    x = band_limited(*size, device=device)
    errors = [same_size_error(SAME_SIZE[name], x, ty, tx) for ty, tx in SHIFTS]
    assert max(errors) < EXACT, errors


@pytest.mark.parametrize("size,stride", [((16, 16), 2), ((18, 30), 2), ((18, 30), 3), ((15, 21), 3), ((20, 12), 4)],
                         ids=str)
def test_feature_ideal_downsample_moves_its_output_by_the_shift_over_the_stride(size, stride, device):
    x = band_limited(*size, device=device)
    errors = [down_error(lambda t: ideal_downsample2d(t, stride), x, stride, ty, tx) for ty, tx in SHIFTS]
    assert max(errors) < EXACT, errors


@pytest.mark.parametrize("size,factor", [((8, 8), 2), ((9, 15), 2), ((6, 10), 3), ((7, 7), 3)], ids=str)
def test_feature_ideal_upsample_moves_its_output_by_the_shift_times_the_factor(size, factor, device):
    x = band_limited(*size, device=device)
    errors = [up_error(lambda t: ideal_upsample2d(t, factor), x, factor, ty, tx) for ty, tx in SHIFTS]
    assert max(errors) < EXACT, errors


@settings(max_examples=25, deadline=None)
@given(cells_h=st.integers(3, 9), cells_w=st.integers(3, 9), stride=st.integers(2, 3),
       ty=st.floats(-4, 4), tx=st.floats(-4, 4), seed=st.integers(0, 2**16))
def test_feature_property_an_alias_free_stack_is_equivariant_to_any_real_shift(cells_h, cells_w, stride, ty, tx,
                                                                              seed):
    """Activation, norm, downsampler in sequence: the output moves by t / stride for any real t, any size."""
    x = band_limited(cells_h * stride, cells_w * stride, seed, batch=1, channels=2)
    stack = lambda t: ideal_downsample2d(alias_free_layer_norm(alias_free_activation(t)), stride)  # noqa: E731
    assert down_error(stack, x, stride, ty / stride, tx / stride) < EXACT


def test_feature_ideal_downsample_ignores_the_nyquist_bin_of_any_input():
    """The downsampler drops the input's Nyquist bins before anything could fold, so it stays exact on a map that
    is not band-limited (which fourier_shift attenuates there): band-limiting first changes nothing."""
    x = maps(16, 12)
    assert rel_error(band_limit(x), x) > 0.05  # the input does have Nyquist content
    assert rel_error(ideal_downsample2d(band_limit(x), 2), ideal_downsample2d(x, 2)) < EXACT
    assert max(down_error(ideal_downsample2d, x, 2, ty, tx) for ty, tx in FRACTIONAL) < EXACT


# ---- negative controls: the same checks fail for layers that alias ------------------------------------------

def keep_cutoff_bin_downsample(x):
    """A low-pass that keeps |k| <= N/4 (the bin at its cutoff, the output's Nyquist), then [::2, ::2]."""
    height, width = x.shape[-2:]
    ky = torch.fft.fftfreq(height, 1 / height, dtype=F64).abs() <= height / 4
    kx = torch.fft.rfftfreq(width, 1 / width, dtype=F64).abs() <= width / 4
    return torch.fft.irfft2(torch.fft.rfft2(x) * (ky[:, None] & kx[None, :]), s=(height, width))[..., ::2, ::2]


DOWN_CONTROLS = {
    "slice [::2, ::2]": lambda t: t[..., ::2, ::2],
    "BlurPool2d stride 2": BlurPool2d(filter_size=3, stride=2, padding_mode="circular"),
    "BlurPool2d stride 2, filter 5": BlurPool2d(filter_size=5, stride=2, padding_mode="circular"),
    "low-pass keeping its cutoff bin": keep_cutoff_bin_downsample,
}


@pytest.mark.parametrize("name", list(DOWN_CONTROLS))
def test_feature_negative_control_aliasing_downsamplers_fail_the_fractional_check(name):
    x = band_limited(16, 16)
    layer = DOWN_CONTROLS[name]
    assert min(down_error(layer, x, 2, ty, tx) for ty, tx in FRACTIONAL) > 1e-3


@pytest.mark.parametrize("layer", [F.gelu, F.relu], ids=["gelu", "relu"])
@pytest.mark.parametrize("size", [(16, 16), (15, 21)], ids=str)
def test_feature_negative_control_pointwise_activations_fail_the_fractional_check(layer, size):
    x = band_limited(*size)
    assert max(same_size_error(layer, x, ty, tx) for ty, tx in [(1, 2), (-3, 0)]) < EXACT  # integer shifts: exact
    assert min(same_size_error(layer, x, ty, tx) for ty, tx in FRACTIONAL) > 1e-2


def test_feature_negative_control_the_same_polynomial_pointwise_fails():
    """What makes the activation exact is the 2x grid: the same quadratic applied pointwise aliases."""
    pointwise = lambda t: GELU_FIT[0] + t * (GELU_FIT[1] + GELU_FIT[2] * t)  # noqa: E731
    x = band_limited(16, 16)
    assert min(same_size_error(pointwise, x, ty, tx) for ty, tx in FRACTIONAL) > 1e-2


def test_feature_negative_control_layer_norm_needs_a_band_limited_input():
    """A fractional Fourier shift attenuates an even map's Nyquist bin, changing its variance: the norm's
    whole-map statistic then moves, so on maps that are not band-limited the check fails."""
    x = maps(16, 16)
    assert min(same_size_error(alias_free_layer_norm, x, ty, tx) for ty, tx in FRACTIONAL) > 1e-3
    assert max(same_size_error(alias_free_layer_norm, x, ty, tx) for ty, tx in [(1, 2), (-3, 0)]) < EXACT


def test_feature_blurpool_is_exact_for_integer_multiples_of_its_stride_only():
    """The control fails for the right reason: BlurPool2d is equivariant to shifts by whole strides."""
    x, layer = band_limited(16, 16), DOWN_CONTROLS["BlurPool2d stride 2"]
    assert down_error(layer, x, 2, 1, 3) < EXACT
    assert down_error(layer, x, 2, 0.5, 0) > 1e-3


# ---- feature: the definitions --------------------------------------------------------------------------------

@pytest.mark.parametrize("size,stride", [((16, 16), 2), ((18, 30), 2), ((18, 30), 3), ((15, 21), 3), ((12, 8), 4)],
                         ids=str)
def test_feature_ideal_downsample_is_the_low_pass_then_slicing(size, stride, device):
    x = maps(*size, device=device)
    slow = ideal_lowpass2d(x, 1 / stride)[..., ::stride, ::stride]
    fast = ideal_downsample2d(x, stride)
    assert fast.shape == (2, 3, size[0] // stride, size[1] // stride)
    assert rel_error(fast, slow) < EXACT
    assert rel_error(x[..., ::stride, ::stride], slow) > 0.1  # slicing alone is something else


@pytest.mark.parametrize("size,factor", [((8, 8), 2), ((9, 15), 2), ((6, 10), 3), ((7, 7), 3)], ids=str)
def test_feature_ideal_upsample_then_slicing_returns_a_band_limited_input(size, factor, device):
    x = band_limited(*size, device=device)
    up = ideal_upsample2d(x, factor)
    assert up.shape == (2, 3, size[0] * factor, size[1] * factor)
    assert rel_error(up[..., ::factor, ::factor], x) < EXACT
    assert rel_error(ideal_downsample2d(up, factor), x) < EXACT  # and the ideal downsampler undoes it
    assert rel_error(band_limit(up), up) < EXACT  # the interpolant has no Nyquist content on the fine grid


def test_feature_ideal_upsample_drops_the_nyquist_bin_of_an_input_that_has_one():
    x = maps(8, 8)
    assert rel_error(ideal_upsample2d(x, 2)[..., ::2, ::2], x) > 0.05
    assert rel_error(ideal_upsample2d(x, 2)[..., ::2, ::2], band_limit(x)) < EXACT


def test_feature_ideal_lowpass_keeps_the_band_below_its_cutoff_only():
    """A cosine at bin k passes when |k| < N cutoff / 2 and is removed at or above it."""
    n = torch.arange(16, dtype=F64)
    for k, kept in [(1, True), (3, True), (4, False), (6, False)]:  # cutoff 0.5 on 16 points: |k| < 4
        wave = torch.cos(2 * torch.pi * k * n / 16)[None, None, None, :].expand(1, 1, 5, 16)
        out = ideal_lowpass2d(wave, 0.5)
        assert rel_error(out, wave) < EXACT if kept else out.abs().max() < EXACT


def test_feature_activation_equals_the_polynomial_on_constant_maps():
    values = torch.tensor([-1.5, -0.3, 0.0, 0.7, 2.0], dtype=F64)
    x = values.reshape(1, 5, 1, 1).expand(2, 5, 6, 10).contiguous()
    for a0, a1, a2 in [GELU_FIT, (0.3, -1.0, 2.5)]:
        expected = (a0 + a1 * values + a2 * values ** 2).reshape(1, 5, 1, 1).expand_as(x)
        assert rel_error(alias_free_activation(x, (a0, a1, a2)), expected) < EXACT


def test_feature_activation_is_the_pointwise_polynomial_on_maps_below_half_the_band():
    """Content below N/4 squares to content below N/2: nothing to filter, the 2x grid changes nothing."""
    x = ideal_lowpass2d(maps(16, 20), 0.5)
    a0, a1, a2 = GELU_FIT
    assert rel_error(alias_free_activation(x), a0 + a1 * x + a2 * x * x) < EXACT
    y = band_limited(16, 20)  # full band: the square's high half is filtered out
    assert rel_error(alias_free_activation(y), a0 + a1 * y + a2 * y * y) > 1e-2


def test_feature_activation_is_close_to_gelu_on_smooth_small_maps():
    """On |x| <= 1 the fit is within 0.019 of GELU (max of |a0 + a1 x + a2 x^2 - GELU(x)|, 0.0181); ReLU is
    0.17 away from GELU there, so the bound tells a GELU from a ReLU-like activation."""
    x = ideal_lowpass2d(maps(16, 16), 0.25)
    x = x / x.abs().amax(dim=(-2, -1), keepdim=True)  # smooth, |x| <= 1, reaching 1
    out = alias_free_activation(x)
    assert (out - F.gelu(x)).abs().max() < 0.019
    assert (F.relu(x) - F.gelu(x)).abs().max() > 0.1


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_feature_layer_norm_centres_each_pixel_and_scales_the_whole_map(size, device):
    x = 3.0 + 5.0 * maps(*size, channels=4, device=device)
    out = alias_free_layer_norm(x, eps=0.0)
    assert out.mean(dim=1).abs().max() < EXACT
    assert (out.square().mean(dim=(1, 2, 3)) - 1).abs().max() < EXACT
    assert (out.var(dim=(2, 3), correction=0).mean(dim=1) - 1).abs().max() > 1e-3  # not a per-channel norm
    module = AliasFreeLayerNorm(4).to(device=device, dtype=F64)
    assert (module(x).square().mean(dim=(1, 2, 3)) - 1).abs().max() < 1e-6  # eps 1e-6 on a variance of ~25
    assert rel_error(module(x), alias_free_layer_norm(x, eps=1e-6)) < EXACT


def test_feature_layer_norm_applies_the_per_channel_affine_map():
    x = maps(6, 10)
    weight, bias = torch.tensor([2.0, -1.0, 0.5], dtype=F64), torch.tensor([0.0, 3.0, -1.0], dtype=F64)
    expected = alias_free_layer_norm(x) * weight.reshape(1, 3, 1, 1) + bias.reshape(1, 3, 1, 1)
    assert rel_error(alias_free_layer_norm(x, weight, bias), expected) < EXACT


def test_feature_modules_match_their_functions():
    x = band_limited(12, 18)
    coefficients = torch.tensor([0.125, 0.875, -0.375], dtype=F64)  # exact in float32 too
    pairs = [
        (IdealLowpass2d(0.4), lambda t: ideal_lowpass2d(t, 0.4)),
        (IdealDownsample2d(3), lambda t: ideal_downsample2d(t, 3)),
        (IdealUpsample2d(2), lambda t: ideal_upsample2d(t, 2)),
        (AliasFreeActivation(coefficients, learnable=False).double(), lambda t: alias_free_activation(t, coefficients)),
    ]
    for module, function in pairs:
        assert torch.equal(module(x), function(x))
    default = AliasFreeActivation().double()  # its parameters start as GELU_FIT in the default dtype (float32)
    assert torch.allclose(default.coefficients, torch.tensor(GELU_FIT, dtype=F64), rtol=1e-6, atol=0)
    assert torch.equal(default(x), alias_free_activation(x, default.coefficients))
    assert "stride=3" in repr(pairs[1][0]) and "cutoff=0.4" in repr(pairs[0][0])
    assert AliasFreeActivation(learnable=False).state_dict()["coefficients"].shape == (3,)


# ---- gradcheck -----------------------------------------------------------------------------------------------

def test_gradcheck_of_the_fft_layers():
    x = maps(6, 4, batch=1, channels=2).requires_grad_()
    for fn in (lambda t: ideal_lowpass2d(t, 0.6), ideal_downsample2d, ideal_upsample2d, alias_free_activation,
               alias_free_layer_norm):
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)


def test_gradcheck_gradients_reach_the_coefficients_weight_and_bias():
    torch.manual_seed(0)
    x = maps(8, 12, channels=4)
    act, norm = AliasFreeActivation().double(), AliasFreeLayerNorm(4).double()
    target = maps(8, 12, seed=1, channels=4)
    loss = (norm(act(x)) - target).square().mean()
    loss.backward()
    for name, grad in [("coefficients", act.coefficients.grad), ("weight", norm.weight.grad),
                       ("bias", norm.bias.grad)]:
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().min() > 0, name
    coefficients = torch.tensor(GELU_FIT, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: alias_free_activation(maps(4, 6, batch=1, channels=1), c),
                                    (coefficients,))
    frozen = AliasFreeActivation(learnable=False)
    assert list(frozen.parameters()) == []


# ---- exception: bad arguments raise InputError, bad tensors ShapeError ----------------------------------------

@pytest.mark.parametrize("bad", [
    lambda: ideal_lowpass2d(maps(8, 8), 0),
    lambda: ideal_lowpass2d(maps(8, 8), 1.5),
    lambda: ideal_lowpass2d(maps(8, 8), True),
    lambda: ideal_lowpass2d(maps(8, 8), -0.5),
    lambda: ideal_lowpass2d(maps(8, 8), "0.5"),
    lambda: IdealLowpass2d(0),
    lambda: ideal_downsample2d(maps(8, 8), 0),
    lambda: ideal_downsample2d(maps(8, 8), 2.0),
    lambda: ideal_downsample2d(maps(8, 8), True),
    lambda: IdealDownsample2d(0),
    lambda: ideal_upsample2d(maps(8, 8), 0),
    lambda: IdealUpsample2d(-1),
    lambda: alias_free_activation(maps(8, 8), (0.0, 1.0)),
    lambda: alias_free_activation(maps(8, 8), (0.0, 1.0, 2.0, 3.0)),
    lambda: alias_free_activation(maps(8, 8), "abc"),
    lambda: alias_free_activation(maps(8, 8), torch.tensor([1, 2, 3])),
    lambda: AliasFreeActivation((1.0, 2.0)),
    lambda: AliasFreeLayerNorm(0),
])
def test_exception_bad_argument_values_raise_input_error(bad):
    with pytest.raises(InputError) as info:
        bad()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [
    lambda: ideal_downsample2d(maps(9, 8), 2),
    lambda: ideal_downsample2d(maps(12, 10), 3),
    lambda: IdealDownsample2d(4)(maps(8, 6)),
    lambda: alias_free_activation(maps(9, 9)[0]),
    lambda: ideal_lowpass2d(torch.zeros(1, 1, 4, 4, dtype=torch.int64)),
    lambda: band_limit([[1.0]]),
    lambda: ideal_upsample2d(torch.randn(4, 4)),
    lambda: alias_free_layer_norm(maps(4, 4), torch.ones(2, dtype=F64)),
    lambda: alias_free_layer_norm(maps(4, 4), None, torch.zeros(3, 1, dtype=F64)),
    lambda: AliasFreeLayerNorm(4)(maps(4, 4).float()),
])
def test_exception_bad_tensors_raise_shape_error_not_input_error(bad):
    with pytest.raises(ShapeError) as info:
        bad()
    assert not isinstance(info.value, InputError)


def test_exception_not_divisible_message_names_the_sizes():
    with pytest.raises(ShapeError, match="9x8.*stride 2"):
        ideal_downsample2d(maps(9, 8), 2)


# ---- dtypes ---------------------------------------------------------------------------------------------------

def test_feature_float32_commutes_with_shifts_to_float32_precision(device):
    x = band_limited(16, 20, device=device, dtype=torch.float32)
    assert x.dtype == torch.float32
    layers = [alias_free_activation, alias_free_layer_norm, lambda t: ideal_lowpass2d(t, 0.5)]
    for layer in layers:
        assert layer(x).dtype == torch.float32
        assert max(same_size_error(layer, x, ty, tx) for ty, tx in FRACTIONAL) < 1e-5
    assert max(down_error(ideal_downsample2d, x, 2, ty, tx) for ty, tx in FRACTIONAL) < 1e-5
    assert min(down_error(lambda t: t[..., ::2, ::2], x, 2, ty, tx) for ty, tx in FRACTIONAL) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_feature_half_precision_returns_its_dtype(dtype):
    x64 = band_limited(8, 12)
    x = x64.to(dtype)
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    checks = [
        (ideal_lowpass2d(x, 0.5), ideal_lowpass2d(x64, 0.5)),
        (band_limit(x), band_limit(x64)),
        (ideal_downsample2d(x, 2), ideal_downsample2d(x64, 2)),
        (ideal_upsample2d(x, 2), ideal_upsample2d(x64, 2)),
        (alias_free_activation(x), alias_free_activation(x64)),
        (alias_free_layer_norm(x), alias_free_layer_norm(x64)),
        (AliasFreeActivation().to(dtype)(x), alias_free_activation(x64)),
        (AliasFreeLayerNorm(3).to(dtype)(x), alias_free_layer_norm(x64)),
    ]
    for out, reference in checks:
        assert out.dtype == dtype
        assert rel_error(out.double(), reference) < 4 * tol


def test_smoke_stride_and_factor_one_are_identities():
    x = maps(5, 7)
    assert ideal_downsample2d(x, 1) is x and ideal_upsample2d(x, 1) is x
    assert isinstance(IdealDownsample2d(1), nn.Module)
