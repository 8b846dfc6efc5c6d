"""Building blocks of :func:`shiftlab.fix.antialias.antialias`. Private.

The conversion must keep every trained parameter under its original state_dict key, so strided
convolutions are never wrapped. They stay where they are (stride set to 1) and the subsampling is attached
to a module of the data flow as a child with no persistent state, run by a forward hook:
:class:`RunAfter` (``ops(module(x))``) or :class:`RunBefore` (``module(ops(x))``). Pools have no state and
are replaced outright by :class:`DensePool2d` followed by the subsampling layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.errors import ShapeError
from shiftlab.layers.blur_pool import in_graph_capture

__all__ = ["RunAfter", "RunBefore", "SamePaddedConv2d", "DensePool2d", "same_padding"]


def _free_name(module: nn.Module, name: str) -> str:
    candidate, i = name, 1
    while hasattr(module, candidate):
        i += 1
        candidate = f"{name}{i}"
    return candidate


class RunAfter(nn.Sequential):
    """Layers run on the output of the module they are attached to (through a forward hook)."""

    def attach(self, module: nn.Module, name: str = "subsample") -> None:
        module.add_module(_free_name(module, name), self)
        module.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return self(output)


class RunBefore(nn.Sequential):
    """Layers run on the input of the module they are attached to (through a forward pre-hook)."""

    def attach(self, module: nn.Module, name: str = "subsample_input") -> None:
        module.add_module(_free_name(module, name), self)
        module.register_forward_pre_hook(self.hook)

    def hook(self, module: nn.Module, args: tuple) -> tuple:
        return (self(args[0]), *args[1:])


def same_padding(size: int, kernel_size: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one axis: output ceil(size / stride), extra at the end."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SamePaddedConv2d(nn.Conv2d):
    """A convolution with TensorFlow 'SAME' padding computed for ``pad_stride``, run at ``self.stride``.

    Replaces timm's ``Conv2dSame`` (which pads for its own stride): padding as the strided layer did and
    convolving at stride 1 makes sample ``s * i`` of the output the strided layer's sample ``i``.
    ``pad_mode`` is ``"zeros"`` or ``"circular"``.
    """

    def __init__(self, *args, pad_stride: tuple[int, int] = (1, 1), pad_mode: str = "zeros", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad_stride = tuple(pad_stride)
        self.pad_mode = pad_mode

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.pad_stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.pad_stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), mode="circular" if self.pad_mode == "circular" else "constant")
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, same padding for stride {self.pad_stride}, pad_mode={self.pad_mode!r}"


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_length(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """Output length of a PyTorch pool along one axis."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _window_reduce(x: Tensor, kernel_size: tuple[int, int], dilation: tuple[int, int], kind: str) -> Tensor:
    """Max or sum of every (dilated) window at stride 1 without padding, as two 1-D passes of strided views.

    Equal to ``F.max_pool2d`` / ``kernel * F.avg_pool2d`` at stride 1, and much faster on CPU, whose
    stride-1 NCHW pooling kernels are slow.
    """
    for dim, k, d in ((-2, kernel_size[0], dilation[0]), (-1, kernel_size[1], dilation[1])):
        length = x.shape[dim] - d * (k - 1)
        if length < 1:
            raise ShapeError(f"pool window {k} (dilation {d}) is larger than the padded map {tuple(x.shape[-2:])}")
        if k == 1:
            continue
        views = [x.narrow(dim, t * d, length) for t in range(k)]
        x = _max_of(views) if kind == "max" else _sum_of(views)
    return x


def _max_of(views: list[Tensor], out: Tensor | None = None) -> Tensor:
    """Element-wise maximum of equally shaped views; written into ``out`` if given (never under autograd)."""
    if out is not None:
        out.copy_(views[0]) if len(views) == 1 else torch.maximum(views[0], views[1], out=out)
        for view in views[2:]:
            torch.maximum(out, view, out=out)
        return out
    if len(views) == 1:
        return views[0]
    grad = torch.is_grad_enabled() and any(v.requires_grad for v in views)
    result = torch.maximum(views[0], views[1])
    for view in views[2:]:
        result = torch.maximum(result, view) if grad else torch.maximum(result, view, out=result)
    return result


def _sum_of(views: list[Tensor]) -> Tensor:
    out = torch.add(views[0], views[1])
    for view in views[2:]:
        out = out.add_(view)
    return out


def _max_axis_unpadded(x: Tensor, dim: int, k: int, d: int, before: int, after: int) -> Tensor:
    """Stride-1 max over windows of ``k`` taps (dilation ``d``) of ``x`` padded by ``before``/``after`` with -inf.

    The padding is never built: windows inside the map are maxima of ``k`` shifted views, and the few
    windows that reach past a border take the maximum of their taps inside it (every PyTorch max pool
    window holds at least one element of the map).
    """
    n = x.shape[dim]
    length = n + before + after - d * (k - 1)
    if length < 1:
        raise ShapeError(f"pool window {k} (dilation {d}) is larger than the padded map of {n} + {before + after}")
    if k == 1 and before == 0 and after == 0:
        return x
    lo, hi = before, min(length, n + before - d * (k - 1))  # outputs whose taps all lie in the map
    head, tail = range(min(lo, length)), range(max(hi, lo), length)

    def border(i: int) -> list[Tensor]:
        taps = [i - before + t * d for t in range(k) if 0 <= i - before + t * d < n]
        if not taps:
            raise ShapeError(f"a pool window of {k} taps lies wholly in the padding of {before}/{after}")
        return [x.narrow(dim, tap, 1) for tap in taps]

    inner = [x.narrow(dim, lo - before + t * d, hi - lo) for t in range(k)] if hi > lo else []
    if torch.is_grad_enabled() and x.requires_grad:
        pieces = [_max_of(border(i)) for i in head] + ([_max_of(inner)] if inner else [])
        return torch.cat(pieces + [_max_of(border(i)) for i in tail], dim)
    shape = list(x.shape)
    shape[dim] = length
    out = x.new_empty(shape)
    if inner:
        _max_of(inner, out.narrow(dim, lo, hi - lo))
    for i in (*head, *tail):
        _max_of(border(i), out.narrow(dim, i, 1))
    return out


class DensePool2d(nn.Module):
    """A max or average pool evaluated at stride 1 such that its samples ``0, s, 2s, ...`` are the pool's.

    Reproduces ``nn.MaxPool2d`` / ``nn.AvgPool2d`` (kernel, stride ``s``, padding, dilation, ceil_mode,
    count_include_pad, divisor_override) at every stride-1 position; with ``ceil_mode`` the map is
    extended at the end so the last partial window exists. A max pool's -inf padding is never built (the
    border windows take the maximum of their taps inside the map): building it took about a third of the
    dense pool's time on a ResNet stem's output. With ``circular=True`` the input is instead padded
    circularly to keep its size (``padding`` before, the rest of ``kernel - 1`` after) and the pool counts
    every element. Under graph capture (``torch.export``, ``torch.jit.trace``, ONNX export) a max pool is
    written as a -inf padding and one stride-1 ``max_pool2d``, the same values.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H', W') with H' = (pool output - 1) * s + 1, or H if circular.
    """

    def __init__(self, pool: nn.MaxPool2d | nn.AvgPool2d, circular: bool = False) -> None:
        super().__init__()
        self.kind = "max" if isinstance(pool, nn.MaxPool2d) else "avg"
        self.kernel_size = _pair(pool.kernel_size)
        self.stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.padding = _pair(pool.padding)
        self.dilation = _pair(getattr(pool, "dilation", 1))
        self.ceil_mode = bool(pool.ceil_mode)
        self.count_include_pad = bool(getattr(pool, "count_include_pad", True))
        self.divisor_override = getattr(pool, "divisor_override", None)
        self.circular = circular

    def _reduce(self, x: Tensor) -> Tensor:
        """Max or sum over every window of an already padded map (stride 1, no padding)."""
        if self.kind == "max" and in_graph_capture():  # one MaxPool node in an exported graph
            return F.max_pool2d(x, self.kernel_size, stride=1, dilation=self.dilation)
        return _window_reduce(x, self.kernel_size, self.dilation, self.kind)

    def _mean(self, total: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        return total / (self.divisor_override or kh * kw)

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
        if self.circular:
            x = F.pad(x, (pw, dw * (kw - 1) - pw, ph, dh * (kh - 1) - ph), mode="circular")
            out = self._reduce(x)
            return out if self.kind == "max" else self._mean(out)
        extra = []
        for n, k, s, p, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.padding, self.dilation):
            needed = (_pool_length(n, k, s, p, d, self.ceil_mode) - 1) * s + 1
            extra.append(max(needed - (n + 2 * p - d * (k - 1)), 0))
        pads = (pw, pw + extra[1], ph, ph + extra[0])
        if self.kind == "max" and in_graph_capture():  # a static graph: pad with -inf, then one max pool
            return self._reduce(F.pad(x, pads, value=float("-inf")) if any(pads) else x)
        if self.kind == "max":  # -inf padding, without building it
            x = _max_axis_unpadded(x, -2, kh, dh, ph, ph + extra[0])
            return _max_axis_unpadded(x, -1, kw, dw, pw, pw + extra[1])
        total = self._reduce(F.pad(x, pads) if any(pads) else x)
        if self.divisor_override or not any(pads) or (self.count_include_pad and not any(extra)):
            return self._mean(total)
        # divide by the number of elements PyTorch counts in each window: a window-sum of a mask
        counted = torch.ones_like(x[:1, :1])
        if self.count_include_pad:
            counted = F.pad(counted, (pw, pw, ph, ph), value=1.0)
            pads = (0, extra[1], 0, extra[0])
        return total / self._reduce(F.pad(counted, pads))

    def extra_repr(self) -> str:
        return (f"{self.kind}, kernel_size={self.kernel_size}, samples of stride {self.stride}, "
                f"padding={self.padding}{', circular' if self.circular else ''}")
