"""The functions a model calls inside its ``forward`` that subsample (``F.max_pool2d``, a strided ``F.conv2d``,
``x[..., ::2, ::2]``, ``F.interpolate`` down): how :func:`shiftlab.inspect` sees them (``"functional-subsampling"``).

The pass of :func:`shiftlab.measure.inspect.inspect` runs under :class:`FunctionWatch`, a ``TorchFunctionMode``
that shows the tracer every torch function called; :func:`functional_stride` says whether a call subsampled and by
what stride, :func:`caller` where in the model's code it was called.
"""

from __future__ import annotations

import os
import sys

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["FunctionWatch", "functional_stride", "function_label", "caller", "permuted", "pair"]


def pair(v) -> tuple[int, int]:
    """An int or a pair (tuple, list) as ``(first, last)`` ints."""
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


_POOLS = ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d")
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
# the tracer's own files: this module and inspect.py (whose tracer records the calls)
_TRACER_FILES = frozenset(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
                          for name in ("inspect.py", os.path.basename(__file__)))
# shiftlab's anti-aliasing layers and the hooks of its conversion subsample on purpose (APS phases, blurs)
_SHIFTLAB_OWN = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), part) + os.sep
                      for part in ("layers", "fix"))


def _arg(args, kwargs, index: int, key: str, default=None):
    if key in kwargs:
        return kwargs[key]
    return args[index] if len(args) > index else default


def functional_stride(name: str, args, kwargs, in_hw, out_hw, x, out) -> tuple[int, int] | None:
    """The stride of a function's subsampling, or None when the call does not subsample (a stride-1 'valid'
    conv or pool, a crop, a reshape that moves pixels into channels of another count)."""
    ratio = (max(1, round(in_hw[0] / out_hw[0])), max(1, round(in_hw[1] / out_hw[1])))
    if name == "conv2d":
        stride = pair(_arg(args, kwargs, 3, "stride", 1))
        return stride if stride != (1, 1) else None
    if name in _POOLS:
        stride = _arg(args, kwargs, 2, "stride", None)
        stride = pair(stride if stride not in (None, [], ()) else _arg(args, kwargs, 1, "kernel_size", 1))
        return stride if stride != (1, 1) else None
    if name == "__getitem__":
        steps = _slice_steps(args[1] if len(args) > 1 else None, x.ndim)
        return steps if steps is not None and steps != (1, 1) else (None if steps is not None else _ratio(ratio))
    if name in ("interpolate", "upsample", "pixel_unshuffle", "fractional_max_pool2d", "adaptive_avg_pool2d",
                "adaptive_max_pool2d"):
        return ratio
    # any other function of one tensor (not a matmul of two): a subsampling only if it keeps the channels, is no
    # permutation of the axes, and shrinks the map by a third or more
    tensors = sum(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values()))
    if (tensors == 1 and out.shape[1] == x.shape[1] and not permuted(x, out)
            and (out_hw[0] * 3 <= in_hw[0] * 2 or out_hw[1] * 3 <= in_hw[1] * 2)):
        return ratio
    return None


def permuted(x, y) -> bool:
    """Whether ``y``'s shape is a reordering of ``x``'s axes (a transpose or permute), not a resampling."""
    return tuple(x.shape) != tuple(y.shape) and sorted(x.shape) == sorted(y.shape)


def _ratio(ratio: tuple[int, int]) -> tuple[int, int] | None:
    return ratio if ratio != (1, 1) else None


def _slice_steps(index, ndim: int) -> tuple[int, int] | None:
    """The steps of an index's slices along the last two axes of an ``ndim`` tensor; None if not plain slicing."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(i is None or not isinstance(i, (slice, int, type(Ellipsis))) for i in items):
        return None
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (ndim - (len(items) - 1))
    items += [slice(None)] * (ndim - len(items))
    steps = []
    for item in items[-2:]:
        if not isinstance(item, slice):
            return None
        steps.append(int(item.step or 1))
    return steps[0], steps[1]


def function_label(name: str, args) -> str:
    if name == "__getitem__":
        return "slicing"
    module = "torch" if name.startswith("_") else "F"
    return f"{module}.{name.lstrip('_')}"


def caller() -> str | None:
    """``file:line`` of the code that called the torch function under way: the first frame outside torch and
    this module; None when that code is shiftlab's layers or conversion hooks (they subsample on purpose)."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_TORCH_DIR) and path not in _TRACER_FILES:
            if path.startswith(_SHIFTLAB_OWN):
                return None
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return "unknown place"


class FunctionWatch(TorchFunctionMode):
    """Shows the tracer every torch function called during the pass, with its result."""

    def __init__(self, tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.tracer.function_call(func, args, kwargs, out)
        return out
