"""What a conversion changed: one :class:`Replacement` per layer (shared by :mod:`shiftlab.fix.antialias`,
:mod:`shiftlab.fix.decoders` and :mod:`shiftlab.fix.segmentation`), and the two small module-tree helpers they use."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["Replacement", "replacement_counts", "describe_module", "set_submodule"]


@dataclass(frozen=True)
class Replacement:
    """One change made by :func:`antialias`: module ``name``, what it was and what it became."""

    name: str
    before: str
    after: str

    @property
    def kept(self) -> bool:
        """Whether the layer was left as it was (a strided stem kept on purpose), not replaced."""
        return self.after.startswith("kept")

    @property
    def unreplaced(self) -> bool:
        """Whether this is subsampling the conversion found but cannot replace (a function in a forward, a
        leaf module of unknown type): the converted model still aliases there."""
        return self.after.startswith("not replaced")


def replacement_counts(report) -> dict:
    """``{"replaced": N, "kept": M}`` for the report of :func:`antialias`, with ``"not_replaced": K`` when it
    lists subsampling it could not replace."""
    kept = sum(r.kept for r in report)
    unreplaced = sum(r.unreplaced for r in report)
    counts = {"replaced": len(report) - kept - unreplaced, "kept": kept}
    if unreplaced:
        counts["not_replaced"] = unreplaced
    return counts


def describe_module(module: nn.Module) -> str:
    """How a replaced module is named in a report: its repr, or its class name when the repr spans lines."""
    text = repr(module)
    return text if "\n" not in text else type(module).__name__


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` of ``model``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
