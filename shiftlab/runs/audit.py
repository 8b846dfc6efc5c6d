"""One ``shiftlab audit`` run as data: its options, the command line that repeats it, and its execution.

The CLI parses its flags into an :class:`AuditRun` and calls :meth:`AuditRun.execute`; the report builds the
same objects for each of its figures, so the ``shiftlab audit ...`` line printed beside a figure
(:meth:`AuditRun.command`) reproduces its numbers exactly: both go through :func:`shiftlab.audit` with the
same arguments.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, fields, replace

from shiftlab.errors import InputError

__all__ = ["AuditRun", "parse_fix", "check_maps", "check_device", "check_layers_syntax", "check_output_key", "check_data_spec",
           "AMP_DTYPES"]

#: torch.compile backends every torch 2 has (others are looked up in torch.compiler.list_backends)
_COMMON_BACKENDS = ("inductor", "eager", "aot_eager", "cudagraphs")

#: the dtypes of --amp-dtype (timm's validate.py meaning: the autocast dtype of --amp)
AMP_DTYPES = ("float16", "bfloat16")


def check_maps(value, flag: str = "--maps") -> int:
    """The number of images whose dense maps an audit keeps: an integer from 0 to
    :data:`shiftlab.measure.dense.MAX_MAPS` (else InputError naming ``flag``)."""
    from shiftlab.measure.dense import MAX_MAPS

    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MAPS:
        raise InputError(f"{flag} must be an integer from 0 to {MAX_MAPS}, got {value!r}")
    return value


def check_device(device, amp: bool = False) -> None:
    """--device names a torch device this machine has, and --amp has a CUDA device to run on: from the arguments,
    before any model is loaded (one line naming the flag)."""
    import torch

    if device is not None:
        try:
            chosen = torch.device(str(device))
        except (RuntimeError, ValueError):
            raise InputError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device}: this machine has no CUDA device; use --device cpu")
        if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    on_cuda = (str(device).startswith("cuda") if device is not None else torch.cuda.is_available())
    if amp and not on_cuda:
        raise InputError("--amp (mixed precision) needs a CUDA device" + ("" if device is not None else
                                                                          ": this machine has none"))


def check_layers_syntax(text: str | None) -> None:
    """``--layers``: ``all``, ``stages`` or comma-separated layer names / torch.nn type names (letters, digits, ``_``
    and ``.``), checked from the text alone; whether the names exist is known once the model is built."""
    import re

    if text is None or text.strip() in ("all", "stages"):
        return
    names = [n.strip() for n in text.split(",")]
    if not any(names):
        raise InputError("--layers names no layer; use all, stages, layer names or a module type such as Conv2d")
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.]+", n)]
    if bad:
        raise InputError(f"--layers {bad[0]!r} is not a layer name (letters, digits, _ and . only, comma-separated); "
                         f"use all, stages, layer names such as layer1.0.conv1, or a module type such as Conv2d")


def check_output_key(text: str | None) -> None:
    """``--output-key``: an integer (a tuple output's element) or a name (a dict output's key), not blank."""
    if text is not None and (not str(text).strip() or str(text) != str(text).strip()):
        raise InputError(f"--output-key must be an integer (element of a tuple output) or a key of a dict output, "
                         f"got {text!r}")


def check_data_spec(spec, flag: str = "--data") -> None:
    """A data spec that names a path must exist (``photos`` and ``digit-masks[...]`` name none): refused before
    any work, naming ``flag``."""
    import os
    from pathlib import Path

    from shiftlab.data.sources import DIGIT_MASKS_SPEC

    if spec is None or not isinstance(spec, (str, os.PathLike)):
        return
    text = os.fspath(spec)
    if text == "photos" or text.split(":")[0] == DIGIT_MASKS_SPEC:
        return
    if not text.strip():
        raise InputError(f"{flag} is empty; use photos, a folder, a .txt list, a .npz or a CIFAR-10 folder")
    if not Path(text).expanduser().exists():
        raise InputError(f"{flag} {text}: not found (use photos, a folder of images, a .txt list of paths, a .npz or "
                         f"a CIFAR-10 folder)")


def parse_fix(spec: str | None) -> dict | None:
    """``"blur"``, ``"aps"``, ``"aps:circular"``, ``"blur:before"`` -> keyword arguments of :func:`shiftlab.antialias`
    (:func:`shiftlab.fix.checkpoint.parse_fix`)."""
    from shiftlab.fix.recipe import parse_fix as parse

    return parse(spec)


def _floats(values, flag: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    out = tuple(float(v) for v in values)
    if len(out) not in (1, 3):
        raise InputError(f"{flag} takes 1 or 3 numbers, got {len(out)}")
    return out * 3 if len(out) == 1 else out


@dataclass(frozen=True)
class AuditRun:
    """The options of one audit (CLI flags, without the dashes); defaults are the CLI's defaults.

    Options that decide the numbers are part of :meth:`command`; ``device``, ``workers``, ``progress`` and
    ``checkpoint`` decide only how the work is done.
    """

    model: str
    data: str = "photos"
    transform: str | None = None
    weights: str | None = None
    fix: str | None = None
    reference: str | None = None
    metrics: tuple[str, ...] | None = None
    layers: str | None = None
    seed: int = 0
    limit: int | None = None
    batch_size: int = 32
    output_key: str | None = None
    margin: int | None = None
    no_resize: bool = False
    image_size: int | tuple[int, int] | None = None  # (H, W): --input-size C H W with H != W
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    class_map: str | None = None
    predictions: bool = False
    maps: int = 0  # dense outputs: keep the disagreement and prediction maps of the first N images (0..16)
    threads: int | None = None
    num_classes: int | None = None  # timm's --num-classes / --in-chans: they build another model, so they are "what"
    in_chans: int | None = None
    # how, not what
    device: str | None = None
    workers: int | None = None
    amp: bool = False
    amp_dtype: str | None = None  # float16 (the default of --amp) or bfloat16
    channels_last: bool | None = None  # True: model and inputs in channels_last memory format; None: the engine's choice
    torchcompile: str | None = None  # a torch.compile backend (inductor, eager, ...)
    checkpoint: str | None = None
    checkpoint_every: int = 20
    extra: dict = field(default_factory=dict, compare=False)

    _FLAG_ORDER = ("model", "weights", "num_classes", "in_chans", "fix", "reference", "data", "limit", "transform",
                   "metrics", "layers", "maps",
                   "seed", "batch_size", "output_key", "margin", "no_resize", "image_size", "mean", "std",
                   "interpolation", "crop_pct", "class_map", "threads", "amp", "amp_dtype")

    def with_(self, **changes) -> AuditRun:
        return replace(self, **changes)

    def command(self) -> str:
        """The ``shiftlab audit ...`` line that repeats this run (non-default options only)."""
        defaults = {f.name: f.default for f in fields(self) if f.name != "extra"}
        parts = ["shiftlab", "audit"]
        for name in self._FLAG_ORDER:
            value = getattr(self, name)
            if name != "model" and value == defaults.get(name):
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                if value:
                    parts.append(flag)
                continue
            if name == "image_size" and isinstance(value, tuple):  # H != W: timm's --input-size C H W
                parts += ["--input-size", str(self.in_chans or 3), *map(str, value)]
                continue
            if name == "in_chans" and isinstance(self.image_size, tuple):
                continue  # said by --input-size
            if isinstance(value, tuple):
                if name == "metrics":
                    parts += [flag, ",".join(value)]
                else:
                    parts += [flag, *(f"{v:g}" for v in value)]
                continue
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return shlex.join(parts)

    def check(self, files: bool = True) -> None:
        """Every option is valid (one-line errors naming the flag), before anything is loaded; ``files=False``
        leaves out whether the files the flags name exist (for a run given its models loaded already, e.g. the
        report's audit of a fine-tuned model whose file is written with the report)."""
        from shiftlab.measure.protocols import parse_protocol

        if self.transform is not None:
            try:
                parse_protocol(self.transform)
            except InputError as exc:
                raise InputError(f"--transform: {exc}") from None
        parse_fix(self.fix)
        for name, minimum in (("batch_size", 1), ("limit", 1), ("margin", 0), ("threads", 1), ("workers", 0),
                              ("checkpoint_every", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")
        check_maps(self.maps)
        if self.image_size is not None:
            from shiftlab.models.preprocessing import check_input_size

            check_input_size(self.image_size, "--input-size" if isinstance(self.image_size, tuple) else "--image-size")
        if self.fix is not None and self.reference is not None:
            # --fix makes the unconverted model the reference; a second one would silently change what
            # reference_agreement means
            raise InputError(f"--fix and --reference together: with --fix, reference_agreement is agreement with the "
                             f"unconverted model; to compare the fixed model with {self.reference}, save it first "
                             f"(shiftlab fix --out FIXED.pt) and audit --model FIXED.pt --reference {self.reference}")
        if self.metrics is not None and not self.metrics:
            raise InputError("--metrics names no metric")
        _floats(self.mean, "--mean")
        std = _floats(self.std, "--std")
        if std is not None and any(v <= 0 for v in std):
            raise InputError(f"--std must be positive, got {', '.join(f'{v:g}' for v in std)}")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise InputError(f"--crop-pct must be in (0, 1], got {self.crop_pct:g}")
        if self.interpolation is not None:
            from shiftlab.data.images import INTERPOLATIONS

            if self.interpolation not in INTERPOLATIONS:
                raise InputError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                                 f"{self.interpolation!r}")
        check_device(self.device, self.amp)
        self._check_model_options()
        self._check_requests()
        if files:
            self._check_files()

    def _check_model_options(self) -> None:
        """--num-classes, --in-chans, --amp-dtype, --torchcompile: from the arguments alone."""
        from shiftlab.models.loading import check_build_options

        check_build_options(self.model, self.num_classes, self.in_chans)
        if self.amp_dtype is not None:
            if self.amp_dtype not in AMP_DTYPES:
                raise InputError(f"--amp-dtype must be one of {', '.join(AMP_DTYPES)}, got {self.amp_dtype!r}")
            if not self.amp:
                raise InputError(f"--amp-dtype {self.amp_dtype} is the dtype of mixed precision: add --amp")
        if self.torchcompile is not None and self.torchcompile not in _COMMON_BACKENDS:
            import torch

            backends = torch.compiler.list_backends(exclude_tags=())  # imports torch._dynamo: seconds
            if self.torchcompile not in backends:
                raise InputError(f"--torchcompile {self.torchcompile!r} is not a torch.compile backend; choose from "
                                 f"{', '.join(sorted(backends))}")

    def _check_requests(self) -> None:
        """--metrics against the protocol (the engine's own rule, :func:`shiftlab.measure.prepare.check_metric_names`),
        massc and --maps against the protocol, --layers and --output-key syntax: before any model or image is
        loaded. What needs the model's output (massc or miou on a classifier) or the data's labels and masks is
        checked after the probe."""
        from shiftlab.measure.dense import check_dense_requests
        from shiftlab.measure.prepare import check_metric_names
        from shiftlab.measure.protocols import CircularShiftPair, parse_protocol

        # without --transform the protocol is circular:32 (circular:3 under 64 px): the same metrics either way
        protocol = parse_protocol(self.transform) if self.transform is not None else CircularShiftPair(32)
        names = None
        try:
            names = check_metric_names(list(self.metrics), protocol) if self.metrics else None
            check_dense_requests([n for n in names or () if n != "miou"], protocol, None, 0)
        except InputError as exc:
            raise InputError(f"--metrics {','.join(self.metrics)}: {exc}") from None
        try:
            check_dense_requests([], protocol, None, self.maps)
        except InputError as exc:
            raise InputError(f"--maps {self.maps}: {exc}") from None
        check_layers_syntax(self.layers)
        check_output_key(self.output_key)

    def _check_files(self) -> None:
        """The files and folders the flags name exist (and are what the flag takes)."""
        from pathlib import Path

        from shiftlab.models.loading import shown_arg

        if self.checkpoint is not None and Path(self.checkpoint).expanduser().is_file():
            raise InputError(f"--checkpoint is shiftlab's resume folder; for a weights file use --weights "
                             f"{shown_arg(self.checkpoint)}")
        if self.weights is not None and not Path(self.weights).expanduser().is_file():
            raise InputError(f"--weights {self.weights}: file not found")
        if self.class_map is not None:
            from shiftlab.measure.labels import read_class_map

            read_class_map(self.class_map)
        check_data_spec(self.data)

    def load(self, device=None):
        """The model to audit and its reference (the unconverted model with ``fix``), as modules.

        Models are loaded by :func:`shiftlab.load_model`, so a fixed checkpoint (``--model FILE``, or the
        architecture with ``--weights FILE``) comes back converted, as it was saved.
        """
        import copy

        from shiftlab.models.fixed_checkpoint import load_any_model as load_model

        from shiftlab.models.loading import given_build_options

        build = given_build_options(self)
        model = load_model(self.model, weights=self.weights, device=device, output_key=_key(self.output_key),
                           seed=self.seed, **build)
        reference = None
        fix = parse_fix(self.fix)
        if fix is not None:
            from shiftlab.fix.antialias import antialias
            from shiftlab.fix.recipe import is_converted

            if is_converted(model):
                raise InputError(f"--model {self.weights or self.model} is a fixed checkpoint already "
                                 f"({model.shiftlab_source.get('fix')}); drop --fix, or name the original model")
            original = model
            model, _ = antialias(copy.deepcopy(original), **fix)
            model.shiftlab_source = {**(getattr(original, "shiftlab_source", None) or {}), "fix": self.fix}
            reference = original
        if self.reference is not None:
            reference = load_model(self.reference, device=device, output_key=_key(self.output_key), seed=self.seed)
        return model, reference

    def preprocessing_overrides(self) -> dict | None:
        out = {k: v for k, v in (("mean", _floats(self.mean, "--mean")), ("std", _floats(self.std, "--std")),
                                  ("interpolation", self.interpolation), ("crop_pct", self.crop_pct)) if v is not None}
        return out or None

    def execute(self, progress: bool | str = False, model=None, reference=None):
        """Run the audit; ``model``/``reference`` may be passed pre-loaded (they must be what :meth:`load` gives)."""
        import torch

        from shiftlab.data.sources import open_images
        from shiftlab.measure.audit import audit
        from shiftlab.measure.labels import read_class_map

        self.check(files=model is None)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        class_map = read_class_map(self.class_map) if self.class_map is not None else None
        device = self.device
        if device is None or device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        source = open_images(self.data, limit=self.limit)
        if model is None:
            model, loaded_reference = self.load(device)
            reference = loaded_reference if reference is None else reference
        layers = _layers(self.layers, model)
        if self.torchcompile is not None:
            model = _compiled(model, self.torchcompile)
        return audit(model, source, transform=self.transform, metrics=list(self.metrics) if self.metrics else None,
                     batch_size=self.batch_size, device=device, layers=layers, seed=self.seed, margin=self.margin,
                     image_size=self.image_size, preprocessing=self.preprocessing_overrides(),
                     resize=False if self.no_resize else None, progress=progress, workers=self.workers,
                     class_map=class_map, reference=reference, predictions=self.predictions, maps=self.maps,
                     checkpoint=self.checkpoint, checkpoint_every=self.checkpoint_every,
                     amp=getattr(torch, self.amp_dtype) if self.amp and self.amp_dtype else self.amp,
                     channels_last=self.channels_last,
                     command=self.extra.get("command") or self.command())


def _compiled(model, backend: str):
    """``model`` with its forward compiled by ``torch.compile(backend=...)`` in place (``nn.Module.compile``): the
    same module, so its names, hooks, provenance and preprocessing stay as they were."""
    model.compile(backend=backend)
    return model


def _key(text):
    if text is None:
        return None
    return int(text) if str(text).lstrip("-").isdigit() else text


def _layers(text: str | None, model):
    if text is None:
        return None
    text = text.strip()
    if text in ("all", "stages"):
        return text
    import torch.nn as nn

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError("--layers names no layer; use all, stages, layer names or a module type such as Conv2d")
    module_names = {n for n, _ in model.named_modules()}
    types = [getattr(nn, n) for n in names if n not in module_names and isinstance(getattr(nn, n, None), type)]
    if types and len(types) == len(names):
        return tuple(types)
    return names
