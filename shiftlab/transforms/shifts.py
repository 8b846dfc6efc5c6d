"""Integer translations: circular shifts (a group action), crop shifts (a camera pan), canvas embedding,
and the padding that makes a size a multiple of a stride. Values are moved, never interpolated
(except the object downscaled by :func:`canvas_embed`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shiftlab.errors import InputError, ShapeError
from shiftlab.transforms._params import (_as_vector, _check_image, _check_range, _compute_dtype, _gather_2d, _int_param,
                                         _size_pair)

__all__ = ["canvas_embed", "circular_shift", "crop_shift", "pad_to_multiple"]

_FILLS = ("black", "mean", "inpaint")


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
