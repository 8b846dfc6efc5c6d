"""torchvision's segmentation models: their interpolations, converted to unpooling at the encoder's phase.

FCN, DeepLabV3 and LR-ASPP (``torchvision.models.segmentation``) upsample with ``F.interpolate`` written in a
``forward``, which :func:`~shiftlab.fix.decoders.convert_decoders` cannot replace as a module. Once
:func:`shiftlab.antialias` has converted the encoder's subsampling to APS (or LPS), this module converts them,
keeping every weight (no parameter or buffer is added, the state_dict's keys are unchanged):

- FCN and DeepLabV3: the head (``classifier``, and ``aux_classifier`` when there is one) gets a last layer
  ``unpool``, an :class:`~shiftlab.layers.UnpoolInterpolate2d` that upsamples to the input size at the composed
  phase of every encoder subsampling above the head's input (8 for the dilated ResNet-50, 16 for MobileNetV3),
  with the bilinear kernel applied circularly (``circular=True``) or with zeros. The wrapper's own
  ``F.interpolate`` then maps the input size to itself, an identity.
- LR-ASPP: the head (``classifier``) becomes :class:`UnpooledLRASPPHead`, holding the same ``cbr``, ``scale``,
  ``low_classifier`` and ``high_classifier`` modules: its inner interpolation (stride 16 to 8) is unpooling at the
  phase of the encoder layer between the two maps, and its output is upsampled to the input size at the composed
  phase of the others.
- With ``circular=True``, a dilated convolution whose circular padding exceeds its map (DeepLabV3's ASPP, dilation
  36, on a small input) pads by :class:`~shiftlab.layers.WrapPad2d` (``F.pad`` refuses to wrap more than once);
  every dilated convolution does so, whatever the input size.

What stays inexact: with ``circular=False`` the zero padding of every convolution (the dilated ones reach far
into it); the interpolation's kernel is exact only where it wraps (``circular=True``). The global average pools
(ASPP's pooling branch, LR-ASPP's ``scale`` gate, MobileNetV3's squeeze-excitation) are invariant to circular
shifts, so they keep exactness.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from shiftlab.fix.replacement import Replacement
from shiftlab.fix._ops import RunBefore
from shiftlab.layers import APSPool2d, LPSPool2d, PhaseLink, UnpoolInterpolate2d, WrapPad2d

__all__ = ["SegmentationPlan", "is_segmentation_model", "wrap_dilated_padding", "plan_segmentation",
           "apply_segmentation", "UnpooledLRASPPHead"]


class UnpooledLRASPPHead(nn.Module):
    """torchvision's ``LRASPPHead`` with both of its upsamplings at the encoder's phase; the same submodules.

    Shape:
        Input: ``{"low": (B, C_low, H/8, W/8), "high": (B, C_high, H/16, W/16)}``. Output: (B, K, H, W).
    """

    def __init__(self, head: nn.Module, up_high: UnpoolInterpolate2d, up_out: UnpoolInterpolate2d) -> None:
        super().__init__()
        self.cbr, self.scale = head.cbr, head.scale
        self.low_classifier, self.high_classifier = head.low_classifier, head.high_classifier
        self.up_high, self.up_out = up_high, up_out
        self.train(head.training)

    def forward(self, input: dict[str, Tensor]) -> Tensor:
        low, high = input["low"], input["high"]
        x = self.up_high(self.cbr(high) * self.scale(high))
        return self.up_out(self.low_classifier(low) + self.high_classifier(x))


@dataclass
class SegmentationPlan:
    """What :func:`plan_segmentation` found: the heads to convert and the encoder layers each one pairs with."""

    kind: str
    heads: dict[str, list]  # "classifier" / "aux_classifier" / "classifier.high" -> encoder events, outermost first
    problems: dict[str, str]

    @property
    def pairs(self) -> list[list[str]]:
        return [[head, "+".join(e.name for e in events)] for head, events in self.heads.items()]


def _kind(model: nn.Module) -> str | None:
    from torchvision.models.segmentation import FCN, LRASPP, DeepLabV3

    if isinstance(model, (FCN, DeepLabV3)):
        return "simple"
    if isinstance(model, LRASPP):
        return "lraspp"
    return None


def is_segmentation_model(model: nn.Module) -> bool:
    """Whether ``model`` is one of torchvision's FCN, DeepLabV3 or LRASPP."""
    return _kind(model) is not None


def _down_to(encoder: list, size, start: int = 0) -> tuple[list, int] | None:
    """The encoder events from ``start`` up to the one producing ``size`` (and the index after it)."""
    for i in range(start, len(encoder)):
        if encoder[i].size_out == size:
            return encoder[start:i + 1], i + 1
    return None


def plan_segmentation(model: nn.Module, stack: list, sizes_in: dict[str, tuple[int, int]]) -> SegmentationPlan | None:
    """A plan for a torchvision segmentation model (None for any other model), from the probe of
    :func:`~shiftlab.fix.decoders.convert_decoders`: ``stack``, its unpaired subsampling events (outermost first),
    and ``sizes_in``, each layer's input size."""
    kind = _kind(model)
    if kind is None:
        return None
    problems: dict[str, str] = {}
    encoder = []
    for e in stack:
        if isinstance(e.module, (APSPool2d, LPSPool2d)):
            encoder.append(e)
        elif e.size_out != (1, 1):  # a global pool is invariant; anything else subsamples at a fixed phase
            problems["(model)"] = (f"the encoder layer {e.name} ({type(e.module).__name__}) subsamples at a fixed "
                                   "phase: the final interpolation has no phase to follow")
    heads: dict[str, list] = {}
    if kind == "simple":
        for head in ("classifier", "aux_classifier"):
            if getattr(model, head, None) is None:
                continue
            found = _down_to(encoder, sizes_in.get(f"{head}.0"))
            if found is None:
                problems[head] = f"no encoder layer produces the size of {head}'s input"
            else:
                heads[head] = found[0]
    else:
        low = _down_to(encoder, sizes_in.get("classifier.low_classifier"))
        high = _down_to(encoder, sizes_in.get("classifier.cbr.0"), low[1]) if low is not None else None
        if low is None or high is None:
            problems["classifier"] = "the encoder layers do not produce the sizes of the head's two inputs"
        else:
            heads["classifier.high"], heads["classifier"] = high[0], low[0]
    return SegmentationPlan(kind, heads, problems)


def _links(model: nn.Module, events: list) -> list[PhaseLink]:
    links = []
    for e in events:
        link = PhaseLink(stride=e.size_in[0] // e.size_out[0], name=e.name)
        link.attach(e.module)
        link.scope(model)
        links.append(link)
    return links


def wrap_dilated_padding(model: nn.Module) -> list:
    """Every circularly padded dilated convolution of ``model`` pads by WrapPad2d (any amount, the same numbers
    where ``F.pad`` works), in place; the ``Replacement`` entries."""

    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.padding_mode == "circular" and tuple(m.dilation) != (1, 1) \
                and isinstance(m.padding, tuple) and any(m.padding):
            ph, pw = m.padding
            m.padding, m.padding_mode = (0, 0), "zeros"
            RunBefore(WrapPad2d((pw, pw, ph, ph))).attach(m, "circular_padding")
            names.append(name)
    return [Replacement(n, "dilated Conv2d, circular padding", "padded by WrapPad2d (wraps any amount)")
            for n in names]


def apply_segmentation(model: nn.Module, plan: SegmentationPlan, circular: bool) -> list:
    """Convert ``model`` in place as ``plan`` says; the ``Replacement`` entries of the conversion."""

    pad = "circular" if circular else "zeros"
    report = []
    if plan.kind == "simple":
        for head, events in plan.heads.items():
            up = UnpoolInterpolate2d(_links(model, events), "bilinear", pad, name=f"{head}.unpool")
            getattr(model, head).add_module("unpool", up)
            report.append(Replacement(f"{head}.unpool", "F.interpolate in the forward (bilinear)",
                                      f"{up!r}, at the composed phase of {', '.join(e.name for e in events)}"))
    else:
        up_high = UnpoolInterpolate2d(_links(model, plan.heads["classifier.high"]), "bilinear", pad,
                                      name="classifier.up_high")
        up_out = UnpoolInterpolate2d(_links(model, plan.heads["classifier"]), "bilinear", pad, name="classifier.up_out")
        model.classifier = UnpooledLRASPPHead(model.classifier, up_high, up_out)
        report.append(Replacement("classifier", "LRASPPHead (F.interpolate inside)", "UnpooledLRASPPHead: both "
                                  "interpolations at the encoder's phase"))
    return report
