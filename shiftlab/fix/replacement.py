"""What a conversion changed: one :class:`Replacement` per layer (shared by :mod:`shiftlab.fix.antialias`,
:mod:`shiftlab.fix.decoders` and :mod:`shiftlab.fix.segmentation`), and the two small module-tree helpers they use."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["Replacement", "replacement_counts", "replaced_layers", "describe_module", "set_submodule"]


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
    lists subsampling it could not replace. ``N`` counts distinct layers: an entry for a block around replaced
    layers (APS's one phase shared by a residual block's branches) is a change, not another layer; ``"changes": C``
    (all entries that changed something) is added when it differs from ``N``."""
    kept = sum(r.kept for r in report)
    unreplaced = sum(r.unreplaced for r in report)
    changes = len(report) - kept - unreplaced
    counts = {"replaced": len(replaced_layers(report)), "kept": kept}
    if counts["replaced"] != changes:
        counts["changes"] = changes
    if unreplaced:
        counts["not_replaced"] = unreplaced
    return counts


def replaced_layers(report) -> list[str]:
    """The distinct names of the layers a conversion replaced, in report order: not the entries kept or not
    replaced, and not a block whose own replaced layers are listed too (its entry is a change around them)."""
    names = list(dict.fromkeys(r.name for r in report if not r.kept and not r.unreplaced))
    return [n for n in names if not any(o != n and (not n or o.startswith(n + ".")) for o in names)]


def describe_module(module: nn.Module) -> str:
    """How a replaced module is named in a report: its repr, or its class name when the repr spans lines."""
    text = repr(module)
    return text if "\n" not in text else type(module).__name__


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` of ``model``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
