"""Fixed checkpoints, and the one loader of every model spec that knows them (:func:`load_any_model`, which is
``shiftlab.load_model``).

A fixed checkpoint is a converted model's weights saved together with the recipe that converted it (written by
:func:`shiftlab.save_fixed`). The state_dict of a converted model has the same keys as the original's, so on its
own it loads into the plain architecture and the conversion is lost without a word: the plain loaders
(:func:`shiftlab.models.load_model`, :func:`~shiftlab.models.load_weights`) refuse the file, saying what to do,
and :func:`load_any_model` rebuilds it: the architecture, the recorded conversion, the weights (loaded strictly).

The file (``torch.save``; read back with ``torch.load(..., weights_only=True)`` only) is a dict::

    {"format": "shiftlab.fixed-checkpoint", "version": 1, "recipe": {...}, "state_dict": {...}}

and the recipe holds plain values only (its entries: :mod:`shiftlab.fix.recipe`); ``recipe["model"]`` names the
original model (``spec``, ``weights``, ``weights_sha256``, ``output_key``; spec None: a Python module).

Loading a file never runs code the file names (issue 17): the recorded spec is resolved only when it is a
registry's (:func:`~shiftlab.models.loading.is_registry_spec`: ``timm:``, ``torchvision:``, ``pretrained:``); a
model built by the user's own ``mymodel.py:make`` is loaded by naming that file,
``load_any_model("mymodel.py:make", weights=FILE)`` (CLI: ``--model mymodel.py:make --weights FILE``).

The rebuilder registry. This module owns the file format and the loading; what a conversion is belongs to the
layer above (``shiftlab.fix``), which this layer never imports. That layer registers, per format, a
:class:`Rebuilder` (how to check a recipe, how to convert the plain architecture by it, how to tell a converted
model) with :func:`register_rebuilder`. So that loading a fixed checkpoint works whatever was imported before
(``import shiftlab.models`` alone included), :data:`ENTRY_POINTS` names, per format, the module that registers its
rebuilder; it is imported by name the first time such a file is read, as a plugin's entry point is, and a format
with neither a rebuilder nor an entry point is refused in one line. That by-name import is the only way this
layer reaches ``shiftlab.fix``.

>>> load_any_model("timm:resnet18").training
False
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shiftlab.errors import InputError
from shiftlab.models._device import to_device
from shiftlab.models.loading import (FIXED_CHECKPOINT_FORMAT, SelectOutput, build_options, file_sha256,
                                     is_registry_spec, load_model, load_state_strictly, read_checkpoint, shown_arg)

__all__ = ["FORMAT", "VERSION", "ENTRY_POINTS", "Rebuilder", "register_rebuilder", "rebuilder_for", "is_fixed",
           "read_fixed", "load_fixed", "load_any_model", "load_arguments"]

FORMAT = FIXED_CHECKPOINT_FORMAT
VERSION = 1
#: format -> the module that registers its :class:`Rebuilder` when imported (imported on the first file of it)
ENTRY_POINTS = {FORMAT: "shiftlab.fix.rebuild"}


@dataclass(frozen=True)
class Rebuilder:
    """How the models of one checkpoint format are rebuilt, registered by the layer that makes them.

    Attributes:
        check_recipe: ``check_recipe(recipe, path) -> dict``: the recipe checked value by value (a damaged one
            raises :class:`~shiftlab.errors.InputError`); it must check ``recipe["model"]`` (a mapping whose
            ``spec`` is a str or None) too.
        rebuild: ``rebuild(architecture, recipe) -> nn.Module``: the plain architecture converted as the recipe
            says (in place), ready for the file's weights.
        is_converted: ``is_converted(model) -> bool``: whether a model given as the architecture is already
            converted (refused: the original is needed).
    """

    check_recipe: Callable[[object, Path], dict]
    rebuild: Callable[[nn.Module, Mapping], nn.Module]
    is_converted: Callable[[object], bool]


_REBUILDERS: dict[str, Rebuilder] = {}


def register_rebuilder(format: str, rebuilder: Rebuilder) -> None:
    """Make ``rebuilder`` the way checkpoints whose ``"format"`` entry is ``format`` are rebuilt."""
    if not isinstance(rebuilder, Rebuilder):
        raise InputError(f"rebuilder must be a Rebuilder, got {type(rebuilder).__name__}")
    _REBUILDERS[format] = rebuilder


def rebuilder_for(format: str) -> Rebuilder:
    """The rebuilder registered for ``format``, importing its entry point (:data:`ENTRY_POINTS`) if none is yet."""
    if format not in _REBUILDERS and format in ENTRY_POINTS:
        importlib.import_module(ENTRY_POINTS[format])
    if format not in _REBUILDERS:
        raise InputError(f"no rebuilder is registered for {format!r} checkpoints: import the package that makes "
                         f"them before loading one")
    return _REBUILDERS[format]


def is_fixed(obj) -> bool:
    """Whether a loaded checkpoint object is a fixed checkpoint."""
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def _peek(path: Path):
    """The checkpoint's top-level object, read without copying its tensors where the format allows (mmap)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mapped: read them whole, with its errors
        return read_checkpoint(path)


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
    recipe = rebuilder_for(FORMAT).check_recipe(obj.get("recipe"), path)
    return {"format": FORMAT, "version": VERSION, "recipe": recipe, "state_dict": dict(state)}


def _recorded_architecture(path: Path, original: Mapping) -> str:
    """The architecture a fixed checkpoint records, when it may be resolved from the file alone: a registry spec
    (a spec inside a file is data, never code to run: ``evil.py:f``, or whatever ``models.py`` sits in the current
    folder, would be imported by resolving it)."""
    spec = original.get("spec")
    if spec is None:
        raise InputError(f"{path} records no model spec (it was saved from a Python module): load it with "
                         f"shiftlab.load_model(ARCHITECTURE, weights={str(path)!r}), or pass --model SPEC "
                         f"--weights {path}")
    if not is_registry_spec(spec):
        raise InputError(f"{path} was made from {shown_arg(spec)}, a model built by code outside shiftlab, and "
                         f"loading a checkpoint never runs code it names: if you trust that file, name it "
                         f"yourself, "
                         f"--model {shown_arg(spec)} --weights {shown_arg(str(path))} "
                         f"(Python: shiftlab.load_model({spec!r}, weights={str(path)!r}))")
    return spec


def _load_converted_weights(model: nn.Module, contents: dict, path: Path, architecture) -> None:
    """The file's weights loaded strictly into the rebuilt model; a misfit names the architecture and the fix."""
    recipe = contents["recipe"]
    try:
        load_state_strictly(model, contents["state_dict"], path.name)
    except InputError as exc:
        spec = architecture if isinstance(architecture, (str, os.PathLike)) else type(architecture).__name__
        raise InputError(f"{exc} (architecture {spec}, converted with {recipe['fix']}; the file was made from "
                         f"{recipe['model'].get('spec') or 'a Python module'})") from None


def load_fixed(path, model=None, device=None, seed: int | None = 0, *, contents: dict | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`shiftlab.save_fixed`: the architecture, the recorded conversion, the weights
    (loaded strictly), in eval mode.

    Args:
        path: the fixed checkpoint.
        model: the original architecture, as a spec or an ``nn.Module`` (default: the spec the recipe records,
            when it is a registry spec, ``timm:``, ``torchvision:`` or ``pretrained:``; a ``file.py:factory`` spec
            in a file is never imported: such a model is loaded by naming its file here).
        device: where to put the model.
        seed: the random initialisation drawn before the weights are loaded (no effect on the result).
        contents: what :func:`read_fixed` returned for ``path``, when the caller has read it already.

    The model records where it came from in ``model.shiftlab_source`` (the file, its sha256, the recipe).
    """
    path = Path(path).expanduser()
    contents = contents if contents is not None else read_fixed(path)
    if contents is None:
        raise InputError(f"{path} is not a fixed checkpoint (no recipe): pass it as weights of its architecture")
    recipe = contents["recipe"]
    original = recipe["model"]
    if model is None:
        model = _recorded_architecture(path, original)
    rebuilder = rebuilder_for(FORMAT)
    if rebuilder.is_converted(model):
        raise InputError("the architecture given for a fixed checkpoint is already converted; pass the original")
    plain = load_model(model, device=None, output_key=original.get("output_key"), seed=seed,
                       **build_options(model, original))  # e.g. the 5 classes it was built with
    fixed = rebuilder.rebuild(plain, recipe)
    _load_converted_weights(fixed, contents, path, model)
    fixed.shiftlab_source = {
        "spec": os.fspath(model) if isinstance(model, (str, os.PathLike)) else None,
        "weights": str(path), "weights_sha256": file_sha256(path),
        "random_init": bool(original.get("random_init")) and not recipe.get("finetune"), "seed": seed,
        "fix": recipe["fix"], "recipe": recipe, "original": dict(original)}
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


def load_any_model(spec, weights=None, device=None, output_key=None, seed: int | None = 0, **build) -> nn.Module:
    """Any model spec, fixed checkpoints included: :func:`shiftlab.models.load_model` plus fixed checkpoints, what
    ``shiftlab.load_model`` is.

    - ``load_any_model("fixed.pt")``: the model a fixed checkpoint records (its spec, its conversion, its weights);
    - ``load_any_model(SPEC_OR_MODULE, weights="fixed.pt")``: that architecture, converted by the recipe, with the
      weights loaded strictly (an architecture they do not fit is refused);
    - anything else: as :func:`shiftlab.models.load_model` (plain weights, random initialisation, ...).
    """
    if weights is not None and not Path(weights).expanduser().is_file():  # before any model is built
        raise InputError(f"weights file not found: {weights}")
    path = _as_checkpoint(spec) if weights is None else None
    if path is not None:
        contents = read_fixed(path)
        if contents is None:
            raise InputError(f"{path} is a weights file, not a model: name the architecture as the model (timm:NAME, "
                             f"torchvision:NAME, pretrained:NAME or file.py:factory) and pass this file as weights "
                             f"(CLI: --weights)")
        _check_build(contents, build, path)
        return _with_key(load_fixed(path, None, device, seed, contents=contents), output_key, contents)
    if weights is not None:
        wpath = Path(weights).expanduser()
        contents = read_fixed(wpath) if wpath.is_file() else None
        if contents is not None:
            _check_build(contents, build, wpath)
            return _with_key(load_fixed(wpath, spec, device, seed, contents=contents), output_key, contents)
    return load_model(spec, weights=weights, device=device, output_key=output_key, seed=seed, **build)


def _check_build(contents: dict, build: dict, path: Path) -> None:
    """A fixed checkpoint is rebuilt as it was built (its recipe records --num-classes / --in-chans): options given
    beside it must say the same, else one line naming the flag."""
    recorded = contents["recipe"]["model"]
    for name, value in build.items():
        if value is not None and value != recorded.get(name):
            flag = "--" + name.replace("_", "-")
            was = recorded.get(name)
            raise InputError(f"{flag} {value}: {path} was built with "
                             f"{'the architecture default' if was is None else f'{flag} {was}'} and is rebuilt as it "
                             f"was; drop {flag}")


def _with_key(model: nn.Module, output_key, contents: dict) -> nn.Module:
    """The rebuilt model, wrapped to select ``output_key`` when the file did not record one (it keeps the
    model's provenance and conversion)."""
    recorded = contents["recipe"]["model"].get("output_key")
    if output_key is None or output_key == recorded:
        return model
    if recorded is not None:
        raise InputError(f"the fixed checkpoint was made with output_key {recorded!r}; got {output_key!r}")
    wrapped = SelectOutput(model, output_key)
    for name in ("shiftlab_source", "shiftlab_fix"):  # the provenance and the conversion the rebuild attached
        setattr(wrapped, name, getattr(model, name, None))
    return wrapped.eval()
