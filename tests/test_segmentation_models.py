"""Interpolation at the encoder's phase and torchvision's segmentation models converted by antialias: equality
with F.interpolate where it must hold, exact equivariance in float64, negative controls."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from shiftlab import antialias, certify
from shiftlab.errors import InputError
from shiftlab.layers import (
    UnpoolInterpolate2d,
    aps_pool2d,
    compose_phases,
    interpolation_taps,
    unpool_interpolate2d,
    wrap_pad2d,
)
from shiftlab.models import SelectOutput

D = torch.float64
seg = torchvision.models.segmentation


@pytest.mark.parametrize("stride", [2, 3, 4, 8])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_unpool_interpolate_at_phase_zero_is_interpolate_of_the_circular_extension(stride, mode):
    x = torch.rand(2, 3, 5, 4, dtype=D)
    out = unpool_interpolate2d(x, torch.zeros(2, dtype=torch.int64), stride, mode)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    extended = F.interpolate(wrap_pad2d(x, (2, 2, 2, 2)), scale_factor=stride, mode=mode, **kwargs)
    assert torch.allclose(out, extended[..., 2 * stride:-2 * stride, 2 * stride:-2 * stride], atol=1e-14, rtol=0)
    plain = F.interpolate(x, scale_factor=stride, mode=mode, **kwargs)  # clamps at the border instead of wrapping
    if mode == "bilinear":
        assert (out - plain).abs().max() > 1e-3
    else:
        assert torch.equal(out, plain)  # nearest hold never reaches across the border


def test_interpolation_taps_and_composed_phase_by_hand():
    h, u0 = interpolation_taps(4)
    assert u0 == -2 and torch.allclose(h, torch.tensor([1, 3, 5, 7, 7, 5, 3, 1], dtype=D) / 8)
    # layer 1 (stride 2) kept offset (1, 0), layer 2 (stride 2) offset (1, 1): (1 + 2, 0 + 2) of 4 -> 3 * 4 + 2
    assert compose_phases([torch.tensor([2]), torch.tensor([3])], [2, 2]).tolist() == [14]
    with pytest.raises(Exception, match="int64"):
        compose_phases([torch.tensor([0.5])], [2])


def test_wrap_pad_wraps_any_amount_and_agrees_with_circular_pad():
    x = torch.randn(1, 2, 3, 4, dtype=D)
    assert torch.equal(wrap_pad2d(x, (1, 2, 2, 1)), F.pad(x, (1, 2, 2, 1), mode="circular"))
    wide = wrap_pad2d(x, (9, 0, 7, 0))  # F.pad refuses: it wraps more than once
    assert torch.equal(wide[..., 7:, 9:], x) and torch.equal(wide[..., 1:4, 1:5], x)


def test_unpool_interpolate_after_aps_moves_with_every_circular_shift():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=D)

    def net(t, follow=True):
        a, p1 = aps_pool2d(t, return_phase=True)
        b, p2 = aps_pool2d(a, return_phase=True)
        phase = compose_phases([p1, p2], [2, 2]) if follow else torch.zeros_like(p1)
        return unpool_interpolate2d(b, phase, 4)

    ref, fixed_ref = net(x), net(x, False)
    worst = worst_fixed = 0.0
    for dy in range(4):
        for dx in range(4):
            moved = torch.roll(x, (dy, dx), (-2, -1))
            worst = max(worst, float((net(moved) - torch.roll(ref, (dy, dx), (-2, -1))).abs().max()))
            worst_fixed = max(worst_fixed, float((net(moved, False) - torch.roll(fixed_ref, (dy, dx), (-2, -1)))
                                                 .abs().max()))
    assert worst <= 1e-12
    assert worst_fixed > 1e-3  # negative control: the same interpolation at phase 0


def test_unpool_interpolate_module_agrees_with_the_function_at_the_composed_phase():
    from shiftlab.layers import PhaseLink, WrapPad2d

    outer, inner = PhaseLink(2, name="enc1"), PhaseLink(2, name="enc2")
    outer.record(torch.tensor([1, 2]), (8, 8))
    inner.record(torch.tensor([3, 0]), (4, 4))
    try:
        x = torch.randn(2, 3, 2, 2, dtype=D)
        out = UnpoolInterpolate2d([outer, inner], "bilinear")(x)
        # sample 0: offsets (0, 1) then (1, 1) -> (2, 3) of 4; sample 1: (1, 0) then (0, 0) -> (1, 0)
        assert torch.equal(out, unpool_interpolate2d(x, torch.tensor([11, 4]), 4))
    finally:
        outer.release()
        inner.release()
    assert torch.equal(WrapPad2d((1, 2, 3, 0))(x), wrap_pad2d(x, (1, 2, 3, 0)))


def test_unpool_interpolate_module_needs_its_encoder_layers():
    from shiftlab.layers import PhaseLink

    up = UnpoolInterpolate2d([PhaseLink(2, name="enc1")], name="head.unpool")
    with pytest.raises(InputError, match="head.unpool.*enc1"):
        up(torch.randn(1, 2, 4, 4, dtype=D))


def _relative_deviation_at_one_one(model, size):
    """|f(roll(x, (1, 1)))["out"] - roll(f(x)["out"], (1, 1))| / max|f(x)["out"]| on one random input."""
    x = torch.randn(1, 3, size, size, dtype=D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(torch.cat([x, torch.roll(x, (1, 1), (-2, -1))]))["out"]
    return float((out[1] - torch.roll(out[0], (1, 1), (-2, -1))).abs().max() / out[0].abs().max())


def _weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def lraspp():
    torch.manual_seed(0)
    model = seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=2).double().eval()
    fixed, report = antialias(model, "aps", circular=True)
    return model, fixed.eval(), report


def test_lraspp_is_converted_keeping_every_weight(lraspp):
    model, fixed, report = lraspp
    assert _weights_equal(model, fixed)
    assert fixed.shiftlab_fix["decoders"] == [
        ["classifier.high", "backbone.7.block.1.2.subsample.0"],
        ["classifier", "backbone.0.2.subsample.0+backbone.2.block.1.2.subsample.0+backbone.4.block.1.2.subsample.0"]]
    assert any(r.name == "classifier" and "UnpooledLRASPPHead" in r.after for r in report)


def test_lraspp_converted_is_certified_exactly_and_the_original_is_not(lraspp):
    model, fixed, _ = lraspp
    result = certify(SelectOutput(fixed, "out"), (32, 32), shifts=3, n_inputs=1)
    assert result.output_stride == 1 and result.total_stride == (16, 16) and result.shifts_checked == 3
    assert result.passed and result.max_rel_deviation <= 1e-12
    assert _relative_deviation_at_one_one(model, 32) > 1e-6  # negative control: the original


def test_deeplabv3_mobilenet_with_aspp_dilations_beyond_the_map_is_certified_exactly():
    torch.manual_seed(0)
    model = seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=2).double().eval()
    with torch.no_grad():  # the random backbone's activations vanish (~1e-8): without it the bias is the whole map
        model.classifier[4].bias.zero_()
    fixed, report = antialias(model, "aps", circular=True)
    assert _weights_equal(model, fixed)
    assert {r.name for r in report if "WrapPad2d" in r.after} >= {"classifier.0.convs.3.0", "backbone.13.block.1.0"}
    assert fixed.shiftlab_fix["decoders"][0][0] == "classifier"
    result = certify(SelectOutput(fixed, "out"), (32, 32), shifts=2, n_inputs=1)  # the map is 2x2: dilation 36
    assert result.passed and result.max_rel_deviation <= 1e-12
    assert _relative_deviation_at_one_one(model, 32) > 1e-6  # negative control: the original


def test_a_segmentation_model_with_a_fixed_phase_encoder_layer_is_refused_naming_it():
    model = seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=2).double().eval()
    with pytest.raises(InputError, match=r"\(model\).*backbone\.0\.0"):
        antialias(model, "aps", circular=True, keep_stem=True)
    fixed, report = antialias(model, "aps", circular=True, keep_stem=True, keep_unpaired=True)
    assert any(r.name == "(model)" and r.unreplaced for r in report)
    assert not fixed.shiftlab_fix.get("decoders")
    assert isinstance(fixed.classifier, seg.lraspp.LRASPPHead)  # kept as it was
