"""How a fixed checkpoint becomes a converted model again: the fix side of the rebuilder registry of
:mod:`shiftlab.models.fixed_checkpoint`.

That module (in the models layer, below this one) owns the file format and loads every model spec; importing
this module registers, for the fixed-checkpoint format, how a recipe is checked (:func:`shiftlab.fix.recipe.
check_recipe`), how the plain architecture is converted by it (:func:`rebuild_converted`: :func:`shiftlab.antialias`
with the recorded arguments) and how a converted model is told (:func:`shiftlab.fix.recipe.is_converted`). The
models layer imports this module by name (its entry point) the first time it reads such a file.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from shiftlab.fix.antialias import antialias
from shiftlab.fix.decoders import check_pairs
from shiftlab.fix.recipe import check_recipe, conversion_kwargs, conversion_of, is_converted
from shiftlab.fix.transformers import check_transformer_recipe
from shiftlab.models.fixed_checkpoint import FORMAT, Rebuilder, register_rebuilder

__all__ = ["REBUILDER", "rebuild_converted"]


def rebuild_converted(architecture: nn.Module, recipe: Mapping) -> nn.Module:
    """``architecture`` (the plain model) converted in place as ``recipe`` records, ready for the saved weights."""
    fixed, _ = antialias(architecture, inplace=True, **conversion_kwargs(recipe))
    check_pairs(recipe.get("decoders"), conversion_of(fixed).get("decoders"))
    check_transformer_recipe(recipe, conversion_of(fixed))
    return fixed


#: the fixed-checkpoint format's rebuilder, registered on import
REBUILDER = Rebuilder(check_recipe=check_recipe, rebuild=rebuild_converted, is_converted=is_converted)
register_rebuilder(FORMAT, REBUILDER)
