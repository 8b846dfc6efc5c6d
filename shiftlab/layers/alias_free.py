"""Alias-free layers (Michaeli, Michaeli & Soudry, CVPR 2023): ideal low-pass filtering, ideal subsampling and
upsampling by FFT, a polynomial activation evaluated on a 2x grid, and a shift-equivariant layer norm.

A map on an N-point periodic grid is *band-limited* here when its spectrum has no energy at or above the
Nyquist bin (|k| < N/2 on each axis). Fractional circular shifts of such maps are well defined (the Fourier
shift, :func:`shiftlab.transforms.fourier_shift`), and every layer of this module commutes with them exactly:

- :func:`ideal_lowpass2d` keeps the frequencies |k| < N * cutoff / 2 on each axis (a bin exactly at the cutoff is
  zeroed, so the Nyquist bin of the result is always empty); it is a multiplication in the Fourier domain, so it
  commutes with every shift.
- :func:`ideal_downsample2d` is that low-pass at ``1 / stride`` followed by ``[::stride, ::stride]``; the kept
  band fits the coarse grid without folding, so a shift by ``t`` of the input moves the output by ``t / stride``.
  It is computed directly from the cropped spectrum (one small inverse FFT), not by filtering then slicing.
- :func:`ideal_upsample2d` is zero insertion, the low-pass at ``1 / factor`` and a gain of ``factor ** 2``: the
  trigonometric interpolant sampled on the finer grid (the input's Nyquist bin dropped).
- :func:`alias_free_activation`: the polynomial ``a0 + a1 x + a2 x^2`` doubles the bandwidth, so it is evaluated
  on the 2x upsampled grid, where the product has room, and brought back by :func:`ideal_downsample2d`. The
  default coefficients (0.01694, 0.5, 0.30784) are the anchor's fit of GELU on (-2, 2).
- :func:`alias_free_layer_norm`: the mean over channels at each pixel (pointwise) and the variance over the whole
  (C, H, W) map (a shift-invariant number), then a per-channel affine map.

With circular padding, stride-1 convolutions commute with fractional shifts as well, so a network built only of
these layers, circular convolutions and a global average pool gives logits that are exactly invariant (up to
rounding) to every fractional circular shift of a band-limited input. That is a guarantee by construction, not a
learned one; :mod:`shiftlab.fix.certify` checks it in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shiftlab._checks import check_bchw, check_float, check_int
from shiftlab.errors import InputError, ShapeError

__all__ = [
    "GELU_FIT", "band_limit", "ideal_lowpass2d", "IdealLowpass2d", "ideal_downsample2d", "IdealDownsample2d",
    "ideal_upsample2d", "IdealUpsample2d", "alias_free_activation", "AliasFreeActivation",
    "alias_free_layer_norm", "AliasFreeLayerNorm",
]

#: the anchor's quadratic fit of GELU on (-2, 2): a0, a1, a2 of a0 + a1 x + a2 x^2
GELU_FIT = (0.01694, 0.5, 0.30784)


def _check_map(x, name: str = "x") -> Tensor:
    check_bchw(x, name)
    return check_float(x, name)


def _frequencies(n: int, onesided: bool, device) -> Tensor:
    """|k| of the DFT bins of an n-point axis (the last axis of an rfft2 when ``onesided``)."""
    k = torch.fft.rfftfreq(n, d=1.0 / n, device=device) if onesided else torch.fft.fftfreq(n, d=1.0 / n,
                                                                                              device=device)
    return k.abs()


def _band_mask(height: int, width: int, cutoff: float, device) -> Tensor:
    """(H, W // 2 + 1) bool: the rfft2 bins with |ky| < H * cutoff / 2 and |kx| < W * cutoff / 2."""
    ky = _frequencies(height, False, device) < height * cutoff / 2
    kx = _frequencies(width, True, device) < width * cutoff / 2
    return ky[:, None] & kx[None, :]


def _check_cutoff(cutoff) -> float:
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 < cutoff <= 1:
        raise InputError(f"cutoff must be a number in (0, 1] (a fraction of the Nyquist frequency), got {cutoff!r}")
    return float(cutoff)


def _spectrum(x: Tensor, norm: str = "backward") -> Tensor:
    """rfft2 of ``x`` in float32 at least (half precision has no FFT of every size)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return torch.fft.rfft2(x, norm=norm)


def ideal_lowpass2d(x: Tensor, cutoff: float = 0.5) -> Tensor:
    """Ideal low-pass filter: keep the frequencies below ``cutoff`` times Nyquist on each axis, zero the rest.

    Args:
        x: maps on a periodic grid.
        cutoff: in (0, 1]; the bins with |k| < N * cutoff / 2 are kept (a bin exactly at the cutoff is zeroed, so
            ``cutoff=1`` removes only the Nyquist bin: it makes any map band-limited, see :func:`band_limit`).

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W), same dtype.

    >>> x = torch.tensor([[[[1.0, -1.0, 1.0, -1.0]]]])   # all its energy at the Nyquist frequency
    >>> ideal_lowpass2d(x, 1.0).abs().max().item() < 1e-7
    True
    """
    _check_map(x)
    cutoff = _check_cutoff(cutoff)
    height, width = x.shape[-2:]
    spectrum = _spectrum(x) * _band_mask(height, width, cutoff, x.device)
    return torch.fft.irfft2(spectrum, s=(height, width)).to(x.dtype)


def band_limit(x: Tensor) -> Tensor:
    """``x`` without its Nyquist bins (:func:`ideal_lowpass2d` at cutoff 1): a map whose fractional shifts are
    exact, the inputs of fractional-shift certificates.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W).
    """
    return ideal_lowpass2d(x, 1.0)


def _check_divides(x: Tensor, stride: int, what: str) -> None:
    height, width = x.shape[-2:]
    if height % stride or width % stride:
        raise ShapeError(f"{what}: the map is {height}x{width}, not a multiple of the stride {stride}; the ideal "
                         f"subsampling of a periodic map needs whole periods (pad or crop it first)")


def _crop_spectrum(spectrum: Tensor, height: int, width: int, out_h: int, out_w: int) -> Tensor:
    """The rfft2 bins of an (H, W) map that an (out_h, out_w) grid represents below its Nyquist frequency.

    Shape (..., out_h, out_w // 2 + 1), the rfft2 layout of the output grid, built in one copy: the Nyquist row
    of an even ``out_h`` and the Nyquist column of an even ``out_w`` are zero (an irfft2 that had to pad a missing
    column would copy the spectrum again).
    """
    keep_y = (out_h - 1) // 2  # |ky| <= keep_y, i.e. |ky| < out_h / 2
    cols = out_w // 2 + 1
    parts = [spectrum[..., : keep_y + 1, :cols]]
    if out_h % 2 == 0:
        parts.append(spectrum.new_zeros(*spectrum.shape[:-2], 1, cols))
    if keep_y:
        parts.append(spectrum[..., height - keep_y:, :cols])
    out = torch.cat(parts, dim=-2)
    if out_w % 2 == 0:
        out[..., -1] = 0  # |kx| = out_w / 2 is not below the cutoff
    return out


def ideal_downsample2d(x: Tensor, stride: int = 2) -> Tensor:
    """Ideal low-pass at ``1 / stride`` of Nyquist, then subsampling by ``stride``: no aliasing at all.

    Equal to ``ideal_lowpass2d(x, 1 / stride)[..., ::stride, ::stride]``, computed from the cropped spectrum
    (an inverse FFT at the output size). A fractional circular shift by ``t`` of the input moves the output by
    ``t / stride`` exactly.

    Shape:
        Input: (B, C, H, W), H and W multiples of ``stride``. Output: (B, C, H / stride, W / stride).

    >>> x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    >>> slow = ideal_lowpass2d(x, 0.5)[..., ::2, ::2]
    >>> bool(torch.allclose(ideal_downsample2d(x, 2), slow, atol=1e-12))
    True
    """
    _check_map(x)
    stride = check_int("stride", stride, 1)
    if stride == 1:
        return x
    _check_divides(x, stride, "ideal_downsample2d")
    height, width = x.shape[-2:]
    out_h, out_w = height // stride, width // stride
    # bins below the cutoff; sampling every stride-th point folds nothing onto them. norm="forward" both ways: the
    # 1 / (H W) of the forward transform is the whole scale (the inverse at the output size adds none)
    spectrum = _crop_spectrum(_spectrum(x, "forward"), height, width, out_h, out_w)
    return torch.fft.irfft2(spectrum, s=(out_h, out_w), norm="forward").to(x.dtype)


def ideal_upsample2d(x: Tensor, factor: int = 2) -> Tensor:
    """Ideal upsampling: zero insertion, the low-pass at ``1 / factor`` and a gain of ``factor ** 2`` (the
    trigonometric interpolant of ``x`` sampled on a ``factor`` times finer grid; ``x``'s Nyquist bin dropped).

    Shape:
        Input: (B, C, H, W). Output: (B, C, H * factor, W * factor).

    >>> x = band_limit(torch.randn(1, 1, 6, 6, dtype=torch.float64))
    >>> bool(torch.allclose(ideal_upsample2d(x, 2)[..., ::2, ::2], x, atol=1e-12))
    True
    """
    _check_map(x)
    factor = check_int("factor", factor, 1)
    if factor == 1:
        return x
    height, width = x.shape[-2:]
    out_h, out_w = height * factor, width * factor
    spectrum = _spectrum(x, "forward")
    keep_y, cols = (height - 1) // 2, (width - 1) // 2 + 1  # the input's Nyquist bins dropped
    gap = spectrum.new_zeros(*spectrum.shape[:-2], out_h - 2 * keep_y - 1, cols)  # the new high rows
    parts = [spectrum[..., : keep_y + 1, :cols], gap] + ([spectrum[..., height - keep_y:, :cols]] if keep_y else [])
    # irfft2 pads the missing high columns with zeros; norm="forward" both ways gives the gain factor ** 2
    return torch.fft.irfft2(torch.cat(parts, dim=-2), s=(out_h, out_w), norm="forward").to(x.dtype)


def _check_coefficients(coefficients) -> Tensor:
    if not isinstance(coefficients, Tensor):
        try:
            coefficients = torch.as_tensor(coefficients, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"coefficients must be three numbers (a0, a1, a2), got {coefficients!r}") from None
    if coefficients.shape != (3,) or not coefficients.is_floating_point():
        raise InputError(f"coefficients must be three numbers (a0, a1, a2), got shape {tuple(coefficients.shape)}")
    return coefficients


def alias_free_activation(x: Tensor, coefficients=GELU_FIT) -> Tensor:
    """The polynomial ``a0 + a1 x + a2 x^2`` evaluated on the 2x Fourier-upsampled grid, then ideally downsampled.

    A quadratic of a band-limited map has up to twice its bandwidth: on the 2x grid it has room, and the low-pass
    back to the original band removes what would have folded. Exactly equivariant to fractional circular shifts
    of band-limited maps (unlike a pointwise ReLU or GELU).

    Args:
        x: maps.
        coefficients: (a0, a1, a2), numbers or a tensor (learnable in :class:`AliasFreeActivation`); default
            :data:`GELU_FIT`.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W).
    """
    _check_map(x)
    a = _check_coefficients(coefficients).to(device=x.device, dtype=x.dtype)
    fine = ideal_upsample2d(x, 2)
    return ideal_downsample2d(a[0] + fine * (a[1] + a[2] * fine), 2)


def alias_free_layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                          eps: float = 1e-6) -> Tensor:
    """Layer norm that commutes with shifts: subtract the mean over channels at each pixel, divide by the standard
    deviation over the whole (C, H, W) map, then ``weight * x + bias`` per channel.

    Shape:
        Input: (B, C, H, W); weight, bias: (C,). Output: (B, C, H, W).
    """
    _check_map(x)
    centred = x - x.mean(dim=1, keepdim=True)
    variance = centred.square().mean(dim=(1, 2, 3), keepdim=True)
    out = centred / torch.sqrt(variance + eps)
    channels = x.shape[1]
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and tuple(value.shape) != (channels,):
            raise ShapeError(f"{name} must have shape ({channels},), got {tuple(value.shape)}")
    if weight is not None:
        out = out * weight.reshape(1, -1, 1, 1)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out


class IdealLowpass2d(nn.Module):
    """Module form of :func:`ideal_lowpass2d`.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W).
    """

    def __init__(self, cutoff: float = 0.5):
        super().__init__()
        self.cutoff = _check_cutoff(cutoff)

    def forward(self, x: Tensor) -> Tensor:
        return ideal_lowpass2d(x, self.cutoff)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff:g}"


class IdealDownsample2d(nn.Module):
    """Module form of :func:`ideal_downsample2d`: the alias-free replacement of a stride-``stride`` subsampling.

    Shape:
        Input: (B, C, H, W), H and W multiples of ``stride``. Output: (B, C, H / stride, W / stride).
    """

    def __init__(self, stride: int = 2):
        super().__init__()
        self.stride = check_int("stride", stride, 1)

    def forward(self, x: Tensor) -> Tensor:
        return ideal_downsample2d(x, self.stride)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class IdealUpsample2d(nn.Module):
    """Module form of :func:`ideal_upsample2d`.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H * factor, W * factor).
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = check_int("factor", factor, 1)

    def forward(self, x: Tensor) -> Tensor:
        return ideal_upsample2d(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class AliasFreeActivation(nn.Module):
    """Module form of :func:`alias_free_activation`, with the coefficients as parameters (``learnable=True``,
    the default) or a fixed buffer.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W).
    """

    def __init__(self, coefficients=GELU_FIT, learnable: bool = True):
        super().__init__()
        value = _check_coefficients(coefficients).to(torch.get_default_dtype()).clone()
        if learnable:
            self.coefficients = nn.Parameter(value)
        else:
            self.register_buffer("coefficients", value)

    def forward(self, x: Tensor) -> Tensor:
        return alias_free_activation(x, self.coefficients)


class AliasFreeLayerNorm(nn.Module):
    """Module form of :func:`alias_free_layer_norm`, with a per-channel weight (ones) and bias (zeros).

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        channels = check_int("channels", channels, 1)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return alias_free_layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps:g}"
