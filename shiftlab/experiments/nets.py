"""A small CNN family with switches for downsampling, head and padding.

``SmallCNN`` is ``depth`` stages, each a 3x3 convolution, batch norm, ReLU and one 2x subsampling (the
first stage's convolution runs at full resolution), then a head. The switches:

- ``downsample``: ``"maxpool"`` (``MaxPool2d(2, 2)``), ``"stride"`` (the stage's convolution has stride 2),
  ``"blur"`` (Zhang's ``MaxBlurPool2d``: max over 2x2 at stride 1, then a binomial 3x3 blur and
  subsampling), ``"aps"`` (``APSPool2d``: keep the polyphase component with the largest norm), ``"lps"``
  (``LPSPool2d``: keep the component a learned scorer prefers; a Gumbel-softmax mixture in training) or
  ``"tips"`` (``TIPSPool2d``: a learned per-channel mixture of the components).
  A ``torch.nn.Module`` subclass may be passed instead, built as ``downsample(**downsample_kwargs)``.
- ``head``: ``"gap"`` (global average pooling, then a linear layer) or ``"fc"`` (flatten the last feature map,
  then a linear layer: the classic LeNet-style head, which sees absolute positions).
- ``padding``: ``"zeros"`` or ``"circular"`` for every convolution (and the blur/APS layers).

With ``downsample="aps"`` or ``"lps"``, ``padding="circular"`` and ``head="gap"`` the network is exactly invariant
to circular integer shifts of its input (Chaman & Dokmanic 2021; Rojas-Gomez et al. 2022), whatever its weights;
with ``"tips"`` the invariance is learned, not guaranteed.

Two rotation-equivariant networks with the same stage layout (``depth`` stages, one 2x subsampling each,
widths ``width * 2**k``, an invariant pooled head):

- ``GroupCNN``: p4 or p4m group convolutions (``shiftlab.layers.LiftConv2d``, ``GroupConv2d``), batch norm
  shared over the group axis, ReLU, 2x2 max pooling of space, then max over the group and global average
  pooling. Exactly invariant to quarter turns (p4m: and mirrors) of a square input whose side is divisible by
  ``2**depth``, whatever its weights.
- ``HarmonicCNN``: circular-harmonic convolutions (``shiftlab.layers.HarmonicConv2d``, rotation orders 0 and
  1), magnitude batch norm and modReLU, anti-aliased 2x subsampling (binomial 4x4 blur), then magnitudes and
  global average pooling.
  Exactly invariant to quarter turns, approximately to every other angle.
"""

from __future__ import annotations

import torch
from torch import nn

from shiftlab.errors import InputError
from shiftlab.layers import APSPool2d, LPSPool2d, MaxBlurPool2d, TIPSPool2d
from shiftlab.layers.group import GroupConv2d, GroupPool, LiftConv2d
from shiftlab.layers.harmonic import (HarmonicBatchNorm2d, HarmonicBlurPool2d, HarmonicConv2d, HarmonicMagnitude,
                                      HarmonicReLU)

__all__ = ["DOWNSAMPLING", "HEADS", "PADDINGS", "SmallCNN", "GroupCNN", "HarmonicCNN", "count_macs"]

DOWNSAMPLING = ("maxpool", "stride", "blur", "aps", "lps", "tips")
#: downsampling layers whose first argument is the number of channels they take (they learn per channel)
_SIZED_BY_CHANNELS = (LPSPool2d, TIPSPool2d)
HEADS = ("gap", "fc")
PADDINGS = ("zeros", "circular")


def _downsample_layer(downsample, padding: str, kwargs: dict | None):
    """(layer type or None, its keyword arguments, convolution stride) for one downsampling choice."""
    if isinstance(downsample, type) and issubclass(downsample, nn.Module):
        return downsample, dict(kwargs or {}), 1
    filter_padding = "circular" if padding == "circular" else "reflect"
    if downsample == "maxpool":
        return nn.MaxPool2d, {"kernel_size": 2, "stride": 2}, 1
    if downsample == "stride":
        return None, {}, 2
    if downsample == "blur":
        return MaxBlurPool2d, {"kernel_size": 2, "filter_size": 3, "stride": 2, "padding_mode": filter_padding,
                               **(kwargs or {})}, 1
    if downsample == "aps":
        return APSPool2d, {"stride": 2, "filter_size": 1, "padding_mode": "circular", **(kwargs or {})}, 1
    if downsample == "lps":
        return LPSPool2d, {"stride": 2, "padding_mode": "circular", **(kwargs or {})}, 1
    if downsample == "tips":
        return TIPSPool2d, {"stride": 2, "padding_mode": "circular" if padding == "circular" else "zeros",
                            **(kwargs or {})}, 1
    raise InputError(f"unknown downsample {downsample!r}; use one of {DOWNSAMPLING} or an nn.Module type")


class SmallCNN(nn.Module):
    """A small CNN for canvases of digits; see the module docstring for the switches.

    Args:
        downsample: "maxpool" | "stride" | "blur" | "aps" | "lps" | "tips", or an ``nn.Module`` subclass.
        head: "gap" | "fc".
        padding: "zeros" | "circular".
        width: channels of the first stage; stage ``k`` (from 0) has ``width * 2**k`` channels.
        in_channels, num_classes: input channels and classes.
        canvas: input side length (needed by the "fc" head; must be divisible by ``2**depth``).
        depth: number of 2x subsamplings (total stride ``2**depth``).
        downsample_kwargs: extra arguments for the downsampling layer.

    Shape:
        Input: (B, in_channels, canvas, canvas). Output: (B, num_classes) logits.

    >>> net = SmallCNN(downsample="aps", head="gap", padding="circular", width=4).eval()
    >>> net(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, downsample="maxpool", head: str = "gap", padding: str = "zeros", width: int = 16,
                 in_channels: int = 1, num_classes: int = 10, canvas: int = 32, depth: int = 3,
                 downsample_kwargs: dict | None = None):
        super().__init__()
        if head not in HEADS:
            raise InputError(f"unknown head {head!r}; use one of {HEADS}")
        if padding not in PADDINGS:
            raise InputError(f"unknown padding {padding!r}; use one of {PADDINGS}")
        if depth < 1 or canvas % (2**depth):
            raise InputError(f"canvas {canvas} must be divisible by 2**depth = {2**depth}")
        layer, layer_kwargs, conv_stride = _downsample_layer(downsample, padding, downsample_kwargs)
        self.config = {"downsample": downsample if isinstance(downsample, str) else downsample.__name__,
                       "head": head, "padding": padding, "width": width, "in_channels": in_channels,
                       "num_classes": num_classes, "canvas": canvas, "depth": depth}

        def conv(cin, cout, stride=1):
            return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode=padding, bias=False)

        blocks = []
        channels = in_channels
        for stage in range(depth):
            out = width * 2**stage
            blocks += [conv(channels, out, conv_stride), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if layer is not None:
                sized = isinstance(layer, type) and issubclass(layer, _SIZED_BY_CHANNELS)
                blocks.append(layer(out, **layer_kwargs) if sized else layer(**layer_kwargs))
            channels = out
        self.features = nn.Sequential(*blocks)
        side = canvas // 2**depth
        if head == "gap":
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        else:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class GroupCNN(nn.Module):
    """A p4 / p4m group-convolutional CNN for canvases of digits (see the module docstring).

    Args:
        group: ``"p4"`` or ``"p4m"``.
        width: channels (each a field of G maps) of the first stage; stage ``k`` has ``width * 2**k``.
        in_channels, num_classes: input channels and classes.
        depth: number of 2x subsamplings.
        kernel_size: odd filter size.
        padding: ``"zeros"`` or ``"circular"``.

    Shape:
        Input: (B, in_channels, S, S), S divisible by ``2**depth``. Output: (B, num_classes) logits.

    >>> net = GroupCNN("p4", width=2).eval()
    >>> x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    >>> bool(torch.allclose(net.double()(x), net(torch.rot90(x, 1, (-2, -1))), rtol=0, atol=1e-12))
    True
    """

    def __init__(self, group: str = "p4", width: int = 8, in_channels: int = 1, num_classes: int = 10,
                 depth: int = 3, kernel_size: int = 3, padding: str = "zeros"):
        super().__init__()
        if padding not in PADDINGS:
            raise InputError(f"unknown padding {padding!r}; use one of {PADDINGS}")
        if depth < 1:
            raise InputError(f"depth must be at least 1, got {depth}")
        self.config = {"network": group, "width": width, "in_channels": in_channels, "num_classes": num_classes,
                       "depth": depth, "kernel_size": kernel_size, "padding": padding}
        blocks, channels = [], in_channels
        for stage in range(depth):
            out = width * 2**stage
            conv = LiftConv2d if stage == 0 else GroupConv2d
            blocks += [conv(channels, out, kernel_size, group=group, padding_mode=padding), nn.BatchNorm3d(out),
                       nn.ReLU(inplace=True), nn.MaxPool3d((1, 2, 2))]
            channels = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(GroupPool("max"), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class HarmonicCNN(nn.Module):
    """A Harmonic Network (Worrall et al. 2017) for canvases of digits (see the module docstring).

    Args:
        width: channels of the first stage (each with one complex stream per rotation order); stage ``k``
            has ``width * 2**k``.
        in_channels, num_classes: input channels and classes.
        depth: number of 2x subsamplings.
        kernel_size: odd filter size (>= 3).
        orders: rotation orders of the streams after the first layer.
        padding: ``"zeros"`` or ``"circular"``.

    Shape:
        Input: (B, in_channels, S, S), S divisible by ``2**depth``. Output: (B, num_classes) logits.

    >>> HarmonicCNN(width=2).eval()(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, width: int = 12, in_channels: int = 1, num_classes: int = 10, depth: int = 3,
                 kernel_size: int = 5, orders=(0, 1), padding: str = "zeros"):
        super().__init__()
        if padding not in PADDINGS:
            raise InputError(f"unknown padding {padding!r}; use one of {PADDINGS}")
        if depth < 1:
            raise InputError(f"depth must be at least 1, got {depth}")
        orders = tuple(orders)
        self.config = {"network": "harmonic", "width": width, "in_channels": in_channels,
                       "num_classes": num_classes, "depth": depth, "kernel_size": kernel_size,
                       "orders": list(orders), "padding": padding}
        blocks, channels, in_orders = [], in_channels, (0,)
        for stage in range(depth):
            out = width * 2**stage
            blocks += [HarmonicConv2d(channels, out, kernel_size, in_orders=in_orders, out_orders=orders,
                                      padding_mode=padding),
                       HarmonicBatchNorm2d(out, len(orders)), HarmonicReLU(out, len(orders)),
                       HarmonicBlurPool2d(filter_size=4, stride=2)]
            channels, in_orders = out, orders
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(HarmonicMagnitude(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(channels * len(orders), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates per image of one convolution-like module, given its output."""
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return output[0].numel() * per_output
    if isinstance(module, LiftConv2d):  # C_out x G maps, each from C_in x k x k inputs
        return output[0].numel() * module.in_channels * module.kernel_size**2
    if isinstance(module, GroupConv2d):  # C_out x G maps, each from C_in x G x k x k inputs
        return output[0].numel() * module.in_channels * module.order * module.kernel_size**2
    if isinstance(module, HarmonicConv2d):  # one real conv: 2 C_out M_out outputs from 2 C_in M_in (real: C_in)
        real_outputs = 2 * output[0].numel()
        real_inputs = module.in_channels * len(module.in_orders) * (1 if module.in_orders == (0,) else 2)
        return real_outputs * real_inputs * module.kernel_size**2
    return output[0].numel() * module.in_features  # nn.Linear


def count_macs(model: nn.Module, input_shape: tuple[int, int, int, int]) -> int:
    """Multiply-accumulates of the convolutions and ``nn.Linear`` modules for one image of ``input_shape``.

    Counted: ``nn.Conv2d``, ``nn.Linear`` and shiftlab's group and harmonic convolutions (a harmonic layer after
    the first is counted as its one real convolution on complex inputs, 2 C_in M_in channels; the first,
    on a real image, with C_in), and the scoring network of LPS (its two 3x3 convolutions run on every position
    of the map they score). The fixed binomial blur of BlurPool, the norms of APS, batch norms and the filter
    expansion of the group layers are not counted (they are cheap and depthwise).

    Shape:
        input_shape: (B, C, H, W); the count is per image.
    """
    total = 0

    counted = (nn.Conv2d, nn.Linear, LiftConv2d, GroupConv2d, HarmonicConv2d)

    def hook(module, inputs, output):
        nonlocal total
        total += _conv_macs(module, output)

    def scorer_hook(module, args):
        nonlocal total
        scorer = module.scorer
        if scorer is not None and args and args[0].ndim == 4:
            h, w = args[0].shape[-2:]
            hidden, channels = scorer.conv1.out_channels, scorer.conv1.in_channels
            total += h * w * 9 * (channels * hidden + hidden * hidden)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    handles += [m.register_forward_pre_hook(scorer_hook) for m in model.modules() if isinstance(m, LPSPool2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape[1:]))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)
