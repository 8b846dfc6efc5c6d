"""Convert a timm Swin transformer to adaptive (polyphase) patch embedding, windows and patch merging.

:func:`shiftlab.antialias` sends a timm ``SwinTransformer`` here. Three layers subsample or tie the model to a
grid, and each becomes its adaptive version (:mod:`shiftlab.layers.windows`), keeping every weight:

- ``patch_embed`` (a stride-p convolution) -> :class:`~shiftlab.layers.tokenize.PolyphasePatchEmbed` (no position
  encoding: a Swin has none): the image rolled to its p x p offset of largest norm first (its weights move under
  ``patch_embed.embed.``);
- each ``SwinTransformerBlock`` -> :class:`~shiftlab.layers.windows.PolyphaseWindowBlock`: the window grid rolled
  to its w x w offset of largest norm (plus the block's shift for shifted windows), rolled back after;
- each ``PatchMerging`` -> :class:`~shiftlab.layers.windows.PolyphasePatchMerging`: APS over its 2x2 phases.

The relative position bias is relative to the window, so it moves with the windows. The shifted-window mask is
the one point of choice. Swin rolls its map cyclically and masks attention between tokens that came from opposite
sides of the border: a map with borders. Under a circular shift of the input that border moves with the content,
so no mask tied to the border can be exact. ``circular=True`` drops it (the map is a torus, like circular padding
in a CNN: the converted model is then exactly invariant to circular shifts, and differs from the original in the
windows that straddle the border); ``circular=False`` keeps it, recomputed for each image's roll
(:func:`~shiftlab.layers.windows.window_border_mask`: the original's mask when the roll is the block's shift), so the
model keeps its borders and is not exact there. The global average pooling of the head is invariant.

Not converted, and refused by name: SwinV2 and other windowed transformers, a head that does not pool globally,
a patch embedding with padding, maps that are not whole windows (timm pads them).
"""

from __future__ import annotations

import copy

from torch import nn

from shiftlab.errors import InputError
from shiftlab.fix.replacement import Replacement, describe_module, set_submodule
from shiftlab.layers.tokenize import PolyphasePatchEmbed
from shiftlab.layers.windows import PolyphasePatchMerging, PolyphaseWindowBlock

__all__ = ["is_timm_swin", "convert_swin"]

_SWIN = "timm.models.swin_transformer"


def is_timm_swin(model: nn.Module) -> bool:
    """Whether ``model`` is timm's (v1) ``SwinTransformer``."""
    return type(model).__name__ == "SwinTransformer" and type(model).__module__ == _SWIN


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _check_block(name: str, block: nn.Module) -> None:
    H, W = _pair(block.input_resolution)
    wy, wx = _pair(block.window_size)
    if H % wy or W % wx:
        raise InputError(f"convert_swin cannot convert {name}: its {H}x{W} token map is not a whole number of "
                         f"{wy}x{wx} windows (timm pads it; the padding is not shift invariant)")


def _window_block(block: nn.Module, circular: bool) -> PolyphaseWindowBlock:
    return PolyphaseWindowBlock(block.norm1, block.attn, block.drop_path1, block.norm2, block.mlp, block.drop_path2,
                                _pair(block.window_size), _pair(block.shift_size), circular=circular)


def _refuse_unknown(model: nn.Module) -> None:
    for name, m in model.named_modules():
        kind = type(m).__name__
        if type(m).__module__.startswith("timm.models.") and type(m).__module__ != _SWIN:
            raise InputError(f"convert_swin cannot convert {name} ({kind}, from {type(m).__module__}): only timm's "
                             "(v1) SwinTransformer layers are known")
    pool = getattr(getattr(model, "head", None), "global_pool", None)
    if getattr(pool, "pool_type", "avg") not in ("avg", "max"):
        raise InputError(f"convert_swin cannot convert head.global_pool ({pool!r}): without a global pooling the "
                         "head depends on absolute position")
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(proj, nn.Conv2d) or _pair(proj.padding) != (0, 0) or proj.kernel_size != proj.stride:
        raise InputError(f"convert_swin cannot convert patch_embed.proj ({proj!r}): a patch embedding is a Conv2d "
                         "with kernel = stride and no padding")


def convert_swin(model: nn.Module, method: str = "aps", circular: bool = True, *,
                 inplace: bool = False) -> tuple[nn.Module, list[Replacement]]:
    """``model`` (timm's ``SwinTransformer``) with adaptive patch embedding, windows and patch merging.

    Args:
        model: a timm Swin (v1). Every weight is kept: the windows and merging hold theirs under the same keys, the
            patch embedding under ``patch_embed.embed.``.
        method: ``"aps"`` (the largest-norm choice); other methods are refused.
        circular: ``True``: shifted windows attend across the map's border (no mask): exactly invariant to
            circular shifts. ``False``: the border mask is kept, recomputed for each image's roll.
        inplace: convert ``model`` itself rather than a deep copy.

    Returns:
        ``(converted, replacements)``: one :class:`~shiftlab.fix.replacement.Replacement` per converted layer.
        The conversion is a function of ``(method, circular)`` alone: a fresh Swin converted the same way and
        given the state dict is the same model.
    """
    if method != "aps":
        raise InputError(f"a Swin is converted with method='aps' only (CLI: --method aps; adaptive polyphase patches, "
                         f"windows and merging); {method!r} is not available for windowed transformers")
    if not is_timm_swin(model):
        raise InputError(f"convert_swin converts timm's SwinTransformer, got {type(model).__name__}")
    _refuse_unknown(model)
    model = model if inplace else copy.deepcopy(model)
    report: list[Replacement] = []

    def put(name: str, old: nn.Module, new: nn.Module) -> None:
        report.append(Replacement(name, describe_module(old), describe_module(new)))
        set_submodule(model, name, new)

    put("patch_embed", model.patch_embed, PolyphasePatchEmbed(model.patch_embed))
    for name, m in list(model.named_modules()):
        kind = type(m).__name__
        if kind == "SwinTransformerBlock":
            _check_block(name, m)
            put(name, m, _window_block(m, circular))
        elif kind == "PatchMerging":
            put(name, m, PolyphasePatchMerging(m.norm, m.reduction))
    return model, report
