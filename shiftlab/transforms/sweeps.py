"""Sweeps: the parameter tensors of the protocols (diagonal, ImageNet-P and grid offsets, seeded random
offsets, angles, scales, brightness factors)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from shiftlab.errors import ShapeError

__all__ = ["angle_sweep", "brightness_sweep", "diagonal_offsets", "imagenet_p_offsets", "random_offsets", "scale_sweep",
           "shift_grid"]


def _check_count(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ShapeError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def diagonal_offsets(n: int) -> torch.Tensor:
    """The diagonal sweep (Zhang's -ed protocol, Azulay & Weiss): offsets (o, o) for o = 0..n.

    Shape:
        - Output: (n + 1, 2) int64, columns (dy, dx)

    >>> diagonal_offsets(2).tolist()
    [[0, 0], [1, 1], [2, 2]]
    """
    _check_count(n, "n")
    o = torch.arange(n + 1, dtype=torch.int64)
    return torch.stack([o, o], dim=1)


def imagenet_p_offsets(max_shift: int = 20) -> torch.Tensor:
    """The ImageNet-P translate sequence: horizontal offsets (0, dx) for dx = -max_shift..max_shift (41 frames).

    Shape:
        - Output: (2 * max_shift + 1, 2) int64, columns (dy, dx)
    """
    _check_count(max_shift, "max_shift")
    dx = torch.arange(-max_shift, max_shift + 1, dtype=torch.int64)
    return torch.stack([torch.zeros_like(dx), dx], dim=1)


def shift_grid(n: int, step: int = 1) -> torch.Tensor:
    """All shifts (dy, dx) in {0, step, ..., (n - 1) step}^2, dy-major (Michaeli et al.'s worst-case grid).

    Shape:
        - Output: (n * n, 2) int64, columns (dy, dx)

    >>> shift_grid(2, step=3).tolist()
    [[0, 0], [0, 3], [3, 0], [3, 3]]
    """
    _check_count(n, "n", 1)
    _check_count(step, "step", 1)
    o = torch.arange(n, dtype=torch.int64) * step
    dy, dx = torch.meshgrid(o, o, indexing="ij")
    return torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)


# splitmix64 constants as signed int64 (torch int64 arithmetic wraps modulo 2^64)
def _signed(c: int) -> int:
    return c - (1 << 64) if c >= (1 << 63) else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def random_offsets(seed: int, indices, low: int, high: int, count: int = 2) -> torch.Tensor:
    """Uniform random integer offsets in [low, high] (inclusive), drawn from (seed, sample index) alone.

    Counter-based: draw j of sample i is ``splitmix64(splitmix64(splitmix64(seed) + i) + j)`` reduced modulo
    ``high - low + 1`` (bias below 2^-40 for ranges under 2^13), with draws j = 2c (dy) and 2c + 1 (dx)
    for offset pair c. So the offsets of a sample do not depend on which other samples are in the batch, on
    how a dataset is split into shards, or on ``count`` (the first pairs of a larger count are the same).
    Computed with vectorised int64 tensor arithmetic, no loop.

    Zhang's protocol: ``random_offsets(seed, indices, 0, 31)`` (two 224 crops of a 256 image); circular
    consistency on ImageNet: ``random_offsets(seed, indices, -32, 31)``.

    Args:
        seed: any int.
        indices: sample indices, a sequence of ints, an integer tensor (N,) or a numpy array.
        low, high: inclusive bounds.
        count: offset pairs per sample.

    Shape:
        - Output: (N, count, 2) int64 on CPU (or on the device of ``indices``), last axis (dy, dx)
    """
    for name, value in (("seed", seed), ("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ShapeError(f"{name} must be an int, got {value!r}")
    seed, low, high = int(seed), int(low), int(high)
    if low > high:
        raise ShapeError(f"low ({low}) must not exceed high ({high})")
    if high - low >= 1 << 40:
        raise ShapeError(f"the range {low}..{high} is too large (at most 2^40 values)")
    _check_count(count, "count")
    if not isinstance(indices, (torch.Tensor, Sequence, range)) and hasattr(indices, "__array__"):
        indices = torch.as_tensor(indices.__array__())  # a numpy array
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ShapeError(f"indices must be integers, got {indices.dtype}")
        if indices.ndim != 1:
            raise ShapeError(f"indices must be one-dimensional, got shape {tuple(indices.shape)}")
        index = indices.to(torch.int64)
    elif isinstance(indices, (Sequence, range)) and all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in indices):
        index = torch.tensor([int(i) for i in indices], dtype=torch.int64)
    else:
        raise ShapeError("indices must be a sequence of ints or a one-dimensional integer tensor")
    stream = _splitmix64(torch.tensor(_signed(seed % (1 << 64)), dtype=torch.int64, device=index.device))
    per_sample = _splitmix64(stream + index)  # (N,)
    draw = torch.arange(2 * count, dtype=torch.int64, device=index.device)
    bits = _splitmix64(per_sample[:, None] + draw[None, :])  # (N, 2 * count)
    value = low + torch.remainder(_shr(bits, 11), high - low + 1)  # top 53 bits, non-negative
    return value.view(-1, count, 2)


def angle_sweep(max_angle: float = 180.0, step: float = 15.0) -> torch.Tensor:
    """Angles -max_angle..max_angle degrees in steps of ``step`` (0 included), for :func:`rotate`.

    Shape:
        - Output: (2 * floor(max_angle / step) + 1,) float64

    >>> angle_sweep(90, 45).tolist()
    [-90.0, -45.0, 0.0, 45.0, 90.0]
    """
    if not (max_angle >= 0 and step > 0 and math.isfinite(max_angle) and math.isfinite(step)):
        raise ShapeError(f"need max_angle >= 0 and step > 0, got {max_angle}, {step}")
    k = int(math.floor(max_angle / step + 1e-9))
    return torch.arange(-k, k + 1, dtype=torch.float64) * step


def scale_sweep(min_factor: float = 0.5, max_factor: float = 2.0, num: int = 9) -> torch.Tensor:
    """``num`` zoom factors spaced geometrically from min_factor to max_factor, for :func:`zoom`.

    Shape:
        - Output: (num,) float64
    """
    _check_count(num, "num", 1)
    if not (0 < min_factor <= max_factor and math.isfinite(max_factor)):
        raise ShapeError(f"need 0 < min_factor <= max_factor, got {min_factor}, {max_factor}")
    return torch.logspace(math.log10(min_factor), math.log10(max_factor), num, dtype=torch.float64)


def brightness_sweep(min_factor: float = 0.5, max_factor: float = 1.5, num: int = 11) -> torch.Tensor:
    """``num`` brightness (or contrast) factors spaced linearly from min_factor to max_factor.

    Shape:
        - Output: (num,) float64
    """
    _check_count(num, "num", 1)
    if not (0 <= min_factor <= max_factor and math.isfinite(max_factor)):
        raise ShapeError(f"need 0 <= min_factor <= max_factor, got {min_factor}, {max_factor}")
    return torch.linspace(min_factor, max_factor, num, dtype=torch.float64)
