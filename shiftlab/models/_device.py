"""Moving a model to a device, with a one-line error for a device that is not there."""

from __future__ import annotations

import torch
from torch import nn

from shiftlab.errors import InputError


def resolve_device(device) -> torch.device | None:
    """``None`` stays ``None``; a name or torch.device is checked to exist on this machine."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}: {exc}") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise InputError(f"device {device} cannot run an audit; use cpu or cuda (cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device} requested but MPS is not available on this machine")
    return device


def to_device(model: nn.Module, device) -> nn.Module:
    device = resolve_device(device)
    return model if device is None else model.to(device)
