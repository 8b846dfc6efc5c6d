"""Tests of shiftlab.transforms: each transformation against a slow reference, an analytic truth or its inverse."""

import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import shiftlab.transforms as T
from shiftlab.errors import InputError, ShapeError

SETTINGS = settings(max_examples=25, deadline=None)


def _images(batch=3, channels=2, height=7, width=9, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, height, width, generator=g, dtype=torch.float64).to(dtype)


def test_doctests():
    failures, attempted = doctest.testmod(T, verbose=False)
    assert attempted > 10
    assert failures == 0


# ------------------------------------------------------------------ circular_shift

@SETTINGS
@given(h=st.integers(1, 8), w=st.integers(1, 8), seed=st.integers(0, 100),
       shifts=st.lists(st.tuples(st.integers(-20, 20), st.integers(-20, 20)), min_size=1, max_size=4))
def test_circular_shift_per_sample_equals_roll(h, w, seed, shifts):
    x = _images(len(shifts), 2, h, w, seed=seed)
    dy = torch.tensor([s[0] for s in shifts])
    dx = torch.tensor([s[1] for s in shifts])
    out = T.circular_shift(x, dy, dx)
    for b, (sy, sx) in enumerate(shifts):
        assert torch.equal(out[b], torch.roll(x[b], (sy, sx), dims=(-2, -1)))


def test_circular_shift_convention_moves_content_down_right():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 1, 1] = 1.0
    for out in (T.circular_shift(x, 2, 1), T.circular_shift(x, torch.tensor([2]), torch.tensor([1]))):
        assert out[0, 0, 3, 2] == 1.0 and out.sum() == 1.0


@SETTINGS
@given(a=st.tuples(st.integers(-9, 9), st.integers(-9, 9)), b=st.tuples(st.integers(-9, 9), st.integers(-9, 9)))
def test_circular_shift_group_law_and_inverse(a, b):
    x = _images(2, 3, 6, 5)
    ab = T.circular_shift(T.circular_shift(x, *a), *b)
    assert torch.equal(ab, T.circular_shift(x, a[0] + b[0], a[1] + b[1]))
    assert torch.equal(T.circular_shift(T.circular_shift(x, *a), -a[0], -a[1]), x)
    per_sample = T.circular_shift(x, torch.tensor([a[0]] * 2), torch.tensor([a[1]] * 2))
    assert torch.equal(per_sample, T.circular_shift(x, *a))


def test_circular_shift_negative_control_wrong_sign_differs():
    x = _images()
    assert not torch.equal(T.circular_shift(x, 1, 2), torch.roll(x, (-1, -2), dims=(-2, -1)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_circular_shift_keeps_dtype(dtype):
    x = _images(dtype=dtype)
    out = T.circular_shift(x, torch.tensor([1, 2, 3]), torch.tensor([0, -1, 4]))
    assert out.dtype == dtype and out.device == x.device


def test_circular_shift_exceptions():
    x = _images()
    with pytest.raises(ShapeError):
        T.circular_shift(x, 0.5, 0)
    with pytest.raises(ShapeError):
        T.circular_shift(x, torch.tensor([0.5, 1.0, 2.0]), 0)
    with pytest.raises(ShapeError):
        T.circular_shift(x, torch.tensor([1, 2]), 0)
    with pytest.raises(ShapeError):
        T.circular_shift(x[0], 1, 1)
    with pytest.raises(ShapeError):
        T.circular_shift(x.long(), 1, 1)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[1, 0, 2, 3] = bad
        with pytest.raises(ShapeError, match="NaN or Inf"):
            T.circular_shift(y, 1, 1)
    assert torch.equal(T.circular_shift(torch.full((1, 1, 2, 2), 1e308, dtype=torch.float64), 1, 0),
                       torch.full((1, 1, 2, 2), 1e308, dtype=torch.float64))  # a sum that overflows is not an error


# ------------------------------------------------------------------ crop_shift

@SETTINGS
@given(data=st.data(), h=st.integers(1, 6), w=st.integers(1, 6), extra=st.tuples(st.integers(0, 5), st.integers(0, 5)))
def test_crop_shift_equals_slicing(data, h, w, extra):
    x = _images(3, 2, h + extra[0], w + extra[1])
    dy = [data.draw(st.integers(0, extra[0])) for _ in range(3)]
    dx = [data.draw(st.integers(0, extra[1])) for _ in range(3)]
    out = T.crop_shift(x, torch.tensor(dy), torch.tensor(dx), (h, w))
    assert out.shape == (3, 2, h, w)
    for b in range(3):
        assert torch.equal(out[b], x[b, :, dy[b]:dy[b] + h, dx[b]:dx[b] + w])
    scalar = T.crop_shift(x, dy[0], dx[0], (h, w))
    assert torch.equal(scalar, x[..., dy[0]:dy[0] + h, dx[0]:dx[0] + w])


def test_crop_shift_zhang_protocol_and_copy():
    x = _images(2, 3, 256, 256, dtype=torch.float32)
    out = T.crop_shift(x, torch.tensor([0, 31]), torch.tensor([31, 5]), 224)
    assert torch.equal(out[1], x[1, :, 31:255, 5:229])
    out[...] = -1.0  # a new tensor, never a view of x
    assert x.min() >= 0


def test_crop_shift_exceptions():
    x = _images(3, 1, 8, 8)
    with pytest.raises(ShapeError):
        T.crop_shift(x, 0, 0, 9)
    with pytest.raises(ShapeError):
        T.crop_shift(x, 3, 0, 6)
    with pytest.raises(ShapeError):
        T.crop_shift(x, torch.tensor([0, 0, -1]), 0, 4)
    with pytest.raises(ShapeError):
        T.crop_shift(x, 0, torch.tensor([0, 5, 0]), (2, 4))
    with pytest.raises(ShapeError):
        T.crop_shift(x, 0, 0, (0, 4))


# ------------------------------------------------------------------ canvas_embed

@pytest.mark.parametrize("fill", ["black", "mean", "inpaint"])
def test_canvas_embed_pastes_resized_object_exactly(fill):
    x = _images(3, 3, 20, 16, dtype=torch.float32)
    top, left = torch.tensor([0, 3, 7]), torch.tensor([5, 0, 9])
    out = T.canvas_embed(x, top, left, (17, 21), object_size=(10, 12), fill=fill)
    obj = F.interpolate(x, size=(10, 12), mode="bilinear", antialias=True, align_corners=False)
    assert out.shape == (3, 3, 17, 21) and out.dtype == x.dtype
    for b in range(3):
        t, l = int(top[b]), int(left[b])
        assert torch.equal(out[b, :, t:t + 10, l:l + 12], obj[b])
        outside = torch.ones(17, 21, dtype=torch.bool)
        outside[t:t + 10, l:l + 12] = False
        if fill == "black":
            assert torch.all(out[b][:, outside] == 0)
        elif fill == "mean":
            expected = obj[b].mean(dim=(-2, -1))[:, None].expand(3, int(outside.sum()))
            assert torch.equal(out[b][:, outside], expected)
        else:  # edge extension = replicate padding of the object
            padded = F.pad(obj[b:b + 1], (l, 21 - 12 - l, t, 17 - 10 - t), mode="replicate")
            assert torch.equal(out[b], padded[0])
        assert torch.equal(out[b], T.canvas_embed(x[b:b + 1], t, l, (17, 21), (10, 12), fill)[0])


def test_canvas_embed_without_resize_and_translation():
    x = _images(2, 1, 5, 6)
    out = T.canvas_embed(x, 2, 3, 12)
    assert torch.equal(out[..., 2:7, 3:9], x)
    assert out.sum() == x.sum()
    # moving the paste position translates the black canvas (the object stays whole)
    moved = T.canvas_embed(x, 4, 6, 12)
    assert torch.equal(moved, torch.roll(out, (2, 3), dims=(-2, -1)))
    # negative control: the inpainted canvas is not a translation (its border changes with the position)
    a = T.canvas_embed(x, 2, 3, 12, fill="inpaint")
    b = T.canvas_embed(x, 4, 6, 12, fill="inpaint")
    assert not torch.equal(b, torch.roll(a, (2, 3), dims=(-2, -1)))


def test_canvas_embed_exceptions():
    x = _images(2, 3, 8, 8)
    with pytest.raises(ShapeError):
        T.canvas_embed(x, 0, 0, 7)
    with pytest.raises(ShapeError):
        T.canvas_embed(x, 3, 0, 10, object_size=8)
    with pytest.raises(ShapeError):
        T.canvas_embed(x, torch.tensor([0, -1]), 0, 10)
    with pytest.raises(InputError):
        T.canvas_embed(x, 0, 0, 10, fill="white")


# ------------------------------------------------------------------ fourier_shift

@pytest.mark.parametrize("size", [(8, 6), (7, 9), (6, 5)])
def test_fourier_shift_integer_equals_roll(size):
    x = _images(3, 2, *size)
    for dy, dx in [(0, 0), (1, 0), (-3, 2), (10, -7)]:
        out = T.fourier_shift(x, float(dy), float(dx))
        assert out.dtype == torch.float64
        assert (out - torch.roll(x, (dy, dx), dims=(-2, -1))).abs().max() < 1e-12
    per_sample = T.fourier_shift(x, torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 3.0, 1.0]))
    for b, (dy, dx) in enumerate([(1, 0), (0, 3), (-2, 1)]):
        assert (per_sample[b] - torch.roll(x[b], (dy, dx), dims=(-2, -1))).abs().max() < 1e-12


def _band_limited(height, width, dy=0.0, dx=0.0):
    """A sum of sinusoids below the Nyquist frequency, sampled at (i - dy, j - dx)."""
    i = torch.arange(height, dtype=torch.float64)[:, None] - dy
    j = torch.arange(width, dtype=torch.float64)[None, :] - dx
    terms = [(1, 2, 0.3, 0.7), (3, 0, 1.1, 0.2), (2, 3, -0.4, 0.5), (0, 1, 2.0, 0.3)]
    return sum(amp * torch.cos(2 * math.pi * (ky * i / height + kx * j / width) + phase)
               for ky, kx, phase, amp in terms)


@pytest.mark.parametrize("size", [(8, 8), (9, 10)])
@pytest.mark.parametrize("shift", [(0.5, 0.5), (-0.25, 1.75), (0.3, -2.6)])
def test_fourier_shift_band_limited_matches_analytic(size, shift):
    x = _band_limited(*size)[None, None]
    out = T.fourier_shift(x, *shift)
    assert (out - _band_limited(*size, *shift)).abs().max() < 1e-10


@SETTINGS
@given(a=st.floats(-3, 3), b=st.floats(-3, 3), c=st.floats(-3, 3), d=st.floats(-3, 3))
def test_fourier_shift_composition_and_inverse(a, b, c, d):
    odd = _images(2, 1, 7, 9)  # odd sizes: no Nyquist bin, the law holds for any image
    assert (T.fourier_shift(T.fourier_shift(odd, a, b), c, d) - T.fourier_shift(odd, a + c, b + d)).abs().max() < 1e-10
    assert (T.fourier_shift(T.fourier_shift(odd, a, b), -a, -b) - odd).abs().max() < 1e-10
    even = _band_limited(8, 10)[None, None]  # even sizes: holds for images without Nyquist energy
    composed = T.fourier_shift(T.fourier_shift(even, a, b), c, d)
    assert (composed - T.fourier_shift(even, a + c, b + d)).abs().max() < 1e-10


def test_fourier_shift_nyquist_negative_control():
    # at even sizes a half-pixel shift removes the Nyquist component: two halves are not one whole
    x = _images(1, 1, 8, 8)
    twice = T.fourier_shift(T.fourier_shift(x, 0.5, 0.0), 0.5, 0.0)
    assert (twice - torch.roll(x, 1, dims=-2)).abs().max() > 1e-3
    # and the output is real and of the input dtype
    assert T.fourier_shift(x.float(), 0.5, 0.5).dtype == torch.float32
    assert T.fourier_shift(x.half(), 0.5, 0.5).dtype == torch.float16


# ------------------------------------------------------------------ lanczos_shift

def _lanczos_reference(x, dy, dx, a=3):
    """Slow per-pixel reference: explicit double sum over every sample in the kernel's support."""
    height, width = x.shape[-2:]

    def kernel(s):
        return 1.0 if s == 0 else (a * math.sin(math.pi * s) * math.sin(math.pi * s / a) / (math.pi * s) ** 2
                                   if abs(s) < a else 0.0)

    def taps(t, n):
        base = math.floor(t)
        ks = list(range(base - a + 1, base + a + 1))
        ws = [kernel(t - k) for k in ks]
        total = sum(ws)
        support = [k for k in range(base - a - 1, base + a + 2) if abs(t - k) < a]
        return [(k, w / total) for k, w in zip(ks, ws)], min(support) >= 0 and max(support) <= n - 1

    out = torch.zeros_like(x)
    mask = torch.zeros(x.shape[0], 1, height, width, dtype=torch.bool)
    for i in range(height):
        row_taps, row_ok = taps(i - dy, height)
        for j in range(width):
            col_taps, col_ok = taps(j - dx, width)
            mask[:, 0, i, j] = row_ok and col_ok
            for k, wk in row_taps:
                for l, wl in col_taps:
                    if 0 <= k < height and 0 <= l < width:
                        out[..., i, j] += wk * wl * x[..., k, l]
    return out, mask


@pytest.mark.parametrize("shift", [(0.5, 0.25), (-1.3, 2.7), (0.0, -0.6), (2.0, -1.0)])
def test_lanczos_shift_matches_slow_reference(shift):
    x = _images(2, 2, 9, 11)
    out, mask = T.lanczos_shift(x, *shift)
    ref, ref_mask = _lanczos_reference(x, *shift)
    assert mask.shape == (2, 1, 9, 11) and mask.dtype == torch.bool
    assert torch.equal(mask, ref_mask)
    assert (out - ref).abs().max() < 1e-12


def test_lanczos_shift_integer_is_exact_on_valid_region():
    x = _images(3, 2, 12, 13)
    dy, dx = torch.tensor([0.0, 2.0, -3.0]), torch.tensor([1.0, -2.0, 0.0])
    out, mask = T.lanczos_shift(x, dy, dx)
    for b in range(3):
        rolled = torch.roll(x[b], (int(dy[b]), int(dx[b])), dims=(-2, -1))
        valid = mask[b, 0]
        assert valid.sum() > 0
        assert (out[b][:, valid] - rolled[:, valid]).abs().max() < 1e-12
        # negative control: outside the valid region the rolled image (wrapped content) is not reproduced
        if int(dy[b]) != 0 or int(dx[b]) != 0:
            assert (out[b] - rolled).abs().max() > 1e-3
    # zero shift: the valid region is the image minus a border of a - 1 = 2 pixels
    _, mask0 = T.lanczos_shift(x, 0.0, 0.0)
    assert torch.equal(mask0[0, 0].nonzero()[:, 0].unique(), torch.arange(2, 10))


def test_lanczos_shift_constant_and_per_sample():
    x = torch.full((2, 3, 10, 10), 0.7, dtype=torch.float64)
    dy, dx = torch.tensor([0.3, -0.8], dtype=torch.float64), torch.tensor([1.5, 0.1], dtype=torch.float64)
    out, mask = T.lanczos_shift(x, dy, dx)
    assert (out[mask.expand_as(out)] - 0.7).abs().max() < 1e-12
    y = _images(2, 1, 10, 10)
    out, mask = T.lanczos_shift(y, dy, dx)
    first, first_mask = T.lanczos_shift(y[1:], -0.8, 0.1)
    assert torch.equal(mask[1:], first_mask) and (out[1:] - first).abs().max() < 1e-14
    with pytest.raises(ShapeError):
        T.lanczos_shift(y, float("nan"), 0.0)
    with pytest.raises(ShapeError):
        T.lanczos_shift(y, 0.0, 0.0, a=0)


# ------------------------------------------------------------------ rotation, flips, zoom

def test_rotate_multiples_of_90_are_exact():
    x = _images(2, 3, 6, 6)
    assert torch.equal(T.rotate(x, 0), x)
    assert torch.equal(T.rotate(x, 90), torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(T.rotate(x, -90), torch.rot90(x, 3, dims=(-2, -1)))
    assert torch.equal(T.rotate(x, 540), torch.rot90(x, 2, dims=(-2, -1)))
    y = x
    for _ in range(4):
        y = T.rotate(y, 90)
    assert torch.equal(y, x)
    # counter-clockwise: the top-right corner goes to the top-left; negative control: clockwise differs
    assert torch.equal(T.rotate(x, 90)[..., 0, 0], x[..., 0, -1])
    assert not torch.equal(T.rotate(x, 90), torch.rot90(x, -1, dims=(-2, -1)))
    assert T.rotate(_images(1, 1, 4, 6), 90).shape == (1, 1, 6, 4)


def test_rotate_interpolated_path_agrees_with_rot90():
    x = _images(2, 2, 7, 7)
    for k in range(4):
        out = T._rotate_interpolated(x, torch.full((2,), 90.0 * k, dtype=torch.float64))
        assert (out - torch.rot90(x, k, dims=(-2, -1))).abs().max() < 1e-12


def test_rotate_non_square_is_exact_on_a_linear_ramp():
    # bilinear sampling is exact on a linear function, so inside the image the rotated ramp is analytic;
    # a wrong aspect-ratio correction or direction on a non-square image would fail this
    height, width, angle = 21, 31, 30.0
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    ramp = (0.7 * ys + 0.2 * xs)[None, None]
    out = T.rotate(ramp, angle)[0, 0]
    r = math.radians(angle)  # counter-clockwise on screen (y down): output q samples input at R^-1 q
    qy, qx = ys - (height - 1) / 2, xs - (width - 1) / 2
    px = math.cos(r) * qx - math.sin(r) * qy + (width - 1) / 2
    py = math.sin(r) * qx + math.cos(r) * qy + (height - 1) / 2
    inside = (px >= 0) & (px <= width - 1) & (py >= 0) & (py <= height - 1)
    assert inside.sum() > 300
    assert (out[inside] - (0.7 * py + 0.2 * px)[inside]).abs().max() < 1e-10
    # negative control: the clockwise rotation does not match
    wrong = T.rotate(ramp, -angle)[0, 0]
    assert (wrong[inside] - (0.7 * py + 0.2 * px)[inside]).abs().max() > 1e-2


def test_rotate_per_sample_angles():
    x = _images(4, 2, 8, 8)
    angles = torch.tensor([0.0, 90.0, 33.0, -180.0])
    out = T.rotate(x, angles)
    for b in range(4):
        assert (out[b] - T.rotate(x[b:b + 1], float(angles[b]))[0]).abs().max() < 1e-12
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], torch.rot90(x[1], 1, dims=(-2, -1)))
    with pytest.raises(ShapeError):
        T.rotate(_images(2, 1, 4, 6), torch.tensor([90.0, 10.0]))


def test_flips():
    x = _images()
    assert torch.equal(T.hflip(x), x[..., torch.arange(8, -1, -1)])
    assert torch.equal(T.vflip(x), x[..., torch.arange(6, -1, -1), :])
    assert torch.equal(T.hflip(T.hflip(x)), x) and not torch.equal(T.hflip(x), x)


def test_zoom_about_centre_on_a_linear_ramp():
    height, width = 10, 12
    ramp = torch.arange(width, dtype=torch.float64).expand(1, 1, height, width).clone()
    centre = (width - 1) / 2
    out = T.zoom(ramp, 2.0)  # bilinear is exact on linear functions
    expected = centre + (torch.arange(width, dtype=torch.float64) - centre) / 2
    assert (out[0, 0] - expected).abs().max() < 1e-12
    shrunk = T.zoom(ramp, 0.5)
    assert torch.all(shrunk[0, 0, :, 0] == 0) and torch.all(shrunk[0, 0, 0, :] == 0)  # zero-filled border
    assert torch.equal(T.zoom(ramp, 1.0), ramp)
    x = _images(3, 1, 9, 9)
    per_sample = T.zoom(x, torch.tensor([1.0, 1.5, 0.7], dtype=torch.float64))
    assert torch.equal(per_sample[0], x[0])
    assert (per_sample[2] - T.zoom(x[2:], 0.7)[0]).abs().max() < 1e-12
    with pytest.raises(ShapeError):
        T.zoom(x, 0.0)


# ------------------------------------------------------------------ lighting

@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 1.7])
def test_lighting_matches_torchvision(factor):
    x = _images(2, 3, 8, 8, dtype=torch.float32)
    assert torch.allclose(T.adjust_brightness(x, factor), TF.adjust_brightness(x, factor), atol=1e-6)
    assert torch.allclose(T.adjust_contrast(x, factor), TF.adjust_contrast(x, factor), atol=1e-6)
    grey = x[:, :1]
    assert torch.allclose(T.adjust_contrast(grey, factor), TF.adjust_contrast(grey, factor), atol=1e-6)
    if factor > 0:
        assert torch.allclose(T.adjust_gamma(x, factor), TF.adjust_gamma(x, factor), atol=1e-6)


def test_lighting_per_sample_and_identity():
    x = _images(3, 3, 5, 5)
    factors = torch.tensor([0.5, 1.0, 2.0])
    for fn in (T.adjust_brightness, T.adjust_contrast, T.adjust_gamma):
        out = fn(x, factors)
        assert torch.equal(out[1], x[1])
        for b in range(3):
            assert torch.allclose(out[b], fn(x[b:b + 1], float(factors[b]))[0], rtol=0, atol=1e-15)
    assert not torch.equal(T.adjust_gamma(x, 2.0), x)
    with pytest.raises(ShapeError):
        T.adjust_contrast(_images(1, 2, 4, 4), 0.5)
    with pytest.raises(ShapeError):
        T.adjust_gamma(x, 0.0)
    with pytest.raises(ShapeError):
        T.adjust_brightness(x, torch.tensor([1.0, 2.0]))


def test_pad_to_multiple():
    x = _images(1, 1, 5, 8)
    out = T.pad_to_multiple(x, 4)
    assert out.shape == (1, 1, 8, 8) and torch.equal(out[..., :5, :], x) and torch.equal(out[..., 5:, :], x[..., :3, :])
    assert torch.equal(T.pad_to_multiple(x, 1), x)
    with pytest.raises(InputError):
        T.pad_to_multiple(x, 2, mode="wrap")


# ------------------------------------------------------------------ sweeps

def test_sweeps():
    d = T.diagonal_offsets(32)
    assert d.shape == (33, 2) and d.dtype == torch.int64 and torch.equal(d[:, 0], torch.arange(33))
    assert torch.equal(d[:, 0], d[:, 1])
    p = T.imagenet_p_offsets()
    assert p.shape == (41, 2) and torch.all(p[:, 0] == 0) and torch.equal(p[:, 1], torch.arange(-20, 21))
    g = T.shift_grid(31)
    assert g.shape == (961, 2) and len({tuple(r) for r in g.tolist()}) == 961 and int(g.max()) == 30
    assert set(map(tuple, T.shift_grid(3, 2).tolist())) == {(a, b) for a in (0, 2, 4) for b in (0, 2, 4)}
    assert T.angle_sweep(180, 15).shape == (25,) and 0.0 in T.angle_sweep(180, 15).tolist()
    s = T.scale_sweep(0.5, 2.0, 3)
    assert torch.allclose(s, torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(T.brightness_sweep(0.5, 1.5, 3), torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
    with pytest.raises(ShapeError):
        T.shift_grid(0)


def test_random_offsets_depend_only_on_seed_and_index():
    whole = T.random_offsets(7, list(range(100)), 0, 31)
    assert whole.shape == (100, 2, 2) and whole.dtype == torch.int64
    shards = torch.cat([T.random_offsets(7, range(50), 0, 31), T.random_offsets(7, torch.arange(50, 100), 0, 31)])
    assert torch.equal(whole, shards)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(1))
    assert torch.equal(T.random_offsets(7, order, 0, 31), whole[order])
    assert torch.equal(T.random_offsets(7, range(100), 0, 31, count=3)[:, :2], whole)
    assert torch.equal(T.random_offsets(np.int64(7), np.arange(100), 0, 31), whole)
    # negative controls: another seed, or shifted indices, give other draws
    assert not torch.equal(T.random_offsets(8, range(100), 0, 31), whole)
    assert not torch.equal(T.random_offsets(7, range(1, 101), 0, 31), whole)


def test_random_offsets_inclusive_and_uniform():
    draws = T.random_offsets(123, range(2000), -3, 2, count=5)
    assert int(draws.min()) == -3 and int(draws.max()) == 2
    draws = T.random_offsets(0, range(5000), 0, 31).reshape(-1)
    counts = torch.bincount(draws, minlength=32).double()
    expected = draws.numel() / 32
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80  # 31 degrees of freedom: mean 31, sd 7.9
    assert torch.equal(T.random_offsets(5, [3], 4, 4), torch.full((1, 2, 2), 4))
    with pytest.raises(ShapeError):
        T.random_offsets(0, range(3), 5, 4)
    with pytest.raises(ShapeError):
        T.random_offsets(0, torch.tensor([0.5]), 0, 4)
