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
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from shiftlab.errors import InputError
from shiftlab.models.loading import (FIXED_CHECKPOINT_FORMAT, SelectOutput, check_materialized, file_sha256,
                                     is_registry_spec, shown_arg)

__all__ = ["FORMAT", "VERSION", "FIX_METHODS", "FIX_OPTIONS", "parse_fix", "recipe_spec", "save_fixed",
           "fixed_checkpoint_bytes", "load_fixed", "read_fixed", "is_fixed", "load_model", "conversion_kwargs",
           "load_arguments"]

FORMAT = FIXED_CHECKPOINT_FORMAT
VERSION = 1
FIX_METHODS = ("blur", "aps", "lps", "tips")
#: options after the method in a fix spec: ``aps:circular``, ``blur:before`` (placement), ``blur:circular:before``
FIX_OPTIONS = ("circular", "before")
_CONVERSION_KEYS = ("method", "filter_size", "circular", "keep_stem", "exclude", "placement")


def parse_fix(spec: str | None) -> dict | None:
    """``"blur"``, ``"aps"``, ``"aps:circular"``, ``"blur:before"`` -> keyword arguments of
    :func:`shiftlab.antialias`."""
    if spec is None:
        return None
    parts = [p.strip() for p in str(spec).split(":")]
    method, options = parts[0], parts[1:]
    if method not in FIX_METHODS:
        raise InputError(f"--fix must be blur, aps, lps or tips, optionally followed by :circular (or blur:before), "
                         f"got {spec!r}")
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
    if recipe.get("filter_size") not in (None, 3):
        details.append(f"filter {recipe['filter_size']}")
    if recipe.get("method") == "blur" and recipe.get("keep_stem") is False:
        details.append("stem converted")
    if recipe.get("method") == "aps" and recipe.get("keep_stem") is True:
        details.append("stem kept")
    if recipe.get("exclude"):
        details.append(f"{len(recipe['exclude'])} excluded")
    return text + (f" ({', '.join(details)})" if details else "")


# ------------------------------------------------------------------------------------------- the recipe


def _original(model: nn.Module, spec) -> dict:
    source = getattr(model, "shiftlab_source", None) or {}
    key = model.key if isinstance(model, SelectOutput) else None
    if spec is not None:
        if not isinstance(spec, (str, os.PathLike)):
            raise InputError(f"spec must be a model spec string, got {type(spec).__name__}")
        return {"spec": os.fspath(spec), "weights": None, "weights_sha256": None, "output_key": key,
                "random_init": None}
    original = source.get("original") if isinstance(source.get("original"), Mapping) else source
    return {"spec": original.get("spec"), "weights": original.get("weights"),
            "weights_sha256": original.get("weights_sha256"), "output_key": key,
            "random_init": original.get("random_init")}


def _recipe(model: nn.Module, spec=None, finetune: Mapping | None = None) -> dict:
    from shiftlab._version import __version__

    conversion = getattr(model, "shiftlab_fix", None)
    if not isinstance(conversion, Mapping):
        raise InputError("the model was not converted by shiftlab.antialias (it has no recipe); convert it first, "
                         "or save its state_dict as plain weights")
    recipe = {k: conversion[k] for k in _CONVERSION_KEYS}
    recipe["exclude"] = list(recipe["exclude"])
    recipe["fix"] = recipe_spec(recipe)
    recipe["shiftlab_version"] = __version__
    recipe["model"] = _original(model, spec)
    previous = (getattr(model, "shiftlab_source", None) or {}).get("recipe") or {}
    recipe["finetune"] = dict(finetune) if finetune is not None else previous.get("finetune")
    return recipe


def _check_recipe(recipe, path) -> dict:
    """The recipe of a fixed checkpoint, checked value by value (a damaged or hand-edited one is refused)."""
    from shiftlab.fix.antialias import METHODS, PLACEMENTS
    from shiftlab.layers.blur_pool import MAX_FILTER_SIZE

    def bad(what: str):
        raise InputError(f"{path}: the fixed checkpoint's recipe is damaged ({what}); convert the model again with "
                         f"shiftlab fix")

    if not isinstance(recipe, Mapping):
        bad("not a dict")
    missing = [k for k in (*_CONVERSION_KEYS, "model") if k not in recipe]
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
    model = recipe["model"]
    if not isinstance(model, Mapping) or not isinstance(model.get("spec"), (str, type(None))):
        bad("model")
    key = model.get("output_key")
    if key is not None and (isinstance(key, bool) or not isinstance(key, (int, str))):
        bad(f"output_key {key!r}")
    return dict(recipe)


def conversion_kwargs(recipe: Mapping) -> dict:
    """The keyword arguments of :func:`shiftlab.antialias` that a recipe records."""
    kwargs = {k: recipe[k] for k in _CONVERSION_KEYS}
    kwargs["exclude"] = tuple(kwargs["exclude"])
    return kwargs


# ------------------------------------------------------------------------------------------- saving


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
    doc = {"format": FORMAT, "version": VERSION, "recipe": _recipe(model, spec, finetune),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    buffer = io.BytesIO()
    torch.save(doc, buffer)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- loading


def _peek(path: Path):
    """The checkpoint's top-level object, read without copying its tensors where the format allows (mmap)."""
    from shiftlab.models.loading import read_checkpoint

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mapped: read them whole, with its errors
        return read_checkpoint(path)


def is_fixed(obj) -> bool:
    """Whether a loaded checkpoint object is a fixed checkpoint."""
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def read_fixed(path) -> dict | None:
    """The checked contents of a fixed checkpoint (``format``, ``version``, ``recipe``, ``state_dict``), or None
    when ``path`` holds another kind of checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    obj = _peek(path)
    if not is_fixed(obj):
        return None
    if obj.get("version") != VERSION:
        raise InputError(f"{path} is a fixed checkpoint of format version {obj.get('version')!r}; this shiftlab "
                         f"reads version {VERSION}")
    state = obj.get("state_dict")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: the fixed checkpoint holds no state_dict of tensors")
    return {"format": FORMAT, "version": VERSION, "recipe": _check_recipe(obj.get("recipe"), path),
            "state_dict": dict(state)}


def load_fixed(path, model=None, device=None, seed: int | None = 0, *, contents: dict | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_fixed`: the architecture, the recorded conversion, the weights
    (loaded strictly), in eval mode.

    Args:
        path: the fixed checkpoint.
        model: the original architecture, as a spec or an ``nn.Module`` (default: the spec the recipe records,
            when it is a registry spec, ``timm:``, ``torchvision:`` or ``pretrained:``; a ``file.py:factory`` spec
            in a file is never imported: such a model is loaded by naming its file here).
        device: where to put the model.
        seed: the random initialisation drawn before the weights are loaded (no effect on the result).

    The model records where it came from in ``model.shiftlab_source`` (the file, its sha256, the recipe).
    """
    from shiftlab.fix.antialias import antialias
    from shiftlab.models.loading import load_state_strictly
    from shiftlab.models.loading import load_model as load_plain

    path = Path(path).expanduser()
    contents = contents if contents is not None else read_fixed(path)
    if contents is None:
        raise InputError(f"{path} is not a fixed checkpoint (no recipe): pass it as weights of its architecture")
    recipe = contents["recipe"]
    original = recipe["model"]
    if model is None:
        model = original.get("spec")
        if model is None:
            raise InputError(f"{path} records no model spec (it was saved from a Python module): load it with "
                             f"shiftlab.load_model(ARCHITECTURE, weights={str(path)!r}), or pass --model SPEC "
                             f"--weights {path}")
        if not is_registry_spec(model):
            # a spec inside a file is data, never code to run: "evil.py:f" (or whatever models.py sits in the
            # current folder) would be imported by resolving it; only the registries are resolved
            raise InputError(f"{path} was made from {shown_arg(model)}, a model built by code outside shiftlab, and "
                             f"loading a checkpoint never runs code it names: if you trust that file, name it "
                             f"yourself, "
                             f"--model {shown_arg(model)} --weights {shown_arg(str(path))} "
                             f"(Python: shiftlab.load_model({model!r}, weights={str(path)!r}))")
    if isinstance(model, nn.Module) and getattr(model, "shiftlab_fix", None) is not None:
        raise InputError("the architecture given for a fixed checkpoint is already converted; pass the original")
    plain = load_plain(model, device=None, output_key=original.get("output_key"), seed=seed)
    fixed, _ = antialias(plain, inplace=True, **conversion_kwargs(recipe))
    try:
        load_state_strictly(fixed, contents["state_dict"], path.name)
    except InputError as exc:
        spec = model if isinstance(model, (str, os.PathLike)) else type(model).__name__
        raise InputError(f"{exc} (architecture {spec}, converted with {recipe['fix']}; the file was made from "
                         f"{original.get('spec') or 'a Python module'})") from None
    fixed.shiftlab_source = {
        "spec": os.fspath(model) if isinstance(model, (str, os.PathLike)) else None,
        "weights": str(path), "weights_sha256": file_sha256(path),
        "random_init": bool(original.get("random_init")) and not recipe.get("finetune"), "seed": seed,
        "fix": recipe["fix"], "recipe": recipe, "original": dict(original)}
    from shiftlab.models._device import to_device

    return to_device(fixed.eval(), device)


def load_arguments(path, spec) -> list[str]:
    """The command-line arguments that load the fixed checkpoint ``path`` made from the model ``spec`` (the
    recipe's ``model.spec``): ``["--model", path]`` for a registry spec; else the architecture named explicitly,
    ``["--model", spec, "--weights", path]`` (``ARCHITECTURE`` for a model saved from a Python module), since a
    checkpoint alone never runs the code it names.

    >>> load_arguments("f.pt", "timm:resnet18"), load_arguments("f.pt", "net.py:make")
    (['--model', 'f.pt'], ['--model', 'net.py:make', '--weights', 'f.pt'])
    """
    if is_registry_spec(spec):
        return ["--model", str(path)]
    return ["--model", spec if isinstance(spec, str) else "ARCHITECTURE", "--weights", str(path)]


def _as_checkpoint(spec) -> Path | None:
    """``spec`` as the path of an existing checkpoint file (not a ``file.py:factory`` spec), else None."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    text = os.fspath(spec)
    head, _, _ = text.rpartition(":")
    if text.endswith(".py") or head.endswith(".py"):
        return None
    path = Path(text).expanduser()
    return path if path.is_file() else None


def load_model(spec, weights=None, device=None, output_key=None, seed: int | None = 0) -> nn.Module:
    """:func:`shiftlab.models.load_model`, plus fixed checkpoints: what ``shiftlab.load_model`` is.

    - ``load_model("fixed.pt")``: the model a fixed checkpoint records (its spec, its conversion, its weights);
    - ``load_model(SPEC_OR_MODULE, weights="fixed.pt")``: that architecture, converted by the recipe, with the
      weights loaded strictly (an architecture they do not fit is refused);
    - anything else: as :func:`shiftlab.models.load_model` (plain weights, random initialisation, ...).

    >>> load_model("timm:resnet18").training
    False
    """
    from shiftlab.models.loading import load_model as load_plain

    path = _as_checkpoint(spec) if weights is None else None
    if path is not None:
        contents = read_fixed(path)
        if contents is None:
            raise InputError(f"{path} is a weights file, not a model: name the architecture as the model (timm:NAME, "
                             f"torchvision:NAME, pretrained:NAME or file.py:factory) and pass this file as weights "
                             f"(CLI: --weights)")
        return _with_key(load_fixed(path, None, device, seed, contents=contents), output_key, contents)
    if weights is not None:
        wpath = Path(weights).expanduser()
        contents = read_fixed(wpath) if wpath.is_file() else None
        if contents is not None:
            return _with_key(load_fixed(wpath, spec, device, seed, contents=contents), output_key, contents)
    return load_plain(spec, weights=weights, device=device, output_key=output_key, seed=seed)


def _with_key(model: nn.Module, output_key, contents: dict) -> nn.Module:
    recorded = contents["recipe"]["model"].get("output_key")
    if output_key is None or output_key == recorded:
        return model
    if recorded is not None:
        raise InputError(f"the fixed checkpoint was made with output_key {recorded!r}; got {output_key!r}")
    wrapped = SelectOutput(model, output_key)
    wrapped.shiftlab_source = model.shiftlab_source
    wrapped.shiftlab_fix = getattr(model, "shiftlab_fix", None)
    return wrapped.eval()
