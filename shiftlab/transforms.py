"""Exact image transformations: how inputs move.

Every function acts on a batch of images in pixel space, a floating tensor shaped (B, C, H, W) with values
in [0, 1], and returns a tensor of the same dtype on the same device. Nothing loops over pixels or samples:
per-sample parameters (one shift, angle or factor per image) are applied with index gathers and batched
sampling grids.

Shift convention (``torch.roll``): a shift (dy, dx) moves the content DOWN by dy and RIGHT by dx,
``out[..., i, j] = x[..., i - dy, j - dx]``.

Translations
    :func:`circular_shift` (a group action), :func:`crop_shift` (windows of a larger image, a camera pan),
    :func:`canvas_embed` (Azulay & Weiss: a downscaled object pasted into a canvas), :func:`fourier_shift`
    and :func:`lanczos_shift` (sub-pixel shifts).
Other transformations
    :func:`rotate`, :func:`hflip`, :func:`vflip`, :func:`zoom`, :func:`adjust_brightness`,
    :func:`adjust_contrast`, :func:`adjust_gamma`, :func:`pad_to_multiple`.
Sweeps (parameter tensors)
    :func:`diagonal_offsets`, :func:`imagenet_p_offsets`, :func:`shift_grid`, :func:`random_offsets`,
    :func:`angle_sweep`, :func:`scale_sweep`, :func:`brightness_sweep`.

>>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
>>> circular_shift(x, 1, 0)[0, 0, :, 0]
tensor([12.,  0.,  4.,  8.])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from shiftlab._checks import check_bchw, check_finite, check_float
from shiftlab.errors import InputError, ShapeError

__all__ = [
    "circular_shift",
    "crop_shift",
    "canvas_embed",
    "fourier_shift",
    "lanczos_shift",
    "rotate",
    "hflip",
    "vflip",
    "zoom",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
    "pad_to_multiple",
    "diagonal_offsets",
    "imagenet_p_offsets",
    "shift_grid",
    "random_offsets",
    "angle_sweep",
    "scale_sweep",
    "brightness_sweep",
]

_FILLS = ("black", "mean", "inpaint")


# ----------------------------------------------------------------------------------------------------------
# validation helpers (private)
# ----------------------------------------------------------------------------------------------------------

def _check_image(x, name: str = "x") -> torch.Tensor:
    check_bchw(x, name)
    check_float(x, name)
    check_finite(x, name)
    return x


def _int_param(value, batch: int, device: torch.device, name: str) -> int | torch.Tensor:
    """A python int, or an int64 tensor of shape (batch,) on ``device``."""
    if isinstance(value, bool):
        raise ShapeError(f"{name} must be an int or an integer tensor of shape (B,), got bool")
    if isinstance(value, numbers.Integral):  # int, numpy integers
        return int(value)
    if not isinstance(value, torch.Tensor):
        raise ShapeError(f"{name} must be an int or an integer tensor of shape (B,), got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ShapeError(f"{name} must be an integer tensor, got {value.dtype}")
    if value.ndim == 0:
        return int(value)
    if value.shape != (batch,):
        raise ShapeError(f"{name} must have shape ({batch},) (one value per sample), got {tuple(value.shape)}")
    return value.to(device=device, dtype=torch.int64)


def _float_param(value, batch: int, device: torch.device, name: str) -> float | torch.Tensor:
    """A python float, or a float64 tensor of shape (batch,) on ``device``; must be finite."""
    if isinstance(value, bool):
        raise ShapeError(f"{name} must be a number or a tensor of shape (B,), got bool")
    if isinstance(value, numbers.Real):  # int, float, numpy scalars
        value = float(value)
        if not math.isfinite(value):
            raise ShapeError(f"{name} must be finite, got {value}")
        return float(value)
    if not isinstance(value, torch.Tensor):
        raise ShapeError(f"{name} must be a number or a tensor of shape (B,), got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise ShapeError(f"{name} must be a real tensor, got {value.dtype}")
    if value.ndim == 0:
        return _float_param(float(value), batch, device, name)
    if value.shape != (batch,):
        raise ShapeError(f"{name} must have shape ({batch},) (one value per sample), got {tuple(value.shape)}")
    value = value.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(value).all()):
        raise ShapeError(f"{name} contains NaN or Inf")
    return value


def _as_vector(value, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.full((batch,), value, device=device, dtype=dtype)


def _size_pair(size, name: str) -> tuple[int, int]:
    if isinstance(size, bool):
        raise ShapeError(f"{name} must be an int or a pair (h, w), got bool")
    if isinstance(size, numbers.Integral):
        pair = (int(size), int(size))
    elif isinstance(size, (tuple, list, torch.Size)) and len(size) == 2 and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size):
        pair = (int(size[0]), int(size[1]))
    else:
        raise ShapeError(f"{name} must be an int or a pair of ints (h, w), got {size!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ShapeError(f"{name} must be positive, got {pair}")
    return pair


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Half precision is computed in float32 (FFT and grid sampling need it on CPU), then cast back."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _gather_2d(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[b, c, i, j] = x[b, c, rows[b, i], cols[b, j]]`` with one gather over the flattened image.

    rows: (B, h) int64 in [0, H), cols: (B, w) int64 in [0, W). One flat gather is several times faster than
    two gathers along H and W, and faster than a loop of ``torch.roll`` over the samples.
    """
    batch, channels, _, width = x.shape
    h, w = rows.shape[1], cols.shape[1]
    flat = (rows[:, :, None] * width + cols[:, None, :]).reshape(batch, 1, h * w).expand(batch, channels, h * w)
    return x.reshape(batch, channels, -1).gather(2, flat).view(batch, channels, h, w)


def _check_range(offset, low: int, high: int, name: str, what: str) -> None:
    if isinstance(offset, int):
        bad = not (low <= offset <= high)
        shown = offset
    else:
        outside = (offset < low) | (offset > high)
        bad = bool(outside.any())
        shown = int(offset[outside][0]) if bad else None
    if bad:
        raise ShapeError(f"{name}={shown} puts the {what} outside the image (allowed {low}..{high})")


# ----------------------------------------------------------------------------------------------------------
# translations
# ----------------------------------------------------------------------------------------------------------

def circular_shift(x: torch.Tensor, dy, dx) -> torch.Tensor:
    """Shift images circularly by whole pixels: ``out[..., i, j] = x[..., (i - dy) % H, (j - dx) % W]``.

    A group action of Z_H x Z_W: ``circular_shift(circular_shift(x, a, b), c, d)`` equals
    ``circular_shift(x, a + c, b + d)`` and ``circular_shift(x, -dy, -dx)`` is the exact inverse. Values are
    moved, never computed, so the result is exact in every dtype.

    Args:
        x: images.
        dy, dx: int (one shift for the batch, via ``torch.roll``) or int64 tensor of shape (B,) (one shift per
            sample, via an index gather). Any integer is allowed; shifts are taken modulo the image size.

    Shape:
        - Input: (B, C, H, W); dy, dx: int or (B,)
        - Output: (B, C, H, W)

    >>> x = torch.arange(6.0).reshape(1, 1, 2, 3)
    >>> circular_shift(x, 0, 1)
    tensor([[[[2., 0., 1.],
              [5., 3., 4.]]]])
    """
    _check_image(x)
    batch, channels, height, width = x.shape
    dy = _int_param(dy, batch, x.device, "dy")
    dx = _int_param(dx, batch, x.device, "dx")
    if isinstance(dy, int) and isinstance(dx, int):
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    dy = _as_vector(dy, batch, x.device, torch.int64)
    dx = _as_vector(dx, batch, x.device, torch.int64)
    rows = torch.remainder(torch.arange(height, device=x.device)[None, :] - dy[:, None], height)  # (B, H)
    cols = torch.remainder(torch.arange(width, device=x.device)[None, :] - dx[:, None], width)  # (B, W)
    return _gather_2d(x, rows, cols)


def crop_shift(x: torch.Tensor, dy, dx, size) -> torch.Tensor:
    """Cut a window of ``size`` at offset (dy, dx) out of each image: ``x[..., dy:dy + h, dx:dx + w]``.

    This is Zhang's (2019) crop shift: two windows of one larger image at different offsets, so new content
    enters at the border (a camera pan; not a group action). ImageNet protocol: 224x224 windows at offsets
    0..31 of the 256x256 centre crop. Values are copied, so the result is exact.

    Args:
        x: images (the larger image).
        dy, dx: top-left corner of the window; int or int64 tensor of shape (B,) (one window per sample).
        size: window size, int or (h, w).

    Raises:
        ShapeError: a window leaves the image (``dy < 0``, ``dy + h > H``, ...).

    Shape:
        - Input: (B, C, H, W); dy, dx: int or (B,)
        - Output: (B, C, h, w), a new tensor (never a view of x)

    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> crop_shift(x, 1, 2, 2)
    tensor([[[[ 6.,  7.],
              [10., 11.]]]])
    """
    _check_image(x)
    batch, channels, height, width = x.shape
    h, w = _size_pair(size, "size")
    if h > height or w > width:
        raise ShapeError(f"window {h}x{w} is larger than the image {height}x{width}")
    dy = _int_param(dy, batch, x.device, "dy")
    dx = _int_param(dx, batch, x.device, "dx")
    _check_range(dy, 0, height - h, "dy", "window")
    _check_range(dx, 0, width - w, "dx", "window")
    if isinstance(dy, int) and isinstance(dx, int):
        return x[..., dy:dy + h, dx:dx + w].clone(memory_format=torch.contiguous_format)
    dy = _as_vector(dy, batch, x.device, torch.int64)
    dx = _as_vector(dx, batch, x.device, torch.int64)
    rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # (B, h)
    cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # (B, w)
    return _gather_2d(x, rows, cols)


def canvas_embed(x: torch.Tensor, top, left, canvas_size, object_size=None, fill: str = "black") -> torch.Tensor:
    """Downscale each image to ``object_size`` and paste it at (top, left) into a canvas (Azulay & Weiss 2019).

    The object stays whole and moves inside the canvas, so a shift of the paste position is a pure translation
    of the object; what changes at the border is the canvas fill, which is off-distribution for a classifier.

    Resizing: ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)`` (a triangle filter
    widened by the scale factor when downscaling; never overshoots, so values stay in [0, 1]). With
    ``object_size=None`` or equal to the image size the object is x itself, unresampled.

    Fills (every pixel outside the pasted object):
        - ``"black"``: 0 in pixel space (note: not 0 after the model's mean/std normalisation);
        - ``"mean"``: the object's per-image, per-channel mean colour;
        - ``"inpaint"``: edge extension: each canvas pixel takes the value of the nearest object pixel
          (coordinates clamped to the object, i.e. replicate padding; corners take the corner pixel).
          Deterministic and simple; Azulay & Weiss used an image inpainting method instead.

    Inside the pasted region the canvas equals the resized object exactly, for every fill.

    Args:
        x: images (the objects).
        top, left: position of the object's top-left pixel in the canvas; int or int64 tensor (B,).
        canvas_size: int or (h, w), usually the model's input size.
        object_size: int or (h, w) the object is resized to; None keeps x's size.
        fill: ``"black"``, ``"mean"`` or ``"inpaint"``.

    Raises:
        ShapeError: the object does not fit in the canvas at (top, left).
        InputError: unknown fill.

    Shape:
        - Input: (B, C, H, W); top, left: int or (B,)
        - Output: (B, C, canvas_h, canvas_w)

    >>> canvas_embed(torch.ones(1, 1, 2, 2), 1, 0, (3, 4))[0, 0]
    tensor([[0., 0., 0., 0.],
            [1., 1., 0., 0.],
            [1., 1., 0., 0.]])
    """
    _check_image(x)
    if fill not in _FILLS:
        raise InputError(f"fill must be one of {', '.join(_FILLS)}, got {fill!r}")
    batch, channels, height, width = x.shape
    canvas_h, canvas_w = _size_pair(canvas_size, "canvas_size")
    obj_h, obj_w = (height, width) if object_size is None else _size_pair(object_size, "object_size")
    if obj_h > canvas_h or obj_w > canvas_w:
        raise ShapeError(f"object {obj_h}x{obj_w} does not fit in the canvas {canvas_h}x{canvas_w}")
    top = _int_param(top, batch, x.device, "top")
    left = _int_param(left, batch, x.device, "left")
    _check_range(top, 0, canvas_h - obj_h, "top", "object")
    _check_range(left, 0, canvas_w - obj_w, "left", "object")

    if (obj_h, obj_w) == (height, width):
        obj = x
    else:
        work = _compute_dtype(x)
        obj = F.interpolate(x.to(work), size=(obj_h, obj_w), mode="bilinear", antialias=True,
                            align_corners=False).to(x.dtype)

    top = _as_vector(top, batch, x.device, torch.int64)
    left = _as_vector(left, batch, x.device, torch.int64)
    rows = torch.arange(canvas_h, device=x.device)[None, :] - top[:, None]  # (B, canvas_h) object row
    cols = torch.arange(canvas_w, device=x.device)[None, :] - left[:, None]  # (B, canvas_w) object column
    # gather with clamped coordinates: this is the edge extension, and the object itself inside its region
    canvas = _gather_2d(obj, rows.clamp(0, obj_h - 1), cols.clamp(0, obj_w - 1))
    if fill == "inpaint":
        return canvas
    inside = (((rows >= 0) & (rows < obj_h))[:, :, None] & ((cols >= 0) & (cols < obj_w))[:, None, :])
    if fill == "black":
        background = torch.zeros((), dtype=x.dtype, device=x.device)
    else:
        background = obj.mean(dim=(-2, -1), keepdim=True)
    return torch.where(inside[:, None], canvas, background)


def _fourier_phase(delta: torch.Tensor, n: int, onesided: bool) -> torch.Tensor:
    """Phase factors exp(-2 pi i k delta / n) per sample, shape (B, n) or (B, n // 2 + 1).

    For even n the Nyquist bin k = n/2 gets the real factor cos(pi delta) (see :func:`fourier_shift`).
    """
    k = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64, device=delta.device) if onesided else \
        torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=delta.device)
    angle = -2.0 * math.pi * delta[:, None] * k[None, :] / n
    phase = torch.polar(torch.ones_like(angle), angle)
    if n % 2 == 0:
        nyquist = n // 2
        phase[:, nyquist] = torch.cos(math.pi * delta).to(phase.dtype)
    return phase


def fourier_shift(x: torch.Tensor, dy, dx) -> torch.Tensor:
    """Shift images by any real (dy, dx) with a Fourier phase ramp: ``X(k) * exp(-2 pi i (ky dy / H + kx dx / W))``.

    This is the shift of the trigonometric interpolant, exact for periodic band-limited images; the image is
    treated as periodic (content leaving one side enters the other). Integer shifts equal ``torch.roll`` up
    to floating-point rounding.

    Nyquist bin (even H or W): its coefficient is real for a real image, and the component cos(pi n) sampled
    after a shift by delta is cos(pi delta) cos(pi n). So the Nyquist bin is multiplied by the real factor
    cos(pi delta) (the symmetric split of the +N/2 and -N/2 frequencies), which keeps the output real and
    integer shifts exact. The price: for non-integer shifts the Nyquist component is attenuated (a shift by
    1/2 removes it), so the composition law shift(a) then shift(b) = shift(a + b) holds exactly only for odd
    sizes, integer shifts, or images with no energy at the Nyquist frequency.

    Args:
        x: images.
        dy, dx: float (one shift for the batch) or tensor of shape (B,) (one shift per sample).

    Shape:
        - Input: (B, C, H, W); dy, dx: float or (B,)
        - Output: (B, C, H, W), same dtype (float16/bfloat16 are computed in float32)

    >>> x = torch.arange(4.0).reshape(1, 1, 1, 4)
    >>> fourier_shift(x.double(), 0, 1).round(decimals=12)
    tensor([[[[3., 0., 1., 2.]]]], dtype=torch.float64)
    """
    _check_image(x)
    batch, _, height, width = x.shape
    dy = _as_vector(_float_param(dy, batch, x.device, "dy"), batch, x.device, torch.float64)
    dx = _as_vector(_float_param(dx, batch, x.device, "dx"), batch, x.device, torch.float64)
    work = _compute_dtype(x)
    spectrum = torch.fft.rfft2(x.to(work))  # (B, C, H, W // 2 + 1)
    phase_y = _fourier_phase(dy, height, onesided=False)  # (B, H)
    phase_x = _fourier_phase(dx, width, onesided=True)  # (B, W // 2 + 1)
    phase = phase_y[:, :, None] * phase_x[:, None, :]
    spectrum = spectrum * phase[:, None].to(spectrum.dtype)
    return torch.fft.irfft2(spectrum, s=(height, width)).to(x.dtype)


def _lanczos(s: torch.Tensor, a: int) -> torch.Tensor:
    """The Lanczos kernel sinc(s) sinc(s / a) on |s| < a, 0 elsewhere."""
    return torch.where(s.abs() < a, torch.sinc(s) * torch.sinc(s / a), torch.zeros_like(s))


def _lanczos_axis(x: torch.Tensor, delta: torch.Tensor, a: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample x along ``dim`` (2 or 3) at positions t = i - delta; returns (values, valid (B, n) bool).

    With t = i + base + frac (base = floor(-delta) and frac in [0, 1) are the same for every i of a sample),
    ``out[i] = sum_m w[m] x[i + base - (a - 1) + m]`` for m = 0..2a-1: one gather of the shifted,
    zero-padded line (length n + 2a - 1), then a correlation with the sample's 2a taps (one grouped
    convolution over all samples and channels).
    """
    batch, channels = x.shape[:2]
    n = x.shape[dim]
    base = torch.floor(-delta)
    frac = -delta - base  # in [0, 1)
    taps = torch.arange(2 * a, device=x.device, dtype=torch.float64)
    weights = _lanczos(frac[:, None] + (a - 1) - taps[None, :], a)  # (B, 2a): kernel at t - k
    weights = weights / weights.sum(dim=1, keepdim=True)  # partition of unity: constants stay constant

    along_rows = dim == 2
    work = x.transpose(2, 3) if along_rows else x  # resample along the last axis
    # padded[j] = x[j - (a - 1) + base] for j = 0..n + 2a - 2, zero outside the image
    source = torch.arange(-(a - 1), n + a, device=x.device)[None, :] + base.to(torch.int64)[:, None]
    inside = (source >= 0) & (source < n)
    rows = torch.arange(work.shape[2], device=x.device).expand(batch, -1)
    padded = _gather_2d(work, rows, source.clamp(0, n - 1)) * inside[:, None, None, :].to(x.dtype)
    padded = padded.reshape(1, batch * channels, work.shape[2], n + 2 * a - 1)
    kernel = weights.to(x.dtype).repeat_interleave(channels, dim=0).view(batch * channels, 1, 1, 2 * a)
    out = F.conv2d(padded, kernel, groups=batch * channels).view(batch, channels, work.shape[2], n)
    out = out.transpose(2, 3) if along_rows else out
    # valid: every sample k with |t - k| < a lies inside [0, n - 1]
    t = torch.arange(n, device=x.device, dtype=torch.float64)[None, :] - delta[:, None]
    valid = (torch.floor(t - a) + 1 >= 0) & (torch.ceil(t + a) - 1 <= n - 1)
    return out.contiguous(), valid


def lanczos_shift(x: torch.Tensor, dy, dx, a: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift images by real (dy, dx) with separable Lanczos windowed-sinc resampling; also return the valid mask.

    ``out[i, j] = sum_k sum_l L(i - dy - k) L(j - dx - l) x[k, l]`` with ``L(s) = sinc(s) sinc(s / a)`` for
    ``|s| < a`` (0 elsewhere), the 2a taps of each axis normalised to sum to 1 (so a constant image stays
    constant). Samples outside the image count as 0 (zero padding). A pixel is valid when the kernel's whole
    support, every sample k with ``|i - dy - k| < a`` (and likewise for columns), lies inside the image, so
    valid pixels never see the padding; compare images only there (as StyleGAN3's equivariance metrics do).
    Integer shifts are exact shifts (L is 1 at 0 and 0 at other integers) on the valid region.

    Args:
        x: images.
        dy, dx: float or tensor of shape (B,) (one shift per sample).
        a: kernel radius in pixels (3 = Lanczos-3).

    Shape:
        - Input: (B, C, H, W); dy, dx: float or (B,)
        - Output: ((B, C, H, W) same dtype, (B, 1, H, W) bool mask)

    >>> out, valid = lanczos_shift(torch.ones(1, 1, 8, 8), 0.5, 0.0)
    >>> valid[0, 0, :, 4].tolist()  # rows: the support i - 0.5 +- 3 must lie in 0..7
    [False, False, False, True, True, True, False, False]
    >>> bool(torch.allclose(out[valid], torch.ones(())))
    True
    """
    _check_image(x)
    if isinstance(a, bool) or not isinstance(a, int) or a < 1:
        raise ShapeError(f"a must be a positive int, got {a!r}")
    batch = x.shape[0]
    dy = _as_vector(_float_param(dy, batch, x.device, "dy"), batch, x.device, torch.float64)
    dx = _as_vector(_float_param(dx, batch, x.device, "dx"), batch, x.device, torch.float64)
    work = _compute_dtype(x)
    out, valid_rows = _lanczos_axis(x.to(work), dy, a, dim=2)
    out, valid_cols = _lanczos_axis(out, dx, a, dim=3)
    mask = (valid_rows[:, :, None] & valid_cols[:, None, :])[:, None]
    return out.to(x.dtype), mask


# ----------------------------------------------------------------------------------------------------------
# rotation, flips, zoom, lighting
# ----------------------------------------------------------------------------------------------------------

def _sample_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling of x on the grid theta @ [x, y, 1] (normalised coordinates, zero padding)."""
    work = _compute_dtype(x)
    theta = theta.to(work)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.to(work), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)


def _rotate_interpolated(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate counter-clockwise by ``angle`` degrees (B,) about the image centre, bilinear, zero padding."""
    height, width = x.shape[-2:]
    radians = angle.to(torch.float64) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    # output pixel -> input pixel is the inverse rotation; normalised coordinates scale x by W/2 and y by H/2
    theta = torch.stack([
        torch.stack([cos, -sin * (height / width), zero], dim=-1),
        torch.stack([sin * (width / height), cos, zero], dim=-1),
    ], dim=1)  # (B, 2, 3)
    return _sample_affine(x, theta)


def rotate(x: torch.Tensor, angle) -> torch.Tensor:
    """Rotate images counter-clockwise by ``angle`` degrees about their centre.

    Multiples of 90 degrees use ``torch.rot90`` and are exact (values are only moved); ``rotate(x, 0)``
    returns a copy of x. Other angles sample bilinearly (``grid_sample``, ``align_corners=False``) with
    zero padding: corners rotated in from outside the image are 0 (black in pixel space), and the bilinear
    interpolation blurs slightly. The interpolated path is never used at a multiple of 90 degrees.

    Args:
        x: images.
        angle: degrees, float or tensor of shape (B,) (one angle per sample).

    Shape:
        - Input: (B, C, H, W); angle: float or (B,)
        - Output: (B, C, H, W); a scalar odd multiple of 90 on a non-square image gives (B, C, W, H)
          like ``torch.rot90``. Per-sample angles on a non-square image may not contain odd multiples of 90
          (ShapeError).

    >>> rotate(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), 90)
    tensor([[[[2., 4.],
              [1., 3.]]]])
    """
    _check_image(x)
    batch, _, height, width = x.shape
    angle = _float_param(angle, batch, x.device, "angle")
    if isinstance(angle, float):
        quarter = angle / 90.0
        if quarter == round(quarter):
            return torch.rot90(x, int(round(quarter)) % 4, dims=(-2, -1))
        return _rotate_interpolated(x, _as_vector(angle, batch, x.device, torch.float64))
    quarter = angle / 90.0
    exact = quarter == torch.round(quarter)
    turns = torch.remainder(torch.round(quarter), 4).to(torch.int64)
    if height != width and bool((exact & (turns % 2 == 1)).any()):
        raise ShapeError(f"per-sample rotation by an odd multiple of 90 degrees needs a square image, "
                         f"got {height}x{width}")
    out = _rotate_interpolated(x, angle)
    for k in range(4):  # the four exact cases, not a loop over samples
        chosen = exact & (turns == k)
        if bool(chosen.any()):
            out = torch.where(chosen.view(batch, 1, 1, 1), torch.rot90(x, k, dims=(-2, -1)), out)
    return out


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror images left-right: ``out[..., j] = x[..., W - 1 - j]`` (exact).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    return x.flip(-1)


def vflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror images top-bottom: ``out[..., i, :] = x[..., H - 1 - i, :]`` (exact).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    return x.flip(-2)


def zoom(x: torch.Tensor, factor) -> torch.Tensor:
    """Scale image content by ``factor`` about the image centre, keeping the output size.

    ``factor > 1`` magnifies (the border is cropped away), ``factor < 1`` shrinks (the border is filled with 0,
    black in pixel space). Bilinear sampling (``grid_sample``, ``align_corners=False``) without antialiasing,
    so strong shrinking aliases. ``factor == 1`` returns a copy of x exactly.

    Args:
        x: images.
        factor: positive float or tensor of shape (B,).

    Shape:
        - Input: (B, C, H, W); factor: float or (B,)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    batch = x.shape[0]
    factor = _float_param(factor, batch, x.device, "factor")
    if (factor <= 0) if isinstance(factor, float) else bool((factor <= 0).any()):
        raise ShapeError("zoom factor must be positive")
    if isinstance(factor, float) and factor == 1.0:
        return x.clone()
    scale = 1.0 / _as_vector(factor, batch, x.device, torch.float64)
    zero = torch.zeros_like(scale)
    theta = torch.stack([torch.stack([scale, zero, zero], dim=-1), torch.stack([zero, scale, zero], dim=-1)], dim=1)
    out = _sample_affine(x, theta)
    if isinstance(factor, torch.Tensor):
        out = torch.where((factor == 1.0).view(batch, 1, 1, 1), x, out)
    return out


def _per_sample_factor(value, x: torch.Tensor, name: str) -> torch.Tensor | float:
    value = _float_param(value, x.shape[0], x.device, name)
    if isinstance(value, torch.Tensor):
        return value.to(x.dtype).view(-1, 1, 1, 1)
    return value


def adjust_brightness(x: torch.Tensor, factor) -> torch.Tensor:
    """Multiply pixel values by ``factor`` and clamp to [0, 1] (torchvision's brightness).

    Args:
        x: images in [0, 1].
        factor: non-negative float or tensor (B,); 1 is the identity, 0 gives black.

    Shape:
        - Input: (B, C, H, W); factor: float or (B,)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    factor = _per_sample_factor(factor, x, "factor")
    if (factor < 0) if isinstance(factor, float) else bool((factor < 0).any()):
        raise ShapeError("brightness factor must be non-negative")
    return (x * factor).clamp(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor) -> torch.Tensor:
    """Blend each image with its mean grey level and clamp to [0, 1] (torchvision's contrast).

    ``out = clamp(factor * x + (1 - factor) * m)`` with m the per-image mean of the grey image (torchvision's
    luma weights 0.2989 R + 0.587 G + 0.114 B for 3 channels; the plain mean for 1 channel). 1 is the
    identity, 0 gives a uniform grey image.

    Args:
        x: images in [0, 1] with 1 or 3 channels.
        factor: non-negative float or tensor (B,).

    Shape:
        - Input: (B, C, H, W) with C in {1, 3}; factor: float or (B,)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    channels = x.shape[1]
    if channels not in (1, 3):
        raise ShapeError(f"adjust_contrast needs 1 or 3 channels, got {channels}")
    factor = _per_sample_factor(factor, x, "factor")
    if (factor < 0) if isinstance(factor, float) else bool((factor < 0).any()):
        raise ShapeError("contrast factor must be non-negative")
    if channels == 3:
        luma = torch.tensor([0.2989, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        grey = (x * luma).sum(dim=1, keepdim=True)
    else:
        grey = x
    mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
    return (factor * x + (1.0 - factor) * mean).clamp(0.0, 1.0)


def adjust_gamma(x: torch.Tensor, gamma) -> torch.Tensor:
    """Gamma correction ``out = clamp(x, 0, 1) ** gamma`` (torchvision's with gain 1).

    The input is clamped to [0, 1] first so that fractional powers stay real. gamma < 1 brightens the mid
    tones, gamma > 1 darkens them; 0 and 1 are fixed points.

    Args:
        x: images in [0, 1].
        gamma: positive float or tensor (B,).

    Shape:
        - Input: (B, C, H, W); gamma: float or (B,)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    gamma = _per_sample_factor(gamma, x, "gamma")
    if (gamma <= 0) if isinstance(gamma, float) else bool((gamma <= 0).any()):
        raise ShapeError("gamma must be positive")
    return x.clamp(0.0, 1.0) ** gamma


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "circular") -> torch.Tensor:
    """Pad the bottom and right of images so that H and W are multiples of ``multiple``.

    Useful before polyphase (APS) downsampling, which needs even sizes. ``mode`` is any ``F.pad`` mode:
    "circular" (keeps circular shifts a group action of the padded image only if H, W were already
    multiples), "reflect", "replicate" or "constant" (zeros). Returns a copy when nothing needs padding.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, ceil(H / m) m, ceil(W / m) m)
    """
    _check_image(x)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ShapeError(f"multiple must be a positive int, got {multiple!r}")
    if mode not in ("circular", "reflect", "replicate", "constant"):
        raise InputError(f"mode must be circular, reflect, replicate or constant, got {mode!r}")
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x.clone()
    if mode == "reflect" and (pad_h >= height or pad_w >= width):
        raise ShapeError(f"reflect padding by ({pad_h}, {pad_w}) needs an image larger than {height}x{width}")
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


# ----------------------------------------------------------------------------------------------------------
# sweeps: parameter tensors
# ----------------------------------------------------------------------------------------------------------

def _check_count(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ShapeError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def diagonal_offsets(n: int) -> torch.Tensor:
    """The diagonal sweep (Zhang's -ed protocol, Azulay & Weiss): offsets (o, o) for o = 0..n.

    Shape:
        - Output: (n + 1, 2) int64, columns (dy, dx)

    >>> diagonal_offsets(2).tolist()
    [[0, 0], [1, 1], [2, 2]]
    """
    _check_count(n, "n")
    o = torch.arange(n + 1, dtype=torch.int64)
    return torch.stack([o, o], dim=1)


def imagenet_p_offsets(max_shift: int = 20) -> torch.Tensor:
    """The ImageNet-P translate sequence: horizontal offsets (0, dx) for dx = -max_shift..max_shift (41 frames).

    Shape:
        - Output: (2 * max_shift + 1, 2) int64, columns (dy, dx)
    """
    _check_count(max_shift, "max_shift")
    dx = torch.arange(-max_shift, max_shift + 1, dtype=torch.int64)
    return torch.stack([torch.zeros_like(dx), dx], dim=1)


def shift_grid(n: int, step: int = 1) -> torch.Tensor:
    """All shifts (dy, dx) in {0, step, ..., (n - 1) step}^2, dy-major (Michaeli et al.'s worst-case grid).

    Shape:
        - Output: (n * n, 2) int64, columns (dy, dx)

    >>> shift_grid(2, step=3).tolist()
    [[0, 0], [0, 3], [3, 0], [3, 3]]
    """
    _check_count(n, "n", 1)
    _check_count(step, "step", 1)
    o = torch.arange(n, dtype=torch.int64) * step
    dy, dx = torch.meshgrid(o, o, indexing="ij")
    return torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)


# splitmix64 constants as signed int64 (torch int64 arithmetic wraps modulo 2^64)
def _signed(c: int) -> int:
    return c - (1 << 64) if c >= (1 << 63) else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def random_offsets(seed: int, indices, low: int, high: int, count: int = 2) -> torch.Tensor:
    """Uniform random integer offsets in [low, high] (inclusive), drawn from (seed, sample index) alone.

    Counter-based: draw j of sample i is ``splitmix64(splitmix64(splitmix64(seed) + i) + j)`` reduced modulo
    ``high - low + 1`` (bias below 2^-40 for ranges under 2^13), with draws j = 2c (dy) and 2c + 1 (dx)
    for offset pair c. So the offsets of a sample do not depend on which other samples are in the batch, on
    how a dataset is split into shards, or on ``count`` (the first pairs of a larger count are the same).
    Computed with vectorised int64 tensor arithmetic, no loop.

    Zhang's protocol: ``random_offsets(seed, indices, 0, 31)`` (two 224 crops of a 256 image); circular
    consistency on ImageNet: ``random_offsets(seed, indices, -32, 31)``.

    Args:
        seed: any int.
        indices: sample indices, a sequence of ints, an integer tensor (N,) or a numpy array.
        low, high: inclusive bounds.
        count: offset pairs per sample.

    Shape:
        - Output: (N, count, 2) int64 on CPU (or on the device of ``indices``), last axis (dy, dx)
    """
    for name, value in (("seed", seed), ("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ShapeError(f"{name} must be an int, got {value!r}")
    seed, low, high = int(seed), int(low), int(high)
    if low > high:
        raise ShapeError(f"low ({low}) must not exceed high ({high})")
    if high - low >= 1 << 40:
        raise ShapeError(f"the range {low}..{high} is too large (at most 2^40 values)")
    _check_count(count, "count")
    if not isinstance(indices, (torch.Tensor, Sequence, range)) and hasattr(indices, "__array__"):
        indices = torch.as_tensor(indices.__array__())  # a numpy array
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ShapeError(f"indices must be integers, got {indices.dtype}")
        if indices.ndim != 1:
            raise ShapeError(f"indices must be one-dimensional, got shape {tuple(indices.shape)}")
        index = indices.to(torch.int64)
    elif isinstance(indices, (Sequence, range)) and all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in indices):
        index = torch.tensor([int(i) for i in indices], dtype=torch.int64)
    else:
        raise ShapeError("indices must be a sequence of ints or a one-dimensional integer tensor")
    stream = _splitmix64(torch.tensor(_signed(seed % (1 << 64)), dtype=torch.int64, device=index.device))
    per_sample = _splitmix64(stream + index)  # (N,)
    draw = torch.arange(2 * count, dtype=torch.int64, device=index.device)
    bits = _splitmix64(per_sample[:, None] + draw[None, :])  # (N, 2 * count)
    value = low + torch.remainder(_shr(bits, 11), high - low + 1)  # top 53 bits, non-negative
    return value.view(-1, count, 2)


def angle_sweep(max_angle: float = 180.0, step: float = 15.0) -> torch.Tensor:
    """Angles -max_angle..max_angle degrees in steps of ``step`` (0 included), for :func:`rotate`.

    Shape:
        - Output: (2 * floor(max_angle / step) + 1,) float64

    >>> angle_sweep(90, 45).tolist()
    [-90.0, -45.0, 0.0, 45.0, 90.0]
    """
    if not (max_angle >= 0 and step > 0 and math.isfinite(max_angle) and math.isfinite(step)):
        raise ShapeError(f"need max_angle >= 0 and step > 0, got {max_angle}, {step}")
    k = int(math.floor(max_angle / step + 1e-9))
    return torch.arange(-k, k + 1, dtype=torch.float64) * step


def scale_sweep(min_factor: float = 0.5, max_factor: float = 2.0, num: int = 9) -> torch.Tensor:
    """``num`` zoom factors spaced geometrically from min_factor to max_factor, for :func:`zoom`.

    Shape:
        - Output: (num,) float64
    """
    _check_count(num, "num", 1)
    if not (0 < min_factor <= max_factor and math.isfinite(max_factor)):
        raise ShapeError(f"need 0 < min_factor <= max_factor, got {min_factor}, {max_factor}")
    return torch.logspace(math.log10(min_factor), math.log10(max_factor), num, dtype=torch.float64)


def brightness_sweep(min_factor: float = 0.5, max_factor: float = 1.5, num: int = 11) -> torch.Tensor:
    """``num`` brightness (or contrast) factors spaced linearly from min_factor to max_factor.

    Shape:
        - Output: (num,) float64
    """
    _check_count(num, "num", 1)
    if not (0 <= min_factor <= max_factor and math.isfinite(max_factor)):
        raise ShapeError(f"need 0 <= min_factor <= max_factor, got {min_factor}, {max_factor}")
    return torch.linspace(min_factor, max_factor, num, dtype=torch.float64)
