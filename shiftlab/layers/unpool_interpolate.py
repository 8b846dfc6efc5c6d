"""Interpolation at the encoder's phase: the final ``F.interpolate`` of a segmentation network, made equivariant.

torchvision's segmentation models (FCN, DeepLabV3, LR-ASPP) end with ``F.interpolate(out, size=input_size,
mode="bilinear", align_corners=False)``: an upsampling by the encoder's total stride ``S`` that assumes the map's
samples sit at phase 0 of the input grid and clamps at the border. Upsampling by an integer factor ``S`` is zero
insertion followed by a fixed kernel: for ``"bilinear"`` (``align_corners=False``) the tent
``h[u] = max(0, 1 - |(2u + 1 - S) / (2S)|)`` (``2S`` taps for even ``S``), for ``"nearest"`` the hold ``h[u] = 1``
for ``0 <= u < S``; on every axis ``y[i] = sum_j x[j] h[i - S j]`` (the kernel's taps of one phase sum to 1).
:func:`unpool_interpolate2d` puts the values at the phase the encoder kept instead of phase 0
(:func:`aps_unpool2d`'s placement) and applies that kernel circularly: at phase 0 it is ``F.interpolate`` of the
circularly extended map (the same numbers away from the border), and it moves with every circular shift of the
input whose phase it is given.

The phase of a stack of subsampling layers is composed: layer ``k`` (stride ``s_k``) kept offset ``(i_k, j_k)`` of
its own input, which is offset ``(i_k, j_k) * s_1 ... s_{k-1}`` of the network's input, so the kept samples of the
last map sit at offset ``(sum_k i_k s_1...s_{k-1}, sum_k j_k s_1...s_{k-1})``, phase ``oy * S + ox``
(:func:`compose_phases`). :class:`UnpoolInterpolate2d` reads the phases through the layers'
:class:`~shiftlab.layers.PhaseLink` objects, innermost last.

:func:`wrap_pad2d` / :class:`WrapPad2d` pads circularly by any amount (``F.pad`` refuses to wrap more than once,
which a dilated convolution of DeepLabV3's ASPP, dilation 36, needs on the small maps of a test).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab._checks import check_bchw, check_float
from shiftlab.errors import ArgumentShapeError, InputError, ShapeError
from shiftlab.layers.blur_pool import _check_stride
from shiftlab.layers.unpool import PhaseLink, _crop, _place, _read

__all__ = ["INTERPOLATION_MODES", "interpolation_taps", "compose_phases", "wrap_pad2d", "WrapPad2d",
           "unpool_interpolate2d", "UnpoolInterpolate2d"]

#: the kernels :func:`unpool_interpolate2d` applies after the placement (those of ``F.interpolate``)
INTERPOLATION_MODES = ("bilinear", "nearest")


def interpolation_taps(stride: int, mode: str = "bilinear") -> tuple[Tensor, int]:
    """The 1-D kernel ``h`` of an integer upsampling by ``stride`` and the offset ``u0`` of its first tap:
    ``y[i] = sum_j x[j] h[i - stride * j - u0]``.

    >>> h, u0 = interpolation_taps(2); h.tolist(), u0
    ([0.25, 0.75, 0.75, 0.25], -1)
    """
    s = _check_stride(stride)
    if mode not in INTERPOLATION_MODES:
        raise ArgumentShapeError(f"mode must be one of {', '.join(INTERPOLATION_MODES)}; got {mode!r}")
    u = torch.arange(-s, 2 * s, dtype=torch.float64)
    if mode == "nearest":
        h = ((u >= 0) & (u < s)).to(torch.float64)
    else:
        h = (1 - ((2 * u + 1 - s) / (2 * s)).abs()).clamp(min=0)
    keep = (h > 0).nonzero().flatten()
    first, last = int(keep[0]), int(keep[-1])
    return h[first:last + 1], int(u[first])


def compose_phases(phases: Sequence[Tensor], strides: Sequence[int]) -> Tensor:
    """The phase, at the total stride ``S = prod(strides)``, of maps subsampled by a stack of layers that kept
    ``phases`` ((B,) int64 each, outermost first).

    >>> compose_phases([torch.tensor([3]), torch.tensor([1])], [2, 2])  # offsets (1, 1) then (0, 1): (1, 3) of 4
    tensor([7])
    """
    if len(phases) != len(strides) or not phases:
        raise InputError(f"compose_phases needs one stride per phase, got {len(phases)} phases and {len(strides)} "
                         "strides")
    oy = ox = 0
    scale = 1
    for p, s in zip(phases, strides):
        if not isinstance(p, Tensor) or p.dtype != torch.int64:
            raise ShapeError("each phase must be a (B,) int64 tensor (an LPS layer in training has mixture weights: "
                             "call eval())")
        oy, ox, scale = oy + (p // s) * scale, ox + (p % s) * scale, scale * s
    return oy * scale + ox


def wrap_pad2d(x: Tensor, pad: Sequence[int]) -> Tensor:
    """Circular padding ``(left, right, top, bottom)`` of any size (wrapping as often as needed).

    Shape:
        Input: (B, C, H, W). Output: (B, C, H + top + bottom, W + left + right).

    >>> wrap_pad2d(torch.arange(2.0).view(1, 1, 1, 2), (3, 0, 0, 0)).flatten().tolist()
    [1.0, 0.0, 1.0, 0.0, 1.0]
    """
    check_bchw(x)
    left, right, top, bottom = (int(p) for p in pad)
    if min(left, right, top, bottom) < 0:
        raise ArgumentShapeError(f"padding must be non-negative, got {tuple(pad)}")
    h, w = x.shape[-2:]
    rows = torch.arange(-top, h + bottom, device=x.device) % h
    cols = torch.arange(-left, w + right, device=x.device) % w
    return x.index_select(-2, rows).index_select(-1, cols)


class WrapPad2d(nn.Module):
    """Module form of :func:`wrap_pad2d`.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H + top + bottom, W + left + right).
    """

    def __init__(self, pad: Sequence[int]) -> None:
        super().__init__()
        self.pad = tuple(int(p) for p in pad)
        if len(self.pad) != 4 or min(self.pad) < 0:
            raise ArgumentShapeError(f"pad must be (left, right, top, bottom), non-negative; got {tuple(pad)}")

    def forward(self, x: Tensor) -> Tensor:
        return wrap_pad2d(x, self.pad)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


def _interpolate_placed(y: Tensor, stride: int, mode: str, padding_mode: str) -> Tensor:
    """The separable kernel of ``mode`` on the placed map ``y`` (stride 1, ``padding_mode``)."""
    h, u0 = interpolation_taps(stride, mode)
    k = h.numel()
    # y_out[i] = sum_t h[t] y[i - u0 - t]: a correlation with the flipped kernel, padded u0 + k - 1 before
    before, after = u0 + k - 1, -u0
    b, c, hh, ww = y.shape
    flat = y.reshape(b * c, 1, hh, ww)
    pads = (before, after, before, after)  # both >= 0 for the kernels of INTERPOLATION_MODES
    flat = wrap_pad2d(flat, pads) if padding_mode == "circular" else F.pad(flat, pads)
    kernel = h.flip(0).to(y.dtype).to(y.device)
    flat = F.conv2d(F.conv2d(flat, kernel.view(1, 1, k, 1)), kernel.view(1, 1, 1, k))
    return flat.reshape(b, c, hh, ww)


def unpool_interpolate2d(x: Tensor, phase: Tensor, stride: int, mode: str = "bilinear",
                         padding_mode: str = "circular", output_size=None) -> Tensor:
    """Upsample by ``stride`` as ``F.interpolate(mode, align_corners=False)`` does, with the samples at ``phase``.

    Args:
        x: the map at the encoder's output resolution.
        phase: (B,) int64 phases at ``stride`` (:func:`compose_phases` of a stack of APS layers); phase ``p`` is
            the offset ``(p // stride, p % stride)``.
        stride: the total stride ``S`` of the encoder.
        mode: ``"bilinear"`` or ``"nearest"``: the kernel applied after the placement.
        padding_mode: ``"circular"`` (exact equivariance) or ``"zeros"``.
        output_size: ``(H, W)`` to crop to.

    Shape:
        Input: (B, C, h, w). Output: (B, C, h * S, w * S), or ``output_size``.

    >>> x = torch.rand(1, 2, 4, 4, dtype=torch.float64)
    >>> y = unpool_interpolate2d(x, torch.tensor([0]), 2)
    >>> ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    >>> bool(torch.allclose(y[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1]))
    True
    """
    check_float(check_bchw(x))
    s = _check_stride(stride)
    if mode not in INTERPOLATION_MODES:
        raise ArgumentShapeError(f"mode must be one of {', '.join(INTERPOLATION_MODES)}; got {mode!r}")
    if padding_mode not in ("circular", "zeros"):
        raise ArgumentShapeError(f"padding_mode must be 'circular' or 'zeros', got {padding_mode!r}")
    if not isinstance(phase, Tensor) or phase.dtype != torch.int64 or phase.shape != (x.shape[0],):
        raise ShapeError(f"phase must be a ({x.shape[0]},) int64 tensor")
    if phase.numel() and not bool(((phase >= 0) & (phase < s * s)).all()):
        raise ShapeError(f"phase values must lie in [0, {s * s}), got {phase.tolist()}")
    return _crop(_interpolate_placed(_place(x, phase, s), s, mode, padding_mode), output_size)


class UnpoolInterpolate2d(nn.Module):
    """:func:`unpool_interpolate2d` at the composed phase of a stack of encoder layers, read through their
    :class:`~shiftlab.layers.PhaseLink` objects (outermost first); the output is cropped to the input size of the
    outermost layer. No parameters: it replaces a final ``F.interpolate``.

    Shape:
        Input: (B, C, h, w). Output: (B, C, H, W), the outermost encoder layer's input size.
    """

    def __init__(self, links: Sequence[PhaseLink], mode: str = "bilinear", padding_mode: str = "circular",
                 name: str | None = None) -> None:
        super().__init__()
        links = list(links)
        if not links or not all(isinstance(link, PhaseLink) for link in links):
            raise InputError("links must be a non-empty sequence of PhaseLink objects")
        if mode not in INTERPOLATION_MODES:
            raise ArgumentShapeError(f"mode must be one of {', '.join(INTERPOLATION_MODES)}; got {mode!r}")
        if padding_mode not in ("circular", "zeros"):
            raise ArgumentShapeError(f"padding_mode must be 'circular' or 'zeros', got {padding_mode!r}")
        self.links, self.mode, self.padding_mode, self.name = links, mode, padding_mode, name
        self.stride = 1
        for link in links:
            self.stride *= link.stride

    def forward(self, x: Tensor) -> Tensor:
        check_float(check_bchw(x))
        layer = self.name or type(self).__name__
        read = [_read(link, layer, x, False) for link in self.links]
        phase = compose_phases([choice for choice, _ in read], [link.stride for link in self.links])
        return unpool_interpolate2d(x, phase, self.stride, self.mode, self.padding_mode, read[0][1])

    def extra_repr(self) -> str:
        return f"stride={self.stride}, mode={self.mode!r}, padding_mode={self.padding_mode!r}"
