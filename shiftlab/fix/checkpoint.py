"""Fixed checkpoints: a converted model's weights saved together with the recipe that converted it.

The state_dict of a converted model has the same keys as the original's (:func:`~shiftlab.antialias` adds no
parameter and no persistent buffer), so on its own it loads into the plain architecture, and the conversion
is lost without a word. A fixed checkpoint keeps the recipe beside the weights, and loading it re-applies the
recipe before loading the weights strictly::

    >>> import shiftlab, torchvision
    >>> fixed, _ = shiftlab.antialias(shiftlab.load_model("torchvision:resnet18"), "aps", circular=True)
    >>> shiftlab.save_fixed(fixed, "r18_aps.pt")                       # doctest: +SKIP
    >>> again = shiftlab.load_model("r18_aps.pt")                      # doctest: +SKIP

From the command line, ``shiftlab fix ... --out FILE`` writes one, and ``--model FILE`` (or the architecture
spec with ``--weights FILE``) loads it wherever a model is named. Loading a file never runs code the file names:
``--model FILE`` resolves the recorded spec only when it is a registry's (``timm:``, ``torchvision:``,
``pretrained:``); a model built by the user's own ``mymodel.py:make`` is loaded by naming that file,
``--model mymodel.py:make --weights FILE`` (``load_model("mymodel.py:make", weights=FILE)``).
``shiftlab.models.load_model`` and ``load_weights``, which know nothing of conversions, refuse the file with a
message that says what to do.

Where things are: this module writes fixed checkpoints (:func:`save_fixed`, :func:`fixed_checkpoint_bytes`); the
file format and the loading of every model spec, fixed checkpoints included, are the models layer's
(:mod:`shiftlab.models.fixed_checkpoint`: ``load_model`` here is its ``load_any_model``, and ``read_fixed``,
``load_fixed``, ``load_arguments`` are its own); what a fix is (methods, recipe, :func:`parse_fix`) is
:mod:`shiftlab.fix.recipe`; how a file becomes a converted model again is :mod:`shiftlab.fix.rebuild`. Every name
stays importable from here.

The file (``torch.save``; read back with ``torch.load(..., weights_only=True)`` only) is a dict::

    {"format": "shiftlab.fixed-checkpoint", "version": 1, "recipe": {...}, "state_dict": {...}}

and the recipe holds plain values only (strings, numbers, booleans, lists, dicts, None)::

    method, filter_size, circular, keep_stem, exclude, placement   the arguments of antialias
    fix                                                            the same as a spec ("aps:circular")
    shiftlab_version                                               who wrote it
    model: {spec, weights, weights_sha256, output_key}             the original model (spec None: a Python
                                                                   module; pass its architecture to load)
    finetune: None or {steps, teacher, ...}                        set by shiftlab.finetune
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from shiftlab.errors import InputError
# the names below moved to the modules that own them; they stay importable from here
from shiftlab.fix.recipe import FIX_METHODS, FIX_OPTIONS, conversion_kwargs, make_recipe, parse_fix, recipe_spec
from shiftlab.models.fixed_checkpoint import FORMAT, VERSION, is_fixed, load_arguments, load_fixed, read_fixed
from shiftlab.models.fixed_checkpoint import load_any_model as load_model
from shiftlab.models.loading import check_materialized

__all__ = ["FORMAT", "VERSION", "FIX_METHODS", "FIX_OPTIONS", "parse_fix", "recipe_spec", "save_fixed",
           "fixed_checkpoint_bytes", "load_fixed", "read_fixed", "is_fixed", "load_model", "conversion_kwargs",
           "load_arguments"]


def save_fixed(model: nn.Module, path, *, force: bool = False, spec=None, finetune: Mapping | None = None) -> Path:
    """Save a model converted by :func:`shiftlab.antialias` with its recipe (atomically), so that
    :func:`shiftlab.load_model` rebuilds it exactly.

    Args:
        model: the converted model (it carries its recipe in ``model.shiftlab_fix``).
        path: the file to write; an existing file is refused unless ``force``.
        spec: the original model's spec (``"timm:resnet50"``, ``"net.py:make"``), when the model was not loaded
            by shiftlab from a spec; without one, loading needs the architecture (``load_model(arch, weights=path)``).
        finetune: a summary of the fine-tuning that made these weights (set by :func:`shiftlab.finetune`).

    Returns the path written.
    """
    from shiftlab._io import atomic_write_bytes, check_output_path

    path = check_output_path(path, force, "the output")
    return atomic_write_bytes(path, fixed_checkpoint_bytes(model, spec=spec, finetune=finetune), force=True)


def fixed_checkpoint_bytes(model: nn.Module, *, spec=None, finetune: Mapping | None = None) -> bytes:
    """The bytes :func:`save_fixed` writes (for writers that place the file themselves)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_materialized(model, "the model to save")
    doc = {"format": FORMAT, "version": VERSION, "recipe": make_recipe(model, spec, finetune),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    buffer = io.BytesIO()
    torch.save(doc, buffer)
    return buffer.getvalue()
