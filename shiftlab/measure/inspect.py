"""The aliasing map of a model: every layer that subsamples or breaks shift equivariance, in data-flow order.

A CNN is shift-equivariant only where every layer is. :func:`inspect` runs one dummy input through the model
with forward hooks and lists, in the order the layers execute, each layer that

- subsamples without a low-pass filter (strided convolution, max or average pooling with stride > 1),
  so that shifts which are not multiples of the cumulative stride alias;
- pads with zeros, a constant, reflection or replication (exact equivariance fails at the borders), or pads
  asymmetrically (TensorFlow-style dynamic "same" padding, as in timm's ``Conv2dSame``: one pixel after and
  none before, which moves the sampling grid);
- flattens a spatial map larger than 1x1 into a fully connected layer (the output depends on absolute
  position);

and notes the layers that are harmless or that fix the problem: global pooling (invariant), adaptive
pooling, and anti-aliased subsampling (shiftlab's ``BlurPool2d``/``APSPool2d``, timm's ``BlurPool2d``).

Subsampling written as a function inside a ``forward`` (``F.max_pool2d``, ``F.avg_pool2d``, a strided
``F.conv2d``, ``F.interpolate`` down, ``x[..., ::2, ::2]``) is found too: the pass runs under a
``TorchFunctionMode`` that sees every torch function called outside the layers recognised above, and each call
that makes a map smaller is reported as ``"functional-subsampling"``, with the module in whose ``forward`` it
ran and the source line. A leaf module of unknown type whose output map is smaller than its input is reported
as ``"other-subsampling"``. Neither can be replaced by :func:`shiftlab.antialias` (:data:`OPAQUE_KINDS`).

Compiled models (``torch.jit.script``, ``torch.jit.trace``, ``torch.jit.load``, a ``torch.export`` program or
its graph module) hide their layers; :func:`inspect` refuses them (:func:`compiled_kind`) rather than reporting
a stride of 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import fx, nn

from shiftlab._checks import check_int
from shiftlab.errors import ArgumentShapeError, InputError, ShapeError, ShiftlabError
from shiftlab.measure.inspect_functions import FunctionWatch as _FunctionWatch
from shiftlab.measure.inspect_functions import caller as _caller
from shiftlab.measure.inspect_functions import function_label as _function_label
from shiftlab.measure.inspect_functions import functional_stride as _functional_stride
from shiftlab.measure.inspect_functions import pair as _pair
from shiftlab.measure.inspect_functions import permuted as _permuted
from shiftlab.measure.inspect_notes import converted_layers, nearest_valid_sizes, size_warnings
from shiftlab.measure.tokens import TOKEN_KINDS, token_finding
from shiftlab.models.preprocessing import check_input_size

__all__ = ["Finding", "InspectResult", "inspect", "KINDS", "SUBSAMPLING_KINDS", "OPAQUE_KINDS", "compiled_kind",
           "refuse_compiled", "input_channels"]

# kind -> one-line meaning (also the legend of ``shiftlab inspect``)
KINDS = {
    "strided-conv": "convolution with stride > 1: subsamples without a low-pass filter (aliases)",
    "max-pool": "max pooling with stride > 1: subsamples without a low-pass filter (aliases)",
    "avg-pool": "average pooling with stride > 1: a box filter, a weak low-pass (aliases)",
    "other-subsampling": "a layer whose output map is smaller than its input, by an unknown operation",
    "functional-subsampling": "a function called inside a forward (F.max_pool2d, a strided F.conv2d, slicing "
                              "::2, ...) subsamples: not a layer, so shiftlab fix cannot replace it",
    "blur-pool": "anti-aliased subsampling (low-pass, then subsample): reduces aliasing, not exact",
    "aps": "adaptive polyphase subsampling (APS, or LPS's learned choice): exact for circular shifts when padding "
           "is circular",
    "tips": "learned mixture of polyphase components (TIPS): invariance learned, not guaranteed",
    "ideal": "ideal low-pass subsampling by FFT: no aliasing; exact for fractional circular shifts of band-limited "
             "maps",
    "same-padding-asymmetric": "'same' padding with more pixels after than before: moves the sampling grid",
    "zero-padding": "zero padding: exact equivariance fails near the borders",
    "constant-padding": "padding with a constant (e.g. -inf for max pooling): fails near the borders",
    "reflect-padding": "reflect padding: exact equivariance fails near the borders",
    "replicate-padding": "replicate padding: exact equivariance fails near the borders",
    "adaptive-pool": "adaptive pooling to a fixed size larger than 1x1: non-uniform resampling",
    "global-pool": "global pooling: invariant to circular shifts of its input (fine)",
    "flatten-fc": "fully connected layer on a flattened map larger than 1x1: depends on absolute position",
    **TOKEN_KINDS,  # a Swin's patch merging and window attention
}
# kinds that change the sampling grid (they define the cumulative stride)
SUBSAMPLING_KINDS = frozenset({"strided-conv", "max-pool", "avg-pool", "other-subsampling", "functional-subsampling",
                               "blur-pool", "aps", "tips", "ideal", "patch-merging"})
#: subsampling that is not a layer :func:`shiftlab.antialias` can convert
OPAQUE_KINDS = frozenset({"other-subsampling", "functional-subsampling"})
# kinds that do not break exact equivariance to circular shifts on their own
_HARMLESS_KINDS = frozenset({"aps", "global-pool", "ideal"})


@dataclass(frozen=True)
class Finding:
    """One layer that subsamples or breaks shift equivariance (a layer may have several findings).

    Attributes:
        name: the module's qualified name in the model (``"layer2.0.conv1"``).
        module_type: the module's class name.
        kind: one of :data:`KINDS`.
        detail: a short human description (kernel, stride, padding at this input size).
        stride: the layer's own stride ``(sy, sx)``.
        cumulative_stride: the total stride ``(sy, sx)`` of the map the layer outputs, relative to the model
            input; for layers that remove space (global pooling, flatten-fc) that of the map they receive.
        input_hw: spatial size of the layer's input.
        output_hw: spatial size of the layer's output, or ``None`` when the output is not a map.
        breaks_equivariance: whether this layer alone breaks exact equivariance (or invariance) to circular
            shifts; ``False`` for APS, global pooling and identity-sized adaptive pooling.
    """

    name: str
    module_type: str
    kind: str
    detail: str
    stride: tuple[int, int]
    cumulative_stride: tuple[int, int]
    input_hw: tuple[int, int]
    output_hw: tuple[int, int] | None
    breaks_equivariance: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("stride", "cumulative_stride", "input_hw", "output_hw"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


@dataclass(frozen=True)
class InspectResult:
    """The aliasing map: findings in data-flow order. Iterable, indexable and sized like a list.

    Attributes:
        findings: the :class:`Finding` list in the order the layers execute.
        input_size: the ``(H, W)`` of the dummy input.
        total_stride: the product of all subsampling strides ``(sy, sx)`` (``(1, 1)`` if none): circular
            shifts that are multiples of it commute with every subsampling layer, when ``input_size`` is a
            multiple of it (:attr:`stride_multiple`).
        warnings: what keeps the map from meaning what it seems to (an input size that is not a multiple of the
            total stride, naming the nearest sizes that are: :func:`~shiftlab.measure.inspect_notes.size_warnings`).
        conversion: for a model converted by ``shiftlab fix`` / ``finetune`` (:func:`shiftlab.antialias`), the
            fix, the file and the layers it put in with their kinds
            (:func:`~shiftlab.measure.inspect_notes.converted_layers`); None otherwise.
    """

    findings: list[Finding]
    input_size: tuple[int, int]
    total_stride: tuple[int, int]
    channels: int = 3
    model_type: str = ""
    warnings: tuple[str, ...] = ()
    conversion: dict | None = None

    @property
    def stride_multiple(self) -> bool:
        """Whether the input size is a multiple of the total stride (the stride-multiple guarantee holds)."""
        return not nearest_valid_sizes(self.input_size, self.total_stride)

    def __iter__(self):
        return iter(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    def __getitem__(self, index):
        return self.findings[index]

    def kinds(self) -> list[str]:
        """The distinct kinds found, in data-flow order of first appearance."""
        return list(dict.fromkeys(f.kind for f in self.findings))

    def of_kind(self, *kinds: str) -> list[Finding]:
        """The findings whose kind is one of ``kinds``."""
        return [f for f in self.findings if f.kind in kinds]

    @property
    def breaks_equivariance(self) -> bool:
        """Whether any layer breaks exact equivariance to circular shifts."""
        return any(f.breaks_equivariance for f in self.findings)

    def to_dict(self) -> dict:
        return {
            "model_type": self.model_type,
            "input_size": list(self.input_size),
            "channels": self.channels,
            "total_stride": list(self.total_stride),
            "breaks_equivariance": self.breaks_equivariance,
            "stride_multiple": self.stride_multiple,
            "nearest_valid_sizes": [list(hw) for hw in nearest_valid_sizes(self.input_size, self.total_stride)],
            "warnings": list(self.warnings),
            "conversion": self.conversion,
            "findings": [f.to_dict() for f in self.findings],
        }


def _hw(t) -> tuple[int, int] | None:
    if isinstance(t, torch.Tensor) and t.ndim == 4:
        return (int(t.shape[-2]), int(t.shape[-1]))
    return None


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(obj, dict):
        for item in obj.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) along one axis, as timm's dynamic padding computes it."""
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _timm_classes() -> dict[str, tuple[type, ...]]:
    """timm's dynamic-'same' and blur layers. A model holding them has imported timm already, so timm is never
    imported here just to find out that a model does not use it."""
    import importlib
    import sys

    if "timm.layers" not in sys.modules:
        return {"same": (), "blur": ()}
    try:  # the submodules by full name: ``timm.layers.conv2d_same`` is also a function's name
        conv2d_same = importlib.import_module("timm.layers.conv2d_same")
        pool2d_same = importlib.import_module("timm.layers.pool2d_same")
        blur_pool = importlib.import_module("timm.layers.blur_pool")
    except ImportError:  # pragma: no cover - a broken timm install
        return {"same": (), "blur": ()}
    same = [conv2d_same.Conv2dSame, pool2d_same.MaxPool2dSame, pool2d_same.AvgPool2dSame]
    if hasattr(conv2d_same, "Conv2dSameExport"):
        same.append(conv2d_same.Conv2dSameExport)
    return {"same": tuple(same), "blur": (blur_pool.BlurPool2d,)}


def _is_shiftlab_layer(module: nn.Module) -> bool:
    return type(module).__module__.startswith("shiftlab.layers")


def _padding_kind(mode: str, value: float = 0.0) -> str:
    if mode in ("zeros", "constant"):
        return "zero-padding" if value == 0 else "constant-padding"
    if mode in ("reflect", "replicate"):
        return f"{mode}-padding"
    return ""  # circular: fine


def _fmt2(p: tuple[int, int]) -> str:
    return f"{p[0]}x{p[1]}" if p[0] != p[1] else f"{p[0]}"


# layers whose own functions are covered by their type's checks (a Conv2d calls F.conv2d)
_TYPED_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ZeroPad2d,
                 nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Linear)
# functions that subsample by a stride argument (default: the kernel size, for pools)


def compiled_kind(model) -> str | None:
    """What hides the layers of ``model``, in words, or None for a plain Python module.

    A TorchScript module (``torch.jit.script``, ``torch.jit.trace``, ``torch.jit.load``), a ``torch.export``
    program or its graph module (aten operations instead of layers), as the model or as one of its submodules.
    """
    if type(model).__name__ == "ExportedProgram":
        return "a torch.export program"
    if not isinstance(model, nn.Module):
        return None
    for name, m in model.named_modules():
        where = f" (its submodule {name})" if name else ""
        if isinstance(m, torch.jit.ScriptModule):
            how = "torch.jit.trace" if "Traced" in type(m).__name__ else "TorchScript: torch.jit.script or torch.jit.load"
            return f"a compiled model ({how}){where}"
        graph = getattr(m, "graph", None)
        if isinstance(m, fx.GraphModule) and any(
                type(node.target).__name__ in ("OpOverload", "OpOverloadPacket") for node in graph.nodes):
            return f"an exported graph of aten operations (torch.export){where}"
    return None


def refuse_compiled(model, tool: str) -> None:
    """Raise :class:`InputError` if ``model`` is compiled (:func:`compiled_kind`): ``tool`` cannot see into it."""
    kind = compiled_kind(model)
    if kind is not None:
        raise InputError(f"{tool} cannot see into {kind}: its layers are compiled code, not Python modules; pass "
                         "the Python nn.Module it was made from (on the command line, a file.py:factory returning it)")


class _Tracer:
    """Collects findings from forward hooks, in execution order."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int]):
        self.names = {}
        for name, module in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(module), name or "(model)")
        # modules inside a shiftlab layer are reported once, as the shiftlab layer
        self.hidden: set[int] = set()
        for module in model.modules():
            if _is_shiftlab_layer(module):
                self.hidden.update(id(m) for m in module.modules() if m is not module)
        self.timm = _timm_classes()
        self.input_size = input_size
        self.level = {input_size: (1, 1)}  # map size -> cumulative stride
        self.last_map = None  # (C, h, w) of the most recent 4D output
        self.findings: list[Finding] = []
        self.active: list[nn.Module] = []  # the modules whose forward is under way, innermost last

    def enter(self, module: nn.Module, inputs) -> None:
        self.active.append(module)

    def sees_functions(self) -> bool:
        """Whether a function called now runs in a forward the layer checks do not cover (a container's or the
        model's own), so that its subsampling would otherwise go unseen."""
        if not self.active:
            return False
        m = self.active[-1]
        if id(m) in self.hidden or _is_shiftlab_layer(m) or not any(True for _ in m.children()):
            return False  # shiftlab's layers, and leaves (an unknown leaf is "other-subsampling")
        return not isinstance(m, _TYPED_LAYERS + self.timm["same"] + self.timm["blur"])

    def function_call(self, func, args, kwargs, out) -> None:
        """Record a torch function called in a forward that makes a (B, C, H, W) map smaller."""
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or not self.sees_functions():
            return
        x = _first_tensor(args)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != out.shape[0]:
            return
        in_hw, out_hw = _hw(x), _hw(out)
        if out_hw[0] >= in_hw[0] and out_hw[1] >= in_hw[1] or out_hw == (1, 1):
            return  # not smaller, or a global pooling (harmless)
        name = getattr(func, "__name__", "") or ""
        stride = _functional_stride(name if name.startswith("__") else name.lstrip("_"), args, kwargs, in_hw, out_hw,
                                    x, out)
        if stride is None:
            return
        where = _caller()
        if where is None:
            return  # shiftlab's own code (an APS phase, a blur): not the model's subsampling
        owner = self.active[-1]
        label = _function_label(name, args)
        cum = self.record_level(in_hw, out_hw, stride)
        self.findings.append(Finding(
            name=self.names.get(id(owner), "?"), module_type=type(owner).__name__, kind="functional-subsampling",
            detail=f"{label} in the forward ({where}): {in_hw[0]}x{in_hw[1]} -> {out_hw[0]}x{out_hw[1]}, "
                   f"stride {_fmt2(stride)}; a function, not a layer: cannot be replaced",
            stride=stride, cumulative_stride=cum, input_hw=in_hw, output_hw=out_hw))
        self.last_map = (int(out.shape[1]), *out_hw)

    # cumulative stride bookkeeping: each distinct map size is one level of the network
    def cumulative(self, hw: tuple[int, int]) -> tuple[int, int]:
        if hw in self.level:
            return self.level[hw]
        H, W = self.input_size
        return (max(1, round(H / max(hw[0], 1))), max(1, round(W / max(hw[1], 1))))

    def record_level(self, in_hw, out_hw, stride) -> tuple[int, int]:
        if out_hw not in self.level:
            c = self.cumulative(in_hw)
            self.level[out_hw] = (c[0] * stride[0], c[1] * stride[1])
        return self.level[out_hw]

    def add(self, module, kind, detail, stride, cumulative, in_hw, out_hw, breaks=None):
        self.findings.append(Finding(
            name=self.names.get(id(module), "?"),
            module_type=type(module).__name__,
            kind=kind,
            detail=detail,
            stride=stride,
            cumulative_stride=cumulative,
            input_hw=in_hw,
            output_hw=out_hw,
            breaks_equivariance=(kind not in _HARMLESS_KINDS) if breaks is None else breaks,
        ))

    def hook(self, module: nn.Module, inputs, output) -> None:
        if self.active and self.active[-1] is module:
            self.active.pop()
        x = _first_tensor(inputs)
        y = _first_tensor(output)
        in_hw, out_hw = _hw(x), _hw(y)
        if id(module) not in self.hidden:
            self.classify(module, x, y, in_hw, out_hw)
        if out_hw is not None:
            self.last_map = (int(y.shape[1]), *out_hw)

    def classify(self, m: nn.Module, x, y, in_hw, out_hw) -> None:
        token = token_finding(m, x, y, self.input_size)  # (B, h, w, C) token maps: a Swin's merging, windows
        if token is not None:
            return self.add(m, *token)
        if isinstance(m, nn.Linear):
            self.linear(m, x)
            return
        if in_hw is None:
            return
        same = isinstance(m, self.timm["same"])
        if _is_shiftlab_layer(m) or isinstance(m, self.timm["blur"]):
            self.antialiased(m, in_hw, out_hw)
        elif isinstance(m, nn.Conv2d):
            self.conv(m, in_hw, out_hw, same)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            self.pool(m, in_hw, out_hw, same)
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            self.adaptive(m, x, y, in_hw, out_hw)
        elif isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
            self.pad_module(m, in_hw, out_hw)
        elif not any(True for _ in m.children()):
            self.unknown_leaf(m, x, y, in_hw, out_hw)

    def subsampling_stride(self, m, in_hw, out_hw) -> tuple[int, int]:
        stride = getattr(m, "stride", None)
        if stride is not None and not isinstance(stride, torch.Tensor):
            return _pair(stride)
        if out_hw is None:
            return (1, 1)
        return (max(1, round(in_hw[0] / out_hw[0])), max(1, round(in_hw[1] / out_hw[1])))

    def conv(self, m: nn.Conv2d, in_hw, out_hw, same: bool) -> None:
        stride, kernel, dilation = _pair(m.stride), _pair(m.kernel_size), _pair(m.dilation)
        cum = self.record_level(in_hw, out_hw, stride) if out_hw else self.cumulative(in_hw)
        if stride != (1, 1):
            self.add(m, "strided-conv", f"{kernel[0]}x{kernel[1]} kernel, stride {_fmt2(stride)}", stride, cum, in_hw, out_hw)
        if same:
            self.same_padding(m, kernel, stride, dilation, in_hw, out_hw, cum, fill="zeros")
            return
        if isinstance(m.padding, str):  # torch's own padding="same" / "valid"
            if m.padding == "valid":
                return
            pads = [_same_pads_torch(k, d) for k, d in zip(kernel, dilation)]
        else:
            p = _pair(m.padding)
            pads = [(p[0], p[0]), (p[1], p[1])]
        self.padding(m, pads, m.padding_mode, 0.0, stride, cum, in_hw, out_hw)

    def pool(self, m, in_hw, out_hw, same: bool) -> None:
        is_max = isinstance(m, nn.MaxPool2d)
        kernel = _pair(m.kernel_size)
        stride = _pair(m.stride if m.stride is not None else m.kernel_size)
        dilation = _pair(getattr(m, "dilation", 1))
        cum = self.record_level(in_hw, out_hw, stride) if out_hw else self.cumulative(in_hw)
        if stride != (1, 1):
            self.add(m, "max-pool" if is_max else "avg-pool", f"{kernel[0]}x{kernel[1]} window, stride {_fmt2(stride)}",
                     stride, cum, in_hw, out_hw)
        fill = -float("inf") if is_max else 0.0
        if same:
            self.same_padding(m, kernel, stride, dilation, in_hw, out_hw, cum, fill="-inf" if is_max else "zeros")
            return
        p = _pair(m.padding)
        self.padding(m, [(p[0], p[0]), (p[1], p[1])], "constant", fill, stride, cum, in_hw, out_hw)

    def same_padding(self, m, kernel, stride, dilation, in_hw, out_hw, cum, fill: str) -> None:
        pads = [_same_pads(s, k, st, d) for s, k, st, d in zip(in_hw, kernel, stride, dilation)]
        text = f"dynamic 'same' padding {_pads_text(pads)} with {fill} at {in_hw[0]}x{in_hw[1]}"
        if any(before != after for before, after in pads):
            self.add(m, "same-padding-asymmetric", text, stride, cum, in_hw, out_hw)
        elif any(before > 0 for before, _ in pads):
            self.add(m, "zero-padding" if fill == "zeros" else "constant-padding", text, stride, cum, in_hw, out_hw)

    def padding(self, m, pads, mode, value, stride, cum, in_hw, out_hw) -> None:
        if not any(b > 0 or a > 0 for b, a in pads):
            return
        if any(b != a for b, a in pads):
            self.add(m, "same-padding-asymmetric", f"padding {_pads_text(pads)} ({mode})", stride, cum, in_hw, out_hw)
            return
        kind = _padding_kind(mode, value)
        if kind:
            fill = f" with {value:g}" if kind == "constant-padding" else ""
            self.add(m, kind, f"padding {_pads_text(pads)}{fill}", stride, cum, in_hw, out_hw)

    def pad_module(self, m, in_hw, out_hw) -> None:
        left, right, top, bottom = (tuple(m.padding) * 4)[:4] if isinstance(m.padding, int) else tuple(m.padding)
        mode = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate"}.get(type(m), "constant")
        value = float(getattr(m, "value", 0.0))
        cum = self.cumulative(in_hw)
        self.padding(m, [(top, bottom), (left, right)], mode, value, (1, 1), cum, in_hw, out_hw)

    def adaptive(self, m, x, y, in_hw, out_hw) -> None:
        cum = self.cumulative(in_hw)
        if out_hw is None or out_hw == (1, 1):
            self.add(m, "global-pool", f"{in_hw[0]}x{in_hw[1]} -> 1x1", (1, 1), cum, in_hw, out_hw)
            return
        identity = out_hw == in_hw
        self.level.setdefault(out_hw, cum)  # a resampling, not a subsampling: the grid keeps its stride
        detail = f"{in_hw[0]}x{in_hw[1]} -> {out_hw[0]}x{out_hw[1]}" + (" (identity at this size)" if identity else "")
        self.add(m, "adaptive-pool", detail, (1, 1), cum, in_hw, out_hw, breaks=not identity)

    def antialiased(self, m, in_hw, out_hw) -> None:
        if type(m).__module__ == "shiftlab.layers.alias_free" and type(m).__name__ != "IdealDownsample2d":
            return  # the alias-free activation, norm, low-pass and upsampling keep the grid: nothing to report
        stride = self.subsampling_stride(m, in_hw, out_hw)
        cum = self.record_level(in_hw, out_hw, stride) if out_hw else self.cumulative(in_hw)
        if out_hw is None:  # a map in, tokens out (PolyphasePatchEmbed): its stride starts the token grid
            cum = (cum[0] * stride[0], cum[1] * stride[1])
        name = type(m).__name__.lower()
        kind = ("tips" if name.startswith("tips") else "ideal" if name.startswith("ideal") else
                "aps" if "aps" in name or "lps" in name or "polyphase" in name else "blur-pool")
        parts = [f"stride {_fmt2(stride)}"]
        for attr in ("filter_size", "padding_mode"):
            value = getattr(m, attr, None)
            if isinstance(value, (int, str)):
                parts.append(f"{attr.replace('_', ' ')} {value}")
        breaks = None
        if kind == "aps":
            breaks = getattr(m, "padding_mode", "circular") != "circular"
        self.add(m, kind, ", ".join(parts), stride, cum, in_hw, out_hw, breaks=breaks)

    def unknown_leaf(self, m, x, y, in_hw, out_hw) -> None:
        cum = self.cumulative(in_hw)
        if out_hw is None:
            # (B, C, H, W) -> (B, C): a global pooling written as a module (timm's FastAdaptiveAvgPool)
            if isinstance(y, torch.Tensor) and y.ndim == 2 and y.shape[1] == x.shape[1] and in_hw != (1, 1):
                self.add(m, "global-pool", f"{in_hw[0]}x{in_hw[1]} -> 1x1", (1, 1), cum, in_hw, None)
            return
        if _permuted(x, y):
            return  # a permutation of the axes (torchvision's Permute), which resamples nothing
        if out_hw == (1, 1) and in_hw != (1, 1):
            self.add(m, "global-pool", f"{in_hw[0]}x{in_hw[1]} -> 1x1", (1, 1), cum, in_hw, out_hw)
        elif out_hw[0] * 3 <= in_hw[0] * 2 or out_hw[1] * 3 <= in_hw[1] * 2:
            stride = self.subsampling_stride(m, in_hw, out_hw)
            cum = self.record_level(in_hw, out_hw, stride)
            self.add(m, "other-subsampling", f"{in_hw[0]}x{in_hw[1]} -> {out_hw[0]}x{out_hw[1]}", stride, cum,
                     in_hw, out_hw)

    def linear(self, m: nn.Linear, x) -> None:
        if self.last_map is None or not isinstance(x, torch.Tensor) or x.ndim != 2:
            return
        c, h, w = self.last_map
        if h * w > 1 and m.in_features == c * h * w:
            cum = self.cumulative((h, w))
            self.add(m, "flatten-fc", f"flattened {c}x{h}x{w} map -> {m.out_features} outputs", (1, 1), cum,
                     (h, w), None)


def _same_pads_torch(kernel: int, dilation: int) -> tuple[int, int]:
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def _pads_text(pads) -> str:
    (top, bottom), (left, right) = pads
    return f"(top {top}, bottom {bottom}, left {left}, right {right})"


def input_channels(model: nn.Module) -> int:
    """The input channels a model expects: the ``in_channels`` of its first ``Conv2d``, else 3 (RGB)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return 3


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, (p.dtype if p.is_floating_point() else torch.float32)
    return torch.device("cpu"), torch.float32


def inspect(model: nn.Module, input_size, channels: int | None = None, device=None) -> InspectResult:
    """Map where a model subsamples or breaks shift equivariance, in the order data flows.

    One forward pass of a zero input of ``input_size`` is traced with forward hooks. The model is put in
    eval mode for the pass and its training flags are restored afterwards; its weights are not touched.

    Args:
        model: any ``nn.Module`` taking a (B, C, H, W) image batch.
        input_size: ``H`` (square) or ``(H, W)``. Use a multiple of the total stride for exact strides.
        channels: input channels; by default the ``in_channels`` of the first ``Conv2d`` (else 3).
        device: where the dummy input is made; by default where the model's parameters are (the model
            must already be there: it is not moved).

    Returns:
        :class:`InspectResult`: the :class:`Finding` list in execution order, the total stride, a warning when
        ``input_size`` is not a multiple of it, and the layers a conversion put in (a converted model).

    Shape:
        - Dummy input: (1, C, H, W).

    Example:
        >>> import torchvision
        >>> result = inspect(torchvision.models.resnet18(weights=None), (64, 64))
        >>> result.total_stride
        (32, 32)
        >>> result.kinds()[:3]
        ['strided-conv', 'zero-padding', 'max-pool']
    """
    refuse_compiled(model, "inspect")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    size = check_input_size(input_size, "input_size", error=ArgumentShapeError)
    channels = input_channels(model) if channels is None else check_int("channels", channels, 1)
    model_device, dtype = _model_device_dtype(model)
    device = model_device if device is None else torch.device(device)
    tracer = _Tracer(model, size)
    training = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(tracer.hook) for m in model.modules()]
    handles += [m.register_forward_pre_hook(tracer.enter, prepend=True) for m in model.modules()]
    try:
        model.eval()
        x = torch.zeros(1, channels, *size, device=device, dtype=dtype)
        with torch.inference_mode(), _FunctionWatch(tracer):  # functions called in forwards: see function_call
            model(x)
    except ShiftlabError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise ShapeError(f"the model failed on a (1, {channels}, {size[0]}, {size[1]}) input: "
                         f"{str(exc).splitlines()[0]}") from exc
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in training.items():
            m.training = flag
    subsampling = [f.cumulative_stride for f in tracer.findings if f.kind in SUBSAMPLING_KINDS]
    total = (max((c[0] for c in subsampling), default=1), max((c[1] for c in subsampling), default=1))
    return InspectResult(findings=tracer.findings, input_size=size, total_stride=total, channels=channels,
                         model_type=type(model).__name__, warnings=tuple(size_warnings(size, total)),
                         conversion=converted_layers(model, tracer.findings))
