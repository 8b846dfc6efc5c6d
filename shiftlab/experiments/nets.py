"""A small CNN family with switches for downsampling, head and padding.

``SmallCNN`` is ``depth`` stages, each a 3x3 convolution, batch norm, ReLU and one 2x subsampling (the
first stage's convolution runs at full resolution), then a head. The switches:

- ``downsample``: ``"maxpool"`` (``MaxPool2d(2, 2)``), ``"stride"`` (the stage's convolution has stride 2),
  ``"blur"`` (Zhang's ``MaxBlurPool2d``: max over 2x2 at stride 1, then a binomial 3x3 blur and
  subsampling) or ``"aps"`` (``APSPool2d``: keep the polyphase component with the largest norm).
  A ``torch.nn.Module`` subclass may be passed instead, built as ``downsample(**downsample_kwargs)``.
- ``head``: ``"gap"`` (global average pooling, then a linear layer) or ``"fc"`` (flatten the last feature map,
  then a linear layer: the classic LeNet-style head, which sees absolute positions).
- ``padding``: ``"zeros"`` or ``"circular"`` for every convolution (and the blur/APS layers).

With ``downsample="aps"``, ``padding="circular"`` and ``head="gap"`` the network is exactly invariant to
circular integer shifts of its input (Chaman & Dokmanic 2021), whatever its weights.
"""

from __future__ import annotations

import torch
from torch import nn

from shiftlab.errors import InputError
from shiftlab.layers import APSPool2d, MaxBlurPool2d

__all__ = ["DOWNSAMPLING", "HEADS", "PADDINGS", "SmallCNN", "count_macs"]

DOWNSAMPLING = ("maxpool", "stride", "blur", "aps")
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
    raise InputError(f"unknown downsample {downsample!r}; use one of {DOWNSAMPLING} or an nn.Module type")


class SmallCNN(nn.Module):
    """A small CNN for canvases of digits; see the module docstring for the switches.

    Args:
        downsample: "maxpool" | "stride" | "blur" | "aps", or an ``nn.Module`` subclass.
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
                blocks.append(layer(**layer_kwargs))
            channels = out
        self.features = nn.Sequential(*blocks)
        side = canvas // 2**depth
        if head == "gap":
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        else:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_macs(model: nn.Module, input_shape: tuple[int, int, int, int]) -> int:
    """Multiply-accumulates of the ``nn.Conv2d`` and ``nn.Linear`` modules for one image of ``input_shape``.

    The fixed binomial blur of BlurPool and the norms of APS are not counted (they are cheap and depthwise).

    Shape:
        input_shape: (B, C, H, W); the count is per image.
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * per_output
        elif isinstance(module, nn.Linear):
            total += output[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
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
