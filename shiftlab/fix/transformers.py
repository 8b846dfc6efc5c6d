"""Convert a timm vision transformer to one exactly invariant to circular shifts: polyphase tokenization and a
circular convolutional position encoding (Ding et al. 2023; Rojas-Gomez et al. 2024).

``antialias(vit, method="aps")`` on a timm ``VisionTransformer`` (ViT, DeiT; :func:`convert_vit`) changes two
things and keeps every other weight bit for bit:

- the patch embedding becomes a :class:`~shiftlab.layers.PolyphasePatchEmbed`: the image is rolled so that its
  ``p x p`` offset grid of largest norm sits at the origin (:func:`~shiftlab.layers.polyphase_tokenize`, APS's
  exact choice at stride ``p``), then embedded by the original module (now ``patch_embed.embed``, same weights);
- the absolute position embedding of the patch tokens (``pos_embed``, a vector per grid position, which does not
  move with the image) is removed, and a :class:`~shiftlab.layers.ConvPositionEncoding` (a 3x3 circular depthwise
  convolution on the token grid, added to the tokens, zero-initialised: ``patch_embed.position``) takes its place.
  Zero-initialised, it is the identity, so the converted model is the original model without absolute position
  embeddings of its patch tokens (it needs fine-tuning, ``shiftlab finetune --fix aps``, to recover its accuracy).

The prefix tokens (the class token, register tokens) have position embeddings of their own when ``pos_embed``
covers them (timm's ``no_embed_class=False``, as in ViT and DeiT): a constant vector added to a constant token.
It does not depend on the image, so it cannot break invariance, and it is kept by folding it into the token:
``cls_token`` becomes ``cls_token + pos_embed[:, :1]``, the very sum (same float rounding) the original adds in
every forward pass. So the state_dict loses ``pos_embed``, gains ``patch_embed.position.{weight,bias}``, has the
patch embedding's weights under ``patch_embed.embed.*``, the prefix tokens folded, and every other entry equal.

Why the result is exactly invariant. Let the input's height and width be multiples of ``p`` and ``x' = roll(x, d)``.
The chosen offset moves by ``d`` modulo ``p`` (APS's rule, exact in any float order), so the rolled images differ by
a roll of whole patches and the patch tokens by a circular roll of the token grid. The position encoding is a
circular convolution of that grid (it commutes with the roll); self-attention without position bias, the MLPs and
the layer norms are equivariant to any permutation of the tokens; the class token (or the average of the tokens,
or timm's attention pool) is invariant to it. Hence ``f(x') = f(x)``, bit for bit up to float summation order
(certified to 1e-10 relative in float64 by :func:`shiftlab.certify`). Nothing pads, so ``circular`` changes nothing
and is recorded as given.

Refused with an :class:`~shiftlab.errors.InputError` naming the module: another method than ``"aps"``; a distilled
DeiT (``VisionTransformerDistilled``: its forward adds ``pos_embed`` itself); ``dynamic_img_size`` or
``dynamic_img_pad`` (zero padding of the image); a non-square patch, or a patch embedding that is not a ``p x p``,
stride-``p``, unpadded convolution; position terms tied to the grid inside the blocks (relative position bias
tables, rotary embeddings). Any other model with an absolute position embedding or a relative position table
(torchvision's ViT, timm's Eva, BEiT, ...) is refused by :func:`refuse_unconvertible_transformer` too, and a timm
Swin goes to ``shiftlab.fix.swin.convert_swin`` when that module exists (refused by name otherwise).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
from collections.abc import Mapping

import torch
from torch import nn

from shiftlab.errors import InputError
from shiftlab.fix.recipe import TRANSFORMER_KEYS, is_converted, record_conversion
from shiftlab.fix.replacement import Replacement, describe_module
from shiftlab.layers import ConvPositionEncoding, PolyphasePatchEmbed

__all__ = ["convert_vit", "convert_transformer", "is_vision_transformer", "is_swin",
           "refuse_unconvertible_transformer", "check_transformer_recipe", "POSITION_KERNEL", "TRANSFORMER_KEYS"]

#: kernel size of the circular depthwise position encoding a conversion adds
POSITION_KERNEL = 3
#: parameter names (last part) of position terms tied to the token grid
_GRID_PARAMETERS = ("pos_embed", "pos_embedding", "absolute_pos_embed", "relative_position_bias_table", "rel_pos_h",
                    "rel_pos_w")
#: parts of module class names that hold position terms tied to the grid
_GRID_MODULES = ("RelPos", "Rope", "Rotary")
_SWIN_MODULE = "shiftlab.fix.swin"


def _vit_class():
    """timm's VisionTransformer, if timm made one already (a model of a module never imported cannot be one: so
    converting a torchvision CNN does not import timm)."""
    module = sys.modules.get("timm.models.vision_transformer")
    return getattr(module, "VisionTransformer", None)


def is_vision_transformer(model) -> bool:
    """Whether ``model`` is a timm ``VisionTransformer`` (ViT, DeiT; subclasses such as the distilled DeiT too)."""
    cls = _vit_class()
    return cls is not None and isinstance(model, cls)


def is_swin(model) -> bool:
    """Whether ``model`` is a timm Swin transformer (``SwinTransformer``, ``SwinTransformerV2``, ...)."""
    return isinstance(model, nn.Module) and type(model).__name__.startswith("SwinTransformer") \
        and type(model).__module__.startswith("timm.")


def _grid_terms(model: nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the parameters and modules of ``model`` whose values are tied to absolute or relative grid
    positions (but those in ``skip``)."""
    found = [name for name, _ in model.named_parameters()
             if name.rsplit(".", 1)[-1] in _GRID_PARAMETERS and name not in skip]
    found += [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
              if any(part in type(m).__name__ for part in _GRID_MODULES)]
    return found


def refuse_unconvertible_transformer(model: nn.Module, method: str) -> None:
    """Refuse (InputError, naming it) a model that is neither a timm ViT nor a Swin but has position terms tied to
    the grid, when ``method`` claims exact invariance (``"aps"``, ``"lps"``): converting its strides alone would
    leave those terms, and no invariance."""
    if method not in ("aps", "lps") or is_vision_transformer(model) or is_swin(model):
        return
    terms = _grid_terms(model)
    if terms:
        raise InputError(f"antialias({method!r}) cannot make {type(model).__name__} shift invariant: {terms[0]} is a "
                         "position term tied to the grid; only timm's VisionTransformer (ViT, DeiT) and Swin are "
                         "converted (polyphase tokenization)")


def _refuse_vit(model: nn.Module, method: str) -> None:
    """Everything :func:`convert_vit` cannot convert, refused with the module's name."""
    name = type(model).__name__
    if method != "aps":
        raise InputError(f"a vision transformer ({name}) is converted by method='aps' (CLI: --method aps; polyphase "
                         f"tokenization) only, not {method!r}")
    if hasattr(model, "dist_token") or hasattr(model, "head_dist"):
        raise InputError(f"{name} (dist_token, head_dist) is a distilled DeiT, whose forward adds pos_embed itself: "
                         "not supported; convert the non-distilled model (deit_tiny_patch16_224, ...)")
    embed = model.patch_embed
    if getattr(model, "dynamic_img_size", False) or getattr(embed, "dynamic_img_pad", False):
        raise InputError(f"patch_embed: {name} with dynamic_img_size or dynamic_img_pad (zero padding, position "
                         "embeddings resampled per size) is not supported; create it with a fixed img_size")
    proj = getattr(embed, "proj", None)
    if not isinstance(proj, nn.Conv2d) or type(proj).forward is not nn.Conv2d.forward:
        raise InputError(f"patch_embed.proj: polyphase tokenization needs a Conv2d patch projection, got "
                         f"{type(proj).__name__}")
    k, s = tuple(proj.kernel_size), tuple(proj.stride)
    if k[0] != k[1] or k != s or tuple(proj.padding) != (0, 0) or tuple(proj.dilation) != (1, 1):
        raise InputError(f"patch_embed.proj: polyphase tokenization needs square, non-overlapping, unpadded patches "
                         f"(kernel = stride = p x p, no padding), got kernel {k}, stride {s}, padding {proj.padding}")
    terms = _grid_terms(model, skip=("pos_embed",))
    if terms:
        raise InputError(f"{terms[0]}: a position term tied to the grid inside the transformer; it would not move "
                         "with a roll of the tokens, so the model cannot be made shift invariant")


def _fold_prefix_positions(model: nn.Module, pos_embed: torch.Tensor) -> list[str]:
    """Add the prefix tokens' own position embeddings to the tokens (the sum the original forward makes)."""
    if getattr(model, "no_embed_class", False):
        return []
    folded, start = [], 0
    for name in ("cls_token", "reg_token"):
        token = getattr(model, name, None)
        if token is None:
            continue
        n = token.shape[1]
        with torch.no_grad():
            new = token + pos_embed[:, start:start + n]
        setattr(model, name, nn.Parameter(new, requires_grad=token.requires_grad))
        folded.append(name)
        start += n
    return folded


def convert_vit(model: nn.Module, method: str = "aps", circular: bool = False,
                inplace: bool = False) -> tuple[nn.Module, list[Replacement]]:
    """Polyphase tokenization and a circular position encoding for a timm ``VisionTransformer`` (see the module's
    docstring); what :func:`shiftlab.antialias` does for such a model.

    Returns:
        ``(converted_model, report)``: one :class:`~shiftlab.fix.replacement.Replacement` for the patch embedding
        and one for the position embedding. The model carries its recipe, with ``architecture="vit"`` and
        ``patch_size``.

    Raises:
        InputError: what cannot be converted (see the module's docstring), naming the module.
    """
    if not is_vision_transformer(model):
        raise InputError(f"convert_vit needs a timm VisionTransformer, got {type(model).__name__}")
    _refuse_vit(model, method)
    if not inplace:
        model = copy.deepcopy(model)
    embed = model.patch_embed
    p = int(embed.proj.stride[0])
    like = {"device": embed.proj.weight.device, "dtype": embed.proj.weight.dtype}
    report = []
    pos_embed = model.pos_embed
    position = None
    if pos_embed is not None:
        position = ConvPositionEncoding(model.embed_dim, POSITION_KERNEL, **like).train(model.training)
        folded = _fold_prefix_positions(model, pos_embed)
        before = f"pos_embed {tuple(pos_embed.shape)} (absolute, tied to the grid)"
        del model.pos_embed
        model.register_parameter("pos_embed", None)
        kept = f"; the position of {', '.join(folded)} folded into it (a constant)" if folded else ""
        report.append(Replacement("pos_embed", before, f"{describe_module(position)} at patch_embed.position, "
                                                       f"zero-initialised{kept}"))
    new = PolyphasePatchEmbed(embed, p, position).train(embed.training)
    model.patch_embed = new
    report.insert(0, Replacement("patch_embed", f"{type(embed).__name__} (stride {p}, offset (0, 0))",
                                 f"PolyphasePatchEmbed(patch_size={p}): the offset grid of largest norm rolled to the "
                                 f"origin, then the same {type(embed).__name__} (patch_embed.embed)"))
    record_conversion(model, {"method": method, "filter_size": 1, "circular": bool(circular), "keep_stem": False,
                              "exclude": [], "placement": "after", "architecture": "vit", "patch_size": p})
    return model, report


def _convert_swin(model: nn.Module, method: str, circular: bool, inplace: bool):
    if importlib.util.find_spec(_SWIN_MODULE) is None:
        raise InputError(f"{type(model).__name__}: converting a Swin transformer (window attention, patch merging) is "
                         "not supported yet")
    convert_swin = importlib.import_module(_SWIN_MODULE).convert_swin
    model, report = convert_swin(model, method, circular, inplace=inplace)
    if not is_converted(model):  # the recipe antialias's models carry, so that a saved one rebuilds
        patch = getattr(model.patch_embed, "patch_size", None)
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        record_conversion(model, {"method": method, "filter_size": 1, "circular": bool(circular), "keep_stem": False,
                                  "exclude": [], "placement": "after", "architecture": "swin",
                                  "patch_size": None if patch is None else int(patch)})
    return model, report


def convert_transformer(model: nn.Module, method: str, circular: bool, inplace: bool = False):
    """The conversion :func:`shiftlab.antialias` dispatches a transformer to: ``(model, report)`` for a timm ViT
    (:func:`convert_vit`) or Swin (``shiftlab.fix.swin.convert_swin``); None for any other model (after
    :func:`refuse_unconvertible_transformer`)."""
    if is_vision_transformer(model):
        return convert_vit(model, method, circular, inplace)
    if is_swin(model):
        return _convert_swin(model, method, circular, inplace)
    refuse_unconvertible_transformer(model, method)
    return None


def check_transformer_recipe(recorded: Mapping, rebuilt: Mapping | None) -> None:
    """Refuse (InputError) a rebuilt conversion whose transformer entries (``architecture``, ``patch_size``) differ
    from those a fixed checkpoint records."""
    rebuilt = rebuilt or {}
    for key in TRANSFORMER_KEYS:
        if recorded.get(key) != rebuilt.get(key):
            raise InputError(f"the fixed checkpoint records {key}={recorded.get(key)!r}, the rebuilt model has "
                             f"{rebuilt.get(key)!r}: the architecture does not match the file")
