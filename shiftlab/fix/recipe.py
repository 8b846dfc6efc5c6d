"""What a fix is: the conversion methods, where they are placed, the recipe a converted model carries, and
whether a model is already converted.

Both :mod:`shiftlab.fix.antialias` (which makes conversions) and :mod:`shiftlab.fix.checkpoint` (which saves
them) read this module; neither imports the other. A converted model carries its conversion in
``model.shiftlab_fix`` (:func:`conversion_of`): the arguments of :func:`shiftlab.antialias`::

    method, filter_size, circular, keep_stem, exclude, placement

A fixed checkpoint's recipe (:func:`make_recipe`, checked by :func:`check_recipe` when it is read back) adds
``fix`` (the same as a spec, ``"aps:circular"``), ``shiftlab_version``, ``model`` (the original: spec, weights,
weights_sha256, output_key, random_init) and ``finetune`` (None, or the summary set by :func:`shiftlab.finetune`).

>>> parse_fix("aps:circular")
{'method': 'aps', 'circular': True}
>>> recipe_spec({"method": "blur", "placement": "before", "filter_size": 5})
'blur:before (filter 5)'
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from torch import nn

from shiftlab.errors import InputError
from shiftlab.layers.blur_pool import MAX_FILTER_SIZE
from shiftlab.models.loading import BUILD_KEYS, SelectOutput

__all__ = ["METHODS", "METHOD_GUARANTEES", "POLYPHASE_METHODS", "PLACEMENTS", "FIX_METHODS", "FIX_OPTIONS",
           "CONVERSION_KEYS", "DECODER_KEYS", "TRANSFORMER_KEYS", "is_converted", "conversion_of", "parse_fix",
           "recipe_spec",
           "record_conversion",
           "make_recipe", "check_recipe", "conversion_kwargs"]

#: the conversions :func:`shiftlab.antialias` makes
METHODS = ("blur", "aps", "lps", "tips", "ideal")
#: what each conversion guarantees about shifts (with ``circular=True``; zero or reflect padding breaks every
#: exact claim at the border). None of them makes a trained CNN alias-free: its activations stay pointwise.
METHOD_GUARANTEES = {
    "blur": "none exact: a binomial low-pass before each subsampling reduces aliasing",
    "aps": "exact invariance to integer circular shifts (inputs a multiple of the total stride); none for "
           "fractional shifts",
    "lps": "exact invariance to integer circular shifts, like aps, whatever it learned; none for fractional shifts",
    "tips": "none exact: the invariance is learned",
    "ideal": "none exact: an ideal (FFT) low-pass before each subsampling removes the aliasing of the subsampling "
             "itself, but the network's activations (ReLU, GELU) stay pointwise and alias, so it is NOT alias-free "
             "and not invariant to integer or fractional shifts; for exact fractional-shift invariance build an "
             "alias-free network (shiftlab.models.alias_free_resnet / alias_free_convnext)",
}
#: methods that keep one polyphase component per sample (exactly invariant with circular padding)
POLYPHASE_METHODS = ("aps", "lps")
#: where ``method="blur"`` puts the blur of a strided conv: ``"after"`` (Zhang 2019: the conv at stride 1, the
#: blur and subsampling after its activation) or ``"before"`` (Composer's blur_first: a stride-1 blur of the
#: conv's input, the conv at its stride)
PLACEMENTS = ("after", "before")
#: the methods a fix spec (``--fix``) names
FIX_METHODS = METHODS
#: options after the method in a fix spec: ``aps:circular``, ``blur:before`` (placement), ``blur:circular:before``
FIX_OPTIONS = ("circular", "before")
#: the entries of a conversion (``model.shiftlab_fix``): the arguments of :func:`shiftlab.antialias`
CONVERSION_KEYS = ("method", "filter_size", "circular", "keep_stem", "exclude", "placement")
#: entries only an encoder-decoder's conversion has (:mod:`shiftlab.fix.decoders`): its [decoder, encoder] pairs
DECODER_KEYS = ("decoders", "keep_unpaired")
#: entries only a transformer's conversion has (:mod:`shiftlab.fix.transformers`): its family and patch size
TRANSFORMER_KEYS = ("architecture", "patch_size")


def conversion_of(model) -> dict | None:
    """The recipe of a model converted by :func:`shiftlab.antialias` (``model.shiftlab_fix``), else None."""
    return getattr(model, "shiftlab_fix", None) if isinstance(model, nn.Module) else None


def is_converted(model) -> bool:
    """Whether ``model`` was converted by :func:`shiftlab.antialias` (it carries a fix recipe)."""
    return conversion_of(model) is not None


def parse_fix(spec: str | None) -> dict | None:
    """``"blur"``, ``"aps"``, ``"aps:circular"``, ``"blur:before"`` -> keyword arguments of
    :func:`shiftlab.antialias`."""
    if spec is None:
        return None
    parts = [p.strip() for p in str(spec).split(":")]
    method, options = parts[0], parts[1:]
    if method not in FIX_METHODS:
        raise InputError(f"--fix must be one of {', '.join(FIX_METHODS)}, optionally followed by :circular (or "
                         f"blur:before), got {spec!r}")
    unknown = [o for o in options if o not in FIX_OPTIONS]
    if unknown or len(set(options)) != len(options):
        raise InputError(f"--fix {spec!r}: unknown option {unknown[0] if unknown else options[0]!r}; "
                         f"options: {', '.join(FIX_OPTIONS)}")
    if "before" in options and method != "blur":
        raise InputError(f"--fix {spec!r}: the 'before' placement is for blur only")
    out = {"method": method, "circular": "circular" in options}
    if "before" in options:
        out["placement"] = "before"
    return out


def recipe_spec(recipe: Mapping) -> str:
    """The short name of a conversion: ``"aps:circular"``, ``"blur:before"``, ``"blur (filter 5)"``."""
    text = str(recipe.get("method"))
    if recipe.get("circular"):
        text += ":circular"
    if recipe.get("placement") == "before":
        text += ":before"
    details = []
    if recipe.get("filter_size") not in (None, 3) and recipe.get("method") != "ideal":  # ideal has no filter size
        details.append(f"filter {recipe['filter_size']}")
    if recipe.get("method") == "blur" and recipe.get("keep_stem") is False:
        details.append("stem converted")
    if recipe.get("method") in ("aps", "ideal") and recipe.get("keep_stem") is True:
        details.append("stem kept")
    if recipe.get("exclude"):
        details.append(f"{len(recipe['exclude'])} excluded")
    return text + (f" ({', '.join(details)})" if details else "")


def record_conversion(model: nn.Module, conversion: dict) -> None:
    """Attach a conversion (``model.shiftlab_fix``: what :func:`shiftlab.save_fixed` stores) and name the fix in
    the model's provenance, so audits say which model they measured."""
    model.shiftlab_fix = conversion
    source = getattr(model, "shiftlab_source", None)
    if isinstance(source, dict):
        model.shiftlab_source = {**source, "fix": recipe_spec(conversion)}


def _original(model: nn.Module, spec) -> dict:
    """The ``model`` entry of a recipe: the original model, from ``spec`` or from the model's provenance."""
    source = getattr(model, "shiftlab_source", None) or {}
    key = model.key if isinstance(model, SelectOutput) else None
    if spec is not None:
        if not isinstance(spec, (str, os.PathLike)):
            raise InputError(f"spec must be a model spec string, got {type(spec).__name__}")
        return {"spec": os.fspath(spec), "weights": None, "weights_sha256": None, "output_key": key,
                "random_init": None}
    original = source.get("original") if isinstance(source.get("original"), Mapping) else source
    build = {k: original[k] for k in BUILD_KEYS if original.get(k) is not None}  # timm's --num-classes / --in-chans
    return {"spec": original.get("spec"), "weights": original.get("weights"),
            "weights_sha256": original.get("weights_sha256"), "output_key": key,
            "random_init": original.get("random_init"), **build}


def make_recipe(model: nn.Module, spec=None, finetune: Mapping | None = None) -> dict:
    """The recipe a fixed checkpoint of the converted ``model`` records (plain values only).

    ``spec`` names the original model when shiftlab did not load it from one; ``finetune`` summarises the
    fine-tuning that made the weights (default: the one the model's source recipe records, if any).
    """
    from shiftlab._version import __version__

    conversion = conversion_of(model)
    if not isinstance(conversion, Mapping):
        raise InputError("the model was not converted by shiftlab.antialias (it has no recipe); convert it first, "
                         "or save its state_dict as plain weights")
    recipe = {k: conversion[k] for k in CONVERSION_KEYS}
    recipe["exclude"] = list(recipe["exclude"])
    recipe.update({k: conversion[k] for k in DECODER_KEYS if k in conversion})
    recipe.update({k: conversion[k] for k in TRANSFORMER_KEYS if k in conversion})
    recipe["fix"] = recipe_spec(recipe)
    recipe["shiftlab_version"] = __version__
    recipe["model"] = _original(model, spec)
    previous = (getattr(model, "shiftlab_source", None) or {}).get("recipe") or {}
    recipe["finetune"] = dict(finetune) if finetune is not None else previous.get("finetune")
    return recipe


def check_recipe(recipe, path) -> dict:
    """The recipe of the fixed checkpoint ``path``, checked value by value (a damaged or hand-edited one is
    refused with an :class:`~shiftlab.errors.InputError`)."""

    def bad(what: str):
        raise InputError(f"{path}: the fixed checkpoint's recipe is damaged ({what}); convert the model again with "
                         f"shiftlab fix")

    if not isinstance(recipe, Mapping):
        bad("not a dict")
    missing = [k for k in (*CONVERSION_KEYS, "model") if k not in recipe]
    if missing:
        bad(f"no {', '.join(missing)}")
    if recipe["method"] not in METHODS:
        bad(f"method {recipe['method']!r}")
    size = recipe["filter_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_FILTER_SIZE:
        bad(f"filter_size {size!r}")
    for key in ("circular", "keep_stem"):
        if not isinstance(recipe[key], bool):
            bad(f"{key} {recipe[key]!r}")
    if not isinstance(recipe["exclude"], (list, tuple)) or not all(isinstance(e, str) for e in recipe["exclude"]):
        bad(f"exclude {recipe['exclude']!r}")
    if recipe["placement"] not in PLACEMENTS or (recipe["placement"] == "before" and recipe["method"] != "blur"):
        bad(f"placement {recipe['placement']!r}")
    if "keep_unpaired" in recipe and not isinstance(recipe["keep_unpaired"], bool) or "decoders" in recipe and not (
            isinstance(recipe["decoders"], (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2
                                                                  for p in recipe["decoders"])):
        bad("decoders")
    model = recipe["model"]
    if not isinstance(model, Mapping) or not isinstance(model.get("spec"), (str, type(None))):
        bad("model")
    key = model.get("output_key")
    if key is not None and (isinstance(key, bool) or not isinstance(key, (int, str))):
        bad(f"output_key {key!r}")
    for name in BUILD_KEYS:
        value = model.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20):
            bad(f"{name} {value!r}")
    return dict(recipe)


def conversion_kwargs(recipe: Mapping) -> dict:
    """The keyword arguments of :func:`shiftlab.antialias` that a recipe records."""
    kwargs = {k: recipe[k] for k in CONVERSION_KEYS}
    kwargs["exclude"] = tuple(kwargs["exclude"])
    if recipe.get("keep_unpaired"):
        kwargs["keep_unpaired"] = True
    return kwargs
