"""Convert a trained CNN to an anti-aliased (BlurPool, ideal low-pass) or adaptive-polyphase (APS) one, keeping
its weights.

``antialias(model, method="blur")`` applies Zhang's rules (2019) to every strided layer:

- ``Conv2d(stride s)`` -> the same conv at stride 1, then ``BlurPool2d(stride s)`` after the nonlinearity
  that follows it (conv -> norm -> activation is found by tracing the model with torch.fx; see *Placement*);
- a 1x1 strided conv without padding (a residual shortcut) -> ``BlurPool2d`` first, then the conv at
  stride 1 on the smaller map (the two commute; antialiased-cnns does the same, timm leaves shortcuts alone);
- ``MaxPool2d(k, s)`` -> ``MaxPool2d(k, 1)`` + ``BlurPool2d(s)``; ``AvgPool2d(k, s)`` -> ``AvgPool2d(k, 1)`` +
  ``BlurPool2d(s)`` (for ``AvgPool2d(2, 2)`` the two blurs compose to the binomial filter one size larger);
- timm's ``Conv2dSame`` (TensorFlow 'SAME' padding computed at run time) -> a conv that pads as the strided
  layer did and runs at stride 1.

``placement="before"`` (blur method only) is the cheaper placement of MosaicML Composer's ``blur_first``: every
strided conv keeps its stride and its input is blurred first by a ``BlurPool2d`` at stride 1 (``Conv2d(stride
s)`` -> ``BlurPool2d(stride 1)``, then the same conv at stride s). Its cost is the blur of each strided conv's
input, instead of running the conv at every position. 1x1 shortcut convs and pools are converted as above
(blurring the shortcut first is already this placement). It anti-aliases the conv's input rather than its
nonlinear output, so it removes less aliasing than Zhang's placement.

Each stride-1 layer pads exactly as its strided original, so its sample ``s * i`` is the original's sample
``i``: with ``filter_size=1`` the converted model computes the original function (up to float rounding) and
has the original's gradients, in eval mode. In train mode a batch norm after a stride-1 conv takes its batch
statistics over every position rather than the kept ones only, so fine-tuning starts from nearby statistics.

``method="aps"`` moves every stride into an :class:`~shiftlab.layers.APSPool2d` at the same places, and
makes all subsampling inside a residual block keep the one phase chosen from the block's input
(:class:`~shiftlab.layers.SharedPhase`), so the main branch and the shortcut stay aligned. A residual block
is a module with a child named ``downsample``, ``shortcut``, ``skip``, ``proj``, ``projection`` or
``conv_shortcut`` that subsamples (torchvision ResNet/ResNeXt/RegNet, timm ResNet family including
avg-pool shortcuts, timm RegNet). When the model can be traced, any two strided layers that run in
parallel outside such a block (an Inception module, say) are refused with an :class:`InputError`.

``method="ideal"`` places an :class:`~shiftlab.layers.IdealDownsample2d` (an ideal FFT low-pass at ``1 / s`` of
Nyquist, then subsampling by ``s``; Michaeli et al. 2023) exactly where ``"blur"`` places its ``BlurPool2d``:
``Conv2d(stride s)`` -> the conv at stride 1, then the ideal subsampling after its activation; a 1x1 shortcut ->
the ideal subsampling first (it commutes with a 1x1 conv, bias included); ``MaxPool2d(k, s)`` / ``AvgPool2d(k, s)``
-> the pool at stride 1, then the ideal subsampling. The stem is converted too by default (``keep_stem=False``),
so no subsampling of the network aliases. ``filter_size`` is not used (the filter is the ideal low-pass). The
ideal subsampling treats each map as one period: its height and width must be multiples of the stride (a
:class:`~shiftlab.errors.ShapeError` otherwise), so inputs must be multiples of the total stride (with the usual
'same'-padded layers). What it does NOT do: the network's activations (ReLU, GELU, ...) and norms stay as they
are, pointwise on the original grid, and create frequencies that the next subsampling removes but that were
already folded where the activation sampled them: the converted network is **not alias-free** and has no exact
shift guarantee, integer or fractional (:data:`~shiftlab.fix.recipe.METHOD_GUARANTEES`). For exact invariance to
fractional shifts, build an alias-free network (:func:`shiftlab.models.alias_free_resnet`,
:func:`shiftlab.models.alias_free_convnext`); for exact invariance to integer circular shifts, ``"aps"``.

``circular=True`` turns every padding into circular padding of the same amounts (``padding_mode`` of
convolutions, pools' padding, explicit padding layers; for the dense versions of strided pools and 'SAME'
convolutions, the amount that keeps the size). With APS and global average pooling the model is then
exactly invariant to circular shifts of inputs whose size is a multiple of the total stride.

Parameters. Nothing is added, removed or reshaped: strided convs keep their weights under the same name
(the stride is changed in place), the subsampling layers hold only non-persistent buffers, and pools have no
state. The original ``state_dict`` loads into the converted model with ``strict=True``.

Placement. The subsampling after a strided conv goes after the activation that follows it: on the
activation module if it is used once; on the norm layer (the conv if there is none) with a copy of the
activation applied first if the activation is a shared ReLU or ReLU6 (torchvision's blocks reuse one
``relu``; applying it again to the blurred, non-negative map changes nothing; with ``"ideal"``, whose low-pass
rings below zero, the subsampling goes before such a shared activation instead); otherwise right after the
norm layer. The report says which. Models that torch.fx cannot trace get the subsampling right after each
strided layer. Layers are attached through forward hooks: ``torch.export`` (strict or not), ``torch.compile``,
``torch.jit.trace`` and both ONNX exporters capture them (``docs/export.md``); ``torch.jit.script`` does not.

Saving. The converted model carries its recipe (``model.shiftlab_fix``: method, filter size, circular, stem,
excluded layers, placement; :mod:`shiftlab.fix.recipe`); :func:`shiftlab.save_fixed` stores it with the weights,
and :func:`shiftlab.load_model` re-applies it (``shiftlab.fix.checkpoint``). A converted model is not converted
again.

Not supported (refused with an :class:`InputError`): non-square strides, ``LPPool2d``,
``FractionalMaxPool2d``, ``PixelUnshuffle``, timm's ``*Same`` pools and 'SAME' conv variants other than
``Conv2dSame``; compiled models (``torch.jit.script``, ``torch.jit.trace``, ``torch.jit.load``, ``torch.export``),
whose layers cannot be seen or replaced: pass the Python model. Paddings done inside a custom forward are not
made circular.

What cannot be replaced is said. Subsampling written as a function in a ``forward`` (``F.max_pool2d``, a strided
``F.conv2d``, ``x[..., ::2, ::2]``, ``F.interpolate`` down) or done by a leaf module of unknown type is found by
running the model once on a small zero input with :func:`shiftlab.inspect` (64 pixels, else the model's
``pretrained_cfg`` input size, 32 or 224 pixels, the first it accepts; a model that runs at none of them has
its torch.fx graph read instead, where it traces); each one is listed in the
report as a :class:`Replacement` whose ``after`` starts with ``"not replaced"`` (:attr:`Replacement.unreplaced`).
A model with such subsampling is not made shift invariant by the conversion.
"""

from __future__ import annotations

import copy

from torch import nn

from shiftlab.errors import InputError
from shiftlab.fix._graph import Flow, Link, trace
from shiftlab.fix._ops import DensePool2d, RunAfter, RunBefore, SamePaddedConv2d
from shiftlab.fix.decoders import convert_decoders, decoders_recipe
from shiftlab.fix.replacement import Replacement, describe_module, replacement_counts, set_submodule
from shiftlab.fix.transformers import convert_transformer
# the methods and placements are defined by what a fix is, and stay importable from here
from shiftlab.fix.recipe import METHODS, PLACEMENTS, POLYPHASE_METHODS, conversion_of, is_converted, record_conversion
from shiftlab.layers import APSPool2d, BlurPool2d, IdealDownsample2d, LearnedPhase, LPSPool2d, SharedPhase, TIPSPool2d
from shiftlab.layers.blur_pool import check_filter_size

__all__ = ["antialias", "stem_conv", "Replacement", "replacement_counts", "opaque_subsampling", "METHODS",
           "PLACEMENTS", "SHORTCUT_NAMES"]

#: child names that mark a module as a residual block whose branches must keep one APS phase
SHORTCUT_NAMES = ("downsample", "shortcut", "skip", "proj", "projection", "conv_shortcut")
_UNSUPPORTED = (nn.LPPool2d, nn.FractionalMaxPool2d, nn.PixelUnshuffle)
_PADDING_LAYERS = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)


_FUNCTION_NOT_REPLACED = "not replaced: a function called in the forward, not a layer antialias can convert"
#: input sizes tried to find the subsampling a model does outside convertible layers: a small one first (one
#: cheap pass), then the model's own (timm's ``pretrained_cfg``), then others
_PROBE_SIZES = (64, 32, 224)


def _probe_sizes(model: nn.Module) -> list[tuple[int, int]]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    sizes = [(_PROBE_SIZES[0],) * 2]
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if isinstance(size, (tuple, list)) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size):
        sizes.append((int(size[1]), int(size[2])))
    return list(dict.fromkeys(sizes + [(s, s) for s in _PROBE_SIZES]))


def opaque_subsampling(model: nn.Module) -> list[Replacement] | None:
    """The subsampling of ``model`` that :func:`antialias` cannot replace, as "not replaced" report entries.

    Found by :func:`shiftlab.inspect` on the first probe size the model runs at (a function that subsamples in
    a ``forward``, a leaf module of unknown type whose map shrinks); None if the model runs at none of them.
    """
    from shiftlab.measure.inspect import OPAQUE_KINDS, inspect

    for size in _probe_sizes(model):
        try:
            result = inspect(model, size)
        except Exception:  # any model that cannot run at this size: try the next one
            continue
        found = []
        for f in result.of_kind(*OPAQUE_KINDS):
            if f.kind == "functional-subsampling":
                what = f.detail.split("; a function")[0]
                why = _FUNCTION_NOT_REPLACED
            else:
                what = f"{f.module_type}: {f.detail}"
                why = f"not replaced: {f.module_type} subsamples in its own forward, which antialias cannot convert"
            found.append(Replacement(f.name, what, why))
        return found
    return None


def _stride(module: nn.Module) -> int:
    stride = module.stride if module.stride is not None else module.kernel_size
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    return int(sh) if sh == sw else -1


def _is_same_conv(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv2dSame"


def _is_strided(module: nn.Module) -> bool:
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        return _stride(module) != 1
    return False


def _refuse_unsupported(modules: dict[str, nn.Module], method: str, circular: bool) -> None:
    for name, m in modules.items():
        kind = type(m).__name__
        if isinstance(m, _UNSUPPORTED):
            raise InputError(f"antialias does not support {kind} ({name})")
        if kind.endswith("Same") and kind != "Conv2dSame" and (_is_strided(m) or circular):
            raise InputError(f"antialias does not support {kind} ({name}): only timm's Conv2dSame among 'SAME' layers")
        if _is_strided(m) and _stride(m) < 0:
            raise InputError(f"antialias needs square strides, {name} has stride {m.stride}")
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and type(m).forward not in (nn.MaxPool2d.forward,
                                                                                    nn.AvgPool2d.forward):
            if _is_strided(m) or circular:
                raise InputError(f"antialias does not support the pool {kind} ({name}), which has its own forward")


def _find_blocks(model: nn.Module, strided: dict[str, nn.Module], flow: Flow | None) -> dict[str, list[str]]:
    """Residual blocks (name -> strided layers inside) whose layers must share one APS phase."""
    blocks: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        shortcuts = [f"{prefix}{child}" for child, _ in module.named_children() if child.lower() in SHORTCUT_NAMES]
        inside = [s for s in strided if s.startswith(prefix) and s != name]
        in_shortcut = [s for s in inside if any(s == c or s.startswith(f"{c}.") for c in shortcuts)]
        if not in_shortcut or any(s.startswith(f"{b}.") for b in blocks for s in inside):
            continue
        if len({_stride(strided[s]) for s in inside}) != 1:
            raise InputError(f"the residual block {name} subsamples by different strides; APS cannot share a phase")
        blocks[name] = inside
    if flow is None:
        return blocks
    upstream = flow.strided_ancestors(set(strided))
    block_of = {s: b for b, members in blocks.items() for s in members}
    traced = [s for s in strided if s in upstream]
    for i, a in enumerate(traced):
        for b in traced[i + 1:]:
            parallel = a not in upstream[b] and b not in upstream[a]
            if parallel and (block_of.get(a) is None or block_of.get(a) != block_of.get(b)):
                raise InputError(f"{a} and {b} subsample in parallel outside a recognised residual block (a child "
                                 f"named one of {', '.join(SHORTCUT_NAMES)}); APS cannot keep them aligned")
            if not parallel and block_of.get(a) is not None and block_of.get(a) == block_of.get(b):
                raise InputError(f"the residual block {block_of[a]} subsamples twice on one path ({a}, {b}); "
                                 "APS cannot share one phase there")
    return blocks


class _Converter:
    def __init__(self, model: nn.Module, method: str, filter_size: int, circular: bool,
                 placement: str = "after", channels: dict[str, int] | None = None) -> None:
        self.model = model
        self.channels = channels or {}
        self.method = method
        self.placement = placement
        self.filter_size = filter_size
        self.circular = circular
        self.mode = "circular" if circular else "reflect"
        self.report: list[Replacement] = []
        self.shared: dict[str, SharedPhase | LearnedPhase] = {}

    def subsampler(self, name: str, stride: int, channels: int | None = None) -> nn.Module:
        """The subsampling layer that replaces the stride of ``name``; ``channels``: those of the map it takes
        (the learned methods size their scoring layers by it)."""
        if self.method == "blur":
            return BlurPool2d(filter_size=self.filter_size, stride=stride, padding_mode=self.mode)
        if self.method == "ideal":
            return IdealDownsample2d(stride)
        if self.method == "aps":
            return APSPool2d(stride=stride, filter_size=self.filter_size, padding_mode=self.mode,
                             shared=self.shared.get(name))
        like = _parameter_like(self.model.get_submodule(name))
        if self.method == "lps":
            shared = self.shared.get(name)
            layer = LPSPool2d(None if shared is not None else self._channels(name, channels), stride=stride,
                              filter_size=self.filter_size, padding_mode=self.mode, shared=shared)
            return layer.to(**like).train(self.model.training)  # new layers take the model's mode
        tips = TIPSPool2d(self._channels(name, channels), stride=stride, padding_mode=self.mode).to(**like)
        if self.filter_size > 1:
            tips = nn.Sequential(BlurPool2d(filter_size=self.filter_size, stride=1, padding_mode=self.mode), tips)
        return tips.train(self.model.training)

    def _channels(self, name: str, channels: int | None) -> int:
        if channels is None:
            channels = self.channels.get(name)
        if channels is None:
            raise InputError(f"antialias({self.method!r}) needs the channels of the map {name} subsamples, and the "
                             f"model did not run on a probe input to find them; convert with --method aps (Python: "
                             f"method='aps') instead")
        return channels

    def blur_first(self, name: str, conv: nn.Conv2d) -> None:
        """``placement="before"``: a stride-1 blur of the conv's input; the conv keeps its stride."""
        before = describe_module(conv)
        if _is_same_conv(conv):  # the same 'SAME' conv, as a module whose padding the circular pass leaves alone
            new = SamePaddedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                                   padding=0, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                                   pad_stride=conv.stride, pad_mode="circular" if self.circular else "zeros",
                                   device=conv.weight.device, dtype=conv.weight.dtype)
            new.weight, new.bias = conv.weight, conv.bias
            new.train(conv.training)
            set_submodule(self.model, name, new)
            conv = new
        blur = BlurPool2d(filter_size=self.filter_size, stride=1, padding_mode=self.mode)
        after = f"{describe_module(blur)} first, then {describe_module(conv)} (placement='before')"
        RunBefore(blur).attach(conv)
        self.report.append(Replacement(name, before, after))

    def conv(self, name: str, conv: nn.Conv2d, link: Link) -> None:
        stride = _stride(conv)
        before = describe_module(conv)
        pointwise = conv.kernel_size == (1, 1) and conv.padding in ((0, 0), "valid") and not _is_same_conv(conv)
        if self.placement == "before" and not pointwise:
            self.blur_first(name, conv)
            return
        if _is_same_conv(conv):
            keep_phase = self.method == "blur" and not self.circular
            new = SamePaddedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=1, padding=0,
                                   dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                                   pad_stride=conv.stride if keep_phase else (1, 1),
                                   pad_mode="circular" if self.circular else "zeros",
                                   device=conv.weight.device, dtype=conv.weight.dtype)
            new.weight, new.bias = conv.weight, conv.bias
            new.train(conv.training)
            set_submodule(self.model, name, new)
            conv = new
        else:
            conv.stride = (1, 1)
        sub = self.subsampler(name, stride, conv.in_channels if pointwise else conv.out_channels)
        if pointwise:  # a 1x1 conv commutes with the blur: subsample first, convolve the smaller map
            after = f"{describe_module(sub)} first, then {describe_module(conv)}"
            RunBefore(sub).attach(conv)
        else:
            target = self.model.get_submodule(link.module)
            if self.method == "ideal" and link.activation is not None:
                # an ideal low-pass of a ReLU's output rings below zero, so the shared activation applied again
                # would clip it: subsample before that activation instead (the original's place for it)
                link = Link(link.module, None, f"after {link.module}, before the shared activation (the ideal "
                                               "low-pass is not a blur: applying the activation twice would change "
                                               "the map)")
            ops = [link.activation, sub] if link.activation is not None else [sub]
            RunAfter(*ops).attach(target)
            after = f"{describe_module(conv)}; {describe_module(sub)} {link.position}"
        self.report.append(Replacement(name, before, after))

    def pool(self, name: str, pool: nn.Module) -> None:
        stride = _stride(pool)
        sub = self.subsampler(name, stride)
        new = nn.Sequential(DensePool2d(pool, circular=self.circular), sub)
        new.train(pool.training)
        set_submodule(self.model, name, new)
        self.report.append(Replacement(name, describe_module(pool),
                                       f"{describe_module(new[0])}; {describe_module(sub)}"))

    def share(self, block: str, members: list[str]) -> None:
        stride = _stride(self.model.get_submodule(members[0]))
        module = self.model.get_submodule(block)
        if self.method == "lps":
            shared = LearnedPhase(self._channels(block, None), stride=stride).to(**_parameter_like(module))
            shared.train(module.training)
            what = "one LPS phase per sample (a mixture in training), scored from the block's input"
        else:
            shared = SharedPhase(stride=stride)
            what = "one APS phase per sample, chosen from the block's input"
        shared.attach(module)
        for member in members:
            self.shared[member] = shared
        self.report.append(Replacement(block, type(module).__name__, f"{what}, shared by {', '.join(members)}"))

    def circular_padding(self) -> None:
        for name, m in list(self.model.named_modules()):
            before = describe_module(m)
            if isinstance(m, SamePaddedConv2d) or isinstance(m, DensePool2d):
                continue
            if _is_same_conv(m):
                new = SamePaddedConv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=0,
                                       dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                                       pad_stride=m.stride, pad_mode="circular", device=m.weight.device,
                                       dtype=m.weight.dtype)
                new.weight, new.bias = m.weight, m.bias
                set_submodule(self.model, name, new)
            elif isinstance(m, nn.Conv2d):
                if m.padding in ((0, 0), "valid") or m.padding_mode == "circular":
                    continue
                if type(m).forward is nn.Conv2d.forward:
                    m.padding_mode = "circular"  # nn.Conv2d then pads itself by the same amounts, circularly
                else:  # a conv subclass with its own forward: pad in a pre-hook and let it pad nothing
                    ph, pw = m.padding
                    RunBefore(nn.CircularPad2d((pw, pw, ph, ph))).attach(m, "circular_padding")
                    m.padding = (0, 0)
            elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                ph, pw = (m.padding, m.padding) if isinstance(m.padding, int) else m.padding
                if not (ph or pw):
                    continue
                RunBefore(nn.CircularPad2d((pw, pw, ph, ph))).attach(m, "circular_padding")
                m.padding = 0
            elif isinstance(m, _PADDING_LAYERS):
                set_submodule(self.model, name, nn.CircularPad2d(tuple(m.padding)))
            else:
                continue
            self.report.append(Replacement(name, before, f"{describe_module(self.model.get_submodule(name))} "
                                                         "with circular padding"))


def _parameter_like(module: nn.Module) -> dict:
    """``device`` and ``dtype`` of a module's first floating parameter (new scoring layers are made alike)."""
    for p in module.parameters():
        if p.is_floating_point():
            return {"device": p.device, "dtype": p.dtype}
    return {}


def _input_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def map_channels(model: nn.Module, names) -> dict[str, int]:
    """The channels of the map entering each named module, from one forward pass on a small zero input.

    The learned methods size their scoring layers by it. The probe sizes are those of
    :func:`opaque_subsampling`; the model runs in eval mode without gradients (its batch-norm statistics are
    untouched) and its training flags are restored. Modules the pass does not reach are left out; an empty
    dict if the model runs at none of the sizes.
    """
    import torch

    names = set(names)
    channels_in = _input_channels(model)
    if not names or channels_in is None:
        return {}
    like = _parameter_like(model)
    found: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if name in names:
            def record(mod, args, name=name):
                if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
                    found.setdefault(name, int(args[0].shape[1]))
            handles.append(module.register_forward_pre_hook(record))
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for size in _probe_sizes(model):
            found.clear()
            try:
                with torch.no_grad():
                    model(torch.zeros(1, channels_in, *size, **like))
            except Exception:  # a model that cannot run at this size: try the next one
                continue
            return dict(found)
        return {}
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag


def stem_conv(model: nn.Module) -> str | None:
    """Name of the model's stem: its first registered ``Conv2d``, if that conv is strided; else None."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name if _is_strided(m) else None
    return None


def _check_arguments(model, method, filter_size, circular, placement, keep_stem) -> tuple[int, bool]:
    """:func:`antialias`'s arguments checked before anything changes: the filter size and whether the stem stays."""
    from shiftlab.measure.inspect import refuse_compiled

    refuse_compiled(model, "antialias")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    filter_size = check_filter_size(filter_size)
    if not isinstance(circular, bool):
        raise InputError(f"circular must be True or False, got {circular!r}")
    if not isinstance(placement, str) or placement not in PLACEMENTS:
        raise InputError(f"placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")
    if placement == "before" and method != "blur":
        raise InputError(f"placement='before' is for method='blur' (CLI: --placement before with --method blur), not "
                         f"{method!r}: {method} needs every stride moved "
                         "into its own layer")
    if is_converted(model):
        raise InputError(f"the model is already converted (antialias {conversion_of(model).get('method')!r}); convert "
                         f"the original model instead")
    return filter_size, (method == "blur") if keep_stem is None else keep_stem


def antialias(model: nn.Module, method: str = "blur", filter_size: int = 3, circular: bool = False,
              inplace: bool = False, *, keep_stem: bool | None = None, exclude: tuple[str, ...] = (),
              placement: str = "after", keep_unpaired: bool = False) -> tuple[nn.Module, list[Replacement]]:
    """Convert every strided layer of ``model`` to anti-aliased (``"blur"``, ``"ideal"``) or adaptive (``"aps"``)
    subsampling.

    Args:
        model: a CNN built from standard modules (``Conv2d``, ``MaxPool2d``, ``AvgPool2d``, timm's
            ``Conv2dSame``), e.g. torchvision ResNet/ResNeXt/RegNet/MobileNetV2, timm ResNet/EfficientNet.
        method: ``"blur"`` (BlurPool, Zhang 2019), ``"aps"`` (adaptive polyphase sampling), ``"lps"``, ``"tips"``
            (learned polyphase sampling) or ``"ideal"`` (ideal FFT low-pass subsampling, placed as ``"blur"``; the
            activations stay, so the result is not alias-free and has no exact shift guarantee).
        filter_size: binomial filter size 1..7 (with ``"aps"``: a blur before choosing; 1 = none; not used by
            ``"ideal"``).
        circular: make every padding circular (blur layers too); needed for exact circular-shift invariance.
        inplace: modify ``model`` itself instead of a deep copy.
        keep_stem: leave the stem (the first registered conv, if strided) as it is. Default: True for
            ``"blur"``, as Zhang (2019) and timm do (blurring the full-resolution stem output costs about a
            fifth of a ResNet-18's compute), False for the other methods (``"aps"``'s exact invariance needs every
            stride adaptive; ``"ideal"`` removes the aliasing of every subsampling). A kept stem is listed in the
            report.
        exclude: names of other strided layers to leave as they are.
        keep_unpaired: keep a decoder upsampling that cannot be paired with an encoder layer as it is (listed as
            "not replaced") instead of refusing the model (:mod:`shiftlab.fix.decoders`: encoder-decoder networks).
        placement: with ``"blur"``, where the blur of a strided conv goes: ``"after"`` (Zhang 2019, the default:
            the conv at stride 1, blur and subsampling after its activation) or ``"before"`` (MosaicML Composer's
            ``blur_first``: a stride-1 blur of the conv's input, the conv keeping its stride; about 1.05x the
            original's inference time instead of about 1.3x for a ResNet-18, ``benchmarks/bench_resnet_blur.py``).
            Pools and 1x1 shortcut convs are converted the same way under both.

    Returns:
        ``(converted_model, report)``, the report a list of :class:`Replacement`, one per changed module, then
        one per subsampling found that could not be replaced (:attr:`Replacement.unreplaced`, see
        :func:`opaque_subsampling`).

    Raises:
        InputError: unknown method or placement, bad filter size, ``placement="before"`` with ``"aps"``, a
            compiled model (TorchScript, ``torch.export``), or a model with layers the conversion cannot handle.

    >>> import torchvision
    >>> net, report = antialias(torchvision.models.resnet18(), "blur", filter_size=1)
    >>> report[0].name, report[0].after.startswith("Conv2d(3, 64")
    ('conv1', True)
    """
    filter_size, keep_stem = _check_arguments(model, method, filter_size, circular, placement, keep_stem)
    routed = convert_transformer(model, method, circular, inplace)  # timm ViT / Swin: shiftlab.fix.transformers
    if routed is not None:
        return routed
    modules = dict(model.named_modules())
    unknown = [name for name in exclude if name not in modules]
    if unknown:
        raise InputError(f"exclude names modules that do not exist: {', '.join(unknown)}")
    _refuse_unsupported(modules, method, circular)
    opaque = opaque_subsampling(model)  # before any change: what the conversion will leave as it is
    if not inplace:
        model = copy.deepcopy(model)
        modules = dict(model.named_modules())
    stem = stem_conv(model) if keep_stem else None
    if stem is not None:
        exclude = (*exclude, stem)
    strided = {name: m for name, m in modules.items() if _is_strided(m) and name not in exclude}
    flow = trace(model)
    if opaque is None:  # the model ran at no probe size: read the functions from its graph, if it traces
        opaque = [Replacement("(model)", label, _FUNCTION_NOT_REPLACED)
                  for label in (flow.functional_subsampling() if flow is not None else [])]
    links = {name: flow.link_after(name) if flow is not None else Link(name, None, f"after {name}")
             for name, m in strided.items() if isinstance(m, nn.Conv2d)}
    blocks = _find_blocks(model, strided, flow) if method in POLYPHASE_METHODS else {}
    channels = map_channels(model, [*strided, *blocks]) if method in ("lps", "tips") else {}
    converter = _Converter(model, method, filter_size, circular, placement, channels)
    for block, members in blocks.items():
        converter.share(block, members)
    for name, m in strided.items():
        if isinstance(m, nn.Conv2d):
            converter.conv(name, m, links[name])
        else:
            converter.pool(name, m)
    if circular:
        converter.circular_padding()
    decoders = convert_decoders(model, method, filter_size, circular, keep_unpaired=keep_unpaired,
                                channels=_input_channels(model), like=_parameter_like(model), sizes=_probe_sizes(model))
    converter.report.extend(decoders.report)
    if stem is not None:
        converter.report.insert(0, Replacement(stem, describe_module(modules[stem]),
                                               "kept strided: the stem (--stem convert, Python keep_stem=False, "
                                               "converts it too)"))
    converter.report.extend(opaque)
    record_conversion(model, {"method": method, "filter_size": int(filter_size), "circular": bool(circular),
                              "keep_stem": bool(keep_stem), "exclude": [str(e) for e in exclude if e != stem],
                              "placement": placement, **decoders_recipe(decoders, keep_unpaired)})
    return model, converter.report

