"""Rotation-equivariant layers (issue 14): p4/p4m group convolutions and circular-harmonic layers.

Every equivariance claim is checked in float64 on random inputs and random weights, by a property test
over sizes, kernels and group elements, and against a negative control (a plain convolution) that must fail.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from shiftlab.errors import ShapeError, ShiftlabError
from shiftlab.experiments.nets import GroupCNN, HarmonicCNN
from shiftlab.layers import (GroupConv2d, GroupPool, HarmonicBatchNorm2d, HarmonicBlurPool2d, HarmonicConv2d,
                             HarmonicMagnitude, HarmonicReLU, LiftConv2d, group_act, group_conv2d, group_pool,
                             harmonic_blur_pool2d, harmonic_basis, harmonic_conv2d, harmonic_relu, lift_conv2d)
from shiftlab.layers.blur_pool import blur_pool2d
from shiftlab.measure.rotation import rotation_equivariance_error
from shiftlab.transforms import rotate

TOL = 1e-12  # float64, relative to the largest value


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=_gen(seed))


def _close(a, b, tol=TOL):
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) <= tol * scale


def _move(x, quarters, mirror):
    return torch.rot90(x.flip(-1) if mirror else x, quarters, dims=(-2, -1))


def _elements(group):
    return [(m, r) for m in ((0, 1) if group == "p4m" else (0,)) for r in range(4)]


# --------------------------------------------------------------------------------------------- group action


def test_feature_group_action_is_a_group_action():
    """(a b) . F == a . (b . F) for all pairs of p4m elements, and the identity does nothing."""
    f = _rand(2, 3, 8, 5, 5)
    assert torch.equal(group_act(f, 0), f)
    for m1, r1 in _elements("p4m"):
        for m2, r2 in _elements("p4m"):
            two_steps = group_act(group_act(f, r2, bool(m2)), r1, bool(m1))
            # the product as a map of the plane: rot**r1 mirror**m1 rot**r2 mirror**m2
            m, r = m1 ^ m2, (r1 + (-r2 if m1 else r2)) % 4
            assert torch.equal(two_steps, group_act(f, r, bool(m))), (m1, r1, m2, r2)


def test_quarter_turn_cycles_the_rotation_axis_and_a_mirror_reverses_it():
    f = torch.arange(8.0).view(1, 1, 8, 1, 1)
    assert group_act(f, 1).flatten().tolist() == [3, 0, 1, 2, 7, 4, 5, 6]
    assert group_act(f, 0, mirror=True).flatten().tolist() == [4, 7, 6, 5, 0, 3, 2, 1]


def test_exception_group_act_mirror_on_p4_and_bad_axis():
    with pytest.raises(ShapeError):
        group_act(torch.rand(1, 1, 4, 3, 3), 1, mirror=True)
    with pytest.raises(ShapeError):
        group_act(torch.rand(1, 1, 5, 3, 3), 1)
    with pytest.raises(ShapeError):
        group_act(torch.rand(1, 1, 4, 3, 3), 1.0)


# --------------------------------------------------------------------------------------------- equivariance


@settings(max_examples=25, deadline=None)
@given(group=st.sampled_from(["p4", "p4m"]), size=st.integers(3, 12), k=st.sampled_from([1, 3, 5]),
       c_in=st.integers(1, 3), c_out=st.integers(1, 3), quarters=st.integers(-5, 5), mirror=st.booleans(),
       padding=st.sampled_from(["zeros", "circular"]), seed=st.integers(0, 10_000))
def test_lift_and_group_conv_are_exactly_equivariant(group, size, k, c_in, c_out, quarters, mirror, padding, seed):
    mirror = mirror and group == "p4m"
    g = 8 if group == "p4m" else 4
    x = _rand(2, c_in, size, size, seed=seed)
    w1, b1 = _rand(c_out, c_in, k, k, seed=seed + 1), _rand(c_out, seed=seed + 2)
    w2 = _rand(2, c_out, g, k, k, seed=seed + 3)
    lifted = lift_conv2d(x, w1, b1, group, padding)
    lifted_r = lift_conv2d(_move(x, quarters, mirror), w1, b1, group, padding)
    assert _close(lifted_r, group_act(lifted, quarters, mirror))
    y, y_r = group_conv2d(lifted, w2, None, group, padding), group_conv2d(lifted_r, w2, None, group, padding)
    assert _close(y_r, group_act(y, quarters, mirror))
    # pooling over the group leaves an image that moves with the input
    assert _close(group_pool(y_r), _move(group_pool(y), quarters, mirror))


def test_lift_conv_is_the_conv_with_each_transformed_filter():
    x, w = _rand(2, 3, 7, 7), _rand(4, 3, 3, 3, seed=1)
    y = lift_conv2d(x, w, group="p4m")
    for index, (m, r) in enumerate(_elements("p4m")):
        assert _close(y[:, :, index], F.conv2d(x, _move(w, r, m), padding=1))


def test_group_conv_matches_a_loop_over_group_elements():
    """Reference: out[g] = sum_h conv(x[h], g(w[g^-1 h])), written out element by element."""
    x, w = _rand(1, 2, 4, 6, 6), _rand(3, 2, 4, 3, 3, seed=1)
    y = group_conv2d(x, w)
    for r in range(4):
        ref = sum(F.conv2d(x[:, :, h], torch.rot90(w[:, :, (h - r) % 4], r, (-2, -1)), padding=1) for h in range(4))
        assert _close(y[:, :, r], ref)


def test_negative_control_a_plain_conv_is_not_rotation_equivariant():
    x, w = _rand(2, 3, 12, 12), _rand(4, 3, 3, 3, seed=1)
    conv = lambda t: F.conv2d(t, w, padding=1)  # noqa: E731
    err = rotation_equivariance_error(conv(x), conv(torch.rot90(x, 1, (-2, -1))), 90)
    assert float(err.min()) > 0.1
    # and neither is a group conv whose output is read without cycling the group axis
    lifted = lift_conv2d(x, w)
    lifted_r = lift_conv2d(torch.rot90(x, 1, (-2, -1)), w)
    assert not _close(lifted_r, torch.rot90(lifted, 1, (-2, -1)), 1e-3)


def _randomise_batch_norm(net, seed=0):
    g = _gen(seed)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm3d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g, dtype=torch.float64) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=torch.float64) + 0.5)
        if isinstance(m, HarmonicBatchNorm2d):
            m.running_ms.copy_(torch.rand(m.running_ms.shape, generator=g, dtype=torch.float64) + 0.5)
    return net


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_group_cnn_is_exactly_invariant_and_each_layer_equivariant(group):
    torch.manual_seed(0)
    net = _randomise_batch_norm(GroupCNN(group, width=3).double()).eval()
    x = _rand(3, 1, 32, 32)
    for m, r in _elements(group):
        feats, feats_r = x, _move(x, r, m)
        for layer in net.features:  # layer by layer: the group feature moves by the same element
            feats, feats_r = layer(feats), layer(feats_r)
            assert _close(feats_r, group_act(feats, r, bool(m))), (type(layer).__name__, m, r)
        assert _close(net.head(feats_r), net.head(feats))


def test_gradcheck_group_layers():
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    w1 = torch.rand(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.rand(2, 2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: group_pool(group_conv2d(lift_conv2d(a, b, group="p4m"), c, group="p4m"), "mean"), (x, w1, w2))


def test_modules_match_functions_and_count_parameters():
    lift, conv, pool = LiftConv2d(2, 3, 3, bias=True).double(), GroupConv2d(3, 4, 3).double(), GroupPool("mean")
    with torch.no_grad():
        lift.bias.normal_()
    x = _rand(2, 2, 6, 6)
    y = lift(x)
    assert torch.equal(y, lift_conv2d(x, lift.weight, lift.bias))
    assert torch.equal(conv(y), group_conv2d(y, conv.weight))
    assert torch.equal(pool(y), y.mean(2))
    assert lift.weight.shape == (3, 2, 3, 3) and conv.weight.shape == (4, 3, 4, 3, 3)


@pytest.mark.parametrize("bad", [
    lambda: LiftConv2d(1, 2, 4),  # even kernel: no centre pixel
    lambda: GroupConv2d(1, 2, 3, group="p6"),
    lambda: lift_conv2d(torch.rand(1, 2, 5, 5), torch.rand(3, 1, 3, 3)),
    lambda: group_conv2d(torch.rand(1, 2, 5, 5), torch.rand(3, 2, 4, 3, 3)),  # not a group feature
    lambda: group_conv2d(torch.rand(1, 2, 8, 5, 5), torch.rand(3, 2, 4, 3, 3)),  # p4m feature, p4 layer
    lambda: group_pool(torch.rand(1, 2, 4, 5, 5), "median"),
    lambda: LiftConv2d(1, 2, 3, padding_mode="reflect"),
])
def test_exception_bad_input_is_a_one_line_shape_error(bad):
    with pytest.raises(ShapeError) as info:
        bad()
    assert isinstance(info.value, ShiftlabError) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------- harmonic


def _turn(orders, quarters):
    return torch.tensor([1j ** (m * quarters) for m in orders], dtype=torch.complex128).view(1, 1, -1, 1, 1)


def test_harmonic_basis_is_a_circular_harmonic():
    """Under a quarter turn of the pixel grid the order-m basis gets exactly the factor exp(i m pi / 2)...

    rotating the filter by +90 degrees (counter-clockwise) samples it at phi - 90: W(phi - pi/2) = i**-m W(phi).
    """
    for k in (3, 5, 7):
        for m in (-2, -1, 0, 1, 2, 3):
            b = harmonic_basis(k, m)
            assert torch.allclose(torch.rot90(b, 1, (-2, -1)), b * (1j) ** (-m), rtol=0, atol=1e-14)
            if m:
                assert float(b[:, k // 2, k // 2].abs().max()) == 0.0  # no phase at the centre
            radius = torch.sqrt(((torch.arange(k) - k // 2) ** 2)[:, None] + ((torch.arange(k) - k // 2) ** 2)[None])
            outside = radius > k // 2 + 0.5
            assert k == 3 or bool(outside.any())
            assert float(b[:, outside].abs().sum()) == 0.0  # a disc


def test_harmonic_basis_phase_runs_counter_clockwise_as_displayed():
    b = harmonic_basis(3, 1).sum(0)
    assert abs(complex(b[1, 2]) - abs(b[1, 2])) < 1e-15  # right of the centre: phi = 0
    assert abs(complex(b[0, 1]) - 1j * abs(b[0, 1])) < 1e-15  # above the centre (row 0): phi = +90 degrees


@settings(max_examples=15, deadline=None)
@given(size=st.integers(5, 14), k=st.sampled_from([3, 5]), quarters=st.integers(0, 3),
       padding=st.sampled_from(["zeros", "circular"]), seed=st.integers(0, 10_000))
def test_harmonic_layers_are_exactly_equivariant_at_quarter_turns(size, k, quarters, padding, seed):
    torch.manual_seed(seed)
    first = HarmonicConv2d(2, 3, k, padding_mode=padding).double()
    second = HarmonicConv2d(3, 2, k, in_orders=(0, 1), out_orders=(0, 1, 2), padding_mode=padding).double()
    relu, norm = HarmonicReLU(3, 2).double(), HarmonicBatchNorm2d(3, 2).double().eval()
    x = _rand(2, 2, size, size, seed=seed)
    f = lambda t: second(relu(norm(first(t))))  # noqa: E731
    y, y_r = f(x), f(torch.rot90(x, quarters, (-2, -1)))
    assert _close(y_r, _turn((0, 1, 2), quarters) * torch.rot90(y, quarters, (-2, -1)))


def test_harmonic_conv_matches_complex_reference():
    """The real 2x2-block implementation equals complex conv2d with the filters written out."""
    z = torch.randn(2, 3, 2, 9, 9, dtype=torch.complex128, generator=_gen(0))
    torch.manual_seed(0)
    conv = HarmonicConv2d(3, 2, 5, in_orders=(0, 1), out_orders=(0, 1)).double()
    with torch.no_grad():
        y = conv(z)
        ref = torch.zeros_like(y)
        for a, ma in enumerate(conv.out_orders):
            for b, mb in enumerate(conv.in_orders):
                basis = harmonic_basis(5, ma - mb)
                w = torch.einsum("oij,jyx->oiyx", conv.radial[:, a, :, b].to(torch.complex128), basis)
                w = w * torch.exp(1j * conv.phase[:, a, :, b])[..., None, None]
                ref[:, :, a] += F.conv2d(z[:, :, b], w, padding=2)
    assert _close(y, ref)
    assert torch.equal(y, harmonic_conv2d(z, conv.radial, conv.phase, (0, 1), (0, 1)).detach())


def _smooth_images(n, size, seed=0):
    x = _rand(n, 1, size, size, seed=seed)
    for _ in range(2):
        x = blur_pool2d(x, 5, 1, "zeros")
    return x


@pytest.mark.parametrize("k", [3, 5])
def test_harmonic_error_at_45_degrees_is_far_below_a_plain_convs(k):
    torch.manual_seed(0)
    harmonic = HarmonicConv2d(1, 8, k).double()
    plain = nn.Conv2d(1, 8, k, padding=k // 2, bias=False).double()
    x = _smooth_images(6, 33)
    with torch.no_grad():
        e_h = float(rotation_equivariance_error(harmonic(x), harmonic(rotate(x, 45.0)), 45.0, margin=k // 2).mean())
        e_p = float(rotation_equivariance_error(plain(x), plain(rotate(x, 45.0)), 45.0, margin=k // 2).mean())
    assert e_h < 0.1 and e_p > 0.3 and e_h < e_p / 5, (e_h, e_p)  # measured: 0.02-0.05 against 0.5-0.67


@settings(max_examples=8, deadline=None)
@given(angle=st.floats(5.0, 85.0), seed=st.integers(0, 1000))
def test_harmonic_beats_plain_conv_at_any_angle(angle, seed):
    torch.manual_seed(seed)
    harmonic, plain = HarmonicConv2d(1, 6, 5).double(), nn.Conv2d(1, 6, 5, padding=2, bias=False).double()
    x = _smooth_images(3, 29, seed)
    with torch.no_grad():
        e_h = rotation_equivariance_error(harmonic(x), harmonic(rotate(x, angle)), angle, margin=2).mean()
        e_p = rotation_equivariance_error(plain(x), plain(rotate(x, angle)), angle, margin=2).mean()
    assert float(e_h) < float(e_p) / 3


def _calibrated(net, x):
    """Batch-norm statistics from one pass over ``x`` (as after training), then eval mode."""
    for m in net.modules():
        if hasattr(m, "momentum"):
            m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


def _stage_errors(net, x, angle):
    a, b, out = x, rotate(x, angle), []
    with torch.no_grad():
        for layer in net.features:
            a, b = layer(a), layer(b)
            out.append(float(rotation_equivariance_error(a, b, angle).mean()))
    return out


def test_harmonic_cnn_is_invariant_at_quarter_turns_and_beats_a_plain_cnn_at_45_degrees_layer_by_layer():
    from shiftlab.experiments.digits import make_canvas_split
    from shiftlab.experiments.nets import SmallCNN

    x = make_canvas_split(None, canvas=32, object_size=16, train_region="centre", test_limit=48).test.images.double()
    torch.manual_seed(0)
    harmonic = _calibrated(HarmonicCNN(width=4).double(), x)
    plain = _calibrated(SmallCNN(width=8).double(), x)
    with torch.no_grad():
        y = harmonic(x)
        for q in (1, 2, 3):
            assert _close(harmonic(torch.rot90(x, q, (-2, -1))), y)
    # stage by stage (convolution, norm, nonlinearity, subsampling): measured 0.03-0.27 against 0.26-1.0
    e_h, e_p = _stage_errors(harmonic, x, 45.0), _stage_errors(plain, x, 45.0)
    assert len(e_h) == len(e_p)
    assert all(h < p / 2 for h, p in zip(e_h, e_p)), (e_h, e_p)


def test_harmonic_nonlinearity_and_norm_keep_the_phase():
    z = torch.randn(2, 3, 2, 4, 4, dtype=torch.complex128, generator=_gen(1))
    bias = torch.full((3, 2), -0.3, dtype=torch.float64)
    out = harmonic_relu(z, bias)
    kept = out.abs() > 0
    assert torch.allclose((out / z)[kept].imag, torch.zeros(int(kept.sum()), dtype=torch.float64), atol=1e-15)
    assert torch.allclose(out.abs(), F.relu(z.abs() - 0.3))
    norm = HarmonicBatchNorm2d(3, 2).double().train()
    y = norm(z)
    assert torch.allclose((y.abs() ** 2).mean((0, 3, 4)), torch.ones(3, 2, dtype=torch.float64), atol=1e-3)
    assert not torch.allclose(norm.running_ms, torch.ones(3, 2, dtype=torch.float64))  # the running estimate moved


def test_harmonic_pool_and_magnitude():
    z = torch.randn(1, 2, 2, 4, 4, dtype=torch.complex128, generator=_gen(2))
    pooled = harmonic_blur_pool2d(z, filter_size=2)  # 2x2 average pooling
    assert torch.allclose(pooled, z.unflatten(-1, (2, 2)).unflatten(-3, (2, 2)).mean((-3, -1)))
    blurred = HarmonicBlurPool2d(filter_size=4)(z)
    assert torch.allclose(blurred.real, blur_pool2d(z.real.flatten(1, 2), 4, 2, "zeros").unflatten(1, (2, 2)))
    assert torch.allclose(blurred.imag, blur_pool2d(z.imag.flatten(1, 2), 4, 2, "zeros").unflatten(1, (2, 2)))
    assert torch.equal(HarmonicMagnitude()(z), z.abs().flatten(1, 2))


def test_gradcheck_harmonic_conv():
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    radial = torch.rand(2, 2, 1, 1, 2, dtype=torch.float64, requires_grad=True)
    phase = torch.rand(2, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, p: harmonic_conv2d(x, r, p).abs(), (radial, phase))


@pytest.mark.parametrize("bad", [
    lambda: HarmonicConv2d(1, 2, 4),
    lambda: HarmonicConv2d(1, 2, 5, out_orders=(0, 0)),
    lambda: HarmonicConv2d(1, 2, 5, in_orders=(0, 1))(torch.rand(1, 1, 8, 8)),  # a real image is order 0
    lambda: HarmonicConv2d(2, 2, 5)(torch.rand(1, 1, 8, 8)),
    lambda: harmonic_relu(torch.rand(1, 2, 2, 4, 4), torch.zeros(2, 2)),  # real input
    lambda: harmonic_blur_pool2d(torch.rand(1, 2, 4, 4, dtype=torch.complex64)),  # no stream axis
    lambda: harmonic_basis(5, 0.5),
])
def test_exception_harmonic_bad_input(bad):
    with pytest.raises(ShapeError) as info:
        bad()
    assert "\n" not in str(info.value)


def test_state_dict_holds_only_learned_values_and_the_basis_follows_the_formula():
    conv = HarmonicConv2d(1, 2, 5, in_orders=(0,), out_orders=(0, 1))
    assert set(conv.state_dict()) == {"radial", "phase"}
    re, im = conv.basis()
    for a, m in enumerate(conv.out_orders):
        assert torch.equal(torch.complex(re[a, 0], im[a, 0]), harmonic_basis(5, m))


def test_doctests():
    import doctest

    import shiftlab.experiments.nets as nets
    import shiftlab.layers.group as group
    import shiftlab.layers.harmonic as harmonic

    for module in (group, harmonic, nets):
        failures, attempted = doctest.testmod(module, verbose=False)
        assert attempted > 0 and failures == 0, module.__name__
