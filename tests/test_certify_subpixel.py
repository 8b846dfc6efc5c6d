"""shiftlab.certify for fractional shifts: alias-free networks pass in float64, APS, BlurPool and GELU fail.

The certificate moves band-limited random inputs by Fourier shifts (``shifts="subpixel:N"`` or a list of floats) and
compares the logits with a tolerance of 1e-9 relative (float64). Every positive test has a negative control built
from the same network with one layer swapped, and the positive network is checked to depend on its input (a
constant network would pass any certificate).
"""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from shiftlab.errors import InputError
from shiftlab.fix.certify import (CertifyResult, assert_certified, certify, fractional_tolerance, period_shifts,
                                  subpixel_shifts)
from shiftlab.layers import (AliasFreeActivation, AliasFreeLayerNorm, APSPool2d, BlurPool2d, IdealDownsample2d,
                             band_limit)
from shiftlab.transforms import fourier_shift

LISTED = [(1 / 3, 2 / 7), (0.5, 0.5), (-1.25, 3.0)]


def tiny_net(subsampling: str = "ideal", activation: str = "alias_free", padding_mode: str = "circular") -> nn.Module:
    """Two subsamplings (total stride 4), alias-free layer norms and activations, global pooling: alias-free with
    the defaults; one choice swapped gives the negative controls."""
    torch.manual_seed(0)

    def down():
        if subsampling == "ideal":
            return IdealDownsample2d(2)
        if subsampling == "aps":
            return APSPool2d(2)
        return BlurPool2d(6, filter_size=3, stride=2, padding_mode="circular")

    def act():
        return AliasFreeActivation() if activation == "alias_free" else nn.GELU()

    def conv(cin, cout):
        return nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding_mode)

    return nn.Sequential(conv(3, 6), AliasFreeLayerNorm(6), act(), down(), conv(6, 6), AliasFreeLayerNorm(6), act(),
                         down(), conv(6, 6), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))


def relative_change(net: nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
    net = net.double().eval()
    with torch.no_grad():
        ya, yb = net(a), net(b)
    return float((ya - yb).abs().max() / ya.abs().max())


def inputs(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ---- feature: the alias-free network is certified, and the certificate is not vacuous ----------------------

def test_feature_alias_free_net_passes_subpixel_grid_and_listed_shifts(device):
    net = tiny_net().to(device)
    grid = certify(net, 16, shifts="subpixel:4")
    assert grid.passed and grid.reason is None
    assert grid.max_rel_deviation <= 1e-9 and grid.tolerance == 1e-9
    assert grid.shift_kind == "fractional" and grid.subpixel == 4 and grid.band_limit == 1.0
    assert grid.shifts_checked == 15 and grid.fractional_shifts is None and not grid.full_period
    assert all(isinstance(v, float) for v in grid.worst_shift)
    listed = certify(net, 16, shifts=LISTED)
    assert listed.passed and listed.max_rel_deviation <= 1e-9
    assert listed.fractional_shifts == tuple(LISTED) and listed.subpixel is None and listed.shifts_checked == 3
    # not vacuous: the same network's logits move by far more than the tolerance when the input changes
    assert relative_change(tiny_net(), band_limit(inputs(0)), band_limit(inputs(1))) > 1e-3


@pytest.mark.parametrize("subsampling, activation", [("aps", "alias_free"), ("blur", "alias_free"),
                                                     ("ideal", "gelu")])
def test_feature_aps_blurpool_and_gelu_versions_fail_the_fractional_certificate(subsampling, activation, device):
    net = tiny_net(subsampling, activation).to(device)
    result = certify(net, 16, shifts="subpixel:4")
    assert not result.passed and result.max_rel_deviation > 1e-4  # five orders above the tolerance
    assert "fractional" in result.reason and result.worst_shift in {tuple(s) for s in subpixel_shifts(4).tolist()}
    assert not certify(net, 16, shifts=[(1 / 3, 2 / 7)]).passed


def test_feature_aps_passes_the_integer_certificate_that_the_fractional_one_refutes(device):
    aps = tiny_net("aps").to(device)
    integer = certify(aps, 16)  # every shift of one period of the total stride 4
    assert integer.passed and integer.full_period and integer.shift_kind == "integer"
    assert integer.shifts_checked == len(period_shifts(4)) and integer.band_limit is None
    assert not certify(aps, 16, shifts="subpixel:2").passed
    # the alias-free network holds both
    assert certify(tiny_net().to(device), 16).passed


def test_feature_band_limiting_is_what_makes_fractional_shifts_exact():
    # a half-pixel Fourier shift attenuates the Nyquist bins: on raw noise it is not a shift of the same signal,
    # so the alias-free network's logits move; on the band-limited input (what certify draws) they do not
    net, raw = tiny_net(), inputs(2)
    assert relative_change(net, raw, fourier_shift(raw, 0.5, 0.25)) > 1e-4
    limited = band_limit(raw)
    assert relative_change(net, limited, fourier_shift(limited, 0.5, 0.25)) <= 1e-12


def test_feature_non_circular_model_is_measured_and_fails():
    result = certify(tiny_net(padding_mode="zeros"), 16, shifts="subpixel:2")
    assert isinstance(result, CertifyResult) and not result.passed and result.max_rel_deviation > 1e-4


def test_feature_float32_uses_the_fractional_float32_tolerance():
    result = certify(tiny_net(), 16, shifts="subpixel:2", dtype=torch.float32)
    assert result.dtype == "float32" and result.tolerance == fractional_tolerance(torch.float32) == 1e-4
    assert result.passed
    assert not certify(tiny_net("aps"), 16, shifts="subpixel:2", dtype=torch.float32).passed


@settings(max_examples=8, deadline=None)
@given(dy=st.floats(-3, 3, allow_nan=False), dx=st.floats(-3, 3, allow_nan=False))
def test_property_alias_free_net_is_invariant_to_any_fractional_shift(dy, dx):
    result = certify(tiny_net(), 8, shifts=[(dy, dx)], n_inputs=1)
    assert result.passed, result.reason


# ---- feature: the networks of shiftlab.models ------------------------------------------------------------

@pytest.mark.parametrize("builder", ["alias_free_resnet", "alias_free_convnext"])
@pytest.mark.parametrize("subsampling, activation, norm, passes", [
    ("ideal", "alias_free", "alias_free", True), ("ideal", "alias_free", "batch", True),
    ("aps", "alias_free", "alias_free", False), ("blur", "alias_free", "alias_free", False),
    ("ideal", "gelu", "alias_free", False)])
def test_feature_shiftlab_builders_pass_exactly_when_they_promise_fractional_invariance(
        builder, subsampling, activation, norm, passes):
    from shiftlab import models

    torch.manual_seed(0)
    extra = {"kernel_size": 3, "expansion": 2} if builder == "alias_free_convnext" else {}
    net = getattr(models, builder)((1, 1), width=4, num_classes=3, subsampling=subsampling, activation=activation,
                                   norm=norm, **extra)
    assert (net.guarantee == "fractional") == passes
    result = certify(net, 16, shifts="subpixel:4")
    assert result.passed == passes
    assert result.max_rel_deviation <= 1e-9 if passes else result.max_rel_deviation > 1e-4
    if subsampling == "aps":
        assert certify(net, 16).passed  # integer-invariant, as its guarantee says


# ---- assert_certified ----------------------------------------------------------------------------------------

def test_assert_certified_returns_the_result_and_raises_on_the_controls():
    result = assert_certified(tiny_net(), 16, "subpixel:2")
    assert result == certify(tiny_net(), 16, "subpixel:2") and result.shift_kind == "fractional"
    for control in (tiny_net("aps"), tiny_net("blur"), tiny_net(activation="gelu")):
        measured = certify(control, 16, "subpixel:2")
        with pytest.raises(AssertionError, match="not invariant to fractional circular shifts") as info:
            assert_certified(control, 16, "subpixel:2")
        assert f"{measured.max_rel_deviation:.3g}" in str(info.value)


# ---- JSON and cardinality ---------------------------------------------------------------------------------

def test_smoke_json_keeps_the_old_fields_and_adds_the_fractional_ones():
    old = {"max_abs_deviation", "max_rel_deviation", "worst_shift", "shifts_checked", "total_stride", "input_size",
           "n_inputs", "dtype", "tolerance", "full_period", "non_finite", "nondeterminism", "passed", "reason",
           "nondeterministic"}
    fractional = json.loads(json.dumps(certify(tiny_net(), 8, shifts=LISTED, n_inputs=1).to_dict(), allow_nan=False))
    assert set(fractional) == old | {"shift_kind", "subpixel", "fractional_shifts", "band_limit", "output_stride",
                                     "patch_size"}
    assert fractional["shift_kind"] == "fractional" and fractional["band_limit"] == 1.0
    assert fractional["fractional_shifts"] == [list(p) for p in LISTED] and len(fractional["worst_shift"]) == 2
    integer = certify(tiny_net(), 8, shifts=[(1, 0)], n_inputs=1).to_dict()
    assert integer["shift_kind"] == "integer" and integer["tolerance"] == 1e-10
    assert integer["subpixel"] is None and integer["fractional_shifts"] is None and integer["band_limit"] is None
    assert fractional["output_stride"] is None and integer["output_stride"] is None  # classifiers: no output map
    assert fractional["patch_size"] is None and integer["patch_size"] is None  # not a converted transformer


def test_cardinality_subpixel_grid():
    grid = subpixel_shifts(3)
    assert grid.dtype == torch.float64 and grid.shape == (8, 2)
    assert {tuple(round(v * 3) for v in s) for s in grid.tolist()} == {(i, j) for i in range(3)
                                                                        for j in range(3)} - {(0, 0)}
    assert subpixel_shifts(3, include_zero=True).shape == (9, 2)
    assert certify(tiny_net(), 8, shifts="subpixel:3", n_inputs=1).shifts_checked == 8


# ---- exception ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shifts", ["subpixel:0", "subpixel:1", "subpixel:", "subpixel:x", "subpixel:-2",
                                    "subpixel:2.5", "subpixels:4", [("a", 0.5)], [(0.5, None)],
                                    [(0.5, float("inf"))], [(float("nan"), 0.5)], [(1j, 0.5)], 0.5])
def test_exception_bad_fractional_specs(shifts):
    with pytest.raises(InputError) as info:
        certify(tiny_net(), 8, shifts=shifts)
    assert "\n" not in str(info.value)
