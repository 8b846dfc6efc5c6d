"""Adaptive (polyphase) windows, patch merging and patch grids for windowed transformers (Swin).

A Swin subsamples three times over: the patch embedding (a stride-p convolution), the window partition (attention
inside a fixed grid of w x w windows) and the patch merging (the 4 polyphase components of each 2x2 neighbourhood
concatenated). Each is equivariant only to shifts by multiples of its period. The adaptive versions choose, per
image, the offset among the period's offsets whose polyphase component has the largest L2 norm (the APS rule;
Rojas-Gomez et al., CVPR 2024), roll it to the origin, do the fixed operation, and roll back where the output keeps
the grid (windows). A circular shift of the input moves the chosen offset with it, so the set of patches, windows
and merged neighbourhoods is the same, only moved: exact equivariance to circular shifts (ties aside).

- :func:`window_offset` / :func:`roll_to_offset`: the largest-norm offset of a (B, H, W, C) token map and the
  per-image roll (batched, no loop over images).
- :func:`window_border_mask`: Swin's attention mask for a per-image roll: tokens that came from opposite sides
  of the map's border do not attend to each other (timm's shifted-window mask is the case roll = shift).
- :class:`PolyphaseWindowBlock`: a Swin block whose window grid is chosen by :func:`window_offset`.
- :class:`PolyphasePatchMerging`: patch merging at the 2x2 phase of largest norm (APS).
- The patch embedding's own offset is :class:`shiftlab.layers.tokenize.PolyphasePatchEmbed`'s.

Token maps are channels-last, (B, H, W, C), as a Swin keeps them; images (B, C, H, W).
"""

from __future__ import annotations

import torch
from torch import nn

from shiftlab._checks import check_int
from shiftlab.errors import ShapeError

__all__ = ["window_offset", "roll_to_offset", "window_border_mask", "polyphase_window_attention",
           "PolyphaseWindowBlock", "polyphase_patch_merging", "PolyphasePatchMerging"]

_MASKED = -100.0  # timm's value for tokens that may not attend to each other


def _check_tokens(x: torch.Tensor, period: tuple[int, int], what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ShapeError(f"{what} needs a (B, H, W, C) token map, got {getattr(x, 'shape', type(x).__name__)}")
    if x.shape[1] % period[0] or x.shape[2] % period[1]:
        raise ShapeError(f"{what}: the {x.shape[1]}x{x.shape[2]} token map is not a multiple of the period "
                         f"{period[0]}x{period[1]}; adaptive windows and merging need whole periods")


def window_offset(x: torch.Tensor, period) -> torch.Tensor:
    """The offset (dy, dx) in ``[0, py) x [0, px)`` whose polyphase component ``x[:, dy::py, dx::px]`` has the
    largest L2 norm, per image (first in raster order on ties).

    Shape:
        - Input: (B, H, W, C) token map, H and W multiples of the period.
        - Output: (B, 2) int64.

    >>> x = torch.zeros(1, 4, 4, 1); x[0, 1, 2] = 1.0
    >>> window_offset(x, 2).tolist()
    [[1, 0]]
    """
    py, px = (period, period) if isinstance(period, int) else tuple(period)
    _check_tokens(x, (py, px), "window_offset")
    B, H, W, _ = x.shape
    energy = x.detach().pow(2).sum(-1).reshape(B, H // py, py, W // px, px).sum(dim=(1, 3))  # (B, py, px)
    best = energy.reshape(B, -1).argmax(dim=1)
    return torch.stack([torch.div(best, px, rounding_mode="floor"), best % px], dim=1)


def roll_to_offset(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Roll each image's map so that position ``offset`` comes to the origin: ``out[b, i, j] = x[b, (i + oy) % H,
    (j + ox) % W]`` (a per-image ``torch.roll`` by ``-offset``; a negative offset rolls back).

    Shape:
        - Input: x (B, H, W, C); offset (B, 2) integer.
        - Output: (B, H, W, C).

    >>> roll_to_offset(torch.arange(4.).reshape(1, 1, 4, 1), torch.tensor([[0, 1]])).flatten().tolist()
    [1.0, 2.0, 3.0, 0.0]
    """
    if x.ndim != 4 or offset.shape != (x.shape[0], 2):
        raise ShapeError(f"roll_to_offset needs x (B, H, W, C) and offset (B, 2), got {tuple(x.shape)} and "
                         f"{tuple(offset.shape)}")
    B, H, W, _ = x.shape
    offset = offset.to(x.device)
    rows = (torch.arange(H, device=x.device)[None] + offset[:, :1]) % H  # (B, H)
    cols = (torch.arange(W, device=x.device)[None] + offset[:, 1:]) % W  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]]


def _windows(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, wy * wx, C), windows in raster order (timm's ``window_partition``)."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // window[0], window[0], W // window[1], window[1], C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window[0] * window[1], C)


def _unwindows(w: torch.Tensor, window: tuple[int, int], H: int, W: int) -> torch.Tensor:
    C = w.shape[-1]
    x = w.reshape(-1, H // window[0], W // window[1], window[0], window[1], C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def window_border_mask(roll: torch.Tensor, size, window, dtype=torch.float32) -> torch.Tensor:
    """Swin's attention mask after a per-image roll: within a window, a token that wrapped round the map's border
    (it came from the other side) does not attend to one that did not (-100), as for a map with borders.

    Shape:
        - Input: roll (B, 2) in ``[0, H) x [0, W)``: the map was rolled by ``-roll`` (:func:`roll_to_offset`).
        - Output: (B * nW, wy * wx, wy * wx) additive mask, nW = (H / wy) * (W / wx) windows in raster order.

    >>> window_border_mask(torch.tensor([[0, 0]]), 4, 2).abs().sum().item()  # nothing wrapped: nothing masked
    0.0
    """
    H, W = (size, size) if isinstance(size, int) else tuple(size)
    window = (window, window) if isinstance(window, int) else tuple(window)
    roll = roll.to(torch.long)
    wrapped_y = (torch.arange(H, device=roll.device)[None] + roll[:, :1]) >= H  # (B, H)
    wrapped_x = (torch.arange(W, device=roll.device)[None] + roll[:, 1:]) >= W  # (B, W)
    label = (wrapped_y[:, :, None].long() * 2 + wrapped_x[:, None, :].long())[..., None]  # (B, H, W, 1)
    label = _windows(label, window)[..., 0]  # (B * nW, N)
    differ = label[:, :, None] != label[:, None, :]
    return torch.zeros(differ.shape, dtype=dtype, device=roll.device).masked_fill(differ, _MASKED)


def polyphase_window_attention(x: torch.Tensor, attn: nn.Module, window, shift=(0, 0), circular: bool = True):
    """Window attention at the window grid chosen by :func:`window_offset`, shifted by ``shift`` (Swin's SW-MSA).

    The map is rolled by ``-(offset + shift)``, cut into windows, ``attn(windows, mask=...)`` runs on each, and the
    result is rolled back. ``circular=True``: no mask, the map is a torus (exactly equivariant to circular shifts);
    ``circular=False``: tokens from opposite sides of the border do not attend to each other
    (:func:`window_border_mask`), as in Swin (then not exact at the border).

    Shape:
        - Input: (B, H, W, C), H and W multiples of the window. ``attn``: (B * nW, N, C) -> (B * nW, N, C).
        - Output: (B, H, W, C).
    """
    window, shift = tuple(window), tuple(shift)
    _check_tokens(x, window, "polyphase window attention")
    B, H, W, C = x.shape
    roll = window_offset(x, window) + torch.tensor(shift, device=x.device)
    roll = roll % torch.tensor([H, W], device=x.device)
    mask = None if circular else window_border_mask(roll, (H, W), window, dtype=x.dtype)
    out = attn(_windows(roll_to_offset(x, roll), window), mask=mask)
    return roll_to_offset(_unwindows(out, window, H, W), -roll)


class PolyphaseWindowBlock(nn.Module):
    """A Swin transformer block (pre-norm window attention, then an MLP) whose window grid is adaptive.

    Holds the block's own layers under their names (``norm1``, ``attn``, ``drop_path1``, ``norm2``, ``mlp``,
    ``drop_path2``), so its weights keep their keys. Exactly equivariant to circular shifts of the token map with
    ``circular=True`` (:func:`polyphase_window_attention`).

    Shape:
        - Input: (B, H, W, C). Output: (B, H, W, C).
    """

    def __init__(self, norm1, attn, drop_path1, norm2, mlp, drop_path2, window_size, shift_size=0,
                 circular: bool = True):
        super().__init__()
        self.norm1, self.attn, self.drop_path1 = norm1, attn, drop_path1
        self.norm2, self.mlp, self.drop_path2 = norm2, mlp, drop_path2
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(int(a) for a in v)  # noqa: E731
        self.window_size, self.shift_size = pair(window_size), pair(shift_size)
        for v in (*self.window_size, *self.shift_size):
            check_int("window_size / shift_size", v, 0)
        self.circular = bool(circular)
        self.padding_mode = "circular" if circular else "zeros"  # what shiftlab.inspect reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        y = polyphase_window_attention(self.norm1(x), self.attn, self.window_size, self.shift_size, self.circular)
        x = x + self.drop_path1(y)
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift_size={self.shift_size}, circular={self.circular}"


def polyphase_patch_merging(x: torch.Tensor, norm: nn.Module, reduction: nn.Module) -> torch.Tensor:
    """Swin's patch merging at the 2x2 phase of largest norm (APS): roll that phase to the origin, concatenate the
    4 components of each 2x2 neighbourhood in timm's order ((0,0), (1,0), (0,1), (1,1)), ``norm``, ``reduction``.

    Shape:
        - Input: (B, H, W, C), H and W even. Output: (B, H / 2, W / 2, C_out).
    """
    _check_tokens(x, (2, 2), "polyphase patch merging")
    B, H, W, C = x.shape
    x = roll_to_offset(x, window_offset(x, 2))
    x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
    return reduction(norm(x))


class PolyphasePatchMerging(nn.Module):
    """:func:`polyphase_patch_merging` as a Module holding the merge's ``norm`` and ``reduction`` (keys kept).

    Shape:
        - Input: (B, H, W, C), H and W even. Output: (B, H / 2, W / 2, C_out).
    """

    def __init__(self, norm: nn.Module, reduction: nn.Module):
        super().__init__()
        self.norm, self.reduction = norm, reduction
        self.stride = (2, 2)
        self.padding_mode = "circular"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return polyphase_patch_merging(x, self.norm, self.reduction)
