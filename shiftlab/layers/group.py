"""Group convolutions (Cohen & Welling 2016) for p4 (4 rotations) and p4m (4 rotations and mirrors).

A *group feature* is a tensor of shape (B, C, G, H, W): for each channel, one map per group element. ``G = 4``
for p4, ``G = 8`` for p4m. Element ``g = m * 4 + r`` (``m`` in {0, 1}, ``r`` in {0..3}) is the map
``x -> rot90(mirror**m (x), r)`` of the image plane: first a left-right mirror (``x.flip(-1)``) if ``m = 1``,
then ``r`` quarter turns counter-clockwise (``torch.rot90(x, r, dims=(-2, -1))``, as
:func:`shiftlab.transforms.rotate`), both about the centre of the map. p4 uses only ``m = 0``.

The group acts on a group feature ``F`` by moving every map and permuting the group axis:
``(h . F)[:, :, g] = h(F[:, :, h^-1 g])`` (:func:`group_act`). A quarter turn cycles ``r`` by one (within each
mirror half for p4m); a mirror swaps the halves and reverses ``r``.

- :func:`lift_conv2d` / :class:`LiftConv2d`: image (B, C, H, W) -> group feature; output ``g`` is the
  cross-correlation with the filter transformed by ``g``.
- :func:`group_conv2d` / :class:`GroupConv2d`: group feature -> group feature; output ``g`` correlates with
  the filter moved by ``g`` in space *and* along its group axis.
- :func:`group_pool` / :class:`GroupPool`: max or mean over the group axis -> (B, C, H, W), which
  transforms like an image (the group axis is gone).

Both convolutions expand their filter into all ``G`` transformed copies (``torch.rot90`` and ``flip``, a loop
over the group's elements, never over pixels) and run as **one** ``conv2d`` call. With an odd kernel and the
symmetric padding used here (zeros or circular, ``kernel_size // 2`` on each side, stride 1), they are
exactly equivariant: ``f(h . x) = h . f(x)`` for every ``h`` of the group, on square maps of any size, up to
float rounding (1e-15 relative in float64). torch's own modules keep that: ``nn.BatchNorm3d`` on
(B, C, G, H, W) shares its statistics over the group axis, ``nn.ReLU`` is pointwise, and
``nn.MaxPool3d((1, 2, 2))`` pools space on even-sized maps (2x2 blocks map to 2x2 blocks under ``rot90``;
an odd size drops a border row and column on one side only, which breaks it, and so does a stride-2
convolution on an even-sized map). A p4 CNN is ``LiftConv2d`` -> (``nn.BatchNorm3d``, ``nn.ReLU``,
``nn.MaxPool3d((1, 2, 2))``, ``GroupConv2d``)* -> ``GroupPool`` -> global pooling: its output is exactly
invariant to quarter turns (and, for p4m, mirrors) of its input.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab._checks import check_bchw, check_float, check_int, check_tensor
from shiftlab.errors import ArgumentShapeError, ShapeError

__all__ = ["GROUPS", "group_order", "group_act", "lift_conv2d", "LiftConv2d", "group_conv2d", "GroupConv2d",
           "group_pool", "GroupPool"]

#: The groups understood by the layers, by name, and their orders.
GROUPS = {"p4": 4, "p4m": 8}
_PADDING_MODES = ("zeros", "circular")
_POOL_MODES = ("max", "mean")


def group_order(group: str) -> int:
    """Number of elements of ``group`` (``"p4"``: 4, ``"p4m"``: 8)."""
    if group not in GROUPS:
        raise ArgumentShapeError(f"group must be one of {', '.join(GROUPS)}; got {group!r}")
    return GROUPS[group]


def _group_of_order(order: int) -> str:
    for name, n in GROUPS.items():
        if n == order:
            return name
    raise ShapeError(f"a group feature's group axis must have 4 (p4) or 8 (p4m) elements, got {order}")


def _compose(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """(m, r) of the map ``a o b``; ``rot**r1 mirror**m1 rot**r2 mirror**m2 = rot**(r1 +- r2) mirror**(m1 ^ m2)``."""
    (m1, r1), (m2, r2) = a, b
    return m1 ^ m2, (r1 + (-r2 if m1 else r2)) % 4


def _inverse(a: tuple[int, int]) -> tuple[int, int]:
    m, r = a
    return (1, r) if m else (0, (-r) % 4)  # every mirror rot**r mirror is its own inverse


def _element(index: int) -> tuple[int, int]:
    return index // 4, index % 4


@functools.lru_cache(maxsize=None)
def _permutation(order: int, mirror: int, quarters: int) -> tuple[int, ...]:
    """Index ``h^-1 g`` for every ``g``: group-axis entry ``g`` of ``h . F`` comes from ``F[h^-1 g]``."""
    h_inv = _inverse((mirror, quarters % 4))
    out = []
    for g in range(order):
        m, r = _compose(h_inv, _element(g))
        out.append(m * 4 + r)
    return tuple(out)


def _move(x: Tensor, mirror: int, quarters: int) -> Tensor:
    """The plane map ``rot90(mirror**m (x), r)`` on the last two axes (exact: values are only moved)."""
    if mirror:
        x = x.flip(-1)
    quarters %= 4
    return torch.rot90(x, quarters, dims=(-2, -1)) if quarters else x


def group_act(x: Tensor, quarters: int = 1, mirror: bool = False, group_axis: int = 2) -> Tensor:
    """Apply the element ``rot90**quarters o mirror**mirror`` to an image or a group feature.

    On an image (``group_axis=None``) it moves the pixels. On a group feature it moves every map and
    permutes the group axis: ``out[..., g, :, :] = h(x[..., h^-1 g, :, :])``. This is the transformation a
    p4/p4m layer's output undergoes when its input is rotated by ``90 * quarters`` degrees counter-clockwise
    (after a left-right mirror when ``mirror``).

    Args:
        x: image (..., H, W), or group feature with its group axis (of size 4 or 8) at ``group_axis``.
        quarters: counter-clockwise quarter turns (any int; taken mod 4).
        mirror: mirror left-right first (needs a p4m feature, group axis of size 8).
        group_axis: the group axis, or None for an image.

    Shape:
        Input: (B, C, G, H, W) with G in {4, 8} (or any (..., H, W) with ``group_axis=None``).
        Output: same; H and W swap for odd ``quarters``.

    >>> f = torch.arange(4.0).view(1, 1, 4, 1, 1)
    >>> group_act(f, 1).flatten().tolist()   # a quarter turn cycles the rotation index by one
    [3.0, 0.0, 1.0, 2.0]
    """
    check_tensor(x)
    quarters = check_int("quarters", quarters, error=ArgumentShapeError)
    if x.ndim < 2:
        raise ShapeError(f"x must have at least two (spatial) axes, got shape {tuple(x.shape)}")
    if group_axis is None:
        return _move(x, int(bool(mirror)), quarters)
    axis = group_axis % x.ndim
    if axis >= x.ndim - 2:
        raise ShapeError(f"group_axis {group_axis} must come before the two spatial axes of shape {tuple(x.shape)}")
    order = x.shape[axis]
    _group_of_order(order)
    if mirror and order != 8:
        raise ShapeError(f"a mirror acts only on p4m features (group axis of 8), got {order}")
    perm = _permutation(order, int(bool(mirror)), quarters)
    moved = _move(x, int(bool(mirror)), quarters)
    return moved.index_select(axis, torch.tensor(perm, device=x.device))


def _check_kernel(weight: Tensor, ndim: int, what: str) -> None:
    check_float(check_tensor(weight, "weight"), "weight")
    if weight.ndim != ndim:
        raise ShapeError(f"{what} weight must have {ndim} axes, got shape {tuple(weight.shape)}")
    k, k2 = weight.shape[-2:]
    if k != k2 or k % 2 == 0:
        raise ShapeError(f"kernel must be square with an odd size (exact equivariance needs a centre pixel), "
                         f"got {k}x{k2}")


def _check_padding_mode(padding_mode: str) -> str:
    if padding_mode not in _PADDING_MODES:
        raise ArgumentShapeError(f"padding_mode must be one of {', '.join(_PADDING_MODES)}; got {padding_mode!r}")
    return padding_mode


def _conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding_mode: str) -> Tensor:
    pad = weight.shape[-1] // 2
    if padding_mode == "circular" and pad:
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="circular"), weight, bias)
    return F.conv2d(x, weight, bias, padding=pad)


def _lift_filters(weight: Tensor, order: int) -> Tensor:
    """(C_out, C_in, k, k) -> (C_out * G, C_in, k, k): entry (o, g) is the filter moved by element g."""
    moved = [_move(weight, *_element(g)) for g in range(order)]
    return torch.stack(moved, 1).flatten(0, 1)


def _group_filters(weight: Tensor, order: int) -> Tensor:
    """(C_out, C_in, G, k, k) -> (C_out * G, C_in * G, k, k): entry (o, g, i, h) is ``g(weight[o, i, g^-1 h])``."""
    moved = []
    for g in range(order):
        perm = torch.tensor(_permutation(order, *_element(g)), device=weight.device)
        moved.append(_move(weight.index_select(2, perm), *_element(g)))
    c_out, c_in, _, k, _ = weight.shape
    return torch.stack(moved, 1).reshape(c_out * order, c_in * order, k, k)


def _group_bias(bias: Tensor | None, order: int) -> Tensor | None:
    return None if bias is None else bias.repeat_interleave(order)


def lift_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, group: str = "p4",
                padding_mode: str = "zeros") -> Tensor:
    """Lifting convolution: correlate an image with every transformed copy of each filter.

    ``out[:, o, g] = conv2d(x, g(weight[o])) + bias[o]`` with ``g`` the element of index ``g`` (module
    docstring), same padding (``kernel_size // 2``), stride 1. Exactly equivariant:
    ``lift_conv2d(h(x)) = group_act(lift_conv2d(x), h)``.

    Args:
        x: images.
        weight: filters (C_out, C_in, k, k), k odd.
        bias: (C_out,), shared by the G maps of a channel (so equivariance holds), or None.
        group: ``"p4"`` or ``"p4m"``.
        padding_mode: ``"zeros"`` or ``"circular"``.

    Shape:
        Input: (B, C_in, H, W). Output: (B, C_out, G, H, W), G = 4 (p4) or 8 (p4m).

    >>> x = torch.rand(1, 1, 6, 6, dtype=torch.float64); w = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    >>> y = lift_conv2d(x, w)
    >>> y.shape, bool(torch.allclose(lift_conv2d(torch.rot90(x, 1, (-2, -1)), w), group_act(y, 1)))
    (torch.Size([1, 2, 4, 6, 6]), True)
    """
    check_float(check_bchw(x))
    order = group_order(group)
    _check_padding_mode(padding_mode)
    _check_kernel(weight, 4, "lifting")
    if weight.shape[1] != x.shape[1]:
        raise ShapeError(f"weight expects {weight.shape[1]} input channels, x has {x.shape[1]}")
    out = _conv(x, _lift_filters(weight, order), _group_bias(bias, order), padding_mode)
    return out.unflatten(1, (weight.shape[0], order))


def _check_group_feature(x: Tensor, order: int | None = None, name: str = "x") -> Tensor:
    check_float(check_tensor(x, name), name)
    if x.ndim != 5:
        raise ShapeError(f"{name} must be a group feature (B, C, G, H, W), got shape {tuple(x.shape)}")
    if order is not None and x.shape[2] != order:
        raise ShapeError(f"{name} must have a group axis of {order}, got {x.shape[2]} (shape {tuple(x.shape)})")
    _group_of_order(x.shape[2])
    return x


def group_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, group: str = "p4",
                 padding_mode: str = "zeros") -> Tensor:
    """Group convolution: group feature -> group feature, exactly equivariant to ``group``.

    ``out[:, o, g] = sum_{i, h} conv2d(x[:, i, h], g(weight[o, i, g^-1 h])) + bias[o]``: output ``g``
    correlates with the filter moved by ``g`` in space and along its group axis. Same padding, stride 1.

    Args:
        x: group feature.
        weight: (C_out, C_in, G, k, k), k odd: a filter over the group axis and space.
        bias: (C_out,) or None.
        group: ``"p4"`` or ``"p4m"`` (must match G).
        padding_mode: ``"zeros"`` or ``"circular"``.

    Shape:
        Input: (B, C_in, G, H, W). Output: (B, C_out, G, H, W).

    >>> x = torch.rand(1, 2, 4, 5, 5, dtype=torch.float64); w = torch.rand(3, 2, 4, 3, 3, dtype=torch.float64)
    >>> bool(torch.allclose(group_conv2d(group_act(x, 1), w), group_act(group_conv2d(x, w), 1)))
    True
    """
    order = group_order(group)
    _check_group_feature(x, order)
    _check_padding_mode(padding_mode)
    _check_kernel(weight, 5, "group")
    if weight.shape[1] != x.shape[1] or weight.shape[2] != order:
        raise ShapeError(f"weight (C_out, C_in, G, k, k) = {tuple(weight.shape)} does not fit x of shape "
                         f"{tuple(x.shape)}")
    out = _conv(x.flatten(1, 2), _group_filters(weight, order), _group_bias(bias, order), padding_mode)
    return out.unflatten(1, (weight.shape[0], order))


def group_pool(x: Tensor, mode: str = "max") -> Tensor:
    """Pool over the group axis: invariant to its permutations, so the result moves like an image.

    Shape:
        Input: (B, C, G, H, W). Output: (B, C, H, W).

    >>> group_pool(torch.arange(8.0).view(1, 2, 4, 1, 1)).flatten().tolist()
    [3.0, 7.0]
    """
    _check_group_feature(x)
    if mode not in _POOL_MODES:
        raise ArgumentShapeError(f"mode must be one of {', '.join(_POOL_MODES)}; got {mode!r}")
    return x.amax(2) if mode == "max" else x.mean(2)


def _check_channels(value, name: str) -> int:
    return check_int(name, value, 1, error=ArgumentShapeError)


def _check_kernel_size(kernel_size) -> int:
    kernel_size = check_int("kernel_size", kernel_size, 1, error=ArgumentShapeError)
    if kernel_size % 2 == 0:
        raise ArgumentShapeError(f"kernel_size must be an odd positive int (exact equivariance needs a centre pixel), "
                         f"got {kernel_size!r}")
    return kernel_size


class _GroupConvBase(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, group: str, padding_mode: str,
                 bias: bool, group_axis: bool) -> None:
        super().__init__()
        self.in_channels = _check_channels(in_channels, "in_channels")
        self.out_channels = _check_channels(out_channels, "out_channels")
        self.kernel_size = _check_kernel_size(kernel_size)
        self.group = group
        self.order = group_order(group)
        self.padding_mode = _check_padding_mode(padding_mode)
        shape = (out_channels, in_channels, *((self.order,) if group_axis else ()), kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # He (Kaiming) initialisation for the fan-in each output sees: C_in (x G) x k x k inputs
        fan_in = self.weight[0].numel()
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_in))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, group={self.group!r}, "
                f"padding_mode={self.padding_mode!r}, bias={self.bias is not None}")


class LiftConv2d(_GroupConvBase):
    """Module form of :func:`lift_conv2d`: image -> p4 / p4m group feature.

    Args:
        in_channels, out_channels: channels of the image and of the group feature.
        kernel_size: odd filter size.
        group: ``"p4"`` or ``"p4m"``.
        padding_mode: ``"zeros"`` or ``"circular"``.
        bias: a learned bias per output channel (shared over the group axis).

    Shape:
        Input: (B, in_channels, H, W). Output: (B, out_channels, G, H, W).

    >>> LiftConv2d(3, 8, 3, group="p4m")(torch.rand(2, 3, 10, 10)).shape
    torch.Size([2, 8, 8, 10, 10])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, group: str = "p4",
                 padding_mode: str = "zeros", bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, group, padding_mode, bias, group_axis=False)

    def forward(self, x: Tensor) -> Tensor:
        return lift_conv2d(x, self.weight, self.bias, self.group, self.padding_mode)


class GroupConv2d(_GroupConvBase):
    """Module form of :func:`group_conv2d`: p4 / p4m group feature -> group feature.

    A layer with C_out output channels computes C_out x G maps: G times the work of a plain convolution
    with C_out outputs and C_in x G inputs, from C_out x C_in x G x k x k weights.

    Shape:
        Input: (B, in_channels, G, H, W). Output: (B, out_channels, G, H, W).

    >>> GroupConv2d(8, 4, 3)(torch.rand(2, 8, 4, 10, 10)).shape
    torch.Size([2, 4, 4, 10, 10])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, group: str = "p4",
                 padding_mode: str = "zeros", bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, group, padding_mode, bias, group_axis=True)

    def forward(self, x: Tensor) -> Tensor:
        return group_conv2d(x, self.weight, self.bias, self.group, self.padding_mode)


class GroupPool(nn.Module):
    """Module form of :func:`group_pool`: max (or mean) over the group axis.

    Shape:
        Input: (B, C, G, H, W). Output: (B, C, H, W).
    """

    def __init__(self, mode: str = "max") -> None:
        super().__init__()
        if mode not in _POOL_MODES:
            raise ArgumentShapeError(f"mode must be one of {', '.join(_POOL_MODES)}; got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return group_pool(x, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
