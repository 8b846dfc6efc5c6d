"""Worst-case grids: every shift of a grid, integer, half-pixel or fractional, and the crop-shift attack.

The protocols of Michaeli, Michaeli & Soudry (CVPR 2023): an image counts as correct (``worst_case_accuracy``)
only if the model is right under every copy, and as stable (``worst_case_stability``) only if its top-1 is the
same under every copy. Copy 0 is always the unshifted image (the centre crop for ``cropattack``).

==============================  =========================================================  ===============
spec string                     copies                                                     copies / image
==============================  =========================================================  ===============
``subpixel:N[:METHOD]``         circular shifts (i/N, j/N), 0 <= i, j < N                  N^2
``halfpixel[:M[:METHOD]]``      (0, 0) and (i/2, j/2), 1 <= i, j <= M (anchor: M = 63)     1 + M^2
``fractional[:N[:METHOD]]``     (0, 0) and (a, b) for a, b among the distinct m/n,          1 + F(N)^2
                                1 <= m <= n <= N (the anchor's grid, N = 12)               (2,117 at 12)
``intgrid:M``                   circular shifts (i, j), 0 <= i, j <= M                     (M + 1)^2
``cropattack:S:M``              S x S crops of an (S + 2M) image at every offset in        (2M + 1)^2
                                [0, 2M]^2; copy 0 the centre crop
==============================  =========================================================  ===============

METHOD is ``fourier`` (default: :func:`~shiftlab.transforms.fourier_shift`, the band-limited "ideal" shift of
the periodic image, as the anchor's Fourier upsampling, roll and subsampling) or ``bilinear``
(:func:`~shiftlab.transforms.bilinear_shift`, circular bilinear resampling). Copies whose shift is a whole
number of pixels are exact ``torch.roll``s under both methods. Fourier shifts of images of even size attenuate
the Nyquist component by cos(pi d) (:func:`~shiftlab.transforms.fourier_shift`).

Shifts are real numbers (float64 in :class:`~shiftlab.measure.protocols.Copies`). Layer errors compare two
copies only where their relative shift is a whole multiple of the layer's stride; every other pair, each
fractional one included, is counted as not representable, never compared.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cached_property

import torch

from shiftlab._checks import check_int
from shiftlab.errors import InputError
from shiftlab.measure.protocol_base import Copies, Protocol, ShiftGrid, _ints, _ShiftSequence

__all__ = ["WORST_CASE_METRICS", "SHIFT_METHODS", "GRID_SPECS", "FractionalShiftGrid", "SubpixelGrid",
           "HalfPixelGrid", "FractionalGrid", "IntegerGrid", "CropAttack", "fraction_values", "parse_grid"]

#: what a worst-case grid measures, and by default the first two
WORST_CASE_METRICS = ("worst_case_accuracy", "worst_case_stability", "agreement", "accuracy")
SHIFT_METHODS = ("fourier", "bilinear")
#: spec names this module parses
GRID_SPECS = ("subpixel", "halfpixel", "fractional", "intgrid", "cropattack")

# Bounds on the grids. Each copy is one forward pass of the model, and the worst case needs them all: the cost
# of an audit is K times that of plain evaluation.
MAX_SUBPIXEL = 16  # 256 copies; steps of 1/16 px, finer than any published grid (the anchor's finest is 1/12)
MAX_HALFPIXEL = 64  # 4,097 copies; the anchor's grid is M = 63 (shifts up to 31.5 px at 224 px)
MAX_FRACTIONAL = 12  # the anchor's m/n grid: 46 distinct values, 2,117 copies
MAX_INTGRID = 64  # 4,225 copies; the anchor's integer grid is 1 <= i, j <= 31
MAX_CROP_SHIFT = 32  # 4,225 crops; Zhang's ImageNet protocol pans by 32 px


def _bounded(name: str, value, low: int, high: int, why: str) -> int:
    try:
        return check_int(name, value, low, high)
    except InputError as exc:
        raise InputError(f"{exc} ({why})") from None


def fraction_values(n: int) -> list[Fraction]:
    """The distinct values m/k for 1 <= m <= k <= n, ascending (the anchor's fractional shifts; 46 for n = 12).

    >>> [str(f) for f in fraction_values(3)]
    ['1/3', '1/2', '2/3', '1']
    """
    n = _bounded("n", n, 1, MAX_FRACTIONAL, f"fractional:N takes 1 <= N <= {MAX_FRACTIONAL}, the anchor's m/n grid")
    return sorted({Fraction(m, k) for k in range(1, n + 1) for m in range(1, k + 1)})


class FractionalShiftGrid(Protocol):
    """Circular shifts of every image by a fixed list of real (dy, dx); copy 0 is the unshifted image.

    Subclasses give the shifts as exact fractions (:meth:`fractions`). Whole-pixel copies are ``torch.roll``
    exactly; the others are resampled by ``method`` (``"fourier"`` or ``"bilinear"``), all copies of a call in
    one batched transform.
    """

    kind = "grid"
    circular = True
    shifts = True

    def __init__(self, method: str = "fourier"):
        if method not in SHIFT_METHODS:
            raise InputError(f"method must be one of {', '.join(SHIFT_METHODS)}, got {method!r}")
        self.method = method

    def fractions(self) -> list[tuple[Fraction, Fraction]]:
        """The K shifts (dy, dx), copy 0 first and equal to (0, 0)."""
        raise NotImplementedError

    @cached_property
    def _table(self) -> torch.Tensor:
        return torch.tensor([[float(a), float(b)] for a, b in self.fractions()], dtype=torch.float64)

    def offsets(self) -> torch.Tensor:
        """(K, 2) float64 shifts in the roll convention (content moves down by dy, right by dx)."""
        return self._table.clone()

    @property
    def num_copies(self) -> int:
        return int(self._table.shape[0])

    @property
    def parameters(self):
        return [tuple(pair) for pair in self._table.tolist()]

    @property
    def metrics(self):
        return WORST_CASE_METRICS

    @property
    def default_metrics(self):
        return WORST_CASE_METRICS[:2]

    def _method_tail(self) -> str:
        return "" if self.method == "fourier" else f":{self.method}"

    def fits(self, size: tuple[int, int]) -> str | None:
        """Why the grid cannot run on inputs of ``size`` (H, W): a shift as large as the image wraps around it."""
        largest = self._table.abs().max(dim=0).values
        for axis, side in enumerate(size):
            if float(largest[axis]) >= side:
                return (f"{self.spec()!r} shifts by up to {float(largest[axis]):g} px, as much as the {side}-px "
                        f"input side: the grid wraps around the image; use a smaller grid or a larger --image-size")
        return None

    def make(self, images, indices, seed, copies=None) -> Copies:
        from shiftlab import transforms as T

        which = self._which(copies)
        offsets = self._table[which]  # (k, 2)
        B, k = images.shape[0], len(which)
        stacked = images.repeat(k, 1, 1, 1)  # copy-major: row c * B + b is copy which[c] of image b
        dy = offsets[:, 0].repeat_interleave(B).to(images.device)
        dx = offsets[:, 1].repeat_interleave(B).to(images.device)
        whole = (dy == dy.round()) & (dx == dx.round())
        out = torch.empty_like(stacked)
        if bool(whole.any()):
            rows = whole.nonzero().squeeze(1)
            out[rows] = T.circular_shift(stacked[rows], dy[rows].long(), dx[rows].long())
        if not bool(whole.all()):
            rows = (~whole).nonzero().squeeze(1)
            shift = T.fourier_shift if self.method == "fourier" else T.bilinear_shift
            out[rows] = shift(stacked[rows], dy[rows], dx[rows])
        shifts = offsets.unsqueeze(0).expand(B, k, 2).contiguous()
        return Copies(out, shifts, k)


class SubpixelGrid(FractionalShiftGrid):
    """Circular shifts by every (i/n, j/n), 0 <= i, j < n: n^2 copies, copy 0 the image itself.

    ``n`` is at most 16 (256 forward passes per image; steps of 1/16 px are finer than any published grid).
    """

    spec_name = "subpixel"

    def __init__(self, n: int = 2, method: str = "fourier"):
        self.n = _bounded("N", n, 1, MAX_SUBPIXEL, f"subpixel:N shifts by i/N px, N^2 copies per image; "
                                                  f"N = 0 has no grid and N > {MAX_SUBPIXEL} is finer than any "
                                                  f"published grid at N^2 times the cost")
        super().__init__(method)

    def fractions(self):
        steps = [Fraction(i, self.n) for i in range(self.n)]
        return [(a, b) for a in steps for b in steps]

    def params(self):
        return {"n": self.n, "method": self.method}

    def spec(self):
        return f"subpixel:{self.n}{self._method_tail()}"


class HalfPixelGrid(FractionalShiftGrid):
    """The anchor's half-pixel grid: (0, 0) and every (i/2, j/2) for 1 <= i, j <= m (1 + m^2 copies).

    The anchor uses m = 63 at 224 px (shifts up to 31.5 px); a grid whose largest shift m/2 reaches the input
    side is refused once the input size is known (:meth:`fits`).
    """

    spec_name = "halfpixel"

    def __init__(self, m: int = 4, method: str = "fourier"):
        self.m = _bounded("M", m, 1, MAX_HALFPIXEL, "halfpixel:M shifts by i/2 px for 1 <= i <= M, 1 + M^2 copies; "
                                                    "the anchor's grid is M = 63")
        super().__init__(method)

    def fractions(self):
        steps = [Fraction(i, 2) for i in range(1, self.m + 1)]
        return [(Fraction(0), Fraction(0))] + [(a, b) for a in steps for b in steps]

    def params(self):
        return {"m": self.m, "method": self.method}

    def spec(self):
        return f"halfpixel:{self.m}{self._method_tail()}"


class FractionalGrid(FractionalShiftGrid):
    """The anchor's m/n grid: (0, 0) and every (a, b) with a, b among the distinct m/k, 1 <= m <= k <= n.

    Only m <= k occurs (shifts in (0, 1]); n = 12 (the anchor's) gives 46 distinct values and 1 + 46^2 = 2,117
    copies per image, which the engine streams through the model in passes of ``batch_size`` inputs.
    """

    spec_name = "fractional"

    def __init__(self, n: int = MAX_FRACTIONAL, method: str = "fourier"):
        self.n = _bounded("N", n, 1, MAX_FRACTIONAL, f"fractional:N takes shifts m/n for 1 <= m <= n <= N; "
                                                     f"N <= {MAX_FRACTIONAL}, the anchor's grid")
        super().__init__(method)

    def fractions(self):
        values = fraction_values(self.n)
        return [(Fraction(0), Fraction(0))] + [(a, b) for a in values for b in values]

    def params(self):
        return {"n": self.n, "method": self.method}

    def spec(self):
        return f"fractional:{self.n}{self._method_tail()}"


class IntegerGrid(ShiftGrid):
    """Every circular shift (i, j), 0 <= i, j <= max_shift: (max_shift + 1)^2 copies, copy 0 the image.

    The anchor's integer grid (1 <= i, j <= 31, and the image) is contained in ``intgrid:31``.
    """

    def __init__(self, max_shift: int = 3):
        self.max_shift = _bounded("M", max_shift, 1, MAX_INTGRID, "intgrid:M shifts by (i, j), 0 <= i, j <= M, "
                                                                  "(M + 1)^2 copies per image")
        super().__init__(self.max_shift + 1, 1, "circular")

    @property
    def metrics(self):
        return WORST_CASE_METRICS

    @property
    def default_metrics(self):
        return WORST_CASE_METRICS[:2]

    def params(self):
        return {"max_shift": self.max_shift}

    def spec(self):
        return f"intgrid:{self.max_shift}"

    def fits(self, size):
        if self.max_shift >= min(size):
            return (f"{self.spec()!r} shifts by up to {self.max_shift} px, as much as the {min(size)}-px input side: "
                    f"the grid wraps around the image; use M < {min(size)}")
        return None


class CropAttack(_ShiftSequence):
    """The crop-shift attack: ``size`` x ``size`` crops of a (size + 2 max_shift) image at every offset (dy, dx)
    in [0, 2 max_shift]^2, worst case per image. Copy 0 is the centre crop; the others follow row by row.

    Shifts are reported relative to the centre crop, in the roll convention: the crop at offset o shows the
    content moved by max_shift - o.
    """

    kind = "grid"
    modes = ("crop",)

    def __init__(self, size: int = 224, max_shift: int = 4):
        size = check_int("S", size, 1)
        self.max_shift = _bounded("M", max_shift, 1, MAX_CROP_SHIFT, "cropattack:S:M pans by up to M px each way; "
                                                                     "(2M + 1)^2 crops per image")
        super().__init__("crop", size)

    def _offsets(self):
        m = self.max_shift
        g = torch.arange(2 * m + 1, dtype=torch.long)
        yy, xx = torch.meshgrid(g, g, indexing="ij")
        window = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)
        centre = int(m * (2 * m + 1) + m)
        order = torch.cat([torch.tensor([centre]), torch.arange(centre), torch.arange(centre + 1, len(window))])
        return m - window[order]

    @property
    def metrics(self):
        return WORST_CASE_METRICS

    @property
    def default_metrics(self):
        return WORST_CASE_METRICS[:2]

    def params(self):
        return {"size": self.size, "max_shift": self.max_shift}

    def spec(self):
        return f"cropattack:{self.size}:{self.max_shift}"


def parse_grid(name: str, rest: list[str], spec: str) -> Protocol:
    """The grid protocol of spec ``name:rest...`` (``name`` one of :data:`GRID_SPECS`); one clear line otherwise."""
    usage = {"subpixel": "subpixel:N[:fourier|bilinear]", "halfpixel": "halfpixel[:M[:fourier|bilinear]]",
             "fractional": "fractional[:N[:fourier|bilinear]]", "intgrid": "intgrid:M", "cropattack": "cropattack:S:M"}
    method = None
    if rest and name in ("subpixel", "halfpixel", "fractional") and not rest[-1].lstrip("-").isdigit():
        method = rest[-1].lower()
        rest = rest[:-1]
        if method not in SHIFT_METHODS:
            raise InputError(f"bad transform spec {spec!r}: {method!r} is neither a number nor a method "
                             f"({', '.join(SHIFT_METHODS)}); use {usage[name]}")
    required = {"subpixel": 1, "intgrid": 1, "cropattack": 2}.get(name, 0)
    if len(rest) < required or len(rest) > max(required, 1):
        raise InputError(f"bad transform spec {spec!r}: use {usage[name]}")
    args = _ints(rest, spec)
    try:
        if name == "cropattack":
            return CropAttack(*args)
        if name == "intgrid":
            return IntegerGrid(*args)
        cls = {"subpixel": SubpixelGrid, "halfpixel": HalfPixelGrid, "fractional": FractionalGrid}[name]
        return cls(*args, method=method or "fourier")
    except InputError as exc:
        raise InputError(f"bad transform spec {spec!r}: {exc}") from None
