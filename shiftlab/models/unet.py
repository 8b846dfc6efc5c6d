"""A small trainable U-Net whose subsampling and upsampling are build choices.

:func:`unet` builds encoder stages (two 3x3 conv, batch norm, ReLU units each; every stage after the first halves
the resolution and doubles the width), decoder stages (an upsampling to the skip connection's resolution, the skip
concatenated, two conv units) and a 1x1 head: ``(B, C, H, W) -> (B, num_classes, H, W)``. The choices:

- ``subsampling``: ``"stride"`` (the stage's first conv at stride 2), ``"max"`` (``MaxPool2d(2)``), ``"blur"``
  (:class:`~shiftlab.layers.BlurPool2d`, filter 3, Zhang 2019), ``"aps"`` (:class:`~shiftlab.layers.APSPool2d`)
  or ``"lps"`` (:class:`~shiftlab.layers.LPSPool2d`, learned);
- ``upsampling``: ``"transpose"`` (``ConvTranspose2d(kernel 2, stride 2)``), ``"bilinear"`` or ``"nearest"``
  (``nn.Upsample`` then a 1x1 conv), or ``"unpool"`` (:class:`~shiftlab.layers.UnpoolConvTranspose2d`: the same
  transposed conv with its values put back at the phase the matching encoder layer chose, APS-U / LPU; needs
  ``"aps"`` or ``"lps"``); ``"unpool"`` has exactly the parameters of ``"transpose"``;
- ``circular``: circular padding of every conv (and of the blur); else zero padding (reflect for the blur).

What each combination guarantees (:func:`unet_guarantee`, :attr:`UNet.guarantee`), for inputs whose height and
width are multiples of the total stride ``2 ** (depth - 1)`` (:attr:`UNet.total_stride`; other sizes are refused):

- ``"integer"``: ``subsampling`` ``"aps"`` or ``"lps"``, ``upsampling="unpool"``, ``circular=True``: the output map
  moves with every circular integer shift of the input, ``f(roll(x, d)) = roll(f(x), d)`` for every ``d``, up to
  rounding (eval mode; in training, batch norm's statistics do not change under a circular shift, so it holds
  there too for APS). Each APS layer keeps the component that moves with the shift and its decoder layer puts it
  back where it came from.
- ``"total-stride"``: circular padding, any subsampling but ``"lps"``/``"aps"`` with ``"unpool"``, and
  ``"transpose"`` or ``"nearest"`` upsampling: equivariant only to circular shifts by multiples of the total stride
  (shifts by one pixel are not covered: strides alias, interpolation assumes phase 0).
- ``"none"``: zero padding, or bilinear upsampling (``F.interpolate`` clamps at the border instead of wrapping).

>>> net = unet(depth=2, width=4, num_classes=3, subsampling="aps", upsampling="unpool").eval()
>>> net(torch.randn(1, 3, 8, 8)).shape, net.guarantee, net.total_stride
(torch.Size([1, 3, 8, 8]), 'integer', 2)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shiftlab._checks import check_bchw, check_int
from shiftlab.errors import InputError, ShapeError
from shiftlab.layers import APSPool2d, BlurPool2d, LPSPool2d, PhaseLink, UnpoolConvTranspose2d

__all__ = ["UNET_SUBSAMPLINGS", "UNET_UPSAMPLINGS", "UNET_GUARANTEES", "unet_guarantee", "UNet", "unet"]

#: how the encoder subsamples
UNET_SUBSAMPLINGS = ("stride", "max", "blur", "aps", "lps")
#: how the decoder upsamples
UNET_UPSAMPLINGS = ("transpose", "bilinear", "nearest", "unpool")
#: what :func:`unet_guarantee` can answer, strongest first
UNET_GUARANTEES = ("integer", "total-stride", "none")


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_choices(subsampling, upsampling, circular) -> None:
    _choice("subsampling", subsampling, UNET_SUBSAMPLINGS)
    _choice("upsampling", upsampling, UNET_UPSAMPLINGS)
    if not isinstance(circular, bool):
        raise InputError(f"circular must be True or False, got {circular!r}")
    if upsampling == "unpool" and subsampling not in ("aps", "lps"):
        raise InputError(f"upsampling='unpool' puts values back at the phase an adaptive encoder layer chose: it needs "
                         f"subsampling 'aps' or 'lps', not {subsampling!r}")


def unet_guarantee(subsampling: str = "aps", upsampling: str = "unpool", circular: bool = True) -> str:
    """What a :func:`unet` of these choices guarantees about circular shifts (see the module's documentation).

    >>> unet_guarantee("aps", "unpool", True), unet_guarantee("aps", "transpose", True)
    ('integer', 'total-stride')
    """
    _check_choices(subsampling, upsampling, circular)
    if not circular or upsampling == "bilinear":
        return "none"
    return "integer" if upsampling == "unpool" else "total-stride"


def _unit(cin: int, cout: int, padding_mode: str, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, padding_mode=padding_mode),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _Stage(nn.Module):
    """An encoder stage: optional subsampling, then two conv units (the first strided for ``"stride"``)."""

    def __init__(self, cin: int, cout: int, padding_mode: str, down: nn.Module | None, stride: int = 1) -> None:
        super().__init__()
        self.down = down
        self.convs = nn.Sequential(*_unit(cin, cout, padding_mode, stride), *_unit(cout, cout, padding_mode))

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(self.down(x) if self.down is not None else x)


class _Up(nn.Module):
    """A decoder stage: upsample, concatenate the skip connection, two conv units."""

    def __init__(self, up: nn.Module, channels: int, padding_mode: str) -> None:
        super().__init__()
        self.up = up
        self.convs = nn.Sequential(*_unit(channels, channels // 2, padding_mode),
                                   *_unit(channels // 2, channels // 2, padding_mode))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """The network of :func:`unet`: ``encoder`` stages, ``decoder`` stages (deepest first) and a 1x1 ``head``.

    Attributes:
        config: the build choices. links: the :class:`~shiftlab.layers.PhaseLink` of each subsampling, deepest
            last (empty unless ``upsampling="unpool"``).

    Shape:
        Input: (B, in_channels, H, W), H and W multiples of :attr:`total_stride`. Output: (B, num_classes, H, W).
    """

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3, subsampling: str = "stride",
                 upsampling: str = "transpose", circular: bool = True) -> None:
        super().__init__()
        depth = check_int("depth (the number of encoder stages)", depth, 1, 8)
        width, num_classes = check_int("width", width, 1), check_int("num_classes", num_classes, 1)
        in_channels = check_int("in_channels", in_channels, 1)
        _check_choices(subsampling, upsampling, circular)
        self.config = {"depth": depth, "width": width, "num_classes": num_classes, "in_channels": in_channels,
                       "subsampling": subsampling, "upsampling": upsampling, "circular": circular}
        pad = "circular" if circular else "zeros"
        widths = [width * 2 ** i for i in range(depth)]
        self.links: list[PhaseLink] = []
        stages = [_Stage(in_channels, width, pad, None)]
        for i in range(1, depth):
            down = self._down(subsampling, widths[i - 1], circular, upsampling == "unpool", f"encoder.{i}.down")
            stages.append(_Stage(widths[i - 1], widths[i], pad, down, 2 if subsampling == "stride" else 1))
        self.encoder = nn.ModuleList(stages)
        self.decoder = nn.ModuleList(_Up(self._up(upsampling, widths[i], pad, i), widths[i], pad)
                                     for i in range(depth - 1, 0, -1))
        self.head = nn.Conv2d(width, num_classes, 1)
        for link in self.links:
            link.scope(self)

    def _down(self, subsampling: str, channels: int, circular: bool, linked: bool, name: str) -> nn.Module | None:
        if subsampling == "stride":
            return None
        if subsampling == "max":
            return nn.MaxPool2d(2)
        if subsampling == "blur":
            return BlurPool2d(filter_size=3, stride=2, padding_mode="circular" if circular else "reflect")
        pool = (APSPool2d(stride=2, padding_mode="circular" if circular else "zeros") if subsampling == "aps"
                else LPSPool2d(channels, stride=2, padding_mode="circular" if circular else "zeros"))
        if linked:
            link = PhaseLink(stride=2, name=name)
            link.attach(pool)
            self.links.append(link)
        return pool

    def _up(self, upsampling: str, channels: int, pad: str, level: int) -> nn.Module:
        if upsampling == "transpose":
            return nn.ConvTranspose2d(channels, channels // 2, 2, stride=2)
        if upsampling == "unpool":
            name = f"decoder.{len(self.links) - level}.up"
            return UnpoolConvTranspose2d(channels, channels // 2, 2, stride=2, link=self.links[level - 1],
                                         pad_mode=pad, name=name)
        return nn.Sequential(nn.Upsample(scale_factor=2, mode=upsampling), nn.Conv2d(channels, channels // 2, 1))

    @property
    def guarantee(self) -> str:
        """``"integer"``, ``"total-stride"`` or ``"none"``: :func:`unet_guarantee` of this network's choices."""
        c = self.config
        return unet_guarantee(c["subsampling"], c["upsampling"], c["circular"])

    @property
    def total_stride(self) -> int:
        """How much the encoder subsamples in all: input sizes must be multiples of it."""
        return 2 ** (self.config["depth"] - 1)

    def forward(self, x: Tensor) -> Tensor:
        check_bchw(x, "x", channels=self.config["in_channels"])
        s = self.total_stride
        if x.shape[-2] % s or x.shape[-1] % s:
            raise ShapeError(f"the U-Net's input height and width must be multiples of its total stride {s}, got "
                             f"{tuple(x.shape[-2:])}")
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for stage in self.decoder:
            x = stage(x, skips.pop())
        return self.head(x)


def unet(depth: int = 3, width: int = 16, num_classes: int = 2, in_channels: int = 3, subsampling: str = "stride",
         upsampling: str = "transpose", circular: bool = True) -> UNet:
    """A small U-Net, trainable from scratch, with the subsampling and upsampling chosen.

    Args:
        depth: encoder stages (1 to 8); ``depth - 1`` subsamplings by 2, and as many upsamplings.
        width: channels of the first stage (doubled at each subsampling).
        num_classes: output channels (the classes of a segmentation).
        in_channels: channels of the input images.
        subsampling: ``"stride"``, ``"max"``, ``"blur"``, ``"aps"`` or ``"lps"``.
        upsampling: ``"transpose"``, ``"bilinear"``, ``"nearest"`` or ``"unpool"`` (with ``"aps"`` / ``"lps"``).
        circular: circular padding everywhere (needed by every guarantee).

    Returns:
        a :class:`UNet`; its ``guarantee`` says what the choices guarantee (:func:`unet_guarantee`).

    Raises:
        InputError: an argument out of its range or choices, or ``"unpool"`` without an adaptive encoder.

    Shape:
        Input: (B, in_channels, H, W), H and W multiples of ``2 ** (depth - 1)``. Output: (B, num_classes, H, W).
    """
    return UNet(depth, width, num_classes, in_channels, subsampling, upsampling, circular)
