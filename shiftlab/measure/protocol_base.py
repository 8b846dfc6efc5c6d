"""The base of every audit protocol: :class:`Protocol` and the :class:`Copies` it makes, the ordered
shift sequences (:class:`ShiftSequence` machinery) and :class:`ShiftGrid`, and the checks of spec integers.

:mod:`shiftlab.measure.protocols` (the named protocols and :func:`~shiftlab.measure.protocols.parse_protocol`)
and :mod:`shiftlab.measure.grid_protocols` (the worst-case grids) both build on it; neither imports the other's
classes through a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shiftlab.errors import InputError, ShiftlabError

__all__ = ["Copies", "Protocol", "ShiftGrid", "PAIR_METRICS", "ORDERED_METRICS", "GRID_METRICS"]

PAIR_METRICS = ("consistency", "accuracy")
ORDERED_METRICS = ("top1_change", "mean_abs_change", "flip_probability", "top5_distance", "worst_case_stability",
                   "agreement", "accuracy", "worst_case_accuracy")
GRID_METRICS = ("worst_case_stability", "agreement", "accuracy", "worst_case_accuracy")


def _transforms():
    import shiftlab.transforms as transforms

    return transforms


@dataclass(frozen=True)
class Copies:
    """K transformed copies of a batch of B images.

    ``inputs`` is (K*B, C, h, w), copy-major: copy k of sample b is row ``k * B + b``. ``shifts`` is
    (B, K, 2), the content displacement of each copy in input pixels (roll convention): int64, or float64 for
    the fractional grids of :mod:`shiftlab.measure.grid_protocols`; ``None`` for protocols that are not shifts.
    """

    inputs: torch.Tensor
    shifts: torch.Tensor | None
    num_copies: int


class Protocol:
    """Base class of the protocols. Subclasses set the class attributes and implement :meth:`make`."""

    kind: str = "ordered"  # "pair", "ordered" (a sequence of frames) or "grid"
    circular: bool = False  # copies are exact group actions (circular shifts) of one another
    size: int | None = None  # crop size; None: derived from the source images
    shifts: bool = True  # copies differ by shifts (layer equivariance is defined where one is a multiple of a stride)
    spec_name: str = ""

    @property
    def num_copies(self) -> int:
        raise NotImplementedError

    @property
    def extent(self) -> tuple[int, int]:
        """Pixels the source image needs beyond the model input, in (H, W)."""
        return (0, 0)

    @property
    def metrics(self) -> tuple[str, ...]:
        return {"pair": PAIR_METRICS, "ordered": ORDERED_METRICS, "grid": GRID_METRICS}[self.kind]

    @property
    def default_metrics(self) -> tuple[str, ...]:
        return self.metrics

    @property
    def parameters(self) -> list | None:
        """A label per copy (for curves), or ``None`` when copies are random draws."""
        return None

    @property
    def consistency_pairs(self) -> list[tuple[int, int]]:
        return []

    @property
    def layer_pairs(self) -> list[tuple[int, int]]:
        """Copy pairs (i, j) compared at each layer: copy j against copy i moved by their relative shift."""
        return [(0, k) for k in range(1, self.num_copies)]

    def params(self) -> dict:
        raise NotImplementedError

    def spec(self) -> str:
        raise NotImplementedError

    def make(self, images: torch.Tensor, indices: torch.Tensor, seed: int, copies=None) -> Copies:
        """The copies numbered ``copies`` (default: all K, in order) of each image.

        Shape:
            Input: images (B, C, H, W) at the source size; indices (B,) dataset indices.
            Output: ``Copies.inputs`` (len(copies) * B, C, h, w), copy-major.
        """
        raise NotImplementedError

    def _which(self, copies) -> list[int]:
        if copies is None:
            return list(range(self.num_copies))
        which = [int(k) for k in copies]
        if not which or min(which) < 0 or max(which) >= self.num_copies:
            raise ShiftlabError(f"copies must be a non-empty list of copy numbers in [0, {self.num_copies - 1}]")
        return which

    def to_dict(self) -> dict:
        return {"name": type(self).__name__, "spec": self.spec(), "circular": self.circular,
                "shifts": self.shifts, "copies": self.num_copies, **self.params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))


def _positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ShiftlabError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _stack(copies: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(copies), dim=0)



_SHIFT_MODES = ("crop", "circular", "canvas")
_FILLS = ("black", "mean", "inpaint")


class _ShiftSequence(Protocol):
    """Copies at a fixed list of content shifts (the same for every image)."""

    modes: tuple[str, ...] = _SHIFT_MODES

    def __init__(self, mode: str, size: int | None = None, object_size: int | None = None, fill: str = "black"):
        if mode not in self.modes:
            raise ShiftlabError(f"mode must be one of {', '.join(self.modes)}, got {mode!r}")
        self.mode = mode
        self.circular = mode == "circular"
        self.size = None if size is None else _positive("size", size)
        self.object_size = None if object_size is None else _positive("object_size", object_size)
        if fill not in _FILLS:
            raise ShiftlabError(f"fill must be one of {', '.join(_FILLS)}, got {fill!r}")
        self.fill = fill

    def _offsets(self) -> torch.Tensor:
        """(K, 2) offsets in the roll convention (content displacement)."""
        raise NotImplementedError

    @property
    def num_copies(self) -> int:
        return int(self._offsets().shape[0])

    @property
    def parameters(self):
        return [tuple(int(v) for v in o) for o in self._offsets().tolist()]

    @property
    def extent(self):
        if self.mode != "crop":
            return (0, 0)
        o = self._offsets()
        return (int(o[:, 0].max() - o[:, 0].min()), int(o[:, 1].max() - o[:, 1].min()))

    def _mode_params(self) -> dict:
        p = {"mode": self.mode}
        if self.size is not None:
            p["size"] = self.size
        if self.mode == "canvas":
            p["object_size"] = self.object_size
            p["fill"] = self.fill
        return p

    def make(self, images, indices, seed, copies=None):
        T = _transforms()
        which = self._which(copies)
        all_offsets = self._offsets()
        offsets = all_offsets[which]
        B, _, H, W = images.shape
        K = offsets.shape[0]
        if self.mode == "circular":
            copies = [T.circular_shift(images, int(dy), int(dx)) for dy, dx in offsets.tolist()]
        elif self.mode == "crop":
            # the window for content displacement d starts at (max d) - d, so all windows fit
            top = int(all_offsets[:, 0].max())
            left = int(all_offsets[:, 1].max())
            size = (H - self.extent[0], W - self.extent[1])
            copies = [T.crop_shift(images, top - int(dy), left - int(dx), size) for dy, dx in offsets.tolist()]
        else:  # canvas: the image shrunk to object_size, pasted so the sweep stays inside the canvas
            obj = self.object_size or max(1, round(min(H, W) * 100 / 224))
            span_y = int(all_offsets[:, 0].max() - all_offsets[:, 0].min())
            span_x = int(all_offsets[:, 1].max() - all_offsets[:, 1].min())
            if obj + max(span_y, span_x) > min(H, W):
                raise ShiftlabError(f"canvas sweep does not fit: object {obj} px + sweep {max(span_y, span_x)} px "
                                    f"> canvas {min(H, W)} px")
            top0 = (H - obj - span_y) // 2 - int(all_offsets[:, 0].min())
            left0 = (W - obj - span_x) // 2 - int(all_offsets[:, 1].min())
            copies = [T.canvas_embed(images, top0 + int(dy), left0 + int(dx), (H, W), object_size=obj, fill=self.fill)
                      for dy, dx in offsets.tolist()]
        shifts = offsets.unsqueeze(0).expand(B, K, 2).contiguous()
        return Copies(_stack(copies), shifts, K)

    def fits(self, size: tuple[int, int]) -> str | None:
        """Why the sweep cannot run on inputs of ``size`` (H, W), or ``None``."""
        if self.mode != "canvas":
            return None
        o = self._offsets()
        obj = self.object_size or max(1, round(min(size) * 100 / 224))
        span = max(int(o[:, 0].max() - o[:, 0].min()), int(o[:, 1].max() - o[:, 1].min()))
        if obj + span > min(size):
            return (f"the canvas sweep does not fit: object {obj} px + sweep {span} px > canvas {min(size)} px; "
                    f"use a shorter sweep or a larger --image-size")
        return None



class ShiftGrid(_ShiftSequence):
    """All shifts (dy, dx) in {0, step, .., (n-1)*step}^2 (worst case over a grid, Michaeli et al. 2023)."""

    kind = "grid"
    modes = ("circular", "crop")

    def __init__(self, n: int = 8, step: int = 1, mode: str = "circular", size: int | None = None):
        self.n = _positive("n", n)
        self.step = _positive("step", step)
        super().__init__(mode, size)

    def _offsets(self):
        g = torch.arange(self.n, dtype=torch.long) * self.step
        yy, xx = torch.meshgrid(g, g, indexing="ij")
        o = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)
        return -o if self.mode == "crop" else o

    @property
    def default_metrics(self):
        return ("worst_case_stability", "agreement", "accuracy")

    def params(self):
        return {"n": self.n, "step": self.step, **self._mode_params()}

    def spec(self):
        return f"grid:{self.n}:{self.step}:{self.mode}"



def _ints(parts: list[str], spec: str) -> list[int]:
    from shiftlab.models.preprocessing import MAX_INPUT_SIDE

    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"bad transform spec {spec!r}: expected integers in {':'.join(parts)!r}") from None
    # every integer of a spec is a size, an offset or a count of steps in pixels: none may exceed the largest input
    huge = [v for v in values if v > MAX_INPUT_SIDE]
    if huge:
        raise InputError(f"bad transform spec {spec!r}: {huge[0]} is over the {MAX_INPUT_SIDE}-px limit of a model "
                         f"input")
    return values

