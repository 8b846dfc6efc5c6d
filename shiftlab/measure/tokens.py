"""Transformers seen as maps: token layouts for the layer-wise errors, and what :func:`inspect` says of them.

A vision transformer's layers output tokens, not (B, C, H, W) maps: a ViT's blocks (B, N, C) with
``N = prefix + h * w`` (the class and distillation tokens first, then the h x w patch grid in raster order),
a Swin's stages (B, h, w, C) (channels last). :func:`token_layouts` reads, once per audit, where the model
keeps its token grid (timm's ``patch_embed.patch_size``, ``num_prefix_tokens``, ``output_fmt``);
:func:`as_token_map` turns one hooked output into the (B, C, h, w) map it stands for, so that
:mod:`shiftlab.measure.rows` compares it like a feature map of stride ``input / grid``, and says what it did.

For :func:`shiftlab.inspect`, :func:`token_finding` names a Swin's window attention (a fixed grid of windows,
shifted by a cyclic roll with an attention mask) and its patch merging (the 4 polyphase components of each 2x2
neighbourhood concatenated, then a linear layer: a 2x subsampling without a low-pass filter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TokenLayout", "TOKEN_KINDS", "token_layout", "token_layouts", "as_token_map", "token_finding"]

#: the kinds :func:`token_finding` reports (merged into :data:`shiftlab.measure.inspect.KINDS`)
TOKEN_KINDS = {
    "patch-merging": "patch merging: the 4 polyphase components of each 2x2 neighbourhood concatenated, then a "
                     "linear layer: a 2x subsampling without a low-pass filter (aliases; not anti-aliased)",
    "window-attention": "attention inside a fixed grid of windows (shifted windows: a cyclic roll with an attention "
                        "mask): equivariant only to shifts by multiples of the window",
}
_LEVELS = 6  # token grids at the patch stride times 1, 2, 4, ... 32 (hierarchical transformers)


@dataclass(frozen=True)
class TokenLayout:
    """Where a model keeps its token grid.

    Attributes:
        patch: the patch size (ph, pw): the stride of the first token grid.
        prefix: tokens before the grid in a (B, N, C) sequence (class, distillation, register tokens).
        channels_last: 4-D outputs are (B, h, w, C) (a Swin's stages), not (B, C, h, w).
    """

    patch: tuple[int, int]
    prefix: int = 0
    channels_last: bool = False


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[-1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _inner(model: nn.Module) -> nn.Module:
    # wrappers (shiftlab's SelectOutput) keep the wrapped model as .model
    while not hasattr(model, "patch_embed") and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model
    return model


def token_layout(model: nn.Module) -> TokenLayout | None:
    """The token layout of a timm-style transformer (a ``patch_embed`` with a ``patch_size``), else None."""
    inner = _inner(model)
    embed = getattr(inner, "patch_embed", None)
    patch = getattr(embed, "patch_size", None)
    if not isinstance(embed, nn.Module) or patch is None:
        return None
    fmt = str(getattr(inner, "output_fmt", None) or getattr(embed, "output_fmt", "") or "")
    prefix = getattr(inner, "num_prefix_tokens", None)
    if prefix is None:
        prefix = int(getattr(inner, "cls_token", None) is not None) + int(getattr(inner, "dist_token", None) is not None)
    return TokenLayout(patch=_pair(patch), prefix=int(prefix), channels_last=fmt.endswith("NHWC"))


def token_layouts(model: nn.Module, layers: dict) -> dict:
    """``{name: TokenLayout}`` for the hooked ``layers`` of a transformer ({} for any other model). A
    convolution's output stays (B, C, h, w) even in a channels-last model."""
    layout = token_layout(model)
    if layout is None:
        return {}
    plain = TokenLayout(layout.patch, layout.prefix, False)
    return {name: (plain if isinstance(m, nn.Conv2d) else layout) for name, m in layers.items()}


def _grid(layout: TokenLayout, input_hw, fits) -> tuple[int, int] | None:
    """The first token grid (h, w) at stride patch * 2**k that ``fits`` accepts."""
    H, W = input_hw
    for k in range(_LEVELS):
        sy, sx = layout.patch[0] << k, layout.patch[1] << k
        if H % sy == 0 and W % sx == 0 and fits(H // sy, W // sx):
            return H // sy, W // sx
    return None


def as_token_map(feat: torch.Tensor, layout: TokenLayout | None, input_hw) -> tuple[torch.Tensor, str | None]:
    """``feat`` as the (B, C, h, w) map it stands for, and a note saying what was reshaped (None: unchanged).

    (B, N, C) tokens with ``N = h * w`` or ``prefix + h * w`` for a token grid (h, w) of the input: the prefix
    tokens dropped, the rest reshaped in raster order. (B, h, w, C) in a channels-last layout: permuted. Any
    other output is returned as it is.

    Shape:
        - Input: (B, N, C) or (B, h, w, C) (or anything else, returned unchanged).
        - Output: (B, C, h, w).

    >>> t = torch.arange(2 * 5 * 3.).reshape(2, 5, 3)  # a class token and a 2x2 grid of 3 channels
    >>> m, note = as_token_map(t, TokenLayout((4, 4), prefix=1), (8, 8))
    >>> tuple(m.shape), note
    ((2, 3, 2, 2), 'tokens (B, N, C) reshaped to (B, C, 2, 2); 1 prefix token dropped')
    """
    if layout is None or not isinstance(feat, torch.Tensor):
        return feat, None
    if feat.ndim == 3:
        n = feat.shape[1]
        for prefix in dict.fromkeys((layout.prefix, 0)):
            grid = _grid(layout, input_hw, lambda h, w: h * w == n - prefix and h * w > 1)
            if grid is not None:
                out = feat[:, prefix:].reshape(feat.shape[0], *grid, feat.shape[2]).permute(0, 3, 1, 2)
                dropped = f"; {prefix} prefix token{'s' if prefix > 1 else ''} dropped" if prefix else ""
                return out, f"tokens (B, N, C) reshaped to (B, C, {grid[0]}, {grid[1]}){dropped}"
        return feat, None
    if feat.ndim == 4 and layout.channels_last:
        grid = _grid(layout, input_hw, lambda h, w: (h, w) == tuple(feat.shape[1:3]))
        if grid is not None:
            return feat.permute(0, 3, 1, 2), f"channels-last (B, h, w, C) permuted to (B, C, {grid[0]}, {grid[1]})"
    return feat, None


def _nhwc(t) -> tuple[int, int] | None:
    return (int(t.shape[1]), int(t.shape[2])) if isinstance(t, torch.Tensor) and t.ndim == 4 else None


def token_finding(m: nn.Module, x, y, input_size) -> tuple | None:
    """What :func:`shiftlab.inspect` reports for a Swin's patch merging or window attention block, as the
    arguments ``(kind, detail, stride, cumulative_stride, input_hw, output_hw[, breaks])`` of a finding; else None.
    The adaptive layers of :mod:`shiftlab.layers.windows` are reported as ``"aps"``.

    Both work on (B, h, w, C) maps; the cumulative stride is the input size over the map's.
    """
    in_hw, out_hw = _nhwc(x), _nhwc(y)
    if in_hw is None or out_hw is None:
        return None
    cum = (max(1, input_size[0] // in_hw[0]), max(1, input_size[1] // in_hw[1]))
    if type(m).__module__.startswith("shiftlab.layers"):  # the converted layers (shiftlab.layers.windows)
        return _adaptive_finding(m, cum, in_hw, out_hw)
    if isinstance(getattr(m, "reduction", None), nn.Linear) and out_hw == (-(-in_hw[0] // 2), -(-in_hw[1] // 2)):
        detail = (f"{in_hw[0]}x{in_hw[1]} -> {out_hw[0]}x{out_hw[1]}: 4 polyphase components concatenated "
                  f"({x.shape[-1]} -> {y.shape[-1]} channels), stride 2, not anti-aliased")
        return "patch-merging", detail, (2, 2), (cum[0] * 2, cum[1] * 2), in_hw, out_hw
    window, shift = getattr(m, "window_size", None), getattr(m, "shift_size", None)
    if window is not None and shift is not None and out_hw == in_hw and isinstance(getattr(m, "attn", None), nn.Module):
        window, shift = _pair(window), _pair(shift)
        shifted = (f"shifted by {_text(shift)} (a cyclic roll, attention masked across the wrap)" if any(shift)
                   else "not shifted")
        detail = (f"{_text(window)}-token windows on {in_hw[0]}x{in_hw[1]} tokens, {shifted}: equivariant only to shifts "
                  f"by multiples of {_text((window[0] * cum[0], window[1] * cum[1]))} input pixels")
        return "window-attention", detail, (1, 1), cum, in_hw, out_hw
    return None


def _adaptive_finding(m: nn.Module, cum, in_hw, out_hw) -> tuple | None:
    """An adaptive window block or patch merging: exact for circular shifts when it treats the map as a torus."""
    breaks = getattr(m, "padding_mode", "circular") != "circular"
    if isinstance(getattr(m, "reduction", None), nn.Module):
        return ("aps", f"{in_hw[0]}x{in_hw[1]} -> {out_hw[0]}x{out_hw[1]}: patch merging at the 2x2 phase of largest "
                "norm (APS)", (2, 2), (cum[0] * 2, cum[1] * 2), in_hw, out_hw, breaks)
    if getattr(m, "window_size", None) is not None:
        border = "border mask kept" if breaks else "no border mask (a torus)"
        return ("aps", f"{_text(m.window_size)}-token windows at the offset of largest norm, shift "
                f"{_text(m.shift_size)}, {border}", (1, 1), cum, in_hw, out_hw, breaks)
    return None


def _text(p: tuple[int, int]) -> str:
    return f"{p[0]}x{p[1]}" if p[0] != p[1] else f"{p[0]}"
