"""shiftlab.measure.rotation: per-sample rotation equivariance errors of feature maps (issue 14, item 2).

The measurement is checked on its own: hand-built features whose error is known exactly, p4/p4m layers
(exact: 0 up to rounding), plain convolutions (negative control: must fail), every layout (plain, group 5-D,
group flattened, harmonic, vectors), per-sample angles, the disc, and bad input.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftlab.errors import ShapeError
from shiftlab.layers import HarmonicConv2d, group_act, group_conv2d, lift_conv2d
from shiftlab.measure.rotation import (quarter_turns, rotate_features, rotation_equivariance_error,
                                       rotation_equivariance_stats, rotation_mask)
from shiftlab.transforms import rotate


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _rot(x, q):
    return torch.rot90(x, q, dims=(-2, -1))


# --------------------------------------------------------------------------------------------- hand-built cases


@settings(max_examples=30, deadline=None)
@given(h=st.integers(3, 12), w=st.integers(3, 12), angle=st.floats(-720, 720, allow_nan=False),
       seed=st.integers(0, 1000))
def test_identity_layer_has_zero_error_at_every_angle_and_size(h, w, angle, seed):
    """phi = identity: the rotated input *is* the rotated feature (same resampler), so err2 is exactly 0."""
    if h != w and quarter_turns(angle) in (1, 3):
        w = h  # an odd quarter turn of a non-square map changes its shape; covered below
    x = _rand(3, 2, h, w, seed=seed)
    err2, ref2 = rotation_equivariance_stats(x, rotate(x, angle), angle)
    assert err2.dtype == torch.float64 and err2.shape == (3,)
    assert torch.equal(err2, torch.zeros(3, dtype=torch.float64))
    assert bool((ref2 > 0).all())


def test_known_error_is_returned_exactly_at_quarter_turns_and_only_inside_the_disc_elsewhere():
    x = _rand(2, 3, 9, 9)
    delta = torch.zeros_like(x)
    delta[0, 1, 4, 4] = 0.5  # the centre: inside the disc
    delta[1, 2, 0, 0] = 2.0  # a corner: outside the disc
    err2, ref2 = rotation_equivariance_stats(x, _rot(x, 1) + delta, 90)
    assert err2.tolist() == [0.25, 4.0]  # the whole map counts at multiples of 90
    assert torch.allclose(ref2, (x**2).flatten(1).sum(1), rtol=1e-15)
    err2, ref2 = rotation_equivariance_stats(x, rotate(x, 30.0) + delta, 30.0)
    assert err2.tolist() == [0.25, 0.0]  # the corner never enters the comparison
    mask = rotation_mask(9, 9)
    assert torch.allclose(ref2, (rotate(x, 30.0) ** 2 * mask).flatten(1).sum(1), rtol=1e-15)
    err2_all, _ = rotation_equivariance_stats(x, rotate(x, 30.0) + delta, 30.0, disc=False)
    assert err2_all.tolist() == [0.25, 4.0]


def test_hand_built_p4_feature_is_cycled_in_the_right_direction():
    """F[g] = constant map c_g. A quarter turn of the input must give F'[r] = c_{r-1} (rotation index up by one)."""
    c = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    f = c.view(1, 1, 4, 1, 1).expand(1, 1, 4, 3, 3).clone()
    right = c[[3, 0, 1, 2]].view(1, 1, 4, 1, 1).expand(1, 1, 4, 3, 3)
    wrong = c[[1, 2, 3, 0]].view(1, 1, 4, 1, 1).expand(1, 1, 4, 3, 3)
    assert rotation_equivariance_stats(f, right, 90)[0].item() == 0.0
    err2, ref2 = rotation_equivariance_stats(f, wrong, 90)
    assert err2.item() == 9 * float(((c[[1, 2, 3, 0]] - c[[3, 0, 1, 2]]) ** 2).sum())
    assert ref2.item() == 9 * float((c**2).sum())


def test_hand_built_harmonic_feature_gets_the_phase_of_its_order():
    z = torch.randn(2, 3, 2, 6, 6, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    turn = torch.tensor([1, 1j], dtype=torch.complex128).view(1, 1, 2, 1, 1)  # orders 0, 1 at 90 degrees
    assert rotation_equivariance_stats(z, turn * _rot(z, 1), 90)[0].abs().max() == 0.0
    err2, ref2 = rotation_equivariance_stats(z, turn.conj() * _rot(z, 1), 90)  # the wrong sense
    order1 = (z[:, :, 1].abs() ** 2).flatten(1).sum(1)
    assert torch.allclose(err2, 4 * order1, rtol=1e-14)  # |i - (-i)|^2 = 4 on the order-1 stream only
    assert torch.allclose(ref2, (z.abs() ** 2).flatten(1).sum(1), rtol=1e-14)
    # any angle: exp(i m theta) times the rotated maps
    theta = 30.0
    expected = torch.complex(rotate(z.real.flatten(1, 2), theta), rotate(z.imag.flatten(1, 2), theta))
    expected = expected.unflatten(1, (3, 2))
    phase = torch.tensor([1, complex(math.cos(math.pi / 6), math.sin(math.pi / 6))], dtype=torch.complex128)
    expected = expected * phase.view(1, 1, 2, 1, 1)
    assert torch.allclose(rotate_features(z, theta), expected, rtol=0, atol=1e-14)
    # explicit orders
    assert rotation_equivariance_stats(z, -_rot(z, 1), 90, orders=[2, 2])[0].abs().max() == 0.0


def test_vectors_measure_invariance():
    logits = _rand(4, 10)
    assert rotation_equivariance_stats(logits, logits.clone(), 37.0)[0].abs().max() == 0.0
    err = rotation_equivariance_error(logits, logits * 1.1, 37.0)
    assert torch.allclose(err, torch.full((4,), 0.1, dtype=torch.float64), rtol=1e-12)


# --------------------------------------------------------------------------------------------- layers


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_p4_and_p4m_layers_are_exact_layer_by_layer_in_every_layout(group):
    g = 8 if group == "p4m" else 4
    x = _rand(3, 2, 12, 12)
    w1, w2 = _rand(4, 2, 3, 3, seed=1), _rand(3, 4, g, 5, 5, seed=2)

    def layers(t):
        a = torch.relu(lift_conv2d(t, w1, group=group))
        b = group_conv2d(a, w2, group=group)
        return [a, b, F.max_pool3d(b, (1, 2, 2)), b.amax(2)]

    mirrors = (False, True) if group == "p4m" else (False,)
    for mirror in mirrors:
        for q in range(4):
            xr = _rot(x.flip(-1) if mirror else x, q)
            for phi, phi_r in zip(layers(x), layers(xr)):
                err2, ref2 = rotation_equivariance_stats(phi, phi_r, 90 * q, mirror=mirror)
                assert float((err2 / ref2).max()) <= 1e-24, (group, mirror, q, phi.shape)
                if phi.ndim == 5:  # the same numbers from the flattened (B, C * G, H, W) layout
                    flat = rotation_equivariance_stats(phi.flatten(1, 2), phi_r.flatten(1, 2), 90 * q, g,
                                                       mirror=mirror)
                    assert torch.allclose(flat[1], ref2, rtol=1e-15) and float((flat[0] / flat[1]).max()) <= 1e-24


def test_negative_controls_plain_conv_and_an_uncycled_group_axis_fail():
    x = _rand(3, 2, 12, 12)
    w = _rand(4, 2, 3, 3, seed=1)
    err = rotation_equivariance_error(F.conv2d(x, w, padding=1), F.conv2d(_rot(x, 1), w, padding=1), 90)
    assert float(err.min()) > 0.1
    lifted, lifted_r = lift_conv2d(x, w), lift_conv2d(_rot(x, 1), w)
    # read as plain channels (no group_order): the group axis is not cycled, so the check must fail
    err = rotation_equivariance_error(lifted.flatten(1, 2), lifted_r.flatten(1, 2), 90)
    assert float(err.min()) > 0.1
    assert float(rotation_equivariance_error(lifted.flatten(1, 2), lifted_r.flatten(1, 2), 90, 4).max()) < 1e-12


def test_harmonic_layer_is_exact_at_quarter_turns_and_far_better_than_plain_at_45():
    torch.manual_seed(0)
    conv = HarmonicConv2d(1, 6, 5).double()
    plain = torch.nn.Conv2d(1, 6, 5, padding=2, bias=False).double()
    x = F.avg_pool2d(_rand(4, 1, 70, 70), 2)  # smooth-ish 35x35 inputs
    with torch.no_grad():
        for q in (1, 2, 3):
            assert float(rotation_equivariance_error(conv(x), conv(_rot(x, q)), 90 * q).max()) < 1e-12
        e_h = rotation_equivariance_error(conv(x), conv(rotate(x, 45.0)), 45.0, margin=2).mean()
        e_p = rotation_equivariance_error(plain(x), plain(rotate(x, 45.0)), 45.0, margin=2).mean()
    assert float(e_h) < float(e_p) / 4, (float(e_h), float(e_p))


# --------------------------------------------------------------------------------------------- conventions


def test_per_sample_angles_equal_one_call_per_angle():
    x = _rand(5, 2, 10, 10)
    angles = torch.tensor([0.0, 90.0, 30.0, 90.0, -45.0])
    phi_rx = rotate(x, angles) + 0.01 * _rand(5, 2, 10, 10, seed=3)
    err2, ref2 = rotation_equivariance_stats(x, phi_rx, angles)
    for i, a in enumerate(angles.tolist()):
        e, r = rotation_equivariance_stats(x[i:i + 1], phi_rx[i:i + 1], a)
        assert torch.allclose(err2[i:i + 1], e, rtol=1e-14) and torch.allclose(ref2[i:i + 1], r, rtol=1e-14)


def test_odd_quarter_turns_of_non_square_maps_and_counter_clockwise_sense():
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]], dtype=torch.float64)  # 2x3
    r = rotate_features(x, 90)
    assert r.shape == (1, 1, 3, 2) and r[0, 0].tolist() == [[3.0, 6.0], [2.0, 5.0], [1.0, 4.0]]  # top row -> left
    assert rotation_equivariance_stats(x, r, 90)[0].item() == 0.0
    assert torch.equal(rotate_features(rotate_features(x, 90), -90), x)


def test_group_features_at_other_angles_cycle_by_the_nearest_quarter_turn():
    f = torch.arange(4.0, dtype=torch.float64).view(1, 1, 4, 1, 1)
    assert rotate_features(f, 30.0).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert rotate_features(f, 80.0).flatten().tolist() == [3.0, 0.0, 1.0, 2.0]
    assert rotate_features(f, -100.0).flatten().tolist() == [1.0, 2.0, 3.0, 0.0]
    assert torch.equal(rotate_features(f, 90), group_act(f, 1))


def test_mirror_of_plain_features():
    x = _rand(2, 3, 7, 7)
    xm = torch.rot90(x.flip(-1), 1, (-2, -1))
    assert rotation_equivariance_stats(x, xm, 90, mirror=True)[0].abs().max() == 0.0
    assert float(rotation_equivariance_stats(x, xm, 90)[0].min()) > 0  # without the mirror it is wrong


def test_rotation_mask_is_the_inscribed_disc():
    mask = rotation_mask(32, 32)
    assert bool(mask[16, 0]) is False and bool(mask[15, 0]) is False and bool(mask[0, 0]) is False
    assert bool(mask[15, 1]) and bool(mask[16, 16])
    assert int(rotation_mask(32, 32, margin=4).sum()) < int(mask.sum())
    # the disc never samples outside the map: the zero corners of a rotation never reach it
    ones = torch.ones(1, 1, 32, 32, dtype=torch.float64)
    for angle in (10.0, 45.0, 137.0):
        assert torch.allclose(rotate(ones, angle)[0, 0][mask], torch.ones(int(mask.sum()), dtype=torch.float64))


@pytest.mark.parametrize("bad", [
    lambda: rotation_equivariance_stats(torch.rand(2, 3, 5, 5), torch.rand(2, 3, 6, 6), 90),
    lambda: rotation_equivariance_stats(torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5), 90, group_order=4),
    lambda: rotation_equivariance_stats(torch.rand(2, 3, 4, 5, 5), torch.rand(2, 3, 4, 5, 5), 90, mirror=True),
    lambda: rotation_equivariance_stats(torch.rand(2, 3, 6, 5, 5), torch.rand(2, 3, 6, 5, 5), 90),
    lambda: rotation_equivariance_stats(torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5), 30.0, margin=-1),
    lambda: rotation_equivariance_stats(torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5), torch.zeros(3)),
    lambda: rotation_equivariance_stats(torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5, dtype=torch.complex64), 90),
    lambda: rotation_equivariance_stats(torch.rand(2, 1, 2, 5, 5, dtype=torch.complex64),
                                        torch.rand(2, 1, 2, 5, 5, dtype=torch.complex64), 90, orders=[0]),
    lambda: rotation_equivariance_stats(torch.rand(2, 1, 2, 5, 5, dtype=torch.complex64),
                                        torch.rand(2, 1, 2, 5, 5, dtype=torch.complex64), 90, mirror=True),
    lambda: rotation_equivariance_stats(None, torch.rand(2, 3, 5, 5), 90),
    lambda: rotation_equivariance_stats(torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5), float("nan")),
])
def test_exception_bad_input_is_a_one_line_shape_error(bad):
    with pytest.raises(ShapeError) as info:
        bad()
    assert "\n" not in str(info.value)


def test_an_empty_disc_compares_nothing():
    """A 2x2 map has no pixel whose rotation by 45 degrees stays inside it: nothing to compare, error undefined."""
    x = _rand(2, 3, 2, 2)
    err2, ref2 = rotation_equivariance_stats(x, x, 45.0)
    assert err2.tolist() == [0.0, 0.0] and ref2.tolist() == [0.0, 0.0]
    assert bool(torch.isnan(rotation_equivariance_error(x, x, 45.0)).all())
    assert rotation_equivariance_stats(x, _rot(x, 1), 90)[1].min() > 0  # quarter turns compare the whole map


def test_reference_replaces_the_rotation():
    x = _rand(2, 3, 8, 8)
    ref = rotate(x, 20.0)
    err2, ref2 = rotation_equivariance_stats(None, ref + 1.0, 20.0, reference=ref, disc=False)
    assert torch.allclose(err2, torch.full((2,), 3 * 64.0, dtype=torch.float64))


def test_doctests():
    import doctest

    import shiftlab.measure.rotation as rotation

    failures, attempted = doctest.testmod(rotation, verbose=False)
    assert attempted > 0 and failures == 0
