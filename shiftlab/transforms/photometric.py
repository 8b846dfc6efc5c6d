"""Lighting: brightness, contrast and gamma, as torchvision defines them, per image or per batch."""

from __future__ import annotations

import torch

from shiftlab.errors import ShapeError
from shiftlab.transforms._params import _check_image, _float_param

__all__ = ["adjust_brightness", "adjust_contrast", "adjust_gamma"]


def _per_sample_factor(value, x: torch.Tensor, name: str) -> torch.Tensor | float:
    value = _float_param(value, x.shape[0], x.device, name)
    if isinstance(value, torch.Tensor):
        return value.to(x.dtype).view(-1, 1, 1, 1)
    return value


def adjust_brightness(x: torch.Tensor, factor) -> torch.Tensor:
    """Multiply pixel values by ``factor`` and clamp to [0, 1] (torchvision's brightness).

    Args:
        x: images in [0, 1].
        factor: non-negative float or tensor (B,); 1 is the identity, 0 gives black.

    Shape:
        - Input: (B, C, H, W); factor: float or (B,)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    factor = _per_sample_factor(factor, x, "factor")
    if (factor < 0) if isinstance(factor, float) else bool((factor < 0).any()):
        raise ShapeError("brightness factor must be non-negative")
    return (x * factor).clamp(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor) -> torch.Tensor:
    """Blend each image with its mean grey level and clamp to [0, 1] (torchvision's contrast).

    ``out = clamp(factor * x + (1 - factor) * m)`` with m the per-image mean of the grey image (torchvision's
    luma weights 0.2989 R + 0.587 G + 0.114 B for 3 channels; the plain mean for 1 channel). 1 is the
    identity, 0 gives a uniform grey image.

    Args:
        x: images in [0, 1] with 1 or 3 channels.
        factor: non-negative float or tensor (B,).

    Shape:
        - Input: (B, C, H, W) with C in {1, 3}; factor: float or (B,)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    channels = x.shape[1]
    if channels not in (1, 3):
        raise ShapeError(f"adjust_contrast needs 1 or 3 channels, got {channels}")
    factor = _per_sample_factor(factor, x, "factor")
    if (factor < 0) if isinstance(factor, float) else bool((factor < 0).any()):
        raise ShapeError("contrast factor must be non-negative")
    if channels == 3:
        luma = torch.tensor([0.2989, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        grey = (x * luma).sum(dim=1, keepdim=True)
    else:
        grey = x
    mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
    return (factor * x + (1.0 - factor) * mean).clamp(0.0, 1.0)


def adjust_gamma(x: torch.Tensor, gamma) -> torch.Tensor:
    """Gamma correction ``out = clamp(x, 0, 1) ** gamma`` (torchvision's with gain 1).

    The input is clamped to [0, 1] first so that fractional powers stay real. gamma < 1 brightens the mid
    tones, gamma > 1 darkens them; 0 and 1 are fixed points.

    Args:
        x: images in [0, 1].
        gamma: positive float or tensor (B,).

    Shape:
        - Input: (B, C, H, W); gamma: float or (B,)
        - Output: (B, C, H, W)
    """
    _check_image(x)
    gamma = _per_sample_factor(gamma, x, "gamma")
    if (gamma <= 0) if isinstance(gamma, float) else bool((gamma <= 0).any()):
        raise ShapeError("gamma must be positive")
    return x.clamp(0.0, 1.0) ** gamma
