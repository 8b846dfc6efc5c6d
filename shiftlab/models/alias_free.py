"""Small alias-free networks (Michaeli, Michaeli & Soudry, CVPR 2023) and their same-size comparison networks.

Two builders, any depth and width:

- :func:`alias_free_resnet`: a stem conv, stages of residual blocks (conv, norm, activation, conv, norm, add,
  activation), each stage after the first opened by a transition that doubles the width and halves the
  resolution (conv, norm, activation, subsampling), a global average pool and a linear head;
- :func:`alias_free_convnext`: a stem conv (no patchify: stride 1), stages of ConvNeXt blocks (depthwise
  ``kernel_size`` conv, norm, pointwise MLP with the activation, residual add), a downsampling layer between
  stages (norm, conv, subsampling), a final norm, a global average pool and a linear head.

Three choices make the comparison networks of one size; the parameter counts of the variants differ only by the
norm's and the activation's few parameters:

- ``subsampling``: ``"ideal"`` (a stride-1 conv, then :class:`~shiftlab.layers.IdealDownsample2d`), ``"stride"``
  (the conv at stride 2: plain slicing), ``"blur"`` (:class:`~shiftlab.layers.BlurPool2d`, Zhang 2019) or
  ``"aps"`` (:class:`~shiftlab.layers.APSPool2d`, Chaman & Dokmanic 2021);
- ``activation``: ``"alias_free"`` (:class:`~shiftlab.layers.AliasFreeActivation`, a quadratic evaluated on a 2x
  grid, initialised to the anchor's GELU fit), ``"gelu"`` or ``"relu"``;
- ``norm``: ``"alias_free"`` (:class:`~shiftlab.layers.AliasFreeLayerNorm`), ``"batch"`` (``BatchNorm2d``) or
  ``"layer"`` (ConvNeXt's layer norm over the channels of each pixel);

and ``circular`` (circular padding of every conv and of the blur/APS layers; else zero padding, reflect for blur).

What each combination guarantees (:func:`shift_guarantee`, and :attr:`AliasFreeResNet.guarantee`):

- ``"fractional"``: ``subsampling="ideal"``, ``activation="alias_free"``, ``norm`` ``"alias_free"`` or ``"batch"``,
  ``circular=True``. The logits are invariant, up to rounding, to every circular shift, integer or fractional
  (:func:`shiftlab.transforms.fourier_shift`), of a band-limited input (:func:`shiftlab.layers.band_limit`) whose
  size is a multiple of the total stride (:attr:`AliasFreeResNet.total_stride`): every layer commutes with such
  shifts, and the global average pool forgets them. Batch norm qualifies because it is a per-channel affine map
  in eval mode and its batch statistics (a mean and a sum of squares over the maps) do not change under a shift
  of a band-limited map in training. The alias-free layer norm is the anchor's choice.
- ``"integer"``: ``subsampling="aps"`` with ``circular=True``, any activation and norm: invariant to integer
  circular shifts of inputs whose size is a multiple of the total stride (APS keeps the polyphase component of
  largest norm); a half-pixel shift is not covered and changes the logits.
- ``"none"``: everything else. BlurPool reduces aliasing and guarantees nothing exactly; strided subsampling
  aliases; ideal subsampling with a pointwise GELU/ReLU or a per-pixel layer norm is not invariant either (the
  non-linearity creates frequencies that the next subsampling folds); zero padding breaks circular shifts at the
  border.

Sizes: the input's height and width must be multiples of the total stride ``2 ** (stages - 1)`` with ideal
subsampling (an ideal subsampling of a periodic map needs whole periods); the other subsamplings take any size.

>>> net = alias_free_resnet((1, 1), width=4, num_classes=3)
>>> net(torch.randn(2, 3, 8, 8)).shape, net.guarantee, net.total_stride
(torch.Size([2, 3]), 'fractional', 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from shiftlab._checks import check_bchw, check_int
from shiftlab.errors import InputError
from shiftlab.layers import AliasFreeActivation, AliasFreeLayerNorm, APSPool2d, BlurPool2d, IdealDownsample2d

__all__ = ["SUBSAMPLINGS", "ACTIVATIONS", "NORMS", "GUARANTEES", "shift_guarantee", "ChannelLayerNorm",
           "AliasFreeResNet", "AliasFreeConvNeXt", "alias_free_resnet", "alias_free_convnext"]

#: how a network subsamples: ideal low-pass (FFT), a strided conv, BlurPool, adaptive polyphase sampling
SUBSAMPLINGS = ("ideal", "stride", "blur", "aps")
#: the non-linearities: the alias-free quadratic on a 2x grid, GELU, ReLU
ACTIVATIONS = ("alias_free", "gelu", "relu")
#: the normalisations: the alias-free layer norm, batch norm, ConvNeXt's per-pixel layer norm
NORMS = ("alias_free", "batch", "layer")
#: what :func:`shift_guarantee` can answer, strongest first
GUARANTEES = ("fractional", "integer", "none")


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_choices(subsampling, activation, norm, circular) -> tuple[str, str, str, bool]:
    subsampling = _choice("subsampling", subsampling, SUBSAMPLINGS)
    activation = _choice("activation", activation, ACTIVATIONS)
    norm = _choice("norm", norm, NORMS)
    if not isinstance(circular, bool):
        raise InputError(f"circular must be True or False, got {circular!r}")
    return subsampling, activation, norm, circular


def shift_guarantee(subsampling: str = "ideal", activation: str = "alias_free", norm: str = "alias_free",
                    circular: bool = True) -> str:
    """What a network of these choices guarantees: ``"fractional"`` (invariant to every circular shift of a
    band-limited input, fractional ones included), ``"integer"`` (to integer circular shifts only) or ``"none"``.

    See the module's documentation for why; sizes must be multiples of the total stride in both cases.

    >>> shift_guarantee(), shift_guarantee("aps", "gelu", "layer"), shift_guarantee("blur")
    ('fractional', 'integer', 'none')
    """
    subsampling, activation, norm, circular = _check_choices(subsampling, activation, norm, circular)
    if not circular:
        return "none"
    if subsampling == "ideal" and activation == "alias_free" and norm in ("alias_free", "batch"):
        return "fractional"
    return "integer" if subsampling == "aps" else "none"


class ChannelLayerNorm(nn.Module):
    """ConvNeXt's layer norm of (B, C, H, W) maps: mean and variance over the channels of each pixel, then a
    per-channel affine map. Not alias-free (a per-pixel division); the ``norm="layer"`` comparison.

    Shape:
        Input: (B, C, H, W). Output: (B, C, H, W).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(check_int("channels", channels, 1), eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Parts:
    """The layer factory of one network: its norm, activation, convs and subsampling, by the build choices."""

    def __init__(self, subsampling: str, activation: str, norm: str, circular: bool):
        self.subsampling, self.activation, self.norm, self.circular = subsampling, activation, norm, circular

    def make_norm(self, channels: int) -> nn.Module:
        if self.norm == "alias_free":
            return AliasFreeLayerNorm(channels)
        return nn.BatchNorm2d(channels) if self.norm == "batch" else ChannelLayerNorm(channels)

    def make_activation(self) -> nn.Module:
        if self.activation == "alias_free":
            return AliasFreeActivation()
        return nn.GELU() if self.activation == "gelu" else nn.ReLU()

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias,
                         padding_mode="circular" if self.circular else "zeros")

    def down_conv(self, cin: int, cout: int) -> nn.Conv2d:
        """The 3x3 conv that changes the width where the map is subsampled (strided only for ``"stride"``)."""
        return self.conv(cin, cout, 3, stride=2 if self.subsampling == "stride" else 1)

    def subsample(self) -> list[nn.Module]:
        """The subsampling layer after :meth:`down_conv` (none for ``"stride"``: the conv subsamples)."""
        mode = "circular" if self.circular else "reflect"
        if self.subsampling == "ideal":
            return [IdealDownsample2d(2)]
        if self.subsampling == "blur":
            return [BlurPool2d(filter_size=3, stride=2, padding_mode=mode)]
        if self.subsampling == "aps":
            return [APSPool2d(stride=2, padding_mode="circular" if self.circular else "zeros")]
        return []


def _check_depth(depth) -> tuple[int, ...]:
    if isinstance(depth, bool):
        raise InputError(f"depth must be an integer or a sequence of integers (blocks per stage), got {depth!r}")
    if not isinstance(depth, Sequence) or isinstance(depth, str):
        return (1,) * check_int("depth (the number of stages)", depth, 1, 8)
    if not 1 <= len(depth) <= 8:
        raise InputError(f"depth must name 1 to 8 stages, got {len(depth)}")
    return tuple(check_int(f"depth[{i}]", d, 1) for i, d in enumerate(depth))


def _check_sizes(width, num_classes, in_channels) -> tuple[int, int, int]:
    return (check_int("width", width, 1), check_int("num_classes", num_classes, 1),
            check_int("in_channels", in_channels, 1))


class _ShiftNet(nn.Module):
    """The common frame: a stem, stages, a head; the build choices and what they guarantee."""

    def _setup(self, config: dict, stem: nn.Module, stages: list[nn.Module], final: nn.Module, features: int):
        self.config = config
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.final = final
        self.head = nn.Linear(features, config["num_classes"])

    @property
    def guarantee(self) -> str:
        """``"fractional"``, ``"integer"`` or ``"none"``: :func:`shift_guarantee` of this network's choices."""
        c = self.config
        return shift_guarantee(c["subsampling"], c["activation"], c["norm"], c["circular"])

    @property
    def total_stride(self) -> int:
        """How much the network subsamples in all: input sizes must be multiples of it for the guarantees."""
        return 2 ** (len(self.config["depth"]) - 1)

    def features(self, x: Tensor) -> Tensor:
        """The last stage's maps, before the pool. Shape: (B, C, H, W) -> (B, width * 2 ** (stages - 1), h, w)."""
        check_bchw(x, "x", channels=self.config["in_channels"])
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.final(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))


class _BasicBlock(nn.Module):
    """Residual block: conv, norm, activation, conv, norm; added to the input; activation."""

    def __init__(self, parts: _Parts, channels: int):
        super().__init__()
        self.body = nn.Sequential(parts.conv(channels, channels, 3), parts.make_norm(channels),
                                  parts.make_activation(), parts.conv(channels, channels, 3),
                                  parts.make_norm(channels))
        self.act = parts.make_activation()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


class AliasFreeResNet(_ShiftNet):
    """ResNet-style network of :func:`alias_free_resnet`.

    Shape:
        Input: (B, in_channels, H, W), H and W multiples of :attr:`total_stride` with ideal subsampling.
        Output: (B, num_classes).
    """

    def __init__(self, depth, width: int, num_classes: int, in_channels: int = 3, subsampling: str = "ideal",
                 activation: str = "alias_free", norm: str = "alias_free", circular: bool = True):
        super().__init__()
        depth = _check_depth(depth)
        width, num_classes, in_channels = _check_sizes(width, num_classes, in_channels)
        choices = _check_choices(subsampling, activation, norm, circular)
        parts = _Parts(*choices)
        config = dict(zip(("subsampling", "activation", "norm", "circular"), choices), depth=depth, width=width,
                      num_classes=num_classes, in_channels=in_channels)
        stem = nn.Sequential(parts.conv(in_channels, width, 3), parts.make_norm(width), parts.make_activation())
        stages, channels = [], width
        for i, blocks in enumerate(depth):
            layers = []
            if i:  # the transition: double the width, halve the resolution (Zhang's placement: after the act)
                layers += [parts.down_conv(channels, 2 * channels), parts.make_norm(2 * channels),
                           parts.make_activation(), *parts.subsample()]
                channels *= 2
            layers += [_BasicBlock(parts, channels) for _ in range(blocks)]
            stages.append(nn.Sequential(*layers))
        self._setup(config, stem, stages, nn.Identity(), channels)


class _ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise conv, norm, pointwise conv to ``expansion`` times the width, activation,
    pointwise conv back; added to the input."""

    def __init__(self, parts: _Parts, channels: int, kernel_size: int, expansion: int):
        super().__init__()
        hidden = channels * expansion
        self.body = nn.Sequential(parts.conv(channels, channels, kernel_size, groups=channels, bias=True),
                                  parts.make_norm(channels), parts.conv(channels, hidden, 1, bias=True),
                                  parts.make_activation(), parts.conv(hidden, channels, 1, bias=True))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class AliasFreeConvNeXt(_ShiftNet):
    """ConvNeXt-style network of :func:`alias_free_convnext`.

    Shape:
        Input: (B, in_channels, H, W), H and W multiples of :attr:`total_stride` with ideal subsampling.
        Output: (B, num_classes).
    """

    def __init__(self, depth, width: int, num_classes: int, in_channels: int = 3, subsampling: str = "ideal",
                 activation: str = "alias_free", norm: str = "alias_free", circular: bool = True,
                 kernel_size: int = 7, expansion: int = 4):
        super().__init__()
        depth = _check_depth(depth)
        width, num_classes, in_channels = _check_sizes(width, num_classes, in_channels)
        kernel_size = check_int("kernel_size", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise InputError(f"kernel_size must be odd (a centred depthwise conv), got {kernel_size}")
        expansion = check_int("expansion", expansion, 1)
        choices = _check_choices(subsampling, activation, norm, circular)
        parts = _Parts(*choices)
        config = dict(zip(("subsampling", "activation", "norm", "circular"), choices), depth=depth, width=width,
                      num_classes=num_classes, in_channels=in_channels, kernel_size=kernel_size,
                      expansion=expansion)
        stem = nn.Sequential(parts.conv(in_channels, width, 3, bias=True), parts.make_norm(width))
        stages, channels = [], width
        for i, blocks in enumerate(depth):
            layers = []
            if i:  # the downsampling layer between stages: norm, conv to twice the width, subsampling
                layers += [parts.make_norm(channels), parts.down_conv(channels, 2 * channels), *parts.subsample()]
                channels *= 2
            layers += [_ConvNeXtBlock(parts, channels, kernel_size, expansion) for _ in range(blocks)]
            stages.append(nn.Sequential(*layers))
        self._setup(config, stem, stages, parts.make_norm(channels), channels)


def alias_free_resnet(depth, width: int, num_classes: int, in_channels: int = 3, subsampling: str = "ideal",
                      activation: str = "alias_free", norm: str = "alias_free",
                      circular: bool = True) -> AliasFreeResNet:
    """A ResNet-style network, alias-free by default, or its same-size comparison network.

    Args:
        depth: residual blocks per stage, a sequence (``(2, 2, 2, 2)`` is ResNet-18's layout), or an int ``n``
            for ``n`` stages of one block. Every stage after the first doubles the width and halves the
            resolution.
        width: channels of the stem and the first stage.
        num_classes: outputs of the linear head.
        in_channels: channels of the input images.
        subsampling: ``"ideal"``, ``"stride"``, ``"blur"`` or ``"aps"`` (see the module's documentation).
        activation: ``"alias_free"``, ``"gelu"`` or ``"relu"``.
        norm: ``"alias_free"``, ``"batch"`` or ``"layer"``.
        circular: circular padding everywhere (needed by every guarantee).

    Returns:
        an :class:`AliasFreeResNet`; its ``guarantee`` says what these choices guarantee (:func:`shift_guarantee`).

    Raises:
        InputError: any argument out of its range or choices.

    Shape:
        Input: (B, in_channels, H, W). Output: (B, num_classes).
    """
    return AliasFreeResNet(depth, width, num_classes, in_channels, subsampling, activation, norm, circular)


def alias_free_convnext(depth, width: int, num_classes: int, in_channels: int = 3, subsampling: str = "ideal",
                        activation: str = "alias_free", norm: str = "alias_free", circular: bool = True,
                        kernel_size: int = 7, expansion: int = 4) -> AliasFreeConvNeXt:
    """A ConvNeXt-style network, alias-free by default, or its same-size comparison network.

    Args:
        depth: ConvNeXt blocks per stage, a sequence (``(3, 3, 9, 3)`` is ConvNeXt-T's layout), or an int ``n``
            for ``n`` stages of one block. A downsampling layer between stages doubles the width and halves the
            resolution.
        width: channels of the stem and the first stage (ConvNeXt-T: 96).
        num_classes, in_channels, subsampling, activation, norm, circular: as in :func:`alias_free_resnet`.
        kernel_size: the depthwise conv's size, odd (ConvNeXt: 7; smaller for small images).
        expansion: the pointwise MLP's width, a multiple of the block's (ConvNeXt: 4).

    Returns:
        an :class:`AliasFreeConvNeXt`.

    Raises:
        InputError: any argument out of its range or choices.

    Shape:
        Input: (B, in_channels, H, W). Output: (B, num_classes).
    """
    return AliasFreeConvNeXt(depth, width, num_classes, in_channels, subsampling, activation, norm, circular,
                             kernel_size, expansion)
