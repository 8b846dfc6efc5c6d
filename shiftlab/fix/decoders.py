"""Convert the upsampling half of an encoder-decoder network: pair each upsampling with its encoder stage.

:func:`shiftlab.antialias` converts the subsampling of a network; in an encoder-decoder (a U-Net, a segmentation
network) the decoder's upsampling then breaks shift equivariance again: a ``ConvTranspose2d`` puts its values at
phase 0, an ``nn.Upsample`` interpolates from it. :func:`convert_decoders` (called by ``antialias`` after the
subsampling is converted) finds every upsampling module (a ``ConvTranspose2d`` with a stride above 1, an
``nn.Upsample`` with an integer scale), pairs it with its encoder layer and replaces it:

- Pairing, by resolution. One forward pass of the converted model on a small zero input records, in order, every
  layer that changes the map's size. Subsampling layers are pushed on a stack; an upsampling layer pops the top
  one, which must have turned the size it produces into the size it receives (the decoder's first upsampling,
  from the smallest map, pairs with the encoder's last subsampling, and so on). Layers sharing one phase in a
  residual block (:class:`~shiftlab.layers.SharedPhase`) count once.
- ``method="aps"`` / ``"lps"``: a ``ConvTranspose2d`` becomes :class:`~shiftlab.layers.UnpoolConvTranspose2d`
  (unpooling at the encoder layer's phase, circular or zero padding as ``circular`` says, and a stride-1 conv
  holding the original ``weight`` and ``bias`` parameters themselves); with ``filter_size=1`` and the encoder at
  phase 0 it computes the original function. An ``nn.Upsample`` becomes :class:`~shiftlab.layers.APSUnpool2d`
  (``LPSUnpool2d`` for LPS) with a blur of ``filter_size`` taps (3 when ``filter_size`` is 1: zeros between the
  values would otherwise replace an interpolation). The encoder layer and its decoder layer share a
  :class:`~shiftlab.layers.PhaseLink` scoped to the model's forward pass.
- ``method="blur"``: every upsampling is followed by a binomial blur at stride 1 (the BlurPool route: no pairing
  needed, no exact guarantee).
- ``"tips"`` and ``"ideal"``: upsampling is listed as not replaced.

Refusals. An upsampling that cannot be paired (no encoder layer of the matching resolution, an encoder layer that
is not adaptive, a non-integer or composed scale, a layer called more than once), and a model whose output is
larger than its last layer's map (an interpolation written as a function in a ``forward``; torchvision's FCN,
DeepLabV3 and LR-ASPP are the exception: :mod:`shiftlab.fix.segmentation` converts theirs), raise an
:class:`~shiftlab.errors.InputError` naming the layer, unless ``keep_unpaired=True``: such layers are then kept as
they are and listed as "not replaced".

The pairs are recorded in the model's recipe (``decoders``: ``[[decoder layer, encoder layer], ...]``); a rebuilt
fixed checkpoint pairs again and must find the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from shiftlab.errors import InputError
from shiftlab.fix.replacement import Replacement, describe_module, set_submodule
from shiftlab.fix._ops import RunAfter
from shiftlab.fix.segmentation import (
    apply_segmentation,
    is_segmentation_model,
    plan_segmentation,
    wrap_dilated_padding,
)
from shiftlab.layers import (
    APSPool2d,
    APSUnpool2d,
    BlurPool2d,
    LPSPool2d,
    LPSUnpool2d,
    PhaseLink,
    UnpoolConvTranspose2d,
)

__all__ = ["DecoderConversion", "convert_decoders", "upsampling_layers", "decoders_recipe", "check_pairs"]


@dataclass
class DecoderConversion:
    """What :func:`convert_decoders` did: ``report`` (``Replacement`` entries), ``pairs`` ([decoder, encoder])."""

    report: list = field(default_factory=list)
    pairs: list[list[str]] = field(default_factory=list)


@dataclass
class _Event:
    name: str
    module: nn.Module
    size_in: tuple[int, int]
    size_out: tuple[int, int]


def _is_upsampling(module: nn.Module) -> bool:
    if isinstance(module, UnpoolConvTranspose2d):
        return False
    if isinstance(module, nn.ConvTranspose2d):
        return tuple(module.stride) != (1, 1)
    return isinstance(module, nn.Upsample)


def upsampling_layers(model: nn.Module) -> list[str]:
    """Names of the upsampling modules of ``model`` (strided ``ConvTranspose2d``, ``nn.Upsample``)."""
    return [name for name, m in model.named_modules() if _is_upsampling(m)]


def _spatial(value) -> tuple[int, int] | None:
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        return int(value.shape[-2]), int(value.shape[-1])
    if isinstance(value, dict):
        sizes = [s for s in map(_spatial, value.values()) if s is not None]
        return max(sizes) if sizes else None
    return None


def _probe(model: nn.Module, sizes, like: dict, channels: int, sizes_in: dict | None = None
           ) -> tuple[list[_Event], tuple | None, tuple] | None:
    """Run ``model`` once (eval, no gradients) and record every leaf or upsampling layer that changes the size (and
    in ``sizes_in``, when given, every module's first input size)."""
    events: list[_Event] = []
    sizes_in = {} if sizes_in is None else sizes_in
    last: list[tuple[int, int] | None] = [None]
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda mod, args, name=name: sizes_in.setdefault(name, _spatial(args[0]) if args else None) and None))
        leaf = next(iter(module.children()), None) is None or isinstance(module, LPSPool2d) or _is_upsampling(module)
        if module is model or not leaf:
            continue

        def hook(mod, args, out, name=name):
            size_in, size_out = _spatial(args[0]) if args else None, _spatial(out)
            if size_out is not None:
                last[0] = size_out
            if size_in is not None and size_out is not None and size_in != size_out:
                events.append(_Event(name, mod, size_in, size_out))
        handles.append(module.register_forward_hook(hook))
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for size in sizes:
            events.clear()
            sizes_in.clear()
            try:
                with torch.no_grad():
                    out = model(torch.zeros(1, channels, *size, **like))
            except Exception:  # a model that cannot run at this size: try the next one
                continue
            return events, last[0], _spatial(out)
        return None
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag


def _factor(a: tuple[int, int], b: tuple[int, int]) -> int | None:
    """The integer factor by which ``b`` is larger than ``a`` on both axes, else None."""
    if b[0] % a[0] or b[1] % a[1] or b[0] // a[0] != b[1] // a[1]:
        return None
    return b[0] // a[0]


def _same_phase(a: nn.Module, b: nn.Module) -> bool:
    shared = getattr(a, "shared", None)
    return shared is not None and shared is getattr(b, "shared", None)


def _pair(events: list[_Event], ups: set[str]) -> tuple[dict[str, _Event], dict[str, str], list[_Event]]:
    """Decoder layer -> its encoder event, decoder layer -> why it could not be paired, and the encoder events left
    unpaired (outermost first)."""
    stack: list[_Event] = []
    pairs: dict[str, _Event] = {}
    problems: dict[str, str] = {}
    seen: set[str] = set()
    for e in events:
        if e.name in ups:
            if e.name in seen:
                problems[e.name] = "it runs more than once in a forward pass"
                continue
            seen.add(e.name)
            top = stack.pop() if stack else None
            if top is None or top.size_out != e.size_in or top.size_in != e.size_out:
                found = f"the innermost unpaired encoder layer is {top.name} ({top.size_in} -> {top.size_out})" \
                    if top is not None else "no encoder layer is left to pair it with"
                problems[e.name] = f"it upsamples {e.size_in} -> {e.size_out} and {found}"
                continue
            pairs[e.name] = top
        elif _factor(e.size_out, e.size_in) and not (stack and _same_phase(stack[-1].module, e.module)
                                                    and stack[-1].size_in == e.size_in):
            stack.append(e)
    return pairs, problems, stack


def _blur_after(model: nn.Module, name: str, module: nn.Module, filter_size: int, circular: bool):

    blur = BlurPool2d(filter_size=filter_size if filter_size > 1 else 3, stride=1,
                      padding_mode="circular" if circular else "reflect")
    RunAfter(blur).attach(module, "blur_upsampled")
    return Replacement(name, describe_module(module),
                       f"{describe_module(module)}; {describe_module(blur)} after it (blur after upsampling)")


def _unpool(model: nn.Module, name: str, module: nn.Module, encoder: _Event, method: str, filter_size: int,
            circular: bool):

    if not isinstance(encoder.module, (APSPool2d, LPSPool2d)):
        raise InputError(f"the decoder layer {name} pairs with {encoder.name}, which is not an adaptive subsampling "
                         f"layer ({type(encoder.module).__name__}); exclude nothing from the encoder, or pass "
                         "keep_unpaired=True to keep the decoder as it is (Python only: shiftlab fix has no such flag)")
    stride = encoder.size_in[0] // encoder.size_out[0]
    link = PhaseLink(stride=stride, name=encoder.name)
    link.attach(encoder.module)
    link.scope(model)
    if isinstance(module, nn.ConvTranspose2d):
        new = UnpoolConvTranspose2d.from_conv_transpose(module, link, filter_size,
                                                        "circular" if circular else "zeros", name)
    else:
        kind = LPSUnpool2d if method == "lps" else APSUnpool2d
        new = kind(link, filter_size if filter_size > 1 else 3, "circular" if circular else "zeros", name)
    set_submodule(model, name, new)
    return Replacement(name, describe_module(module), f"{describe_module(new)}, at the phase of {encoder.name}")


def _functional(name: str, probe_out, last) -> str:
    return (f"the model's output is {probe_out[0]}x{probe_out[1]} but its last layer's map is {last[0]}x{last[1]}: "
            f"an interpolation written as a function in {name}.forward (F.interpolate) upsamples it, which "
            "antialias cannot pair with an encoder layer")


def convert_decoders(model: nn.Module, method: str, filter_size: int, circular: bool, *, keep_unpaired: bool = False,
                     channels: int | None = None, like: dict | None = None, sizes=((64, 64),)) -> DecoderConversion:
    """Replace the upsampling of the (already subsampling-converted) ``model`` in place; see the module docstring.

    Raises:
        InputError: an upsampling that cannot be paired (naming it), unless ``keep_unpaired``.
    """

    result = DecoderConversion()
    ups = set(upsampling_layers(model))
    segmentation_model = is_segmentation_model(model)
    if circular and segmentation_model:  # before the probe: DeepLabV3's ASPP pads more than a small map holds
        result.report.extend(wrap_dilated_padding(model))
    sizes_in: dict[str, tuple[int, int]] = {}
    probed = _probe(model, sizes, like or {}, channels or 3, sizes_in)
    if probed is None:
        if ups or segmentation_model:
            layers = ", ".join(sorted(ups)) if ups else "the final F.interpolate"
            raise InputError(f"antialias could not run the model to pair its decoder layers ({layers})")
        return result
    events, last, out = probed
    unpaired: dict[str, str] = {}
    if out is not None and last is not None and _factor(last, out) not in (None, 1):
        unpaired["(model)"] = _functional(type(model).__name__, out, last)
    if not ups and not unpaired:
        return result
    pairs, problems, stack = _pair(events, ups) if method in ("aps", "lps") else ({}, {}, [])
    unpaired.update(problems)
    segmentation = plan_segmentation(model, stack, sizes_in) if "(model)" in unpaired and method in ("aps", "lps") \
        else None
    if segmentation is not None:  # torchvision's FCN, DeepLabV3, LR-ASPP: their functional interpolations
        del unpaired["(model)"]
        unpaired.update(segmentation.problems)
    if method in ("aps", "lps"):
        unpaired.update({n: "it did not run in the probe forward pass" for n in ups if n not in pairs and n not in
                         problems})
    if unpaired and not keep_unpaired and method in ("aps", "lps"):
        name, why = next(iter(unpaired.items()))
        raise InputError(f"antialias cannot pair the decoder layer {name} with an encoder layer: {why}; pass "
                         "keep_unpaired=True (Python only: shiftlab fix has no such flag) to keep it unconverted "
                         "(the model is then not equivariant there)")
    modules = dict(model.named_modules())
    for name in sorted(ups, key=list(modules).index):
        module = modules[name]
        if method == "blur":
            result.report.append(_blur_after(model, name, module, filter_size, circular))
        elif name in pairs:
            result.report.append(_unpool(model, name, module, pairs[name], method, filter_size, circular))
            result.pairs.append([name, pairs[name].name])
        else:
            why = unpaired.get(name, f"method {method!r} does not convert decoders")
            result.report.append(Replacement(name, describe_module(module), f"not replaced: {why}"))
    if segmentation is not None and not segmentation.problems:
        result.report.extend(apply_segmentation(model, segmentation, circular))
        result.pairs.extend(segmentation.pairs)
    elif segmentation is not None:
        result.report.extend(Replacement(n, "F.interpolate in the forward", f"not replaced: {why}")
                             for n, why in segmentation.problems.items())
    if "(model)" in unpaired:
        result.report.append(Replacement("(model)", "F.interpolate in the forward", f"not replaced: "
                                                                                     f"{unpaired['(model)']}"))
    return result


def decoders_recipe(conversion: DecoderConversion, keep_unpaired: bool) -> dict:
    """The recipe entries of a decoder conversion: none for a model without paired decoders (the recipe of a
    classifier is unchanged), else ``decoders`` (the pairs) and ``keep_unpaired``."""
    if not conversion.pairs and not keep_unpaired:
        return {}
    return {"decoders": [list(p) for p in conversion.pairs], "keep_unpaired": bool(keep_unpaired)}


def check_pairs(recorded, rebuilt) -> None:
    """Refuse (InputError) a rebuilt conversion whose decoder pairs differ from the recorded ones."""
    if recorded is not None and [list(p) for p in recorded] != [list(p) for p in (rebuilt or [])]:
        raise InputError(f"the fixed checkpoint pairs its decoder layers as {recorded}, but the rebuilt model pairs "
                         f"them as {rebuilt}: the architecture changed; convert the model again")
