"""Rotation equivariance of feature maps: pure, batched measurements in float64.

For a layer ``phi`` and a rotation ``R`` of the input, :func:`rotation_equivariance_stats` compares the
features of the rotated input, ``phi(R x)``, with the features of the input transformed the way an
equivariant layer's output would be, ``R' phi(x)``, and returns per-sample sums of squares (the audit
engine aggregates them, e.g. ``sqrt(sum err2 / sum ref2)``). :func:`rotation_equivariance_error` gives the
relative error per sample; :func:`rotate_features` is ``R'`` itself.

Conventions (the same as :func:`shiftlab.transforms.rotate`):

- ``angle`` is in degrees, counter-clockwise as displayed (rows grow downwards); a float for the whole
  batch or a (B,) tensor, one per sample.
- every map is rotated about its own centre, ``((H - 1) / 2, (W - 1) / 2)`` in pixel indices; that is
  where the input's centre lands after layers that keep the grid symmetric (same-padded stride-1
  convolutions, 2x2 pooling of even-sized maps). A layer that moves the centre (a stride-2 convolution on
  an even-sized map: half a pixel) is measured as not equivariant, which it is not.
- ``mirror=True``: the input transformation is ``x -> rotate(x.flip(-1), angle)`` (a left-right mirror
  first, then the rotation).

What ``R'`` does, by the layout of the features:

==============================  ==================================================================================
features                        ``R'``
==============================  ==================================================================================
(B, K) or (B, K) complex        nothing (a vector: logits, pooled features); measures invariance
(B, C, H, W) real               rotate the maps (mirror them first if ``mirror``)
(B, C, G, H, W) real, G = 4, 8  p4 / p4m group features (:mod:`shiftlab.layers.group`): rotate the maps and
                                permute the group axis, ``out[:, :, g] = h(F[:, :, h^-1 g])``, element
                                ``g = m * 4 + r`` being ``rot90**r o mirror**m``; a quarter turn cycles ``r``
(B, C * G, H, W), group_order   the same, channels split channel-major: channel ``c * G + g`` is (c, g)
(B, C, M, H, W) complex         harmonic features (:mod:`shiftlab.layers.harmonic`): rotate the maps and
                                multiply stream ``s`` by ``exp(i orders[s] theta)``, ``orders = 0 .. M - 1``
                                unless given; (B, C, H, W) complex: order 0 unless ``orders`` (length C)
==============================  ==================================================================================

Exact and interpolated angles. At a multiple of 90 degrees ``R'`` uses ``torch.rot90`` (values only move),
the group axis is cycled by the quarter turns and phases are the exact powers of ``i``: the comparison
covers the whole map and a p4 network gives 0 up to float rounding. At any other angle the maps are rotated
by :func:`shiftlab.transforms.rotate` (bilinear, zero fill): the reference is the unrotated input's
features passed through the *same* resampler as the input, and the comparison is restricted to a disc
about the centre of radius ``(min(H, W) - 1) / 2 - margin`` (``disc=True``): samples there never reach
outside the map, so the corners a rotation fills with zeros never enter (``margin`` trims the border
further, e.g. by the receptive field that saw the input's corners). Group features at such angles have
their group axis cycled by the nearest quarter turn, ``floor(angle / 90 + 1/2)``: a convention, since p4
has no element for them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from shiftlab._checks import check_tensor
from shiftlab.errors import ShapeError
from shiftlab.layers.group import group_act

__all__ = ["rotate_features", "rotation_mask", "rotation_equivariance_stats", "rotation_equivariance_error",
           "quarter_turns"]

_GROUP_ORDERS = (4, 8)


def quarter_turns(angle: float) -> int | None:
    """The number of quarter turns (0..3) if ``angle`` (degrees) is a multiple of 90, else None."""
    q = angle / 90.0
    return int(round(q)) % 4 if q == round(q) else None


def _nearest_quarter(angle: float) -> int:
    return int(math.floor(angle / 90.0 + 0.5)) % 4


def rotation_mask(height: int, width: int, margin: float = 0.0, device=None) -> Tensor:
    """The disc about the map's centre that a rotation resamples from inside the map only.

    Pixel (i, j) is inside when its distance to ``((H - 1) / 2, (W - 1) / 2)`` is at most
    ``(min(H, W) - 1) / 2 - margin``.

    Shape:
        Output: (H, W) bool.

    >>> rotation_mask(5, 5).int()
    tensor([[0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0]], dtype=torch.int32)
    """
    if height < 1 or width < 1:
        raise ShapeError(f"a rotation mask needs a map of at least 1x1, got {height}x{width}")
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0:
        raise ShapeError(f"margin must be a non-negative number, got {margin!r}")
    radius = (min(height, width) - 1) / 2 - margin
    rows = torch.arange(height, dtype=torch.float64, device=device) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float64, device=device) - (width - 1) / 2
    return rows[:, None] ** 2 + cols[None, :] ** 2 <= radius**2 + 1e-9


# ---------------------------------------------------------------------------------------------- layouts

class _Layout:
    """How one feature tensor transforms: kind in {"vector", "plain", "group", "harmonic"}."""

    def __init__(self, kind: str, shape: tuple[int, ...], order: int | None = None,
                 orders: Tensor | None = None, flat: bool = False):
        self.kind, self.shape, self.order, self.orders, self.flat = kind, shape, order, orders, flat


def _layout(phi: Tensor, group_order: int | None, orders) -> _Layout:
    shape = tuple(phi.shape)
    if phi.ndim == 2:
        if group_order not in (None, 1) or orders is not None:
            raise ShapeError(f"a (B, K) feature has no group axis or orders; got group_order={group_order!r}")
        return _Layout("vector", shape)
    if phi.is_complex():
        if group_order not in (None, 1):
            raise ShapeError("complex (harmonic) features take orders, not group_order")
        if phi.ndim not in (4, 5):
            raise ShapeError(f"complex features must be (B, C, H, W) or (B, C, M, H, W), got shape {shape}")
        streams = phi.shape[2] if phi.ndim == 5 else phi.shape[1]
        if orders is None:
            values = list(range(streams)) if phi.ndim == 5 else [0] * streams
        else:
            values = [orders] * streams if isinstance(orders, int) and not isinstance(orders, bool) else list(orders)
            if len(values) != streams or any(isinstance(m, bool) or not isinstance(m, int) for m in values):
                raise ShapeError(f"orders must be {streams} ints (one per stream), got {orders!r}")
        return _Layout("harmonic", shape, orders=torch.tensor(values, dtype=torch.float64))
    if orders is not None:
        raise ShapeError("orders apply to complex (harmonic) features only")
    if not phi.is_floating_point():
        raise ShapeError(f"features must be floating or complex, got {phi.dtype}")
    if phi.ndim == 5:
        g = phi.shape[2]
        if g not in _GROUP_ORDERS or group_order not in (None, g):
            raise ShapeError(f"(B, C, G, H, W) group features need G in {_GROUP_ORDERS} matching group_order; got "
                             f"G = {g}, group_order={group_order!r}")
        return _Layout("group", shape, order=g)
    if phi.ndim != 4:
        raise ShapeError(f"features must be (B, K), (B, C, H, W) or (B, C, G, H, W), got shape {shape}")
    if group_order in (None, 1):
        return _Layout("plain", shape)
    if group_order not in _GROUP_ORDERS:
        raise ShapeError(f"group_order must be None, 4 (p4) or 8 (p4m), got {group_order!r}")
    if phi.shape[1] % group_order:
        raise ShapeError(f"{phi.shape[1]} channels do not split into group features of order {group_order}")
    return _Layout("group", shape, order=group_order, flat=True)


def _as_group(phi: Tensor, layout: _Layout) -> Tensor:
    if layout.kind == "group" and layout.flat:
        return phi.unflatten(1, (phi.shape[1] // layout.order, layout.order))
    return phi


def _spatial_interpolated(phi: Tensor, angle: float, mirror: bool) -> Tensor:
    """Rotate the last two axes of any tensor by ``angle`` with shiftlab.transforms.rotate (bilinear)."""
    from shiftlab.transforms import rotate

    lead, (h, w) = phi.shape[:-2], phi.shape[-2:]
    if phi.is_complex():
        parts = torch.view_as_real(phi).movedim(-1, 0)  # (2, ..., H, W)
        moved = _spatial_interpolated(parts, angle, mirror)
        return torch.view_as_complex(moved.movedim(0, -1).contiguous())
    flat = phi.reshape(-1, 1, h, w) if phi.ndim != 4 else phi
    if mirror:
        flat = flat.flip(-1)
    return rotate(flat, angle).reshape(*lead, h, w)


def _phase(orders: Tensor, angle: float, quarters: int | None, ndim: int) -> Tensor:
    """exp(i m theta) per stream, exact powers of i at quarter turns, shaped to broadcast on the stream axis."""
    if quarters is not None:
        table = torch.tensor([1, 1j, -1, -1j], dtype=torch.complex128)
        factor = table[(orders.long() * quarters) % 4]
    else:
        theta = angle * math.pi / 180.0
        factor = torch.polar(torch.ones_like(orders), orders * theta)
    axis = 2 if ndim == 5 else 1
    return factor.view([1] * axis + [-1] + [1] * (ndim - axis - 1))


def _transform(phi: Tensor, layout: _Layout, angle: float, mirror: bool) -> Tensor:
    """R' phi in float64 / complex128 (group features in (B, C, G, H, W) form)."""
    quarters = quarter_turns(angle)
    if layout.kind == "vector":
        return phi
    if layout.kind == "group":
        g = _as_group(phi, layout)
        if mirror and layout.order != 8:
            raise ShapeError(f"a mirror acts only on p4m features (group axis of 8), got {layout.order}")
        if quarters is not None:
            return group_act(g, quarters, mirror)
        # the maps rotate by the full angle; the group axis is permuted by the nearest element of the group
        index = _permutation_index(layout.order, _nearest_quarter(angle), mirror, g.device)
        return _spatial_interpolated(g.index_select(2, index), angle, mirror)
    if quarters is not None:
        moved = torch.rot90(phi.flip(-1) if mirror else phi, quarters, dims=(-2, -1))
    else:
        moved = _spatial_interpolated(phi, angle, mirror)
    if layout.kind == "harmonic":
        if mirror:
            raise ShapeError("harmonic features have no mirror action (a mirror conjugates the learned phases)")
        moved = moved * _phase(layout.orders.to(phi.device), angle, quarters, phi.ndim).to(phi.device)
    return moved


def _permutation_index(order: int, quarters: int, mirror: bool, device) -> Tensor:
    """Group-axis entries h^-1 g of the element h = rot90**quarters o mirror**mirror, as an index tensor."""
    probe = torch.arange(order, dtype=torch.float64).view(1, 1, order, 1, 1)
    return group_act(probe, quarters, mirror).flatten().long().to(device)


def rotate_features(phi: Tensor, angle: float, group_order: int | None = None, mirror: bool = False,
                    orders=None) -> Tensor:
    """``R' phi``: how the features of an equivariant layer move when its input is rotated by ``angle``.

    See the module docstring for the action on each layout and the conventions. Computed in float64
    (complex128 for complex features); group features keep the layout they came in.

    Shape:
        Input: (B, K), (B, C, H, W), (B, C * G, H, W) with ``group_order``, (B, C, G, H, W) or
        (B, C, M, H, W) complex. Output: the same (H and W swap for an odd number of quarter turns).

    >>> f = torch.arange(4.0).view(1, 1, 4, 1, 1)          # a 1x1 p4 group feature
    >>> rotate_features(f, 90).flatten().tolist()           # a quarter turn cycles the group axis
    [3.0, 0.0, 1.0, 2.0]
    """
    check_tensor(phi, "phi")
    angle = _scalar_angle(angle)
    layout = _layout(phi, group_order, orders)
    out = _transform(_float64(phi), layout, angle, bool(mirror))
    return out.flatten(1, 2) if layout.kind == "group" and layout.flat else out


def _float64(phi: Tensor) -> Tensor:
    return phi.to(torch.complex128 if phi.is_complex() else torch.float64)


def _scalar_angle(angle) -> float:
    if isinstance(angle, bool):
        raise ShapeError("angle must be a number of degrees, got bool")
    if isinstance(angle, Tensor):
        if angle.numel() != 1:
            raise ShapeError(f"angle must be a single number here, got shape {tuple(angle.shape)}")
        angle = angle.item()
    try:
        value = float(angle)
    except (TypeError, ValueError):
        raise ShapeError(f"angle must be a number of degrees, got {angle!r}") from None
    if not math.isfinite(value):
        raise ShapeError(f"angle must be finite, got {value}")
    return value


def _sums(diff: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    d2 = diff.abs() ** 2 if diff.is_complex() else diff**2
    t2 = target.abs() ** 2 if target.is_complex() else target**2
    if mask is not None:
        d2, t2 = d2 * mask, t2 * mask
    return d2.reshape(d2.shape[0], -1).sum(1), t2.reshape(t2.shape[0], -1).sum(1)


def _stats_one_angle(phi_x, phi_rx, angle, layout, mirror, reference, disc, margin):
    if reference is not None:
        target = _float64(reference)
    else:
        target = _transform(_float64(phi_x), layout, angle, mirror)
    rx = _as_group(_float64(phi_rx), layout) if reference is None else _float64(phi_rx)
    if reference is not None and layout.kind == "group" and layout.flat:
        target = _as_group(target, layout)
        rx = _as_group(rx, layout)
    if target.shape != rx.shape:
        raise ShapeError(f"phi_rx has shape {tuple(phi_rx.shape)}, but the rotated reference has "
                         f"{tuple(target.shape)}")
    mask = None
    if disc and layout.kind != "vector" and quarter_turns(angle) is None:
        mask = rotation_mask(rx.shape[-2], rx.shape[-1], margin, device=rx.device)
    return _sums(rx - target, target, mask)


def rotation_equivariance_stats(phi_x: Tensor | None, phi_rx: Tensor, angle, group_order: int | None = None, *,
                                mirror: bool = False, reference: Tensor | None = None, disc: bool = True,
                                margin: float = 0.0, orders=None) -> tuple[Tensor, Tensor]:
    """Per-sample ``(err2, ref2)``: squared distance of ``phi_rx`` from ``R' phi_x``, and squared norm of ``R' phi_x``.

    ``err2[b] = sum |phi_rx[b] - (R' phi_x)[b]|**2`` and ``ref2[b] = sum |(R' phi_x)[b]|**2`` over channels,
    group elements or streams, and positions: all of the map at multiples of 90 degrees, the disc of
    :func:`rotation_mask` at other angles (``disc=True``). ``sqrt(err2 / ref2)`` is the relative equivariance
    error; 0 for an equivariant layer (to rounding, 1e-16 in float64, at multiples of 90 degrees).

    Args:
        phi_x: the layer's output for the unrotated input (None if ``reference`` is given).
        phi_rx: its output for the input rotated by ``angle`` (after a left-right mirror if ``mirror``).
        angle: degrees counter-clockwise; a number, or a (B,) tensor of one angle per sample.
        group_order: None (layout from the shape: 5-D real means group features), 4 or 8 for group features
            flattened to (B, C * G, H, W) channel-major.
        mirror: the input was mirrored left-right before the rotation (plain and p4m features only).
        reference: ``R' phi_x`` computed by the caller (e.g. with another resampler), compared as is.
        disc: at angles that are not multiples of 90, compare only inside :func:`rotation_mask`.
        margin: pixels of the feature map trimmed from the disc's radius.
        orders: rotation orders of complex features' streams (default 0 .. M - 1; see module docstring).

    Returns:
        ``(err2, ref2)``, each (B,) float64. Both are 0 where nothing is compared (an empty disc: maps of 2x2 or
        smaller at angles off the multiples of 90, or too large a ``margin``): skip such layers.

    Shape:
        phi_x, phi_rx: (B, K), (B, C, H, W), (B, C * G, H, W), (B, C, G, H, W) or (B, C, M, H, W) complex;
        phi_rx has H and W swapped for odd quarter turns of a non-square map. Output: (B,), (B,).

    >>> x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    >>> err2, ref2 = rotation_equivariance_stats(x, torch.rot90(x, 1, (-2, -1)), 90)   # phi = identity
    >>> err2.tolist(), bool((ref2 > 0).all())
    ([0.0, 0.0], True)
    """
    check_tensor(phi_rx, "phi_rx")
    if phi_x is None and reference is None:
        raise ShapeError("give phi_x, or a reference (R' phi_x) to compare phi_rx with")
    if phi_x is not None:
        check_tensor(phi_x, "phi_x")
        if phi_x.ndim != phi_rx.ndim or (phi_x.ndim > 2 and phi_x.shape[:-2] != phi_rx.shape[:-2]):
            raise ShapeError(f"phi_x {tuple(phi_x.shape)} and phi_rx {tuple(phi_rx.shape)} must have the same layout")
        if phi_x.ndim == 2 and phi_x.shape != phi_rx.shape:
            raise ShapeError(f"phi_x {tuple(phi_x.shape)} and phi_rx {tuple(phi_rx.shape)} must have the same shape")
        if phi_x.is_complex() != phi_rx.is_complex():
            raise ShapeError("phi_x and phi_rx must both be real or both be complex")
    if reference is not None:
        check_tensor(reference, "reference")
        if reference.shape != phi_rx.shape:
            raise ShapeError(f"reference {tuple(reference.shape)} must have phi_rx's shape {tuple(phi_rx.shape)}")
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0:
        raise ShapeError(f"margin must be a non-negative number, got {margin!r}")
    layout = _layout(phi_rx, group_order, orders)
    batch = phi_rx.shape[0]
    if isinstance(angle, Tensor) and angle.ndim == 1:
        if angle.shape != (batch,):
            raise ShapeError(f"angle must be a number or a ({batch},) tensor, got shape {tuple(angle.shape)}")
        angles = angle.detach().to("cpu", torch.float64)
        err2 = torch.zeros(batch, dtype=torch.float64, device=phi_rx.device)
        ref2 = torch.zeros_like(err2)
        for value in torch.unique(angles).tolist():  # a loop over distinct angles, not over samples
            idx = torch.nonzero(angles == value).flatten().to(phi_rx.device)
            e, r = _stats_one_angle(None if phi_x is None else phi_x.index_select(0, idx), phi_rx.index_select(0, idx),
                                    _scalar_angle(value), layout, bool(mirror),
                                    None if reference is None else reference.index_select(0, idx), disc, margin)
            err2[idx], ref2[idx] = e, r
        return err2, ref2
    return _stats_one_angle(phi_x, phi_rx, _scalar_angle(angle), layout, bool(mirror), reference, disc, margin)


def rotation_equivariance_error(phi_x: Tensor | None, phi_rx: Tensor, angle, group_order: int | None = None,
                                **options) -> Tensor:
    """Relative error per sample, ``sqrt(err2 / ref2)`` of :func:`rotation_equivariance_stats`.

    NaN where ``ref2`` is 0: an all-zero reference, or an empty disc (maps of 2x2 or smaller at angles that
    are not multiples of 90 degrees, or a margin as large as the disc).

    Shape:
        Output: (B,) float64.
    """
    err2, ref2 = rotation_equivariance_stats(phi_x, phi_rx, angle, group_order, **options)
    return torch.where(ref2 > 0, torch.sqrt(err2 / ref2.clamp_min(1e-300)), torch.full_like(ref2, float("nan")))
