"""The experiments' own audit protocols: views that the stock protocols of :mod:`shiftlab.measure.protocols`
do not make. Both are ordinary :class:`~shiftlab.measure.protocols.Protocol` subclasses, passed to
:func:`shiftlab.audit` as ``transform=``; every number measured on them comes from the audit.

- :class:`CentredDiagonalSweep`: diagonal crop shifts (s, s), s = -k..k, of an image padded by k black
  pixels, the unshifted view first, so that the audit's ``agreement`` curve is the agreement with the
  unshifted prediction and its ``accuracy`` curve the accuracy at each shift (copy 0: the image itself).
- :class:`Placements`: a canvas whose object sits at its top-left corner, moved to each (top, left) of a
  list of positions: the accuracy curve is an accuracy per position (the heatmap of unseen-positions).

>>> import torch, shiftlab
>>> sweep = CentredDiagonalSweep(2)
>>> sweep.parameters
[(0, 0), (-2, -2), (-1, -1), (1, 1), (2, 2)]
>>> x = torch.nn.functional.pad(torch.rand(3, 1, 8, 8), (2, 2, 2, 2))  # the source: padded by k
>>> copies = sweep.make(x, torch.arange(3), seed=0)
>>> copies.inputs.shape, bool(torch.equal(copies.inputs[:3], x[..., 2:10, 2:10]))
(torch.Size([15, 1, 8, 8]), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shiftlab.errors import ShapeError, ShiftlabError
from shiftlab.measure.protocols import Copies, Protocol

__all__ = ["CentredDiagonalSweep", "Placements"]


def _stack(views: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(views), dim=0)


class CentredDiagonalSweep(Protocol):
    """Diagonal shifts (s, s) of the content, s = -max_shift..max_shift, the unshifted view first.

    The source image is the model input padded by ``max_shift`` black (or any) pixels on every side; copy
    ``s`` is the input-sized window at (max_shift - s, max_shift - s), which shows the content moved by
    (s, s) (``torch.roll`` convention) with the padding entering at the border. Copy 0 is the window at
    (max_shift, max_shift): the unpadded image itself. Copies are ordered s = 0, -k, .., -1, 1, .., k, so the
    audit's ``agreement`` (copy k against copy 0) is the agreement with the unshifted prediction and its
    ``accuracy`` curve holds the accuracy at every shift. Same windows as ``diagonal:2k:crop``, in another
    order (which is why P(top-1 change) between adjacent copies is not offered here).

    Shape:
        Input: images (B, C, H + 2k, W + 2k); output copies (K * B, C, H, W), K = 2k + 1.
    """

    kind = "ordered"
    spec_name = "centred-diagonal"

    def __init__(self, max_shift: int = 4):
        if isinstance(max_shift, bool) or int(max_shift) != max_shift or int(max_shift) < 1:
            raise ShiftlabError(f"max_shift must be an integer >= 1, got {max_shift!r}")
        self.max_shift = int(max_shift)

    def _shifts(self) -> list[int]:
        k = self.max_shift
        return [0, *range(-k, 0), *range(1, k + 1)]

    @property
    def num_copies(self) -> int:
        return 2 * self.max_shift + 1

    @property
    def extent(self) -> tuple[int, int]:
        return (2 * self.max_shift, 2 * self.max_shift)

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("agreement", "accuracy", "worst_case_stability")

    @property
    def default_metrics(self) -> tuple[str, ...]:
        return ("agreement", "accuracy")

    @property
    def parameters(self) -> list:
        return [(s, s) for s in self._shifts()]

    def params(self) -> dict:
        return {"max_shift": self.max_shift, "mode": "crop"}

    def spec(self) -> str:
        return f"{self.spec_name}:{self.max_shift}:crop"

    def make(self, images, indices, seed, copies=None):
        from shiftlab.transforms import crop_shift

        which = self._which(copies)
        k = self.max_shift
        B, _, H, W = images.shape
        size = (H - 2 * k, W - 2 * k)
        if min(size) < 1:
            raise ShapeError(f"{self.spec()!r} needs images larger than {2 * k} px, got {H}x{W}")
        shifts = [self._shifts()[c] for c in which]
        views = [crop_shift(images, k - s, k - s, size) for s in shifts]
        offsets = torch.tensor([[s, s] for s in shifts], dtype=torch.long)
        return Copies(_stack(views), offsets.unsqueeze(0).expand(B, len(which), 2).contiguous(), len(which))


class Placements(Protocol):
    """A canvas whose object sits at its top-left corner (0, 0), moved to each (top, left) of ``positions``.

    Copy k is ``torch.roll`` of the canvas by ``positions[k]``. Where the canvas is black outside the object
    and the object stays whole inside it, that is exactly the object pasted at (top, left)
    (:func:`shiftlab.experiments.digits.place`); :meth:`make` checks that nothing wraps around (the rows and
    columns that a roll would carry over the edge must be zero). The copies are exact circular shifts of one
    another (``circular = True``), so a network invariant to circular shifts gives one prediction at every
    position. ``Placements([(0, 0)])`` is the canvas as it is.

    Shape:
        Input: images (B, C, H, W), the object at (0, 0); output copies (K * B, C, H, W).
    """

    kind = "grid"
    circular = True
    spec_name = "placements"

    def __init__(self, positions: Sequence[Sequence[int]]):
        try:
            pos = [(int(t), int(l)) for t, l in positions]
        except (TypeError, ValueError):
            raise ShiftlabError(f"positions must be (top, left) pairs of integers, got {positions!r}") from None
        if not pos:
            raise ShiftlabError("positions must not be empty")
        if min(min(p) for p in pos) < 0:
            raise ShiftlabError(f"positions must be >= 0 (the object starts at (0, 0)), got {pos}")
        if len(set(pos)) != len(pos):
            raise ShiftlabError("positions must not repeat")
        self.positions = pos

    @property
    def num_copies(self) -> int:
        return len(self.positions)

    @property
    def default_metrics(self) -> tuple[str, ...]:
        return ("accuracy",)

    @property
    def parameters(self) -> list:
        return list(self.positions)

    def params(self) -> dict:
        return {"positions": [list(p) for p in self.positions]}

    def spec(self) -> str:
        return f"{self.spec_name}:" + ";".join(f"{t},{l}" for t, l in self.positions)

    def fits(self, size: tuple[int, int]) -> str | None:
        """Why the positions cannot be reached on inputs of ``size`` (H, W), or ``None``."""
        top = max(t for t, _ in self.positions)
        left = max(l for _, l in self.positions)
        if top >= size[0] or left >= size[1]:
            return f"positions up to ({top}, {left}) leave a {size[0]}x{size[1]} canvas"
        return None

    def make(self, images, indices, seed, copies=None):
        from shiftlab.transforms import circular_shift

        which = self._which(copies)
        B, _, H, W = images.shape
        chosen = [self.positions[c] for c in which]
        top, left = max(t for t, _ in chosen), max(l for _, l in chosen)
        if top >= H or left >= W:
            raise ShapeError(f"positions up to ({top}, {left}) leave a {H}x{W} canvas")
        if (top and bool(images[..., H - top:, :].any())) or (left and bool(images[..., :, W - left:].any())):
            raise ShapeError(f"placing at ({top}, {left}) would carry the object over the canvas edge: the last "
                             f"{top} rows and {left} columns must be black (the object at (0, 0), whole inside)")
        views = [circular_shift(images, t, l) for t, l in chosen]
        offsets = torch.tensor(chosen, dtype=torch.long)
        return Copies(_stack(views), offsets.unsqueeze(0).expand(B, len(which), 2).contiguous(), len(which))
