"""What a fix is: the conversion methods, where they are placed, the recipe a converted model carries, and
whether a model is already converted. Both :mod:`shiftlab.fix.antialias` (which makes conversions) and
:mod:`shiftlab.fix.checkpoint` (which saves and rebuilds them) read it; neither imports the other for it."""

from __future__ import annotations

from torch import nn

__all__ = ["is_converted", "conversion_of"]


def conversion_of(model) -> dict | None:
    """The recipe of a model converted by :func:`shiftlab.antialias` (``model.shiftlab_fix``), else None."""
    return getattr(model, "shiftlab_fix", None) if isinstance(model, nn.Module) else None


def is_converted(model) -> bool:
    """Whether ``model`` was converted by :func:`shiftlab.antialias` (it carries a fix recipe)."""
    return conversion_of(model) is not None
