"""Circular-harmonic layers (Harmonic Networks, Worrall et al. 2017): rotation equivariance at every angle.

A circular-harmonic filter of rotation order ``m`` is ``W(r, phi) = R(r) exp(i (m phi + beta))``: a learned
radial profile ``R`` times a complex exponential of the polar angle ``phi``, with a learned phase offset
``beta``. Rotating its input by ``theta`` rotates its response and multiplies it by ``exp(i m theta)``, for
*every* angle, not only quarter turns. Chained, orders add: an order-``k`` feature correlated with an
order-``m`` filter is an order-``k + m`` feature.

A *harmonic feature* is a complex tensor of shape (B, C, M, H, W): ``M`` streams, stream ``s`` holding the
features of rotation order ``orders[s]`` (``(0, 1)`` by default). Under a rotation of
the input by ``theta`` (counter-clockwise), stream ``s`` is rotated about the map's centre and multiplied by
``exp(i orders[s] theta)``; its magnitudes just rotate (:func:`harmonic_magnitude` gives an image-like,
rotation-invariant-per-pixel feature).

Conventions: ``phi`` is measured counter-clockwise *as displayed* (rows grow downwards), from the +column
axis, about the kernel's centre pixel, the same sense as :func:`shiftlab.transforms.rotate`.

On the pixel grid: the radial profile is given at rings ``j = 0 .. k // 2`` and spread onto each pixel by a
Gaussian interpolation in the radius (sigma 0.5, normalised over the rings); pixels beyond radius
``k // 2 + 0.5`` are zero (a disc: the square's corners have no rotated counterpart), and the centre
pixel is zero for ``m != 0`` (where ``phi`` is undefined). Every pixel weight depends on ``(r, phi)`` only,
so a quarter turn is exact (1e-15 in float64); other angles are approximate, because the grid and any 2x
subsampling are not rotation invariant.

- :func:`harmonic_basis`: the (rings, k, k) complex basis of one order.
- :func:`harmonic_conv2d` / :class:`HarmonicConv2d`: the convolution, one real ``conv2d`` call on the
  stacked real and imaginary parts (complex products as a 2x2 real block).
- :func:`harmonic_relu` / :class:`HarmonicReLU`: ``ReLU(|z| + b) z / |z|``, a nonlinearity on magnitudes
  that keeps the phase (so equivariance holds).
- :class:`HarmonicBatchNorm2d`: magnitudes divided by their root mean square over the batch (running
  estimate in eval mode), times a learned gain; the phase is kept.
- :func:`harmonic_blur_pool2d` / :class:`HarmonicBlurPool2d`: anti-aliased subsampling of the complex maps
  (binomial blur, an even filter size so that quarter turns stay exact on even-sized maps).
- :func:`harmonic_magnitude` / :class:`HarmonicMagnitude`: ``|z|``, the invariant readout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab._checks import check_bchw, check_float, check_int, check_tensor
from shiftlab.errors import ArgumentShapeError, ShapeError
from shiftlab.layers.blur_pool import blur_pool2d

__all__ = ["harmonic_basis", "harmonic_conv2d", "HarmonicConv2d", "harmonic_relu", "HarmonicReLU",
           "HarmonicBatchNorm2d", "harmonic_blur_pool2d", "HarmonicBlurPool2d", "harmonic_magnitude",
           "HarmonicMagnitude"]

_SIGMA = 0.5
_PADDING_MODES = ("zeros", "circular")


def _check_kernel_size(kernel_size) -> int:
    kernel_size = check_int("kernel_size", kernel_size, 3, error=ArgumentShapeError)
    if kernel_size % 2 == 0:
        raise ArgumentShapeError(f"kernel_size must be an odd int >= 3, got {kernel_size!r}")
    return kernel_size


def _check_orders(orders, name: str) -> tuple[int, ...]:
    try:
        out = tuple(orders)
    except TypeError:
        raise ArgumentShapeError(f"{name} must be a sequence of ints, got {orders!r}") from None
    if not out or any(isinstance(m, bool) or not isinstance(m, int) for m in out) or len(set(out)) != len(out):
        raise ArgumentShapeError(f"{name} must be a non-empty sequence of distinct ints, got {orders!r}")
    return out


def _polar(kernel_size: int) -> tuple[Tensor, Tensor]:
    """Radius and counter-clockwise (as displayed) angle of every pixel of a k x k kernel, float64."""
    c = (kernel_size - 1) / 2
    idx = torch.arange(kernel_size, dtype=torch.float64) - c
    rows, cols = torch.meshgrid(idx, idx, indexing="ij")
    return torch.sqrt(rows**2 + cols**2), torch.atan2(-rows, cols)


def _basis_parts(kernel_size: int, order: int) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts (rings, k, k), float64, of :func:`harmonic_basis`."""
    radius, angle = _polar(kernel_size)
    rings = torch.arange(kernel_size // 2 + 1, dtype=torch.float64)
    weights = torch.exp(-((radius[None] - rings[:, None, None]) ** 2) / (2 * _SIGMA**2))
    weights = weights / weights.sum(0, keepdim=True)
    inside = radius <= kernel_size // 2 + 0.5
    if order != 0:
        inside = inside & (radius > 0)
    weights = weights * inside
    # exact signs at the axes and diagonals (cos(pi/2) is 6e-17 otherwise): a quarter turn then permutes
    # pixel values exactly
    cos, sin = torch.cos(order * angle), torch.sin(order * angle)
    cos = torch.where(cos.abs() < 1e-12, torch.zeros_like(cos), cos)
    sin = torch.where(sin.abs() < 1e-12, torch.zeros_like(sin), sin)
    return weights * cos, weights * sin


def harmonic_basis(kernel_size: int, order: int) -> Tensor:
    """The circular-harmonic basis of rotation order ``order``: one complex k x k filter per ring.

    Entry ``j`` is ``g_j(r) exp(i order phi)``, with ``g_j`` the Gaussian interpolation weight of ring ``j``
    (radius ``j``) at the pixel's radius ``r``, zero outside radius ``k // 2 + 0.5`` and, for ``order != 0``,
    at the centre. A filter with radial profile ``R`` is ``sum_j R[j] basis[j]``.

    Shape:
        Output: (kernel_size // 2 + 1, kernel_size, kernel_size), complex128.

    >>> b = harmonic_basis(3, 1)
    >>> b.shape, complex(b[1, 1, 2]).real > 0, abs(complex(b[1, 1, 1]))   # phi = 0 to the right; 0 at the centre
    (torch.Size([2, 3, 3]), True, 0.0)
    """
    _check_kernel_size(kernel_size)
    order = check_int("order", order, error=ArgumentShapeError)
    re, im = _basis_parts(kernel_size, order)
    return torch.complex(re, im)


def _pair_basis(kernel_size: int, in_orders, out_orders) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts (M_out, M_in, rings, k, k) of the basis of each (output, input) stream pair."""
    parts = {m: _basis_parts(kernel_size, m) for m in {a - b for a in out_orders for b in in_orders}}
    re = torch.stack([torch.stack([parts[a - b][0] for b in in_orders]) for a in out_orders])
    im = torch.stack([torch.stack([parts[a - b][1] for b in in_orders]) for a in out_orders])
    return re, im


def _check_harmonic(z: Tensor, name: str = "z", streams: int | None = None) -> Tensor:
    check_tensor(z, name)
    if not z.is_complex() or z.ndim != 5:
        raise ShapeError(f"{name} must be a complex harmonic feature (B, C, M, H, W), got {z.dtype} of shape "
                         f"{tuple(z.shape)}")
    if streams is not None and z.shape[2] != streams:
        raise ShapeError(f"{name} must have {streams} rotation-order streams, got {z.shape[2]}")
    return z


def _real_filters(radial: Tensor, phase: Tensor, basis_re: Tensor, basis_im: Tensor,
                  real_input: bool) -> Tensor:
    """The real conv2d weight equal to the complex filters ``exp(i phase) sum_j radial[.., j] basis[.., j]``."""
    pre = torch.einsum("oaibj,abjyx->oaibyx", radial, basis_re)
    pim = torch.einsum("oaibj,abjyx->oaibyx", radial, basis_im)
    c, s = torch.cos(phase)[..., None, None], torch.sin(phase)[..., None, None]
    a, b = c * pre - s * pim, s * pre + c * pim  # real and imaginary parts of the filters (o, a, i, b, k, k)
    c_out, m_out, c_in, m_in, k, _ = a.shape
    if real_input:  # out_re = A * x, out_im = B * x
        return torch.stack([a, b], 2).reshape(c_out * m_out * 2, c_in * m_in, k, k)
    # out_re = A * x_re - B * x_im, out_im = B * x_re + A * x_im; input channels (i, b, re/im)
    top = torch.stack([a, -b], 4)
    bottom = torch.stack([b, a], 4)
    return torch.stack([top, bottom], 2).reshape(c_out * m_out * 2, c_in * m_in * 2, k, k)


def _conv_real(x: Tensor, weight: Tensor, padding_mode: str) -> Tensor:
    pad = weight.shape[-1] // 2
    if padding_mode == "circular":
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="circular"), weight)
    return F.conv2d(x, weight, padding=pad)


def _to_real(z: Tensor) -> Tensor:
    """(B, C, M, H, W) complex -> (B, C * M * 2, H, W) real, channels ordered (c, m, re/im)."""
    b, c, m, h, w = z.shape
    return torch.view_as_real(z).movedim(-1, 3).reshape(b, c * m * 2, h, w)


def _to_complex(x: Tensor, channels: int, streams: int) -> Tensor:
    """(B, C * M * 2, H, W) real -> (B, C, M, H, W) complex."""
    b, _, h, w = x.shape
    return torch.view_as_complex(x.view(b, channels, streams, 2, h, w).movedim(3, -1).contiguous())


def _harmonic_conv(z: Tensor, radial: Tensor, phase: Tensor, basis_re: Tensor, basis_im: Tensor,
                   padding_mode: str) -> Tensor:
    real_input = not z.is_complex()
    if real_input:
        check_float(check_bchw(z, "z"), "z")
        x = z
    else:
        x = _to_real(z)
    weight = _real_filters(radial.to(x.dtype), phase.to(x.dtype), basis_re.to(x.dtype), basis_im.to(x.dtype),
                           real_input)
    return _to_complex(_conv_real(x, weight, padding_mode), radial.shape[0], radial.shape[1])


def _check_params(z: Tensor, radial: Tensor, phase: Tensor, in_orders, out_orders) -> int:
    check_float(check_tensor(radial, "radial"), "radial")
    check_float(check_tensor(phase, "phase"), "phase")
    if radial.ndim != 5:
        raise ShapeError(f"radial must have shape (C_out, M_out, C_in, M_in, rings), got {tuple(radial.shape)}")
    c_out, m_out, c_in, m_in, rings = radial.shape
    if phase.shape != radial.shape[:4]:
        raise ShapeError(f"phase must have shape {tuple(radial.shape[:4])}, got {tuple(phase.shape)}")
    if (m_out, m_in) != (len(out_orders), len(in_orders)):
        raise ShapeError(f"radial has {m_out} output and {m_in} input streams, but the orders are "
                         f"{tuple(out_orders)} and {tuple(in_orders)}")
    if z.is_complex():
        _check_harmonic(z, streams=m_in)
    elif tuple(in_orders) != (0,):
        raise ShapeError(f"a real input is an order-0 feature, so in_orders must be (0,), got {tuple(in_orders)}")
    if z.shape[1] != c_in:
        raise ShapeError(f"radial expects {c_in} input channels, z has {z.shape[1]}")
    return 2 * rings - 1


def harmonic_conv2d(z: Tensor, radial: Tensor, phase: Tensor, in_orders=(0,), out_orders=(0, 1),
                    padding_mode: str = "zeros") -> Tensor:
    """Correlate a harmonic feature (or a real image) with circular-harmonic filters.

    Output stream ``a`` (order ``out_orders[a]``) is ``sum_{i, b} W[o, a, i, b] * z[:, i, b]`` with
    ``W[o, a, i, b] = exp(i phase[o, a, i, b]) sum_j radial[o, a, i, b, j] harmonic_basis(k, out_orders[a] -
    in_orders[b])[j]``: every path's filter order makes the orders add up. Same padding, stride 1.

    Args:
        z: a complex harmonic feature, or a real image (an order-0 feature; then ``in_orders=(0,)``).
        radial: radial profiles at rings ``0 .. k // 2``; the kernel size is ``2 * rings - 1``.
        phase: phase offsets ``beta``, radians.
        in_orders, out_orders: the rotation orders of the input's and output's streams.
        padding_mode: ``"zeros"`` or ``"circular"``.

    Shape:
        Input: (B, C_in, M_in, H, W) complex, or (B, C_in, H, W) real. radial: (C_out, M_out, C_in, M_in, rings);
        phase: (C_out, M_out, C_in, M_in). Output: (B, C_out, M_out, H, W) complex.

    >>> x = torch.rand(1, 1, 9, 9, dtype=torch.float64)
    >>> radial, phase = torch.rand(2, 2, 1, 1, 3, dtype=torch.float64), torch.rand(2, 2, 1, 1, dtype=torch.float64)
    >>> y, yr = harmonic_conv2d(x, radial, phase), harmonic_conv2d(torch.rot90(x, 1, (-2, -1)), radial, phase)
    >>> turn = torch.tensor([1, 1j]).view(1, 1, 2, 1, 1)   # exp(i m pi / 2) for the orders (0, 1)
    >>> bool(torch.allclose(yr, turn * torch.rot90(y, 1, (-2, -1))))
    True
    """
    in_orders, out_orders = _check_orders(in_orders, "in_orders"), _check_orders(out_orders, "out_orders")
    if padding_mode not in _PADDING_MODES:
        raise ArgumentShapeError(f"padding_mode must be one of {', '.join(_PADDING_MODES)}; got {padding_mode!r}")
    k = _check_params(z, radial, phase, in_orders, out_orders)
    re, im = _pair_basis(k, in_orders, out_orders)
    return _harmonic_conv(z, radial, phase, re, im, padding_mode)


class HarmonicConv2d(nn.Module):
    """Module form of :func:`harmonic_conv2d`, with learned radial profiles and phase offsets.

    Each (output channel, output stream, input channel, input stream) has ``kernel_size // 2 + 1`` radial
    values and one phase: ``(k // 2 + 2) x C_out x M_out x C_in x M_in`` parameters. The cost is that of one
    real convolution with ``2 C_in M_in`` inputs and ``2 C_out M_out`` outputs (``C_in`` inputs for a real
    image). The basis is computed from its formula (:meth:`basis`), so the state dict holds only ``radial``
    and ``phase``.

    Args:
        in_channels, out_channels: channels (each with ``len(orders)`` complex streams).
        kernel_size: odd filter size (>= 3).
        in_orders: the input's rotation orders; ``(0,)`` for a real image.
        out_orders: the output's rotation orders, ``(0, 1)`` by default.
        padding_mode: ``"zeros"`` or ``"circular"``.

    Shape:
        Input: (B, in_channels, M_in, H, W) complex, or (B, in_channels, H, W) real.
        Output: (B, out_channels, M_out, H, W) complex.

    >>> HarmonicConv2d(1, 4, 5)(torch.rand(2, 1, 12, 12)).shape
    torch.Size([2, 4, 2, 12, 12])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, in_orders=(0,),
                 out_orders=(0, 1), padding_mode: str = "zeros") -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            check_int(name, value, 1, error=ArgumentShapeError)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _check_kernel_size(kernel_size)
        self.in_orders = _check_orders(in_orders, "in_orders")
        self.out_orders = _check_orders(out_orders, "out_orders")
        if padding_mode not in _PADDING_MODES:
            raise ArgumentShapeError(f"padding_mode must be one of {', '.join(_PADDING_MODES)}; got {padding_mode!r}")
        self.padding_mode = padding_mode
        rings = kernel_size // 2 + 1
        shape = (out_channels, len(self.out_orders), in_channels, len(self.in_orders))
        self.radial = nn.Parameter(torch.empty(*shape, rings))
        self.phase = nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def basis(self) -> tuple[Tensor, Tensor]:
        """Real and imaginary parts (M_out, M_in, rings, k, k), float64, of every stream pair's basis."""
        return _pair_basis(self.kernel_size, self.in_orders, self.out_orders)

    def reset_parameters(self) -> None:
        # He-like: every input stream contributes the pixels of the disc (unit-modulus basis values)
        radius, _ = _polar(self.kernel_size)
        pixels = float((radius <= self.kernel_size // 2 + 0.5).sum())
        fan_in = self.in_channels * len(self.in_orders) * pixels
        nn.init.normal_(self.radial, 0.0, math.sqrt(2.0 / fan_in))
        nn.init.uniform_(self.phase, 0.0, 2 * math.pi)

    def forward(self, z: Tensor) -> Tensor:
        _check_params(z, self.radial, self.phase, self.in_orders, self.out_orders)
        # the basis is computed from its formula in float64 on every call (a few hundred numbers; a buffer
        # would be rounded for good by .float())
        re, im = _pair_basis(self.kernel_size, self.in_orders, self.out_orders)
        return _harmonic_conv(z, self.radial, self.phase, re.to(z.device), im.to(z.device), self.padding_mode)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"in_orders={self.in_orders}, out_orders={self.out_orders}, padding_mode={self.padding_mode!r}")


def harmonic_magnitude(z: Tensor) -> Tensor:
    """``|z|``: the magnitude of every stream, which rotates with the input like an image (no phase).

    Shape:
        Input: (B, C, M, H, W) complex. Output: (B, C, M, H, W) real.
    """
    return _check_harmonic(z).abs()


def _stream_shape(z: Tensor, param: Tensor, name: str) -> Tensor:
    if param.shape != z.shape[1:3]:
        raise ShapeError(f"{name} must have shape (C, M) = {tuple(z.shape[1:3])}, got {tuple(param.shape)}")
    return param[None, :, :, None, None]


def harmonic_relu(z: Tensor, bias: Tensor, eps: float = 1e-12) -> Tensor:
    """``ReLU(|z| + bias) z / |z|`` per stream (modReLU): a magnitude nonlinearity that keeps the phase.

    A function of ``|z|`` times ``z`` commutes with every rotation and phase factor, so equivariance holds
    exactly. ``|z|`` is clamped below by ``eps`` in the division (zero stays zero).

    Shape:
        Input: (B, C, M, H, W) complex; bias: (C, M) real. Output: (B, C, M, H, W) complex.
    """
    _check_harmonic(z)
    check_float(check_tensor(bias, "bias"), "bias")
    magnitude = z.abs()
    gain = F.relu(magnitude + _stream_shape(z, bias, "bias").to(magnitude.dtype)) / magnitude.clamp_min(eps)
    return z * gain


class HarmonicReLU(nn.Module):
    """Module form of :func:`harmonic_relu`, with a learned bias per channel and stream.

    Shape:
        Input: (B, channels, streams, H, W) complex. Output: same.
    """

    def __init__(self, channels: int, streams: int = 2, bias: float = -0.5) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.full((channels, streams), float(bias)))

    def forward(self, z: Tensor) -> Tensor:
        return harmonic_relu(z, self.bias)


class HarmonicBatchNorm2d(nn.Module):
    """Batch normalisation of magnitudes: each (channel, stream) divided by its RMS magnitude, times a gain.

    In training mode the mean of ``|z|**2`` over the batch and positions is used and folded into
    ``running_ms`` (like ``nn.BatchNorm2d``'s running statistics, ``momentum`` 0.1); in eval mode the running
    value. No mean is subtracted, so the phase (and the equivariance) is kept.

    Shape:
        Input: (B, channels, streams, H, W) complex. Output: same.
    """

    def __init__(self, channels: int, streams: int = 2, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = float(momentum), float(eps)
        self.weight = nn.Parameter(torch.ones(channels, streams))
        self.register_buffer("running_ms", torch.ones(channels, streams))

    def forward(self, z: Tensor) -> Tensor:
        _check_harmonic(z)
        _stream_shape(z, self.weight, "weight")
        if self.training:
            ms = (z.real**2 + z.imag**2).mean((0, 3, 4))
            with torch.no_grad():
                self.running_ms.lerp_(ms.detach().to(self.running_ms.dtype), self.momentum)
        else:
            ms = self.running_ms.to(z.real.dtype)
        scale = self.weight.to(ms.dtype) / torch.sqrt(ms + self.eps)
        return z * scale[None, :, :, None, None]


def harmonic_blur_pool2d(z: Tensor, filter_size: int = 4, stride: int = 2) -> Tensor:
    """Anti-aliased subsampling of each complex map: binomial blur, then every ``stride``-th sample.

    The real and imaginary parts go through :func:`shiftlab.layers.blur_pool2d` (zero padding). A blur
    before subsampling is what keeps a continuous rotation nearly commuting with it (aliasing does not
    rotate): measured on digits, the 45-degree error after a pooling layer falls by about a third from
    ``filter_size=2`` (2x2 average pooling) to 4. An even ``filter_size`` centres each window on
    ``stride * i + 1/2``, so on even-sized maps a quarter turn stays exact; an odd one does not.

    Shape:
        Input: (B, C, M, H, W) complex. Output: (B, C, M, ceil(H / stride), ceil(W / stride)).

    >>> z = torch.ones(1, 1, 2, 4, 4, dtype=torch.complex128)
    >>> harmonic_blur_pool2d(z, filter_size=2).shape, complex(harmonic_blur_pool2d(z, filter_size=2)[0, 0, 1, 0, 0])
    (torch.Size([1, 1, 2, 2, 2]), (1+0j))
    """
    _check_harmonic(z)
    b, c, m, h, w = z.shape
    return _to_complex(blur_pool2d(_to_real(z), filter_size, stride, "zeros"), c, m)


class HarmonicBlurPool2d(nn.Module):
    """Module form of :func:`harmonic_blur_pool2d`.

    Shape:
        Input: (B, C, M, H, W) complex. Output: (B, C, M, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, filter_size: int = 4, stride: int = 2) -> None:
        super().__init__()
        self.filter_size, self.stride = filter_size, stride

    def forward(self, z: Tensor) -> Tensor:
        return harmonic_blur_pool2d(z, self.filter_size, self.stride)

    def extra_repr(self) -> str:
        return f"filter_size={self.filter_size}, stride={self.stride}"


class HarmonicMagnitude(nn.Module):
    """Module form of :func:`harmonic_magnitude`, the streams flattened into channels: an image-like map.

    Shape:
        Input: (B, C, M, H, W) complex. Output: (B, C * M, H, W) real.
    """

    def forward(self, z: Tensor) -> Tensor:
        return harmonic_magnitude(z).flatten(1, 2)
