"""Anti-aliased subsampling (Zhang 2019): blur with a binomial filter, then keep every ``stride``-th sample.

The filter of size ``k`` is the outer product of the binomial row ``C(k-1, i) / 2**(k-1)``; it sums to 1.
Odd sizes pad ``(k-1)/2`` on each side; even sizes pad ``floor((k-1)/2)`` before and ``ceil((k-1)/2)`` after,
as Zhang 2019 does, so an input of length ``n`` gives ``ceil(n / stride)`` outputs whatever the size.

Implementation: the filter is separable, so the blur runs as two 1-D passes (rows, then columns), each computed
only at the kept positions, from strided views of the input: no padded copy and no convolution. The few
output rows and columns whose window reaches past the border are computed from the padding mode's index
map. On CPU this is about 1.4-2x faster than the padded depthwise ``conv2d`` of timm and antialiased-cnns
(``benchmarks/bench_blurpool.py``; a single-channel conv2d on (B*C, 1, H, W) is slower still) and equal
to it to float rounding. With autograd enabled the pieces are concatenated instead of written in place.
A blur at stride 1 (the low-pass filter of APS) on a large CPU map runs in blocks of channel planes of about
4 MiB, so that the first pass's full-size intermediate stays in cache; the result is the same to the bit.
float16 and bfloat16 maps are blurred in float32 and rounded once at the end: summing the integer taps first
would overflow float16 (a filter of 7 taps multiplies a map by 4096 before normalising).

Graph capture. Under ``torch.export``, ``torch.compile``, ``torch.jit.trace`` and both ONNX exporters
(:func:`in_graph_capture`) the blur is instead written as a padding (a gather with constant indices, or a
zero pad) followed by two depthwise ``conv2d`` of the normalised binomial row, at the stride: a small static
graph that every exporter and runtime understands, with no cached index tables and no in-place writes into
views. It computes the same function to float rounding (the taps ``C(k-1, i) / 2**(k-1)`` are exact in
every float dtype).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab._checks import check_bchw, check_float, check_int
from shiftlab.errors import ArgumentShapeError, ShapeError

__all__ = ["PADDING_MODES", "check_filter_size", "binomial_filter", "blur_pool2d", "BlurPool2d", "max_blur_pool2d", "MaxBlurPool2d",
           "in_graph_capture"]

#: Padding modes understood by the blur layers (``"zeros"`` pads with 0).
PADDING_MODES = ("reflect", "replicate", "zeros", "circular")
MAX_FILTER_SIZE = 7
# CPU work on large maps runs in blocks of about this many bytes, small enough to stay in cache: stride-1
# blurs in blocks of channel planes, APS energies in blocks of samples.
_BLOCK_BYTES = 1 << 22


def in_graph_capture() -> bool:
    """Whether the running code is being captured into a graph rather than run eagerly.

    True under ``torch.jit.trace`` (and so the legacy ONNX exporter), ``torch.export`` (strict or not, and so
    the dynamo ONNX exporter) and ``torch.compile``. The layers then use formulations made of plain tensor
    operations without data-dependent control flow, which compute the same results as their eager fast paths.
    """
    if torch.jit.is_tracing():
        return True
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def check_filter_size(filter_size) -> int:
    """``filter_size`` as an int if it is one of the binomial filters shiftlab makes (1 to ``MAX_FILTER_SIZE``
    = 7 taps), else :class:`~shiftlab.errors.ArgumentShapeError` (an ``InputError``) naming it.

    The one check of every ``filter_size`` argument: the blur and APS layers and :func:`shiftlab.antialias`.

    >>> check_filter_size(3)
    3
    """
    return check_int("filter_size", filter_size, 1, MAX_FILTER_SIZE, error=ArgumentShapeError)


def _check_stride(stride) -> int:
    return check_int("stride", stride, 1, error=ArgumentShapeError)


def _check_padding_mode(padding_mode: str) -> str:
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ArgumentShapeError(f"padding_mode must be one of {', '.join(PADDING_MODES)}; got {padding_mode!r}")
    return padding_mode


def _binomial_row(size: int) -> list[int]:
    return [math.comb(size - 1, i) for i in range(size)]


def filter_padding(filter_size: int) -> tuple[int, int]:
    """Padding (before, after) of a blur of ``filter_size`` taps: floor and ceil of ``(filter_size - 1) / 2``."""
    return (filter_size - 1) // 2, filter_size // 2


def binomial_filter(size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The (size, size) binomial blur filter, the outer product of ``C(size-1, i)``, normalised to sum 1.

    Shape:
        Output: (size, size).

    >>> binomial_filter(3) * 16
    tensor([[1., 2., 1.],
            [2., 4., 2.],
            [1., 2., 1.]])
    """
    check_filter_size(size)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentShapeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    row = torch.tensor(_binomial_row(size), dtype=torch.float64)
    return (torch.outer(row, row) / row.sum() ** 2).to(dtype)


def _source_index(positions: Tensor, n: int, padding_mode: str) -> tuple[Tensor, Tensor]:
    """Map (possibly out of range) positions of a padded axis to input indices and a validity mask."""
    inside = (positions >= 0) & (positions < n)
    if padding_mode == "circular":
        return positions.remainder(n), torch.ones_like(inside)
    if padding_mode == "replicate":
        return positions.clamp(0, n - 1), torch.ones_like(inside)
    if padding_mode == "reflect":
        period = 2 * (n - 1)
        folded = positions.remainder(period) if period > 0 else torch.zeros_like(positions)
        return torch.where(folded < n, folded, period - folded), torch.ones_like(inside)
    return positions.clamp(0, n - 1), inside  # zeros


def _blur_axis(x: Tensor, dim: int, taps: list[int], stride: int, pad_before: int, padding_mode: str,
               out: Tensor | None = None) -> Tensor:
    """Unnormalised 1-D blur of ``x`` along ``dim`` with integer ``taps``, kept at every ``stride``-th position.

    Output i is ``sum_t taps[t] * x_padded[stride * i + t]`` with ``x_padded[j] = x[j - pad_before]``.
    Written into ``out`` if given (not under autograd).
    """
    d = dim % x.ndim
    n = x.shape[d]
    k = len(taps)
    count = (n - 1) // stride + 1
    # outputs whose whole window lies inside the input: 0 <= stride * i - pad_before <= n - k
    first = -(-pad_before // stride)
    last = min((n - k + pad_before) // stride, count - 1) if n >= k else first - 1
    border_before = list(range(0, min(first, count)))
    border_after = list(range(max(last + 1, first), count))
    if last >= first:
        inner = last - first + 1
        start = stride * first - pad_before
        views = [_every(x.narrow(d, start + t, stride * (inner - 1) + 1), d, stride) for t in range(k)]
    if not (torch.is_grad_enabled() and x.requires_grad):
        # fast path: write every piece into one preallocated output
        if out is None:
            shape = list(x.shape)
            shape[d] = count
            out = x.new_empty(shape)
        if last >= first:
            _weighted_sum(views, taps, out.narrow(d, first, inner))
        for rows in (border_before, border_after):
            if rows:
                out.narrow(d, rows[0], len(rows)).copy_(_border(x, d, rows, taps, stride, pad_before, padding_mode))
        return out
    pieces = []
    if border_before:
        pieces.append(_border(x, d, border_before, taps, stride, pad_before, padding_mode))
    if last >= first:
        pieces.append(_weighted_sum(views, taps))
    if border_after:
        pieces.append(_border(x, d, border_after, taps, stride, pad_before, padding_mode))
    return torch.cat(pieces, d) if len(pieces) > 1 else pieces[0]


@functools.lru_cache(maxsize=256)
def _border_plan(n: int, rows: tuple[int, ...], taps: tuple[int, ...], stride: int, pad_before: int,
                 padding_mode: str) -> tuple[list[int], list[list[int]]]:
    """Source indices (rows * k) and integer weights (rows, k) of border outputs ``rows``.

    Cached as plain lists: a cached tensor made under ``torch.inference_mode`` could not be used later
    by autograd.
    """
    k = len(taps)
    positions = stride * torch.tensor(rows)[:, None] - pad_before + torch.arange(k)
    index, valid = _source_index(positions, n, padding_mode)
    return index.reshape(-1).tolist(), (torch.tensor(taps) * valid.long()).tolist()


def _border(x: Tensor, d: int, rows: list[int], taps: list[int], stride: int, pad_before: int,
            padding_mode: str) -> Tensor:
    """Outputs ``rows`` (consecutive) of :func:`_blur_axis`, through the padding mode's index map."""
    index, weights = _border_plan(x.shape[d], tuple(rows), tuple(taps), stride, pad_before, padding_mode)
    gathered = x.index_select(d, torch.tensor(index, device=x.device)).unflatten(d, (len(rows), len(taps)))
    weights = torch.tensor(weights, dtype=x.dtype, device=x.device)
    weights = weights.reshape([1] * d + [len(rows), len(taps)] + [1] * (x.ndim - 1 - d))
    return (gathered * weights).sum(d + 1)


def _every(v: Tensor, dim: int, stride: int) -> Tensor:
    if stride == 1:
        return v
    index = [slice(None)] * v.ndim
    index[dim] = slice(None, None, stride)
    return v[tuple(index)]


def _weighted_sum(views: list[Tensor], taps: list[int], out: Tensor | None = None) -> Tensor:
    """sum_t taps[t] * views[t] in k - 1 passes (binomial rows start and end with 1), into ``out`` if given."""
    if len(taps) == 1:
        return views[0].clone() if out is None else out.copy_(views[0])
    if out is None:
        out = torch.add(views[0], views[-1], alpha=taps[-1])
    else:
        torch.add(views[0], views[-1], alpha=taps[-1], out=out)
    for view, tap in zip(views[1:-1], taps[1:-1]):
        out.add_(view, alpha=tap)
    return out


def _padding_index(n: int, before: int, after: int, padding_mode: str) -> list[int]:
    """Input index of each position of an axis of ``n`` padded by ``before``/``after`` (not for ``"zeros"``).

    Plain Python, so that a traced graph holds it as one constant: the same map as :func:`_source_index`.
    """
    index = []
    for j in range(-before, n + after):
        if padding_mode == "circular":
            index.append(j % n)
        elif padding_mode == "replicate":
            index.append(min(max(j, 0), n - 1))
        else:  # reflect (the caller has checked n > before, after)
            period = 2 * (n - 1)
            folded = j % period if period > 0 else 0
            index.append(folded if folded < n else period - folded)
    return index


def _blur_graph(x: Tensor, filter_size: int, stride: int, padding_mode: str) -> Tensor:
    """:func:`blur_pool2d` as a static graph: pad (a constant-index gather or a zero pad), two depthwise convs.

    Used under graph capture (:func:`in_graph_capture`); equal to the eager computation to float rounding.
    """
    if filter_size == 1:
        return x[..., ::stride, ::stride]
    before, after = filter_padding(filter_size)
    c = int(x.shape[1])
    if c == 0:
        return x[..., ::stride, ::stride]
    if padding_mode == "zeros":
        x = F.pad(x, (before, after, before, after))
    else:
        for dim in (-2, -1):
            index = _padding_index(int(x.shape[dim]), before, after, padding_mode)
            x = x.index_select(dim, torch.tensor(index, dtype=torch.int64, device=x.device))
    taps = _binomial_row(filter_size)
    # built whole from Python numbers, so that every exporter sees a constant kernel of known shape
    row = [t / sum(taps) for t in taps]
    down = torch.tensor([[[[t] for t in row]]] * c, dtype=x.dtype, device=x.device)  # (C, 1, k, 1)
    across = torch.tensor([[[row]]] * c, dtype=x.dtype, device=x.device)  # (C, 1, 1, k)
    x = F.conv2d(x, down, stride=(stride, 1), groups=c)
    return F.conv2d(x, across, stride=(1, stride), groups=c)


def blur_pool2d(x: Tensor, filter_size: int = 3, stride: int = 2, padding_mode: str = "reflect") -> Tensor:
    """Blur ``x`` with the binomial filter of ``filter_size`` taps, then keep every ``stride``-th sample.

    Channels are blurred independently (depthwise). ``filter_size=1`` is plain subsampling
    ``x[..., ::stride, ::stride]``; ``stride=1`` is a blur that keeps the size. float16 and bfloat16 inputs
    are blurred in float32 and the result rounded to their dtype; under graph capture
    (:func:`in_graph_capture`) the same blur is written as a padding and two depthwise convolutions.

    Args:
        x: input batch.
        filter_size: taps of the binomial filter, 1..7 (1 = [1], 3 = [1, 2, 1], 5 = [1, 4, 6, 4, 1], ...).
        stride: subsampling factor (any positive int).
        padding_mode: ``"reflect"`` (Zhang 2019), ``"replicate"``, ``"zeros"`` or ``"circular"``.

    Shape:
        Input: (B, C, H, W). Output: (B, C, ceil(H / stride), ceil(W / stride)).

    Raises:
        ShapeError: a bad ``x``, or ``"reflect"`` padding of a map no larger than the padding
            (reflection needs ``H, W > filter_size // 2``); use another padding mode for tiny maps.
        InputError: a bad ``filter_size``, ``stride`` or ``padding_mode`` (an
            :class:`~shiftlab.errors.ArgumentShapeError`).

    >>> x = torch.zeros(1, 1, 4, 4); x[..., 1, 1] = 16.0
    >>> blur_pool2d(x)[0, 0]
    tensor([[4., 2.],
            [2., 1.]])
    """
    check_float(check_bchw(x))
    check_filter_size(filter_size)
    _check_stride(stride)
    _check_padding_mode(padding_mode)
    before, after = filter_padding(filter_size)
    if padding_mode == "reflect" and min(x.shape[-2:]) <= max(before, after):
        raise ShapeError(
            f"a {x.shape[-2]}x{x.shape[-1]} map is too small for the blur filter's reflect padding of "
            f"{max(before, after)}: the input is too small for this many subsamplings (use a larger input size, "
            f"--img-size; in Python also padding_mode='replicate' or 'zeros', or a smaller filter)")
    if in_graph_capture():
        return _blur_graph(x, filter_size, stride, padding_mode)
    if x.dtype in (torch.float16, torch.bfloat16):
        # the integer taps sum to 2**(k-1) per axis: in float16 a map above 65504 / 4096 would overflow
        return blur_pool2d(x.float(), filter_size, stride, padding_mode).to(x.dtype)
    taps = _binomial_row(filter_size)
    scale = 1.0 / float(sum(taps)) ** 2
    b, c, h, w = x.shape
    plane_bytes = h * w * x.element_size()
    if (stride > 1 or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad)
            or not x.is_contiguous() or b * c * plane_bytes <= _BLOCK_BYTES):
        y = _blur_axis(x, -2, taps, stride, before, padding_mode)
        y = _blur_axis(y, -1, taps, stride, before, padding_mode)
        return y.mul_(scale) if filter_size > 1 else y
    # a large map blurred at stride 1 on CPU (APS's blur): blocks of channel planes, so that the full-size
    # intermediate of the first pass stays in cache (about 1.7x faster on (16, 64, 224, 224))
    planes = x.view(b * c, h, w)
    out = x.new_empty(b * c, (h - 1) // stride + 1, (w - 1) // stride + 1)
    step = max(1, _BLOCK_BYTES // plane_bytes)
    for start in range(0, b * c, step):
        block = out[start:start + step]
        rows = _blur_axis(planes[start:start + step], -2, taps, stride, before, padding_mode)
        _blur_axis(rows, -1, taps, stride, before, padding_mode, out=block)
        if filter_size > 1:
            block.mul_(scale)
    return out.view(b, c, *out.shape[-2:])


class BlurPool2d(nn.Module):
    """Module form of :func:`blur_pool2d`; the filter is a non-persistent buffer (state_dicts are unchanged).

    Args:
        channels: if given, inputs must have this many channels (checked); the blur is depthwise either way.
        filter_size, stride, padding_mode: as in :func:`blur_pool2d`.

    Shape:
        Input: (B, C, H, W). Output: (B, C, ceil(H / stride), ceil(W / stride)).

    >>> BlurPool2d(filter_size=3, stride=2)(torch.ones(2, 3, 5, 5)).shape
    torch.Size([2, 3, 3, 3])
    """

    def __init__(self, channels: int | None = None, filter_size: int = 3, stride: int = 2,
                 padding_mode: str = "reflect") -> None:
        super().__init__()
        self.channels = check_int("channels", channels, 1, allow_none=True, error=ArgumentShapeError)
        self.filter_size = check_filter_size(filter_size)
        self.stride = _check_stride(stride)
        self.padding_mode = _check_padding_mode(padding_mode)
        # The filter this layer applies, for inspection and export; the forward pass uses its separable factors.
        self.register_buffer("filter", binomial_filter(filter_size), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels is not None:
            check_bchw(x, channels=self.channels)
        return blur_pool2d(x, self.filter_size, self.stride, self.padding_mode)

    def extra_repr(self) -> str:
        channels = f"channels={self.channels}, " if self.channels is not None else ""
        return f"{channels}filter_size={self.filter_size}, stride={self.stride}, padding_mode={self.padding_mode!r}"


def max_blur_pool2d(x: Tensor, kernel_size: int = 2, filter_size: int = 3, stride: int = 2,
                    padding_mode: str = "reflect") -> Tensor:
    """Max-pool at stride 1 (``kernel_size``, no padding), then :func:`blur_pool2d` (Zhang's MaxBlurPool).

    Shape:
        Input: (B, C, H, W). Output: (B, C, ceil((H - kernel_size + 1) / stride), ceil((W - kernel_size + 1) / stride)).
    """
    check_float(check_bchw(x))
    check_int("kernel_size", kernel_size, 1, error=ArgumentShapeError)
    if min(x.shape[-2:]) < kernel_size:
        raise ShapeError(f"max-pool kernel {kernel_size} is larger than the map {x.shape[-2]}x{x.shape[-1]}")
    check_filter_size(filter_size)
    _check_stride(stride)
    _check_padding_mode(padding_mode)
    b, c, h, w = x.shape
    # F.max_pool2d refuses a map without channels; its (empty) result has this shape
    pooled = F.max_pool2d(x, kernel_size, stride=1) if c else x.new_empty(b, 0, h - kernel_size + 1, w - kernel_size + 1)
    return blur_pool2d(pooled, filter_size, stride, padding_mode)


class MaxBlurPool2d(nn.Module):
    """Module form of :func:`max_blur_pool2d`: MaxPool(kernel_size, stride 1), then BlurPool2d.

    Shape:
        Input: (B, C, H, W). Output: (B, C, ceil((H - kernel_size + 1) / stride), ceil((W - kernel_size + 1) / stride)).
    """

    def __init__(self, kernel_size: int = 2, filter_size: int = 3, stride: int = 2,
                 padding_mode: str = "reflect") -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.blur = BlurPool2d(filter_size=filter_size, stride=stride, padding_mode=padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        return max_blur_pool2d(x, self.kernel_size, self.blur.filter_size, self.blur.stride, self.blur.padding_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
