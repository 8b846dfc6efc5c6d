"""The definitions as executable checks (shiftlab.equivariance): each claim with a negative control."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import shiftlab
from shiftlab.classic import convolve, max_pool
from shiftlab.equivariance import (
    EquivarianceError,
    assert_equivariant,
    assert_invariant,
    equivariance_error,
    invariance_error,
)
from shiftlab.errors import InputError, ShapeError

SETTINGS = settings(max_examples=30, deadline=None)


def roll(dy, dx):
    """The shift convention: content moves down by dy and right by dx."""
    return lambda t: torch.roll(t, (dy, dx), dims=(-2, -1))


def circular_convolution(kernel):
    """Cross-correlation with circular padding, output the size of the input (kernel (kh, kw))."""
    kh, kw = kernel.shape

    def f(x):
        padded = torch.cat([x, x[..., : kh - 1, :]], dim=-2)
        padded = torch.cat([padded, padded[..., :, : kw - 1]], dim=-1)
        return convolve(padded, kernel, relu=False)

    return f


@st.composite
def image_kernel_shift(draw, even=False, interior=False):
    """A random (2, 3, h, w) float64 image, (kh, kw) kernel and shift (dy, dx).

    ``interior``: shifts small enough that a margin of (|dy|, |dx|) leaves part of a valid output.
    """
    h = draw(st.integers(3, 12)) * (2 if even else 1)
    w = draw(st.integers(3, 12)) * (2 if even else 1)
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if interior:
        my, mx = (h - kh) // 2, (w - kw) // 2
        dy, dx = draw(st.integers(-my, my)), draw(st.integers(-mx, mx))
    else:
        dy, dx = draw(st.integers(-h, h)), draw(st.integers(-w, w))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, h, w, dtype=torch.float64, generator=g)
    kernel = torch.randn(kh, kw, dtype=torch.float64, generator=g)
    return x, kernel, dy, dx


# ---- the measurement itself ---------------------------------------------------------------------

def test_error_is_numbers_and_measures_the_difference():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 1] = 2.0
    err = equivariance_error(lambda t: t, x, roll(0, 1), lambda t: t)  # a shift is not the identity
    assert isinstance(err, EquivarianceError)
    assert err.max_abs == 2.0 and err.max_rel == 1.0 and err.scale == 2.0 and err.compared == 16
    assert err.rel_l2 == pytest.approx(np.sqrt(8) / 2)
    assert err.dtype == "torch.float64"
    assert set(err.to_dict()) == {"max_abs", "max_rel", "rel_l2", "scale", "compared", "dtype"}
    assert shiftlab.equivariance_error is equivariance_error and shiftlab.assert_invariant is assert_invariant


def test_dtype_argument_computes_in_float64_and_casts_modules():
    conv = torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular", bias=False)
    x = torch.randn(1, 1, 8, 8)
    err32 = equivariance_error(conv, x, roll(1, 2))
    err64 = equivariance_error(conv, x, roll(1, 2), dtype=torch.float64)
    assert err32.dtype == "torch.float32" and err64.dtype == "torch.float64"
    assert conv.weight.dtype == torch.float32  # the caller's module is not changed
    assert err64.max_rel <= 1e-12
    assert_equivariant(conv, x, roll(1, 2))  # float32 tolerance
    assert_equivariant(conv, x, roll(1, 2), dtype=torch.float64)


def test_numpy_functions_are_checked_too():
    image = np.random.default_rng(0).random((12, 12))
    shift = lambda a: np.roll(a, (2, 2), axis=(0, 1))  # noqa: E731
    err = equivariance_error(lambda a: max_pool(a, 2), image, shift, lambda a: np.roll(a, (1, 1), axis=(0, 1)))
    assert err.max_abs == 0.0
    assert equivariance_error(lambda a: a * 2, image.astype(np.float32), shift, dtype=torch.float64).dtype == (
        "torch.float64")


def test_bad_arguments_give_typed_errors():
    x = torch.randn(1, 1, 6, 6)
    with pytest.raises(ShapeError):
        equivariance_error(lambda t: t, x, roll(1, 1), lambda t: t[..., 1:, :])
    with pytest.raises(ShapeError):
        equivariance_error(lambda t: t, x, roll(1, 1), margin=3)
    with pytest.raises(InputError):
        equivariance_error(lambda t: t, x, roll(1, 1), margin=-1)
    with pytest.raises(InputError):
        equivariance_error("not callable", x, roll(1, 1))
    with pytest.raises(ShapeError):
        equivariance_error(lambda t: t, x, roll(1, 1), mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ShapeError):
        equivariance_error(lambda t: t * float("nan"), x, roll(1, 1))


def test_tolerance_depends_on_dtype_and_can_be_overridden():
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64) + 1.0
    scale_up = lambda t: t * (1 + 1e-7)  # noqa: E731 (a transform that changes the output by 1e-7 relative)
    identity = lambda t: t  # noqa: E731
    assert invariance_error(identity, x, scale_up).max_rel == pytest.approx(1e-7, rel=1e-3)
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(identity, x, scale_up)  # float64: tolerance 1e-10
    assert_invariant(identity, x.float(), scale_up)  # float32: tolerance 1e-5
    assert_invariant(identity, x, scale_up, rtol=1e-6)
    assert_invariant(identity, x, scale_up, atol=1e-6 * 3)
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(identity, x, scale_up, identity)


# ---- circular convolution: exactly equivariant for every shift -----------------------------------

@SETTINGS
@given(case=image_kernel_shift())
def test_circular_convolution_is_exactly_translation_equivariant(case):
    x, kernel, dy, dx = case
    err = assert_equivariant(circular_convolution(kernel), x, roll(dy, dx))
    assert err.max_abs == 0.0  # the same products, summed in the same order


def test_circular_convolution_is_equivariant_for_every_shift_of_an_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 7, 9, dtype=torch.float64, generator=g)
    f = circular_convolution(torch.randn(3, 3, dtype=torch.float64, generator=g))
    errors = [equivariance_error(f, x, roll(dy, dx)).max_abs for dy in range(7) for dx in range(9)]
    assert max(errors) == 0.0
    # and torch's own circular convolution agrees within float64 rounding
    conv = lambda t: F.conv2d(F.pad(t.reshape(-1, 1, *t.shape[-2:]), (1, 1, 1, 1), mode="circular"),  # noqa: E731
                              torch.ones(1, 1, 3, 3, dtype=torch.float64)).reshape(t.shape)
    for dy, dx in [(1, 0), (3, 5), (-2, 7)]:
        assert_equivariant(conv, x, roll(dy, dx))


@SETTINGS
@given(case=image_kernel_shift())
def test_negative_control_zero_padded_convolution_is_not_equivariant(case):
    x, kernel, dy, dx = case
    h, w = x.shape[-2:]
    kh, kw = kernel.shape
    # a shift only along axes that are not padded breaks nothing
    assume((dy % h != 0 and kh > 1) or (dx % w != 0 and kw > 1))
    zero_padded = lambda t: convolve(F.pad(t, (0, kw - 1, 0, kh - 1)), kernel, relu=False)  # noqa: E731
    with pytest.raises(AssertionError):
        assert_equivariant(zero_padded, x, roll(dy, dx))


def test_negative_control_wrong_output_shift_fails():
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    f = circular_convolution(torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(AssertionError):
        assert_equivariant(f, x, roll(2, 3), roll(2, 4))


# ---- valid convolution: equivariant in the interior ----------------------------------------------

@SETTINGS
@given(case=image_kernel_shift(interior=True))
def test_valid_convolution_is_equivariant_in_the_interior(case):
    x, kernel, dy, dx = case
    f = lambda t: convolve(t, kernel, relu=True)  # noqa: E731 (ReLU commutes with shifts)
    err = assert_equivariant(f, x, roll(dy, dx), margin=(abs(dy), abs(dx)))
    assert err.max_abs == 0.0


def test_negative_control_valid_convolution_is_not_equivariant_at_the_border():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64, generator=g)
    kernel = torch.randn(3, 3, dtype=torch.float64, generator=g)
    f = lambda t: convolve(t, kernel, relu=False)  # noqa: E731
    assert_equivariant(f, x, roll(2, -3), margin=(2, 3))
    with pytest.raises(AssertionError):
        assert_equivariant(f, x, roll(2, -3))
    # the exact region is the complement of the seam: a mask says the same as a margin
    mask = torch.ones(14, 14, dtype=torch.bool)
    mask[:2] = False
    mask[:, -3:] = False
    assert assert_equivariant(f, x, roll(2, -3), mask=mask).max_abs == 0.0


# ---- stride-2 subsampling: equivariant only for even shifts --------------------------------------

def subsample(t):
    return t[..., ::2, ::2]


@SETTINGS
@given(case=image_kernel_shift(even=True))
def test_stride_2_subsampling_is_equivariant_for_even_shifts(case):
    x, _, dy, dx = case
    dy, dx = 2 * (dy // 2), 2 * (dx // 2)
    err = assert_equivariant(subsample, x, roll(dy, dx), roll(dy // 2, dx // 2))
    assert err.max_abs == 0.0


@SETTINGS
@given(case=image_kernel_shift(even=True))
def test_negative_control_stride_2_subsampling_is_not_equivariant_for_odd_shifts(case):
    x, _, dy, dx = case
    dy = 2 * (dy // 2) + 1  # odd rows; any columns
    h2, w2 = x.shape[-2] // 2, x.shape[-1] // 2
    for ey in range(h2):  # no shift of the output whatsoever repairs it
        for ex in range(w2):
            with pytest.raises(AssertionError):
                assert_equivariant(subsample, x, roll(dy, dx), roll(ey, ex))


# ---- pooling -------------------------------------------------------------------------------------

def test_max_pooling_is_not_invariant():
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    pool = lambda t: max_pool(t, 2)  # noqa: E731
    for shift in [(1, 0), (0, 1), (2, 2)]:
        with pytest.raises(AssertionError):
            assert_invariant(pool, x, roll(*shift))
    # what holds instead: equivariance for shifts by the stride, with the shift halved
    assert assert_equivariant(pool, x, roll(2, 4), roll(1, 2)).max_abs == 0.0


@SETTINGS
@given(case=image_kernel_shift(), use_max=st.booleans())
def test_global_pooling_after_circular_convolution_is_invariant(case, use_max):
    x, kernel, dy, dx = case
    conv = circular_convolution(kernel)
    if use_max:
        f = lambda t: torch.relu(conv(t)).amax(dim=(-2, -1))  # noqa: E731
        assert assert_invariant(f, x, roll(dy, dx)).max_abs == 0.0  # a max of the same numbers
    else:
        f = lambda t: conv(t).mean(dim=(-2, -1))  # noqa: E731
        assert_invariant(f, x, roll(dy, dx))  # a sum in another order: rounding only


@SETTINGS
@given(case=image_kernel_shift())
def test_negative_control_global_pooling_after_valid_convolution_is_not_invariant(case):
    x, kernel, dy, dx = case
    h, w = x.shape[-2:]
    kh, kw = kernel.shape
    assume((dy % h != 0 and kh > 1) or (dx % w != 0 and kw > 1))  # something leaves the valid windows
    f = lambda t: convolve(t, kernel, relu=False).mean(dim=(-2, -1))  # noqa: E731
    with pytest.raises(AssertionError):
        assert_invariant(f, x, roll(dy, dx))
