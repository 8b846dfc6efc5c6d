"""The audit's result stage: :class:`AuditResult`, its JSON form, merging shards, and tables.

An :class:`AuditResult` holds per-image series (:mod:`shiftlab.measure.statistics`), not numbers: its
``metrics`` and ``layers`` are reduced from them when asked, so shards merge exactly (:func:`merge`).
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from shiftlab.errors import InputError, ShiftlabError
from shiftlab.measure import metrics as M
from shiftlab.measure.dense import DENSE_METRICS, collect_maps, dense_value
from shiftlab.measure.statistics import (
    PROPORTIONS,
    TRIVIAL_FOR_CONSTANT,
    error_value,
    mean_value,
    proportion_value,
    reduce_rows,
)

__all__ = ["AuditResult", "merge", "format_value", "SCHEMA_VERSION", "METRIC_NAMES", "CONSTANT_SHARE",
           "NONDETERMINISM_RTOL", "versions", "reproducibility", "layer_order", "build_result"]

SCHEMA_VERSION = 2
METRIC_NAMES = ("consistency", "top1_change", "mean_abs_change", "flip_probability", "top5_distance",
                "worst_case_stability", "worst_case_accuracy", "agreement", "accuracy", "reference_agreement",
                "equivariance", *DENSE_METRICS)
CONSTANT_SHARE = 0.95  # a model giving one class to at least this share of images is flagged
#: relative difference between two forward passes of the same input above which a model is nondeterministic
NONDETERMINISM_RTOL = 1e-4


@dataclass(eq=False)
class AuditResult:
    """What :func:`audit` measured. ``metrics`` and ``layers`` are computed from per-image statistics.

    Attributes:
        protocol: the protocol's name, spec string and parameters.
        indices: the dataset indices audited (sorted; unreadable images left out).
        skipped: (file, reason) for every image that could not be used.
        layer_info: for each hooked layer, its output shape (C, H, W) and stride, or why it was not compared.
        omitted: metric -> why it was left out (accuracy without matching labels, ...).
        labels: how the data's labels were mapped into the model's classes, or why they were not.
        preprocessing: the input size, resize, crop, interpolation, mean and std used.
        source: where the model came from (``model.shiftlab_source``), when shiftlab loaded it.
        reproducibility: command, versions, device, threads, seed.
    """

    protocol: dict
    seed: int
    margin: int
    confidence: float
    model: str
    data: str
    output: str | None
    metric_names: tuple[str, ...]
    parameters: list | None
    indices: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layer_info: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict, repr=False)
    omitted: dict = field(default_factory=dict)
    labels: dict | None = None
    preprocessing: dict | None = None
    source: dict | None = None
    notes: list = field(default_factory=list)
    upscaled: int = 0
    ignored: int = 0
    reproducibility: dict | None = None
    classes: int | None = None
    #: "model" (and "reference") -> max relative change of the output between two passes of the same clean input
    nondeterminism: dict | None = None
    #: dense outputs: how many images keep their disagreement and prediction maps (:meth:`dense_maps`)
    maps: int = 0

    @property
    def n(self) -> int:
        """Number of images audited."""
        return int(len(self.indices))

    @property
    def has_predictions(self) -> bool:
        return ("record", "top1") in self.series

    # ------------------------------------------------------------------------------------ guards
    def constant_predictions(self) -> dict | None:
        """When one class is the top-1 of at least 95% of the images (reference view), ``{class, count, n}``."""
        idx, val = reduce_rows(self.series.get(("guard", "top1"), []), 2)
        n = len(idx)
        if n < 2:
            return None
        classes, counts = np.unique(val[:, 0].astype(np.int64), return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] < CONSTANT_SHARE * n:
            return None
        labels = val[:, 1].astype(np.int64)
        labelled = labels[labels >= 0]
        if len(labelled) >= 2:  # a one-class data set may rightly get one class
            _, label_counts = np.unique(labelled, return_counts=True)
            if label_counts.max() >= CONSTANT_SHARE * len(labelled):
                return None
        return {"class": int(classes[top]), "count": int(counts[top]), "n": int(n)}

    @property
    def warnings(self) -> list[str]:
        """Why these numbers may not mean what they seem to (empty when nothing is wrong)."""
        out = []
        if self.source and self.source.get("random_init"):
            out.append(f"the model's weights are random ({self.source.get('spec')} without --weights, seed "
                       f"{self.source.get('seed')}): these numbers describe an untrained network")
        const = self.constant_predictions()
        if const is not None:
            out.append(f"the model's top-1 is class {const['class']} for {const['count']} of {const['n']} images: "
                       f"its predictions are (nearly) constant, so consistency, stability and P(top-1 change) are "
                       f"good by construction and mean nothing")
        for who, change in (self.nondeterminism or {}).items():
            if change is not None and not change <= NONDETERMINISM_RTOL:
                amount = "changed" if not math.isfinite(change) else f"changed by {change:.3g} (relative)"
                out.append(f"the {who} is nondeterministic: two passes of the same clean input {amount} (dropout "
                           f"left on, or noise in forward); consistency, P(top-1 change) and agreement mix its "
                           f"randomness with the shift's effect")
        return out

    # ------------------------------------------------------------------------------------ numbers
    @property
    def metrics(self) -> dict[str, M.MetricValue]:
        """Metric name -> :class:`~shiftlab.metrics.MetricValue` (``extra`` holds the protocol spec, curves)."""
        out = {}
        extra = {"protocol": self.protocol["spec"]}
        flag = self.constant_predictions() is not None
        for name in self.metric_names:
            chunks = self.series.get(("metric", name), [])
            if name == "equivariance":
                value = error_value(name, chunks, self.series.get(("metric", "equivariance.skip"), []),
                                     self.confidence, extra, self.series.get(("metric", "equivariance.margin")))
            elif name in DENSE_METRICS:
                value = dense_value(name, self.series, self.confidence, extra)
            elif name in PROPORTIONS:
                value = proportion_value(name, chunks, self.confidence, self.parameters, extra)
            else:
                value = mean_value(name, chunks, self.confidence, extra)
            if flag and name in TRIVIAL_FOR_CONSTANT:
                value = M.MetricValue(value.name, value.value, value.ci, value.n,
                                      {**value.extra, "flag": "constant predictions"})
            out[name] = value
        return out

    @property
    def layers(self) -> dict[str, dict[str, M.MetricValue]]:
        """Layer name -> {"equivariance": MetricValue, "pooled_invariance": MetricValue} (when defined)."""
        out: dict[str, dict[str, M.MetricValue]] = {}
        for name, info in self.layer_info.items():
            entry = {}
            if (info.get("stride") is not None and self.protocol.get("shifts", True)) or info.get("rotation"):
                entry["equivariance"] = error_value(
                    "equivariance", self.series.get(("layer", name, "equivariance"), []),
                    self.series.get(("layer", name, "skip"), []), self.confidence, {},
                    self.series.get(("layer", name, "margin")))
            entry["pooled_invariance"] = error_value(
                "pooled_invariance", self.series.get(("layer", name, "invariance"), []), None, self.confidence, {})
            out[name] = entry
        return out

    def predictions(self) -> dict | None:
        """Per image (index order): every copy's top-1, the tracked class and its probability, the top-5 of
        copy 0. ``None`` unless the audit ran with ``predictions=True``."""
        if not self.has_predictions:
            return None
        idx, top1 = reduce_rows(self.series[("record", "top1")], self.protocol["copies"])
        _, prob = reduce_rows(self.series[("record", "probability")], self.protocol["copies"])
        _, tracked = reduce_rows(self.series[("record", "tracked")], 1)
        _, top5 = reduce_rows(self.series[("record", "top5")], 10)
        _, guard = reduce_rows(self.series[("guard", "top1")], 2)
        return {"index": idx.tolist(), "label": guard[:, 1].astype(np.int64).tolist(),
                "top1": top1.astype(np.int64).tolist(),
                "tracked_class": tracked[:, 0].astype(np.int64).tolist(),
                "tracked_probability": prob.tolist(),
                "top5": [[[int(c), float(p)] for c, p in zip(row[:5], row[5:]) if c >= 0] for row in top5]}

    def dense_maps(self) -> dict | None:
        """Dense outputs audited with ``maps=N``: the first N images' disagreement maps of the protocol's first
        compared pair and copy 0's top-1 maps (:func:`shiftlab.measure.dense.collect_maps`), else ``None``."""
        return collect_maps(self.series, self.maps)

    def merge(self, other: AuditResult) -> AuditResult:
        """Combine two shards of one audit (same model, data, protocol, seed); shards must not overlap."""
        return merge([self, other])

    def to_dict(self) -> dict:
        """The versioned JSON form (see docs/audit-json.md)."""
        from shiftlab._version import __version__

        layers = {}
        for name, entry in self.layers.items():
            info = self.layer_info[name]
            layers[name] = {**info, **{k: v.to_dict() for k, v in entry.items()}}
        doc = {
            "schema_version": SCHEMA_VERSION,
            "kind": "shiftlab.audit",
            "shiftlab_version": __version__,
            "model": self.model,
            "data": self.data,
            "protocol": self.protocol,
            "seed": self.seed,
            "margin": self.margin,
            "confidence": self.confidence,
            "output": self.output,
            "classes": self.classes,
            "n_images": self.n,
            "images": {"audited": self.n, "skipped": len(self.skipped), "upscaled": int(self.upscaled),
                       "ignored_files": int(self.ignored)},
            "skipped": {"count": len(self.skipped), "files": [{"path": p, "reason": r} for p, r in self.skipped]},
            "warnings": self.warnings,
            "notes": list(self.notes),
            "preprocessing": self.preprocessing,
            "labels": self.labels,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "omitted": dict(self.omitted),
            "layers": layers,
            "model_source": self.source,
            "nondeterminism": None if self.nondeterminism is None else {  # null: the outputs differed in shape
                k: (v if v is not None and math.isfinite(v) else None) for k, v in self.nondeterminism.items()},
            "reproducibility": self.reproducibility,
        }
        preds = self.predictions()
        if preds is not None:
            doc["predictions"] = preds
        kept = self.dense_maps()
        if kept is not None:
            doc["maps"] = {"pair": list(kept["pair"]), "shape": list(kept["shape"]),
                           "images": [{"index": int(i), "disagreement": d.tolist(), "prediction": p.tolist()}
                                      for i, d, p in zip(kept["index"], kept["disagreement"], kept["prediction"])]}
        return doc

    def __eq__(self, other) -> bool:
        if not isinstance(other, AuditResult):
            return NotImplemented
        mine, theirs = self.to_dict(), other.to_dict()
        for d in (mine, theirs):
            d.pop("reproducibility", None)
        return mine == theirs

    def summary_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(metric, value, 95% interval, n, images) rows as strings, for tables; flagged values end in '!'."""
        rows = []
        for name, mv in self.metrics.items():
            mark = " !" if mv.extra.get("flag") else ""
            rows.append((name, format_value(mv.value) + mark, f"[{format_value(mv.ci[0])}, {format_value(mv.ci[1])}]", str(mv.n),
                         str(mv.extra.get("images", ""))))
        return rows


def format_value(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"


def merge(results: Iterable[AuditResult]) -> AuditResult:
    """Merge shards of one audit into the result the unsplit run gives (exactly)."""
    results = list(results)
    if not results:
        raise ShiftlabError("merge needs at least one AuditResult")
    first = results[0]
    keys = ("protocol", "seed", "margin", "confidence", "model", "data", "output", "metric_names", "parameters",
            "maps")
    for r in results[1:]:
        for k in keys:
            if getattr(r, k) != getattr(first, k):
                raise ShiftlabError(f"cannot merge audits with different {k}: {getattr(first, k)!r} vs "
                                    f"{getattr(r, k)!r}")
    indices = np.concatenate([r.indices for r in results])
    if len(np.unique(indices)) != len(indices):
        raise ShiftlabError("cannot merge audits whose shards overlap (some images were audited twice)")
    series: dict = {}
    layer_info: dict = {}
    skipped: list = []
    omitted: dict = {}
    for r in results:
        for k, chunks in r.series.items():
            series.setdefault(k, []).extend(chunks)
        for name, info in r.layer_info.items():
            layer_info.setdefault(name, info)
        skipped.extend(s for s in r.skipped if s not in skipped)
        for k, v in r.omitted.items():
            omitted.setdefault(k, v)
    order = list(first.layer_info)
    return AuditResult(first.protocol, first.seed, first.margin, first.confidence, first.model, first.data,
                       first.output, first.metric_names, first.parameters, np.sort(indices), skipped,
                       dict(sorted(layer_info.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order
                                   else len(order))), series, omitted, first.labels, first.preprocessing,
                       first.source, list(first.notes), sum(r.upscaled for r in results),
                       first.ignored, first.reproducibility, first.classes, first.nondeterminism, first.maps)


def versions() -> dict:
    """The versions of shiftlab, Python and the libraries that decide its numbers (None: not installed)."""
    import importlib.metadata as md

    from shiftlab._version import __version__

    out = {"shiftlab": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "timm", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def reproducibility(command, device: torch.device, seed: int, source: dict | None, world, workers: int,
                     amp: bool) -> dict:
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    return {"command": command, "versions": versions(), "platform": platform.platform(), "device": dev,
            "threads": torch.get_num_threads(), "workers": int(workers), "world_size": int(world.size),
            "amp": bool(amp), "seed": int(seed),
            "weights_sha256": None if not source else source.get("weights_sha256")}


def layer_order(name: str, chosen: dict) -> tuple[int, str]:
    """Sort key of a layer's entry (``name`` or ``name#2`` for a second call): the order the layers were chosen."""
    base = name.split("#", 1)[0]
    order = list(chosen)
    return (order.index(base) if base in order else len(order), name)


def build_result(prepared, state: dict, world, workers: int, command: str | None) -> AuditResult:
    """The result stage of :func:`shiftlab.audit`: the gathered state of every process and what was prepared
    (:class:`~shiftlab.measure.prepare.Prepared`) as an :class:`AuditResult`; unreadable images are left out
    and listed, enlarged ones counted."""
    images, models, options, sizes = prepared.images, prepared.models, prepared.options, prepared.sizes
    failures = sorted((f for fs in state["failures"].values() for f in fs), key=lambda f: f[0])
    failed = {f[0] for f in failures}
    audited = np.asarray([i for i in images.indices if int(i) not in failed], dtype=np.int64)
    if len(audited) == 0:
        raise InputError(f"no image of {images.description} could be read ({len(failures)} skipped, e.g. "
                         f"{failures[0][1]}: {failures[0][2]})")
    skipped = [(str(p), str(r)) for p, r in getattr(images.source, "skipped", [])] + [
        (str(p), str(r)) for _, p, r in failures]
    notes = [n for n in (sizes.note,) if n]
    upscaled = sum(state["upscaled"].values())
    if upscaled:
        notes.append(f"{upscaled} image(s) smaller than {sizes.short_side} px on the shorter side were enlarged "
                     f"to it (upscaled)")
    normalize = prepared.normalize
    preprocessing = {**images.preprocessing.to_dict(), "model_input": list(sizes.model_in),
                     "input_size_rule": sizes.rule, "source_size": list(sizes.source),
                     "short_side": sizes.short_side, "resize": sizes.resize,
                     "normalize": "model" if normalize is True else ("custom" if callable(normalize) else "none")}
    protocol = prepared.protocol
    return AuditResult(
        protocol=protocol.to_dict(), seed=options.seed, margin=prepared.margin, confidence=float(options.confidence),
        model=models.description, data=str(images.description), output=prepared.output.kind,
        metric_names=tuple(prepared.metrics), parameters=protocol.parameters, indices=audited, skipped=skipped,
        layer_info=dict(sorted(state["layer_info"].items(), key=lambda kv: layer_order(kv[0], prepared.layers))),
        series=state["chunks"], omitted=dict(prepared.omitted), labels=prepared.labels, preprocessing=preprocessing,
        source=models.source, notes=notes, upscaled=int(upscaled), ignored=int(getattr(images.source, "ignored", 0)),
        reproducibility=reproducibility(command, models.device, options.seed, models.source, world, workers,
                                        options.amp),
        classes=prepared.output.classes or None, nondeterminism=dict(prepared.output.nondeterminism) or None,
        maps=int(options.maps))
