"""Measurement protocols: how the transformed copies of each image are made (the ``transform=`` of an audit).

A protocol takes a batch of images in pixel space (B, C, H, W), already at its *source size*, with their
dataset indices, and returns K copies of each, or any subset of the K (``copies=``: the audit splits the
copies of an image over several forward passes when K exceeds the batch size). Normalisation by the
model's preprocessing happens afterwards. Random offsets depend only on (seed, dataset index), so any
sharding of a dataset draws the same offsets.

========================  ==========================================  =====================================
spec string               protocol                                    metrics it supports
========================  ==========================================  =====================================
``circular:M[:P]``        :class:`CircularShiftPair` two rolls with    consistency, accuracy
                          offsets uniform in [-M, M-1], P passes
``crop:S:M[:P]``          :class:`CropShiftPair` two SxS crops at      consistency, accuracy
                          offsets uniform in [0, M-1] of an
                          (S+M)x(S+M) image (Zhang 2019)
``diagonal:N[:MODE[:F]]`` :class:`DiagonalSweep` shifts (o, o),         top1_change, mean_abs_change,
                          o = 0..N; MODE crop|circular|canvas,          flip_probability, top5_distance,
                          canvas fill F black|mean|inpaint
                          (Azulay & Weiss 2019)                         worst_case_stability, agreement,
                                                                        accuracy
``sequence:M[:MODE]``     :class:`ImageNetPSequence` horizontal         as diagonal
                          shifts -M..M; MODE crop|circular
``grid:N[:STEP[:MODE]]``  :class:`ShiftGrid` all (dy, dx) in            worst_case_stability, agreement,
                          {0, STEP, ..}^2; MODE circular|crop           accuracy
``rotate:A,B,..``         :class:`RotationSweep` angles in degrees      as diagonal (frames = the values)
``scale:F,G,..``          :class:`ScaleSweep` zoom factors              as diagonal
``brightness:F,G,..``     :class:`BrightnessSweep` brightness factors   as diagonal
``subpixel:N``,           worst-case grids                              worst_case_accuracy,
``halfpixel:M``,          (:mod:`shiftlab.measure.grid_protocols`):     worst_case_stability, agreement,
``fractional:N``,         fractional circular shifts (Fourier or        accuracy
``intgrid:M``,            bilinear), whole-pixel shifts, and the
``cropattack:S:M``        crop-shift attack (Michaeli et al. 2023)
========================  ==========================================  =====================================

Shifts are reported in the ``torch.roll`` convention (content moves down by dy, right by dx): a crop
window at offset o shows the content displaced by -o.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shiftlab.errors import InputError, ShiftlabError
from shiftlab.measure import grid_protocols
from shiftlab.measure.protocol_base import (
    Copies,
    Protocol,
    ShiftGrid,
    _ints,
    _positive,
    _ShiftSequence,
    _stack,
    _transforms,
)

__all__ = [
    "Copies",
    "Protocol",
    "CircularShiftPair",
    "CropShiftPair",
    "DiagonalSweep",
    "ImageNetPSequence",
    "ShiftGrid",
    "RotationSweep",
    "ScaleSweep",
    "BrightnessSweep",
    "parse_protocol",
    "PROTOCOL_HELP",
]


class _RandomPair(Protocol):
    kind = "pair"

    def __init__(self, passes: int = 1):
        self.passes = _positive("passes", passes)

    @property
    def num_copies(self) -> int:
        return 2 * self.passes

    @property
    def consistency_pairs(self) -> list[tuple[int, int]]:
        return [(2 * p, 2 * p + 1) for p in range(self.passes)]

    @property
    def layer_pairs(self) -> list[tuple[int, int]]:
        return self.consistency_pairs


class CircularShiftPair(_RandomPair):
    """Two circular shifts (``torch.roll``) per image with offsets uniform in [-max_shift, max_shift - 1].

    The APS/LPS circular consistency protocol (ImageNet: max_shift=32; CIFAR-10: 3). ``passes`` pairs
    per image.
    """

    circular = True

    def __init__(self, max_shift: int = 32, passes: int = 1):
        super().__init__(passes)
        self.max_shift = _positive("max_shift", max_shift)

    def params(self) -> dict:
        return {"max_shift": self.max_shift, "passes": self.passes}

    def spec(self) -> str:
        return f"circular:{self.max_shift}" + (f":{self.passes}" if self.passes != 1 else "")

    def make(self, images, indices, seed, copies=None):
        T = _transforms()
        which = self._which(copies)
        offsets = T.random_offsets(seed, indices, -self.max_shift, self.max_shift - 1, count=self.num_copies)
        offsets = offsets[:, which].to(images.device)
        views = [T.circular_shift(images, offsets[:, k, 0], offsets[:, k, 1]) for k in range(len(which))]
        return Copies(_stack(views), offsets.cpu(), len(which))


class CropShiftPair(_RandomPair):
    """Two ``size`` x ``size`` crops per image at offsets uniform in [0, max_offset - 1] (Zhang 2019).

    The source image is (size + max_offset) square: the ImageNet protocol is ``CropShiftPair(224, 32)`` on
    the 256 centre crop.
    """

    def __init__(self, size: int = 224, max_offset: int = 32, passes: int = 1):
        super().__init__(passes)
        self.size = _positive("size", size)
        self.max_offset = _positive("max_offset", max_offset)

    @property
    def extent(self):
        return (self.max_offset, self.max_offset)

    def params(self) -> dict:
        return {"size": self.size, "max_offset": self.max_offset, "passes": self.passes}

    def spec(self) -> str:
        return f"crop:{self.size}:{self.max_offset}" + (f":{self.passes}" if self.passes != 1 else "")

    def make(self, images, indices, seed, copies=None):
        T = _transforms()
        which = self._which(copies)
        offsets = T.random_offsets(seed, indices, 0, self.max_offset - 1, count=self.num_copies)
        offsets = offsets[:, which].to(images.device)
        size = (images.shape[-2] - self.max_offset, images.shape[-1] - self.max_offset)
        views = [T.crop_shift(images, offsets[:, k, 0], offsets[:, k, 1], size) for k in range(len(which))]
        return Copies(_stack(views), -offsets.cpu(), len(which))


class DiagonalSweep(_ShiftSequence):
    """Diagonal 1-px steps (o, o), o = 0..n (Azulay & Weiss 2019; the antialiased-cnns ``-ed`` sweep).

    ``mode="crop"``: windows of the source image (content moves by -o); ``"circular"``: rolls by (o, o);
    ``"canvas"``: the image shrunk to ``object_size`` (default about 100/224 of the canvas) and pasted
    into a canvas of the model's input size at (o, o) plus a centring offset, with ``fill``.
    """

    def __init__(self, n: int = 8, mode: str = "crop", size: int | None = None, object_size: int | None = None,
                 fill: str = "black"):
        self.n = _positive("n", n)
        super().__init__(mode, size, object_size, fill)

    def _offsets(self):
        o = torch.arange(self.n + 1, dtype=torch.long)
        sign = -1 if self.mode == "crop" else 1
        return torch.stack([sign * o, sign * o], dim=1)

    @property
    def default_metrics(self):
        return ("top1_change", "mean_abs_change", "accuracy")

    def params(self):
        return {"n": self.n, **self._mode_params()}

    def spec(self):
        if self.mode == "canvas":
            tail = f":{self.fill}" + (f":{self.object_size}" if self.object_size is not None else "")
            return f"diagonal:{self.n}:canvas{tail}"
        return f"diagonal:{self.n}:{self.mode}"


class ImageNetPSequence(_ShiftSequence):
    """Horizontal shifts -max_shift..max_shift, one pixel apart (the ImageNet-P translate sequence: 41 frames)."""

    modes = ("crop", "circular")

    def __init__(self, max_shift: int = 20, mode: str = "crop", size: int | None = None):
        self.max_shift = _positive("max_shift", max_shift)
        super().__init__(mode, size)

    def _offsets(self):
        dx = torch.arange(-self.max_shift, self.max_shift + 1, dtype=torch.long)
        return torch.stack([torch.zeros_like(dx), dx], dim=1)

    @property
    def layer_pairs(self):
        centre = self.max_shift
        return [(centre, k) for k in range(self.num_copies) if k != centre]

    @property
    def default_metrics(self):
        return ("flip_probability", "top5_distance", "accuracy")

    def params(self):
        return {"max_shift": self.max_shift, **self._mode_params()}

    def spec(self):
        return f"sequence:{self.max_shift}:{self.mode}"



class _ValueSweep(Protocol):
    """Copies at a list of transformation parameters; the first value is the reference."""

    label = "value"
    shifts = False

    def __init__(self, values: Sequence[float]):
        values = [float(v) for v in values]
        if len(values) < 2:
            raise ShiftlabError(f"{type(self).__name__} needs at least two values, got {values}")
        self.values = values

    @property
    def num_copies(self):
        return len(self.values)

    @property
    def parameters(self):
        return list(self.values)

    @property
    def default_metrics(self):
        return ("agreement", "flip_probability", "accuracy")

    def params(self):
        return {self.label: self.values}

    def spec(self):
        return f"{self.spec_name}:" + ",".join(f"{v:g}" for v in self.values)

    def _apply(self, T, images, value):
        raise NotImplementedError

    def make(self, images, indices, seed, copies=None):
        T = _transforms()
        which = self._which(copies)
        return Copies(_stack([self._apply(T, images, self.values[k]) for k in which]), None, len(which))


class RotationSweep(_ValueSweep):
    """Rotations by each angle (degrees, counter-clockwise) about the centre."""

    spec_name, label = "rotate", "angles"

    def __init__(self, angles: Sequence[float] = (0, 15, 30, 45, 90)):
        super().__init__(angles)

    def _apply(self, T, images, value):
        return T.rotate(images, value)


class ScaleSweep(_ValueSweep):
    """Zoom about the centre by each factor (output the same size)."""

    spec_name, label = "scale", "factors"

    def __init__(self, factors: Sequence[float] = (1.0, 0.9, 0.8, 1.1, 1.25)):
        super().__init__(factors)

    def _apply(self, T, images, value):
        return T.zoom(images, value)


class BrightnessSweep(_ValueSweep):
    """Brightness scaled by each factor."""

    spec_name, label = "brightness", "factors"

    def __init__(self, factors: Sequence[float] = (1.0, 0.8, 0.6, 1.2, 1.4)):
        super().__init__(factors)

    def _apply(self, T, images, value):
        return T.adjust_brightness(images, value)


PROTOCOL_HELP = (
    "circular:M[:P] (two rolls, offsets in [-M, M-1], P passes) | crop:S:M[:P] (two SxS crops at offsets in "
    "[0, M-1], Zhang) | diagonal:N[:crop|circular|canvas[:black|mean|inpaint]] (1-px diagonal steps 0..N, "
    "Azulay & Weiss) | "
    "sequence:M[:crop|circular] (horizontal -M..M, ImageNet-P) | grid:N[:STEP[:circular|crop]] (worst case "
    "over an NxN grid) | subpixel:N[:fourier|bilinear] (every (i/N, j/N), worst case) | halfpixel[:M[:METHOD]] "
    "((i/2, j/2), 1 <= i, j <= M) | fractional[:N[:METHOD]] (every m/n <= 1, n <= N) | intgrid:M ((i, j), 0..M) | "
    "cropattack:S:M (SxS crops of an (S+2M) image at every offset) | rotate:A,B,.. | scale:F,G,.. | brightness:F,G,.."
)



def parse_protocol(spec: str | Protocol) -> Protocol:
    """A protocol from a spec string such as ``"circular:32"``, ``"crop:224:32"`` or ``"rotate:0,15,30"``."""
    if isinstance(spec, Protocol):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"transform must be a protocol or a spec string, got {spec!r}")
    name, *rest = spec.strip().split(":")
    name = name.lower()

    if name in grid_protocols.GRID_SPECS:
        return grid_protocols.parse_grid(name, rest, spec)
    try:
        if name == "circular":
            return CircularShiftPair(*_ints(rest, spec)) if rest else CircularShiftPair()
        if name == "crop":
            return CropShiftPair(*_ints(rest, spec))
        if name in ("diagonal", "sequence", "grid"):
            words = [i for i, part in enumerate(rest) if not part.lstrip("-").isdigit()]
            kwargs = {}
            if words:
                first = words[0]
                tail = rest[first:]
                rest = rest[:first]
                kwargs["mode"] = tail[0]
                if len(tail) > 1:
                    if name != "diagonal" or tail[0] != "canvas":
                        raise InputError(f"bad transform spec {spec!r}: only diagonal:N:canvas takes a fill "
                                         f"(black, mean or inpaint)")
                    kwargs["fill"] = tail[1]
                    if len(tail) > 2:
                        kwargs["object_size"] = _ints(tail[2:3], spec)[0]
                    if len(tail) > 3:
                        raise InputError(f"bad transform spec {spec!r}: use diagonal:N:canvas[:FILL[:OBJECT_PX]]")
            args = _ints(rest, spec)
            cls = {"diagonal": DiagonalSweep, "sequence": ImageNetPSequence, "grid": ShiftGrid}[name]
            return cls(*args, **kwargs)
        if name in ("rotate", "scale", "brightness"):
            if len(rest) != 1:
                raise InputError(f"bad transform spec {spec!r}: expected {name}:V1,V2,...")
            try:
                values = [float(v) for v in rest[0].split(",")]
            except ValueError:
                raise InputError(f"bad transform spec {spec!r}: values must be numbers") from None
            return {"rotate": RotationSweep, "scale": ScaleSweep, "brightness": BrightnessSweep}[name](values)
    except TypeError:
        raise InputError(f"bad transform spec {spec!r}: too many fields; use {PROTOCOL_HELP}") from None
    except ShiftlabError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"bad transform spec {spec!r}: {exc}") from None
    raise InputError(f"unknown transform {name!r} in {spec!r}; use {PROTOCOL_HELP}")
