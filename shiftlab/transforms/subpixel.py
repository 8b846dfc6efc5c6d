"""Sub-pixel translations: the exact Fourier (periodic) shift, the Lanczos-windowed sinc shift and the circular
bilinear shift."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shiftlab.errors import ShapeError
from shiftlab.transforms._params import _as_vector, _check_image, _compute_dtype, _float_param, _gather_2d
from shiftlab.transforms.shifts import circular_shift

__all__ = ["fourier_shift", "lanczos_shift", "bilinear_shift"]


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


def bilinear_shift(x: torch.Tensor, dy, dx) -> torch.Tensor:
    """Shift images circularly by any real (dy, dx) with bilinear interpolation between the 4 nearest pixels.

    ``out[i, j]`` is the bilinear interpolant of ``x`` at ``(i - dy, j - dx)``, indices taken modulo (H, W):
    along each axis, with ``b = floor(d)`` and ``f = d - b``, ``out[i] = (1 - f) x[i - b] + f x[i - b - 1]``
    (two whole-pixel circular shifts mixed). Integer shifts are exact ``torch.roll`` (f = 0). Unlike
    :func:`fourier_shift` it is not a group action: a shift by d then by -d blurs (a half-pixel shift and
    back averages neighbours with weights 1/4, 1/2, 1/4), so it does not round-trip.

    Args:
        x: images.
        dy, dx: float (one shift for the batch) or tensor of shape (B,) (one shift per sample).

    Shape:
        - Input: (B, C, H, W); dy, dx: float or (B,)
        - Output: (B, C, H, W), same dtype

    >>> x = torch.tensor([[[[0.0, 2.0, 4.0, 6.0]]]], dtype=torch.float64)
    >>> bilinear_shift(x, 0, 0.5)
    tensor([[[[3., 1., 3., 5.]]]], dtype=torch.float64)
    """
    _check_image(x)
    batch = x.shape[0]
    out = x.to(_compute_dtype(x))
    for axis, value in ((0, dy), (1, dx)):
        d = _as_vector(_float_param(value, batch, x.device, "dx" if axis else "dy"), batch, x.device, torch.float64)
        base = torch.floor(d)
        frac = (d - base).to(out.dtype)[:, None, None, None]
        base = base.to(torch.int64)
        zero = torch.zeros_like(base)
        near = circular_shift(out, *((zero, base) if axis else (base, zero)))
        far = circular_shift(out, *((zero, base + 1) if axis else (base + 1, zero)))
        out = (1 - frac) * near + frac * far
    return out.to(x.dtype)
