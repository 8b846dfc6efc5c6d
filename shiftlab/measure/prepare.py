"""The audit's prepare stage: every check and decision before the first batch, as one :class:`Prepared` value.

In order: the scalar options (:class:`AuditOptions`), the model and reference (:func:`load_models`), the first
look at the images and their sizes (:mod:`shiftlab.measure.inputs`), the protocol and the layer margin, the
normaliser, the metrics asked for, the layers to hook, one probe forward pass (what the model outputs, whether
it is deterministic), then the metrics chosen and the label mapping. Nothing here runs a batch: a bad argument
is refused before minutes of work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shiftlab._checks import check_int
from shiftlab.errors import InputError
from shiftlab.measure import loader
from shiftlab.measure.dense import DENSE_METRICS, MAX_MAPS, check_dense_requests, choose_dense_metrics
from shiftlab.measure.forward import ModelRunner, Probe, check_reference_output, first_copy
from shiftlab.measure.stride_probe import with_model_stride
from shiftlab.measure.inputs import (
    IMAGE_SIZE_ARG,
    Images,
    InputSizes,
    first_conv_channels,
    look_at_images,
    parse_preprocessing,
)
from shiftlab.measure.protocols import CircularShiftPair, Protocol, parse_protocol
from shiftlab.measure.result import METRIC_NAMES, AuditResult
from shiftlab.models import preprocessing as model_preprocessing
from shiftlab.models.preprocessing import check_input_size

__all__ = ["AuditOptions", "Models", "Prepared", "prepare", "load_models", "choose_protocol", "check_requests",
           "choose_channels_last", "check_reference_result", "model_device", "model_dtype", "stage_layers",
           "select_layers", "default_protocol", "check_metric_names", "choose_metrics", "decide_labels",
           "LAYER_SETS", "DEFAULT_MARGIN", "MARGIN_SHARE", "LABELLED_METRICS"]

#: layer selections by keyword (besides names and module types)
LAYER_SETS = ("all", "stages")


DEFAULT_MARGIN = 16  # input pixels left out at the border for layer errors under non-circular protocols


MARGIN_SHARE = 8  # ... at most 1/MARGIN_SHARE of the input's shorter side (4 px at 32 px), so small inputs keep a core

#: metrics computed only where the data's labels are the model's classes (left out, with why, otherwise)
LABELLED_METRICS = ("accuracy", "worst_case_accuracy")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (torch's default dtype without one)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def stage_layers(model: torch.nn.Module) -> list[str]:
    """The layers along the depth of a network: children of its top-level sequential stages (blocks), else
    its top-level children; dropouts, identities and flattens left out (``layers="stages"``)."""
    names = []

    def visit(prefix: str, module: torch.nn.Module, depth: int):
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if isinstance(child, torch.nn.Sequential) and depth < 2 and len(child) > 0:
                visit(name + ".", child, depth + 1)
            elif isinstance(child, (torch.nn.Dropout, torch.nn.Identity, torch.nn.Flatten)):
                continue
            else:
                names.append(name)

    visit("", model, 0)
    return names


def select_layers(model: torch.nn.Module, layers) -> dict[str, torch.nn.Module]:
    """The modules ``layers`` names (names, a type, ``"all"``, ``"stages"``), by name; {} for None."""
    named = dict(model.named_modules())
    if layers is None:
        return {}
    if isinstance(layers, str) and layers == "all":
        chosen = {n: m for n, m in named.items() if not list(m.children())}
    elif isinstance(layers, str) and layers == "stages":
        chosen = {n: named[n] for n in stage_layers(model)}
    elif isinstance(layers, type) or (isinstance(layers, tuple) and layers
                                      and all(isinstance(t, type) for t in layers)):
        chosen = {n: m for n, m in named.items() if isinstance(m, layers)}
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        missing = [n for n in names if n not in named]
        if missing:
            some = ", ".join(n for n in list(named)[1:9])
            raise InputError(f"no layer named {', '.join(map(repr, missing))} in the model; names look like: "
                             f"{some}, ... (or use all, stages, or a type such as Conv2d)")
        chosen = {n: named[n] for n in names}
    if not chosen:
        raise InputError(f"layers={layers!r} selects no module of the model")
    return {(n or "(model)"): m for n, m in chosen.items()}


def default_protocol(hw: tuple[int, int]) -> Protocol:
    """The protocol when none is given: ImageNet-size inputs APS/LPS's circular [-32, 31]; small (CIFAR-size)
    inputs [-3, 2]."""
    return CircularShiftPair(32 if min(hw) >= 64 else 3)


def check_metric_names(metrics, protocol: Protocol) -> list[str] | None:
    """The metric names asked for (None: the protocol's defaults), each known and defined for ``protocol``."""
    if metrics is None:
        return None
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names or any(not isinstance(m, str) or not m for m in names):
        raise InputError(f"metrics must be metric names, got {metrics!r}; choose from {', '.join(METRIC_NAMES)}")
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown:
        raise InputError(f"unknown metric {', '.join(map(repr, unknown))}; choose from {', '.join(METRIC_NAMES)}")
    unsupported = [m for m in names if m not in ("equivariance", "reference_agreement", *DENSE_METRICS)
                   and m not in protocol.metrics]
    if unsupported:
        raise InputError(f"{', '.join(unsupported)} not defined for protocol {protocol.spec()!r}; it supports "
                         f"{', '.join(protocol.metrics)}")
    return list(dict.fromkeys(names))


def choose_metrics(names: list[str] | None, protocol: Protocol, output_kind: str, classes: int,
                   has_reference: bool) -> tuple[tuple[str, ...], dict]:
    """The metrics to compute once the output is known, and those left out (with why)."""
    omitted: dict[str, str] = {}
    if output_kind == "dense":
        bad = [m for m in (names or []) if m != "equivariance"]
        if bad:
            raise InputError(f"{', '.join(bad)} need class scores (B, K), but the model output is a dense map "
                             f"(B, K, H, W); use metrics=['equivariance']")
        if not protocol.shifts and getattr(protocol, "spec_name", "") != "rotate":
            raise InputError(f"equivariance of a dense output needs a shift or rotation protocol, not "
                             f"{protocol.spec()!r}")
        return ("equivariance",), omitted
    if names is not None and "equivariance" in names:
        raise InputError("equivariance is the metric of dense outputs; for a classifier use layers= (CLI: --layers) "
                         "to get per-layer equivariance errors")
    chosen = list(protocol.default_metrics) if names is None else list(names)
    if has_reference and "reference_agreement" not in chosen:
        chosen.append("reference_agreement")
    if "reference_agreement" in chosen and not has_reference:
        raise InputError("reference_agreement needs a reference model (CLI: --reference or --fix)")
    if "top5_distance" in chosen and classes < 5:
        if names is not None:
            raise InputError(f"top5_distance needs at least 5 classes, the model gives {classes}")
        chosen.remove("top5_distance")
        omitted["top5_distance"] = f"the model has {classes} classes (top-5 needs at least 5)"
    return tuple(chosen), omitted


def decide_labels(src, classes: int, class_map, wanted, omitted):
    """Whether accuracy can be computed, the label table (index -> model class) and why not when it cannot."""
    from shiftlab.data.sources import ImageSource
    from shiftlab.measure.labels import resolve_labels

    wanted = list(wanted)
    omitted = dict(omitted)
    if isinstance(src, ImageSource):
        mapping = resolve_labels(src.labels, src.class_names, src.label_space, classes, class_map)
        if mapping.usable:
            return mapping.to_dict(), mapping.labels.tolist(), False, tuple(wanted), omitted
        for name in LABELLED_METRICS:
            if name in wanted:
                wanted.remove(name)
                omitted[name] = mapping.how
        omitted.setdefault("accuracy", mapping.how)  # said even where it was not asked for
        return mapping.to_dict(), None, False, tuple(wanted), omitted
    # a generic Dataset: labels come with the items; taken as class indices when below the class count
    return ({"used": True, "how": "item labels below the class count taken as the model's class indices"}, None,
            True, tuple(wanted), omitted)


@dataclass(frozen=True)
class AuditOptions:
    """The scalar options of an audit, checked before any model or image is loaded."""

    batch_size: int = 32
    seed: int = 0
    margin: int | None = None
    checkpoint_every: int = 20
    workers: int | None = None
    confidence: float = 0.95
    amp: bool = False
    predictions: bool = False
    class_map: dict | None = None
    maps: int = 0

    def __post_init__(self):
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, 1))
        object.__setattr__(self, "seed", check_int("seed", self.seed, -(2 ** 63)))
        object.__setattr__(self, "margin", check_int("margin", self.margin, 0, allow_none=True))
        object.__setattr__(self, "checkpoint_every", check_int("checkpoint_every", self.checkpoint_every, 1))
        object.__setattr__(self, "workers", check_int("workers", self.workers, 0, allow_none=True))
        object.__setattr__(self, "maps", check_int("maps", self.maps, 0, MAX_MAPS))
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < 1:
            raise InputError(f"confidence must be in (0, 1), got {c!r}")


@dataclass
class Models:
    """The model and the reference of a run, on their device: how they are described, the output the forward
    pass selects (``output_key``; ``output_key_arg`` as given, for the checkpoint), where shiftlab loaded the
    model from (``source``), its dtype; the reference as given, as a module or as an earlier result."""

    model: torch.nn.Module
    description: str
    output_key: object
    output_key_arg: object
    source: dict | None
    device: torch.device
    dtype: torch.dtype
    reference: object = None
    reference_model: torch.nn.Module | None = None
    reference_result: AuditResult | None = None

    @property
    def has_reference(self) -> bool:
        return self.reference_model is not None or self.reference_result is not None


def load_models(model, reference, *, device, output_key, seed: int, amp: bool, world) -> Models:
    """The model (and reference) as modules on the run's device: specs loaded, meta-device modules refused."""
    from shiftlab.measure import distributed
    from shiftlab.models import load_model
    from shiftlab.models import resolve_device
    from shiftlab.models.loading import check_materialized

    dev = distributed.rank_device(device) if world.size > 1 else resolve_device(device)
    spec_model = isinstance(model, str)
    description = model if spec_model else type(model).__name__
    output_key_arg = output_key  # for the checkpoint's fingerprint (a spec model takes it in below)
    if spec_model:
        if dev is None:
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(model, device=dev, output_key=output_key, seed=seed)
        output_key = None  # the loaded model already returns the selected output
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module or a model spec string, got {type(model).__name__}")
    check_materialized(model, "the model")  # a meta-device module cannot be moved or run: one line, not a traceback
    if isinstance(reference, torch.nn.Module):
        check_materialized(reference, "the reference model")
    if dev is not None:
        model.to(dev)
    dev = model_device(model)
    if amp and dev.type != "cuda":
        raise InputError("mixed precision (--amp) needs a CUDA device")
    reference_result = reference if isinstance(reference, AuditResult) else None
    reference_model = None
    if isinstance(reference, str):
        reference_model = load_model(reference, device=dev, seed=seed)
    elif isinstance(reference, torch.nn.Module):
        reference_model = reference.to(dev)
    elif reference is not None and reference_result is None:
        raise InputError(f"reference must be a model, a model spec or an AuditResult, got {type(reference).__name__}")
    source = getattr(model, "shiftlab_source", None)
    if not spec_model and isinstance(source, dict) and source.get("spec"):
        description = source["spec"] + (f" (fix {source['fix']})" if source.get("fix") else "")
    return Models(model, str(description), output_key, output_key_arg, source, dev, model_dtype(model), reference,
                  reference_model, reference_result)


def choose_protocol(images: Images, transform, resize, margin: int | None, layers: bool):
    """The protocol (default: circular shifts that fit the input), the run's sizes, and the layer margin."""
    protocol = parse_protocol(transform) if transform is not None else default_protocol(
        images.wanted_size or (tuple(images.preprocessing.input_size) if (
            images.from_files and images.preprocessing.fixed_size) else images.own_size))
    sizes = images.input_sizes(protocol, resize)
    reason = protocol.fits(sizes.model_in) if hasattr(protocol, "fits") else None
    if reason:
        raise InputError(reason)
    side = min(sizes.model_in)
    if margin is None or protocol.circular:  # the default fits the input: 16 px, at most an eighth of its side
        margin = 0 if protocol.circular else min(DEFAULT_MARGIN, side // MARGIN_SHARE)
    elif layers and 2 * margin >= side:
        raise InputError(f"margin {margin} (CLI: --margin) leaves nothing of the {sizes.model_in[0]}x"
                         f"{sizes.model_in[1]} input to compare layers on; use a margin below "
                         f"{(side + 1) // 2}, e.g. {side // MARGIN_SHARE}")
    return protocol, sizes, int(margin)


def check_requests(metrics, protocol: Protocol, images: Images, models: Models, seed: int) -> list[str] | None:
    """The metric names asked for, checked against the protocol, the data's labels and the reference."""
    from shiftlab.data.sources import ImageSource

    names = check_metric_names(metrics, protocol)
    src = images.source
    labelled = [m for m in (names or []) if m in LABELLED_METRICS]
    if labelled and isinstance(src, ImageSource) and not src.has_labels:
        raise InputError(f"{labelled[0]} needs labels, but the data has none")
    if names and "reference_agreement" in names and models.reference is None:
        raise InputError("reference_agreement needs a reference model (CLI: --reference or --fix)")
    earlier = models.reference_result
    if earlier is not None:
        if not earlier.has_predictions:
            raise InputError("a reference AuditResult must come from an audit with predictions=True")
        if earlier.protocol != protocol.to_dict() or earlier.seed != seed:
            raise InputError("the reference audit used another protocol or seed; its views are not these views")
    return names


def choose_channels_last(model: torch.nn.Module, dtype: torch.dtype, asked: bool | None) -> bool:
    """Channels-last memory format: as asked; by default on for torch's own layers (measured: +12-25%), off for
    float64 models and models with shiftlab's layers (converted models), which run faster contiguous."""
    if asked is not None:
        return bool(asked)
    return dtype != torch.float64 and not any(
        type(m).__module__.startswith("shiftlab.") for m in model.modules()) and not any(
        isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters())


@dataclass
class Prepared:
    """Everything an audit decided before its first batch: the options, models, images, protocol and sizes,
    the layers hooked, how the models are called (``runner``), what the probe showed (``output``), the metrics
    chosen and those left out, and how the data's labels map into the model's classes."""

    options: AuditOptions
    models: Models
    images: Images
    protocol: Protocol
    sizes: InputSizes
    sizing: loader.Sizing
    margin: int
    normalize: object
    layers: dict
    runner: ModelRunner
    output: Probe
    metrics: tuple[str, ...]
    omitted: dict
    labels: dict | None = None
    label_table: list | None = None
    item_labels: bool = False


def prepare(model, data, options: AuditOptions, world, *, transform=None, metrics=None, device=None, layers=None,
            output_key=None, indices=None, normalize=True, image_size=None, preprocessing=None, resize=None,
            reference=None, channels_last: bool | None = None) -> Prepared:
    """The prepare stage of :func:`shiftlab.audit`: every check and decision before the first batch, one probe
    forward pass included (arguments as there)."""
    if image_size is not None:
        check_input_size(image_size, IMAGE_SIZE_ARG)  # before any model is loaded: a huge size is refused at once
    models = load_models(model, reference, device=device, output_key=output_key, seed=options.seed,
                         amp=options.amp, world=world)
    prep = parse_preprocessing(model_preprocessing(models.model), preprocessing)
    images = look_at_images(data, prep, first_conv_channels(models.model), indices=indices, image_size=image_size)
    images = with_model_stride(images, models.model)  # a model that declares no size: the input-size rule's stride
    protocol, sizes, margin = choose_protocol(images, transform, resize, options.margin, layers is not None)
    norm_fn = loader.normalizer(normalize, images.preprocessing, images.channels)
    names = check_requests(metrics, protocol, images, models, options.seed)
    check_dense_requests(names, protocol, images.source, options.maps)
    chosen_layers = select_layers(models.model, layers)
    runner = ModelRunner(models.model, models.reference_model, device=models.device, dtype=models.dtype,
                         norm_fn=norm_fn, output_key=models.output_key, amp=options.amp,
                         channels_last=choose_channels_last(models.model, models.dtype, channels_last))
    sizing = images.sizing(sizes)
    with runner.session():
        probe = runner.probe(first_copy(protocol, loader.size_image(images.probe, sizing)[0], runner, options.seed))
    check_reference_result(models.reference_result, probe)
    dense = choose_dense_metrics(names, protocol, images.source, probe.kind, probe.classes, options.maps)
    wanted, omitted = dense or choose_metrics(names, protocol, probe.kind, probe.classes, models.has_reference)
    prepared = Prepared(options, models, images, protocol, sizes, sizing, margin, normalize, chosen_layers, runner,
                        probe, wanted, omitted)
    if probe.kind == "logits":
        (prepared.labels, prepared.label_table, prepared.item_labels, prepared.metrics,
         prepared.omitted) = decide_labels(images.source, probe.classes, options.class_map, wanted, omitted)
    return prepared


def check_reference_result(earlier: AuditResult | None, probe: Probe) -> None:
    """An earlier audit used as the reference must be of a classifier with the model's classes."""
    if earlier is None:
        return
    if probe.kind == "dense":
        check_reference_output(None, probe.kind, probe.classes)
    if earlier.classes is not None and earlier.classes != probe.classes:
        raise InputError(f"the reference audit's model gives {earlier.classes} classes and this model "
                         f"{probe.classes}: their top-1 classes are not in one label space")
