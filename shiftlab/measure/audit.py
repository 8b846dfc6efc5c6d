"""Audit any model: the shift metrics of its outputs and, optionally, the equivariance error of its layers.

This is shiftlab's one measurement engine: ``shiftlab audit``, the report, the experiments and fine-tuning all
call :func:`audit` and render what it returns.

>>> import torch, shiftlab
>>> model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())  # class = brightest channel
>>> images = torch.rand(6, 3, 16, 16)                       # pixel space, [0, 1]
>>> result = shiftlab.audit(model, images, transform="circular:4", normalize=False)
>>> result.metrics["consistency"].value, result.warnings
(1.0, [])

How it works. The images stream through a ``torch.utils.data.DataLoader`` (:mod:`shiftlab.measure.loader`):
workers decode each image and size it for the protocol (shorter side resized, centre crop). The protocol
(``transform=``) makes K copies of each image on the model's device; the copies are normalised and go through
the model under ``torch.inference_mode``, at most ``batch_size`` inputs per forward pass (copies of several
images packed into full passes; with layer errors, the copies of an image together). Only per-image
statistics leave a batch (integer successes, float64 values, tagged with the image's index); no image or
feature map outlives its batch, and the statistics are kept outside the allocator's heap, so memory does
not grow with the data set. Layer errors are computed inside forward hooks.

Final values reduce the per-image statistics in index order (``math.fsum``), so any split of the work gives
the unsplit result exactly: shards (``audit(indices=A).merge(audit(indices=B)) == audit(indices=A + B)``),
the processes of a ``torchrun`` launch (each takes the batches ``b % world_size == rank``; the statistics are
gathered with torch.distributed), and a run resumed from ``checkpoint=`` after a kill. Exact equality needs
the model to give an image the same outputs in either run: the same batches (guaranteed within one run's
layout) and the same number of intra-op threads.

Intervals are image-level: trials that come from one image are not treated as independent
(:mod:`shiftlab.measure.metrics`). Every metric gives ``n`` (trials) and ``images``.

Guards. A result carries ``warnings``: the model's weights are random (``timm:``/``torchvision:`` without
weights), or its predictions are (nearly) constant over the data, in which case consistency, stability and
P(top-1 change) are good by construction; those metrics are then flagged. The clean input of the first image
goes through the model (and the reference) twice: a nondeterministic model (dropout left on, noise in
``forward``) is flagged too, since its randomness mixes with the shift's effect. Accuracy is computed only where the
data's labels live in the model's label space (:mod:`shiftlab.measure.labels`); otherwise ``omitted`` says why.

Layer errors. For each selected layer with a 4-D output whose size divides the input size, the stride
s = input size / map size. For each copy pair (i, j) of the protocol (``Protocol.layer_pairs``) with
relative content shift d, when s divides d the hook accumulates ``||phi(x_j) - T'_{d/s} phi(x_i)||^2``
and ``||T'_{d/s} phi(x_i)||^2``: T' is a circular shift for circular protocols (whole map compared), and
for the other protocols only positions ``ceil(margin / s)`` feature pixels inside the border, before and
after the shift, are compared. Pairs with d not a multiple of s are counted as ``unrepresentable``. The
invariance error of the spatially averaged features (``pooled_invariance``) is computed for every pair.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from shiftlab._checks import check_finite
from shiftlab._progress import track
from shiftlab._runtime import HeapTrimmer
from shiftlab.errors import InputError, ShapeError, ShiftlabError
from shiftlab.measure import metrics as M
from shiftlab.measure.protocols import CircularShiftPair, Protocol, parse_protocol
from shiftlab.models import preprocessing as model_preprocessing
from shiftlab.models import select_output
from shiftlab.models.preprocessing import MAX_INPUT_SIDE, Preprocessing, check_input_size

#: how ``image_size`` is named in its errors
IMAGE_SIZE_ARG = "image_size (CLI: --image-size)"

__all__ = ["audit", "AuditResult", "merge", "SCHEMA_VERSION", "METRIC_NAMES", "LAYER_SETS", "stage_layers"]

SCHEMA_VERSION = 2
METRIC_NAMES = ("consistency", "top1_change", "mean_abs_change", "flip_probability", "top5_distance",
                "worst_case_stability", "agreement", "accuracy", "reference_agreement", "equivariance")
_PROPORTIONS = {"consistency", "top1_change", "flip_probability", "worst_case_stability", "agreement", "accuracy",
                "reference_agreement"}
_CURVES = {"agreement", "accuracy"}
_BOUNDS = {"mean_abs_change": (0.0, 1.0), "top5_distance": M.TOP5_RANGE}
#: metrics that a constant predictor makes look perfect
_TRIVIAL_FOR_CONSTANT = ("consistency", "top1_change", "mean_abs_change", "flip_probability", "top5_distance",
                         "worst_case_stability", "agreement")
#: layer selections by keyword (besides names and module types)
LAYER_SETS = ("all", "stages")
DEFAULT_MARGIN = 16  # input pixels left out at the border for layer errors under non-circular protocols
MARGIN_SHARE = 8  # ... at most 1/MARGIN_SHARE of the input's shorter side (4 px at 32 px), so small inputs keep a core
CONSTANT_SHARE = 0.95  # a model giving one class to at least this share of images is flagged
MIN_IMAGE_SIDE = 8  # image files with a shorter side under this are skipped (and counted), never measured or sized from
SIZE_SAMPLE = 64  # images whose median size sets the input of a model that declares none
#: relative difference between two forward passes of the same input above which a model is nondeterministic
NONDETERMINISM_RTOL = 1e-4


# ----------------------------------------------------------------------------------------------------
# per-image series: chunks of (batch, dataset index, values); merged by concatenation, reduced in index order


def _reduce(chunks: list, width: int) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a series, sorted by image index. The sort is stable and an image's rows all come from one
    batch, kept in the order they were produced, so the result does not depend on how the work was split."""
    if not chunks:
        return np.zeros(0, np.int64), np.zeros((0, width), np.float64)
    idx = np.concatenate([c[1] for c in chunks])
    val = np.concatenate([c[2] for c in chunks])
    order = np.argsort(idx, kind="stable")
    return idx[order], val[order]


class _Column:
    """One series' rows (image index, values), appended in place to buffers in mapped memory.

    Per-image statistics live as long as the audit while every forward pass allocates and frees large tensors.
    Kept as small arrays on the allocator's heap they fragment it, and the heap grows with the data set
    (measured: +30% resident memory from 1,000 to 6,400 images); in anonymous mappings that double when full
    they stay outside the heap, which then stays flat.
    """

    def __init__(self, width: int, capacity: int = 1024):
        self.n = 0
        self.idx = _mapped((capacity,), np.int64)
        self.vals = _mapped((capacity, width), np.float64)

    def append(self, idx, values: np.ndarray) -> None:
        k = len(values)
        if self.n + k > len(self.idx):
            capacity = max(2 * len(self.idx), self.n + k)
            idx_new, vals_new = _mapped((capacity,), np.int64), _mapped((capacity, self.vals.shape[1]), np.float64)
            idx_new[:self.n], vals_new[:self.n] = self.idx[:self.n], self.vals[:self.n]
            self.idx, self.vals = idx_new, vals_new
        self.idx[self.n:self.n + k] = idx
        self.vals[self.n:self.n + k] = values
        self.n += k

    def chunk(self) -> tuple[int, np.ndarray, np.ndarray]:
        return (-1, self.idx[:self.n], self.vals[:self.n])


def _mapped(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed array whose memory is an anonymous mapping, outside the allocator's heap."""
    import mmap

    dtype = np.dtype(dtype)
    nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _per_image(idx: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of ``values`` per image (``idx`` sorted)."""
    if len(idx) == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    return np.add.reduceat(values, starts), np.diff(np.r_[starts, len(idx)])


def _proportion(name: str, chunks, confidence: float, parameters: list | None, extra: dict) -> M.MetricValue:
    idx, val = _reduce(chunks, 2)
    success = val[:, 0].astype(np.int64)
    hits, trials = _per_image(idx, success)
    value = M.clustered_proportion_value(name, hits.astype(np.int64), trials, confidence, **extra)
    if parameters is not None and name in _CURVES:
        param = val[:, 1].astype(np.int64)
        points = []
        for p, label in enumerate(parameters):
            sel = param == p
            if sel.any():
                h, t = _per_image(idx[sel], success[sel])
                points.append((label, M.clustered_proportion_value(name, h.astype(np.int64), t, confidence)))
        curve = {"parameters": [_jsonable(lbl) for lbl, _ in points],
                 "value": [mv.value for _, mv in points],
                 "ci": [[mv.to_dict()["ci"][0], mv.to_dict()["ci"][1]] for _, mv in points],
                 "n": [mv.n for _, mv in points]}
        value = M.MetricValue(value.name, value.value, value.ci, value.n, {**value.extra, "curve": curve})
    return value


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def _mean(name: str, chunks, confidence: float, extra: dict) -> M.MetricValue:
    idx, val = _reduce(chunks, 1)
    return M.clustered_mean_value(name, val[:, 0], idx, confidence, _BOUNDS.get(name, (-math.inf, math.inf)), **extra)


def _error_value(name: str, chunks, skipped_chunks, confidence: float, extra: dict,
                 margin_chunks=None) -> M.MetricValue:
    """Relative errors sqrt(err2 / ref2) per compared pair, image-level interval; pooled ratio in extra.

    ``extra["unrepresentable"]`` counts the pairs whose shift is not a multiple of the stride;
    ``extra["margin_excluded"]`` (when any) those the margin left nothing of."""
    idx, val = _reduce(chunks, 2)
    rel = M.relative_errors(torch.from_numpy(val[:, 0].copy()), torch.from_numpy(val[:, 1].copy())).numpy()
    den = math.fsum(val[:, 1].tolist())
    pooled = math.sqrt(math.fsum(val[:, 0].tolist()) / den) if den > 0 else None
    extra = {**extra, "pooled": pooled}
    if skipped_chunks is not None:
        _, sk = _reduce(skipped_chunks, 1)
        extra["unrepresentable"] = int(sk[:, 0].sum())
    if margin_chunks:
        _, mk = _reduce(margin_chunks, 1)
        extra["margin_excluded"] = int(mk[:, 0].sum())
    finite = np.isfinite(rel)
    if not finite.all():
        extra["infinite"] = int((~finite).sum())
    return M.clustered_mean_value(name, rel, idx, confidence, (0.0, math.inf), **extra)


# ----------------------------------------------------------------------------------------------------
# result


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
        idx, val = _reduce(self.series.get(("guard", "top1"), []), 2)
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
                value = _error_value(name, chunks, self.series.get(("metric", "equivariance.skip"), []),
                                     self.confidence, extra, self.series.get(("metric", "equivariance.margin")))
            elif name in _PROPORTIONS:
                value = _proportion(name, chunks, self.confidence, self.parameters, extra)
            else:
                value = _mean(name, chunks, self.confidence, extra)
            if flag and name in _TRIVIAL_FOR_CONSTANT:
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
                entry["equivariance"] = _error_value(
                    "equivariance", self.series.get(("layer", name, "equivariance"), []),
                    self.series.get(("layer", name, "skip"), []), self.confidence, {},
                    self.series.get(("layer", name, "margin")))
            entry["pooled_invariance"] = _error_value(
                "pooled_invariance", self.series.get(("layer", name, "invariance"), []), None, self.confidence, {})
            out[name] = entry
        return out

    def predictions(self) -> dict | None:
        """Per image (index order): every copy's top-1, the tracked class and its probability, the top-5 of
        copy 0. ``None`` unless the audit ran with ``predictions=True``."""
        if not self.has_predictions:
            return None
        idx, top1 = _reduce(self.series[("record", "top1")], self.protocol["copies"])
        _, prob = _reduce(self.series[("record", "probability")], self.protocol["copies"])
        _, tracked = _reduce(self.series[("record", "tracked")], 1)
        _, top5 = _reduce(self.series[("record", "top5")], 10)
        _, guard = _reduce(self.series[("guard", "top1")], 2)
        return {"index": idx.tolist(), "label": guard[:, 1].astype(np.int64).tolist(),
                "top1": top1.astype(np.int64).tolist(),
                "tracked_class": tracked[:, 0].astype(np.int64).tolist(),
                "tracked_probability": prob.tolist(),
                "top5": [[[int(c), float(p)] for c, p in zip(row[:5], row[5:]) if c >= 0] for row in top5]}

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
    keys = ("protocol", "seed", "margin", "confidence", "model", "data", "output", "metric_names", "parameters")
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
                       first.ignored, first.reproducibility, first.classes, first.nondeterminism)


# ----------------------------------------------------------------------------------------------------
# inputs


def _as_source(data):
    """Any accepted ``data`` -> an ImageSource (or a map-style Dataset of images) and its description."""
    from shiftlab.data import ImageDataset
    from shiftlab.data.sources import ImageSource, TensorImages, open_images

    if isinstance(data, (str, __import__("os").PathLike)) or data is None:
        return open_images(data), str(data if data is not None else "photos")
    if isinstance(data, ImageSource):
        return data, data.description or type(data).__name__
    if isinstance(data, ImageDataset):
        space = "imagenet" if data.source == "photos" else None
        return TensorImages(data.images, data.labels, data.names, data.class_names, space,
                            description=data.source or "ImageDataset"), data.source or "ImageDataset"
    if isinstance(data, torch.Tensor) or isinstance(data, list):
        return TensorImages(data), "tensor"
    if isinstance(data, tuple) and len(data) == 2:
        images, labels = data
        return TensorImages(images, labels), "tensor"
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        return data, type(data).__name__
    raise InputError(f"data must be a (N, C, H, W) tensor, (images, labels), a dataset or a data spec string, "
                     f"got {type(data).__name__}")


def _first_conv_channels(model: torch.nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    return None


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
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


def _select_layers(model: torch.nn.Module, layers) -> dict[str, torch.nn.Module]:
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


def _default_protocol(hw: tuple[int, int]) -> Protocol:
    # ImageNet-size inputs: APS/LPS's [-32, 31]; small (CIFAR-size) inputs: [-3, 2]
    return CircularShiftPair(32 if min(hw) >= 64 else 3)


def _check_metric_names(metrics, protocol: Protocol) -> list[str] | None:
    if metrics is None:
        return None
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names or any(not isinstance(m, str) or not m for m in names):
        raise InputError(f"metrics must be metric names, got {metrics!r}; choose from {', '.join(METRIC_NAMES)}")
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown:
        raise InputError(f"unknown metric {', '.join(map(repr, unknown))}; choose from {', '.join(METRIC_NAMES)}")
    unsupported = [m for m in names if m not in ("equivariance", "reference_agreement") and m not in protocol.metrics]
    if unsupported:
        raise InputError(f"{', '.join(unsupported)} not defined for protocol {protocol.spec()!r}; it supports "
                         f"{', '.join(protocol.metrics)}")
    return list(dict.fromkeys(names))


def _choose_metrics(names: list[str] | None, protocol: Protocol, output_kind: str, classes: int,
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


# ----------------------------------------------------------------------------------------------------
# forward plan: which copies go through the model together


def _forward_groups(protocol: Protocol, batch_size: int, need_pairs: bool) -> tuple[int, list[list[int]]]:
    """Images per batch and the copy groups of each forward pass (every compared pair inside one group)."""
    K = protocol.num_copies
    if K <= batch_size:
        return max(1, batch_size // K), [list(range(K))]
    if not need_pairs:
        return 1, [list(range(s, min(K, s + batch_size))) for s in range(0, K, batch_size)]
    if batch_size < 2:
        raise InputError(f"{protocol.spec()!r} with layer errors compares two copies of an image in one forward "
                         f"pass; the batch size (model inputs per forward pass) must be at least 2")
    pairs = protocol.layer_pairs
    refs = {i for i, _ in pairs}
    if len(refs) == 1:  # a star: the reference copy goes with every group
        ref = next(iter(refs))
        others = [k for k in range(K) if k != ref]
        step = batch_size - 1
        return 1, [[ref, *others[s:s + step]] for s in range(0, len(others), step)]
    per = max(1, batch_size // 2)  # disjoint pairs: whole pairs per group
    groups = [sorted({c for p in pairs[s:s + per] for c in p}) for s in range(0, len(pairs), per)]
    covered = {c for g in groups for c in g}
    groups += [[k] for k in range(K) if k not in covered]
    return 1, groups


def _group_pairs(protocol: Protocol, groups: list[list[int]]) -> list[list[tuple[int, int, int]]]:
    """For each group, the protocol pairs it compares, as (pair number, position of i, position of j)."""
    assigned: set[int] = set()
    out = []
    for group in groups:
        pos = {c: n for n, c in enumerate(group)}
        mine = []
        for p, (i, j) in enumerate(protocol.layer_pairs):
            if p not in assigned and i in pos and j in pos:
                mine.append((p, pos[i], pos[j]))
                assigned.add(p)
        out.append(mine)
    return out


# ----------------------------------------------------------------------------------------------------
# the batch context and the hooks


class _Batch:
    """What the hooks need to know about the current forward pass; features never leave a hook."""

    def __init__(self, chunks: dict, layer_info: dict, protocol: Protocol, margin: int):
        self.chunks = chunks
        self.columns: dict = {}
        self.layer_info = layer_info
        self.protocol = protocol
        self.margin = margin
        self.calls: dict[str, int] = {}
        self.active = False
        # rotation protocols: the angle of each copy (layers are compared by rotating their maps)
        self.rotation = list(protocol.values) if getattr(protocol, "spec_name", "") == "rotate" else None

    def start(self, batch: int, indices: np.ndarray, copies: list[int], pairs: list, input_hw, shifts):
        self.copies = list(copies)
        self.batch = batch
        self.indices = indices
        self.B = len(indices)
        self.K = len(copies)
        self.pairs = pairs  # (pair number, position i, position j)
        self.input_hw = input_hw
        self.shifts = None if shifts is None else shifts.to("cpu")
        self.calls = {}
        self.active = True

    def add(self, key, idx: np.ndarray, values: np.ndarray):
        if len(idx):
            values = np.asarray(values, np.float64).reshape(len(idx), -1)
            column = self.columns.get(key)
            if column is None:
                column = self.columns[key] = _Column(values.shape[1])
            column.append(idx, values)

    def series(self) -> dict:
        """Every series: the chunks it started with (a resumed checkpoint), then what this run added."""
        out = {k: list(v) for k, v in self.chunks.items()}
        for key, column in self.columns.items():
            out.setdefault(key, []).append(column.chunk())
        return out

    def hook(self, name: str):
        def fn(module, inputs, output):
            if not self.active:
                return
            count = self.calls.get(name, 0)
            self.calls[name] = count + 1
            key = name if count == 0 else f"{name}#{count}"
            feat = output
            while isinstance(feat, (tuple, list)) and feat:
                feat = feat[0]
            self.features(("layer", key), key, feat)
        return fn

    def features(self, prefix: tuple, name: str, feat):
        """Accumulate equivariance/invariance rows of ``feat`` (K*B, ...) for this group's pairs."""
        if not isinstance(feat, torch.Tensor) or feat.ndim < 2 or feat.shape[0] != self.K * self.B:
            self.layer_info.setdefault(name, {"stride": None, "shape": None,
                                              "note": "output is not a batched tensor; not compared"})
            return
        if not (feat.is_floating_point() or feat.is_complex()):
            self.layer_info.setdefault(name, {"stride": None, "shape": list(feat.shape[1:]),
                                              "note": "integer output; not compared"})
            return
        if self.rotation is not None:
            _rotation_rows(self, prefix, name, feat)
            return
        f = feat.reshape(self.K, self.B, *feat.shape[1:])
        stride = None
        if feat.ndim == 4 and feat.shape[-2] * feat.shape[-1] > 1:
            H, W = self.input_hw
            h, w = feat.shape[-2:]
            if H % h == 0 and W % w == 0:
                stride = (H // h, W // w)
        info = {"shape": list(feat.shape[1:]), "stride": None if stride is None else list(stride)}
        if stride is None and feat.ndim == 4 and feat.shape[-2] * feat.shape[-1] > 1:
            info["note"] = "map size does not divide the input size; only pooled invariance is compared"
        self.layer_info.setdefault(name, info)
        if not self.pairs:
            return
        pooled = f.mean(dim=(-2, -1)) if feat.ndim == 4 else f.flatten(2)
        idx = np.asarray(self.indices, np.int64)
        P = len(self.pairs)
        # rows are ordered (sample, pair): the order a sample's rows have in any split of the work
        inv = [torch.stack(M.invariance_stats(pooled[i], pooled[j]), 1) for _, i, j in self.pairs]
        inv = torch.stack(inv, 1).cpu().numpy()  # (B, P, 2)
        key = (lambda kind: (*prefix, kind)) if prefix[0] == "layer" else (lambda kind: ("metric", kind))
        self.add(key("invariance"), np.repeat(idx, P), inv.reshape(-1, 2))
        if stride is None or self.shifts is None:
            return
        margin = 0 if self.protocol.circular else -(-self.margin // min(stride))
        eq = np.full((self.B, P, 2), np.nan)
        excluded = np.zeros((self.B, P), dtype=bool)  # representable, but the margin leaves nothing to compare
        for p, (_, i, j) in enumerate(self.pairs):
            d = self.shifts[:, j] - self.shifts[:, i]
            ok = (d[:, 0] % stride[0] == 0) & (d[:, 1] % stride[1] == 0)
            if not bool(ok.any()):
                continue
            sel = ok.nonzero().squeeze(1)
            if bool(ok.all()):
                a, b = f[i], f[j]
            else:
                dev_sel = sel.to(f.device)
                a, b = f[i].index_select(0, dev_sel), f[j].index_select(0, dev_sel)
            e2, r2, valid = M.equivariance_stats(a, b, d[sel, 0] // stride[0], d[sel, 1] // stride[1],
                                                 self.protocol.circular, margin)
            vals = torch.stack([e2, r2], 1).cpu().numpy()
            valid = valid.cpu().numpy()
            eq[sel.numpy()[valid], p] = vals[valid]
            excluded[sel.numpy()[~valid], p] = True
        done = ~np.isnan(eq[..., 0])  # (B, P)
        done_rows = done.reshape(-1)
        self.add(key("equivariance"), np.repeat(idx, P)[done_rows], eq.reshape(-1, 2)[done_rows])
        skip_key = (*prefix, "skip") if prefix[0] == "layer" else ("metric", "equivariance.skip")
        # a pair the stride cannot represent and one whose map the margin leaves empty are counted apart
        self.add(skip_key, idx, (~done & ~excluded).sum(1).astype(np.float64).reshape(-1, 1))
        if excluded.any():
            margin_key = (*prefix, "margin") if prefix[0] == "layer" else ("metric", "equivariance.margin")
            self.add(margin_key, idx, excluded.sum(1).astype(np.float64).reshape(-1, 1))


def _rotation_rows(batch: _Batch, prefix: tuple, name: str, feat: torch.Tensor) -> None:
    """Rotation equivariance of one layer's output for this group's pairs (:mod:`shiftlab.measure.rotation`).

    Copy j (angle a_j) is compared with copy i (angle a_i) rotated by a_j - a_i about the map's centre (group
    features: the group axis cycled; harmonic features: the phases turned): exact at multiples of 90
    degrees, inside the disc that never sees the corners elsewhere (against the copy passed through the same
    resampler). Maps of 2x2 or less at other angles, and non-map outputs, are not compared.
    """
    from shiftlab.measure.rotation import quarter_turns, rotation_equivariance_stats

    f = feat.reshape(batch.K, batch.B, *feat.shape[1:])
    is_map = feat.ndim in (4, 5) and feat.shape[-2] * feat.shape[-1] > 1
    info = {"shape": list(feat.shape[1:]), "stride": None, "rotation": bool(is_map)}
    if feat.ndim == 5:
        info["layout"] = "complex streams" if feat.is_complex() else f"group axis of {feat.shape[2]}"
    if not is_map:
        info["note"] = "not a map: only the invariance of the output is compared"
    batch.layer_info.setdefault(name, info)
    if not batch.pairs:
        return
    idx = np.asarray(batch.indices, np.int64)
    P = len(batch.pairs)
    if feat.is_complex():
        pooled = f.abs().flatten(3).mean(-1) if feat.ndim >= 4 else f.abs()
    else:
        pooled = f.mean(dim=(-2, -1)) if feat.ndim == 4 else f.flatten(2)
    inv = [torch.stack(M.invariance_stats(pooled[i], pooled[j]), 1) for _, i, j in batch.pairs]
    key = (lambda kind: (*prefix, kind)) if prefix[0] == "layer" else (lambda kind: ("metric", kind))
    batch.add(key("invariance"), np.repeat(idx, P), torch.stack(inv, 1).cpu().numpy().reshape(-1, 2))
    if not is_map:
        return
    eq = np.full((batch.B, P, 2), np.nan)
    for p, (_, i, j) in enumerate(batch.pairs):
        angle = batch.rotation[batch.copies[j]] - batch.rotation[batch.copies[i]]
        if quarter_turns(angle) is None and min(feat.shape[-2:]) <= 2:
            continue
        e2, r2 = rotation_equivariance_stats(f[i], f[j], angle)
        vals = torch.stack([e2, r2], 1).cpu().numpy()
        vals[vals[:, 1] == 0] = np.nan  # nothing compared (an empty disc, or an all-zero map)
        eq[:, p] = vals
    done = ~np.isnan(eq[..., 0])
    rows = done.reshape(-1)
    batch.add(key("equivariance"), np.repeat(idx, P)[rows], eq.reshape(-1, 2)[rows])
    batch.add((*prefix, "skip") if prefix[0] == "layer" else ("metric", "equivariance.skip"), idx,
              (~done).sum(1).astype(np.float64).reshape(-1, 1))


def _classification_rows(batch: _Batch, protocol: Protocol, logits: torch.Tensor, labels: torch.Tensor,
                         wanted: Sequence[str], reference_top1: torch.Tensor | None, record: bool):
    """Per-image statistics of (B, K, classes) logits for the wanted metrics (and the guard, the records)."""
    idx = np.asarray(batch.indices, np.int64)
    B, K = logits.shape[:2]
    t1 = M.top1(logits)
    lab = labels.to(t1.device)

    def prop(name, success: torch.Tensor, param: torch.Tensor | None = None, keep: torch.Tensor | None = None):
        success = success.reshape(B, -1)
        if param is None:
            param = torch.zeros_like(success, dtype=torch.long)
        param = param.reshape(-1, success.shape[1]).expand(B, -1).to(success.device)
        rows_idx = np.repeat(idx, success.shape[1])
        vals = torch.stack([success.reshape(-1).to(torch.float64), param.reshape(-1).to(torch.float64)], 1).cpu()
        vals = vals.numpy()
        if keep is not None:
            k = keep.reshape(-1).cpu().numpy()
            rows_idx, vals = rows_idx[k], vals[k]
        batch.add(("metric", name), rows_idx, vals)

    def mean(name, values: torch.Tensor):
        values = values.reshape(B, -1)
        batch.add(("metric", name), np.repeat(idx, values.shape[1]), values.reshape(-1, 1).cpu().numpy())

    for name in wanted:
        if name == "consistency":
            a = torch.tensor([p[0] for p in protocol.consistency_pairs], device=t1.device)
            b = torch.tensor([p[1] for p in protocol.consistency_pairs], device=t1.device)
            prop(name, t1[:, a] == t1[:, b])
        elif name in ("top1_change", "flip_probability"):
            prop(name, M.change_stats(t1, "adjacent"))
        elif name == "mean_abs_change":
            mean(name, M.mac_stats(logits))
        elif name == "top5_distance":
            mean(name, M.top5_stats(logits, "adjacent"))
        elif name == "worst_case_stability":
            prop(name, (t1 == t1[:, :1]).all(dim=1))
        elif name == "agreement":
            prop(name, t1[:, 1:] == t1[:, :1], torch.arange(1, K))
        elif name == "accuracy":
            keep = (lab >= 0)[:, None].expand(B, K)
            if bool(keep.any()):
                prop(name, t1 == lab[:, None], torch.arange(K), keep)
        elif name == "reference_agreement" and reference_top1 is not None:
            prop(name, t1 == reference_top1.to(t1.device))
    batch.add(("guard", "top1"), idx, torch.stack([t1[:, 0].cpu(), lab.cpu()], 1).numpy())
    if record:
        tracked = torch.where(lab >= 0, lab, t1[:, 0])
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        batch.add(("record", "top1"), idx, t1.cpu().numpy())
        batch.add(("record", "tracked"), idx, tracked.cpu().numpy()[:, None])
        batch.add(("record", "probability"), idx, probs.gather(-1, tracked[:, None, None].expand(B, K, 1))[..., 0]
                  .cpu().numpy())
        k5 = min(5, probs.shape[-1])
        top = probs[:, 0].topk(k5, dim=-1)
        classes = torch.full((B, 5), -1.0, dtype=torch.float64)
        values = torch.zeros((B, 5), dtype=torch.float64)
        classes[:, :k5] = top.indices.cpu().to(torch.float64)
        values[:, :k5] = top.values.cpu()
        batch.add(("record", "top5"), idx, torch.cat([classes, values], 1).numpy())


# ----------------------------------------------------------------------------------------------------
# sizes


@dataclass(frozen=True)
class _Sizes:
    model_in: tuple[int, int]
    source: tuple[int, int]
    short_side: int
    resize: bool
    note: str | None
    rule: str = ""  # where model_in comes from, in words (recorded as preprocessing.input_size_rule)


def _sizes(protocol: Protocol, prep: Preprocessing, own: tuple[int, int], image_size, resize, from_files: bool,
           uniform: bool, basis: str = "the images' own size") -> _Sizes:
    """The model input, source size and resize of an audit.

    The input size follows one stated rule: the protocol's crop size (``crop:S:M``); else ``image_size``; else
    the size the model declares (its configuration); else, for data read from files, ``own``: the median size
    of a sample of the images (``basis`` says which; images under :data:`MIN_IMAGE_SIDE` left out), never the
    first image alone; for tensors, their common size (the model's default when their sizes differ).
    """
    ey, ex = protocol.extent
    wanted = None if image_size is None else (
        (int(image_size),) * 2 if isinstance(image_size, int) else tuple(int(v) for v in image_size))
    default_in = tuple(int(v) for v in prep.input_size)
    note = None
    own_based = False
    if protocol.size is not None:
        model_in, rule = (protocol.size, protocol.size), f"the protocol's crop size ({protocol.spec()})"
    elif wanted is not None:
        model_in, rule = wanted, "image_size (CLI: --image-size)"
    elif from_files:
        if prep.fixed_size:
            model_in, rule = default_in, f"the model's own ({prep.source})"
        else:  # no input size declared: measure the images at their typical size
            side = min(own[0] - ey, own[1] - ex) if min(own[0] - ey, own[1] - ex) >= 8 else min(own)
            model_in, own_based = (side, side), True
            rule = f"{basis} ({own[0]}x{own[1]}) less the protocol's extent; the model declares none"
            note = (f"the model declares no input size: images measured at {side}x{side}, from {basis} "
                    f"({own[0]}x{own[1]}); --image-size to choose")
    elif bool(resize) or not uniform or (own[0] >= default_in[0] + ey and own[1] >= default_in[1] + ex):
        model_in = default_in  # the standard evaluation: e.g. 224 centre crop of a 256 image
        rule = f"the model's own ({prep.source})"
    else:
        side = min(own[0] - ey, own[1] - ex)  # smaller images: the largest square input they allow
        model_in, own_based = (side, side), True
        rule = f"the images' common size ({own[0]}x{own[1]}) less the protocol's extent"
    if min(model_in) < 1:
        raise ShapeError(f"images of {own[0]}x{own[1]} are too small for {protocol.spec()!r}")
    source = (model_in[0] + ey, model_in[1] + ex)
    if max(source) > MAX_INPUT_SIDE:
        raise InputError(f"{protocol.spec()!r} at a {model_in[0]}x{model_in[1]} input needs {source[0]}x{source[1]} "
                         f"px, over the {MAX_INPUT_SIDE}-px limit; use a smaller --image-size or protocol")
    do_resize = from_files if resize is None else bool(resize)
    if not from_files and resize is None:
        do_resize = not uniform
    if own_based:
        short_side = max(source)
    else:  # the usual evaluation resize (256 for a 224 input), scaled to the input size; never below the source
        short_side = max(max(source), round(prep.resize_size * model_in[0] / default_in[0]))
    if not do_resize and (own[0] < source[0] or own[1] < source[1]):
        raise ShapeError(f"images are {own[0]}x{own[1]} but {protocol.spec()!r} needs at least "
                         f"{source[0]}x{source[1]}; resize them (CLI: --resize; Python: resize=True) or use a "
                         f"smaller protocol")
    return _Sizes(model_in, source, int(short_side), do_resize, note, rule)


def _image_hw(src, i: int) -> tuple[int, int] | None:
    """(H, W) of image ``i``: from the file's header for image files, the array's shape for arrays, else by
    loading it; None when it cannot be read."""
    from shiftlab.data.sources import ImageSource

    paths = getattr(src, "paths", None)
    if isinstance(src, ImageSource) and isinstance(paths, list):
        from PIL import Image

        try:
            with Image.open(paths[i]) as im:
                w, h = im.size
            return int(h), int(w)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None
    array = getattr(src, "array", None)
    if isinstance(src, ImageSource) and isinstance(array, np.ndarray) and array.ndim == 4:
        return tuple(int(v) for v in (array.shape[1:3] if getattr(src, "channels_last", False) else array.shape[2:4]))
    try:
        item = src.load(i) if isinstance(src, ImageSource) else src[i]
    except ShiftlabError:
        return None
    image = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        return None
    return int(image.shape[-2]), int(image.shape[-1])


def _data_size(src, indices: np.ndarray, data_desc: str, probe: torch.Tensor, sample: bool):
    """A probe image that is not tiny, and the data's typical (H, W) with the words that say how it was found.

    With ``sample``, the typical size is the median (by shorter side, then longer) of the first
    :data:`SIZE_SAMPLE` readable images whose shorter side is at least :data:`MIN_IMAGE_SIDE`: one stray image
    sorted first never sets the size. Tiny images are skipped by the loader and counted; when every sampled image
    is tiny the audit is refused.
    """
    from shiftlab.data.sources import ImageSource

    if not sample and min(probe.shape[-2:]) >= MIN_IMAGE_SIDE:
        return probe, tuple(int(v) for v in probe.shape[-2:]), "the first image's size"
    sizes, tiny = [], []
    for i in indices[:SIZE_SAMPLE]:
        hw = _image_hw(src, int(i))
        if hw is None:
            continue
        (sizes if min(hw) >= MIN_IMAGE_SIDE else tiny).append((min(hw), max(hw), hw, int(i)))
        if not sample and sizes:
            break
    if not sizes:
        some = f" (e.g. {tiny[0][2][0]}x{tiny[0][2][1]})" if tiny else ""
        raise InputError(f"every readable image among the first {min(len(indices), SIZE_SAMPLE)} of {data_desc} is "
                         f"under {MIN_IMAGE_SIDE} px on its shorter side{some}: too small to measure")
    sizes.sort(key=lambda s: (s[0], s[1], s[3]))
    _, _, hw, index = sizes[(len(sizes) - 1) // 2]
    if min(probe.shape[-2:]) < MIN_IMAGE_SIDE:
        item = src.load(index) if isinstance(src, ImageSource) else src[index]
        probe = item[0] if isinstance(item, (tuple, list)) else item
    basis = (f"the median size of {len(sizes)} sampled images" + (f" ({len(tiny)} under {MIN_IMAGE_SIDE} px left out)"
                                                                  if tiny else ""))
    return probe, hw, basis


def _parse_preprocessing(prep: Preprocessing, override) -> Preprocessing:
    if override is None:
        return prep
    if isinstance(override, Preprocessing):
        return override
    if isinstance(override, dict):
        unknown = set(override) - {"mean", "std", "interpolation", "crop_pct", "input_size"}
        if unknown:
            raise InputError(f"unknown preprocessing field(s) {', '.join(sorted(unknown))}; use mean, std, "
                             f"interpolation, crop_pct, input_size")
        return prep.with_overrides(**override)
    raise InputError(f"preprocessing must be a Preprocessing or a dict of overrides, got {type(override).__name__}")


def _versions() -> dict:
    import importlib.metadata as md

    from shiftlab._version import __version__

    out = {"shiftlab": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "timm", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _reproducibility(command, device: torch.device, seed: int, source: dict | None, world, workers: int,
                     amp: bool) -> dict:
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    return {"command": command, "versions": _versions(), "platform": platform.platform(), "device": dev,
            "threads": torch.get_num_threads(), "workers": int(workers), "world_size": int(world.size),
            "amp": bool(amp), "seed": int(seed),
            "weights_sha256": None if not source else source.get("weights_sha256")}


# ----------------------------------------------------------------------------------------------------
# the audit


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def audit(model, data, transform: Protocol | str | None = None, metrics: Sequence[str] | str | None = None,
          batch_size: int = 32, device: str | torch.device | None = None, layers=None, *,
          output_key=None, seed: int = 0, indices: Sequence[int] | None = None, margin: int | None = None,
          normalize: bool | Callable = True, image_size: int | tuple[int, int] | None = None,
          preprocessing=None, resize: bool | None = None, confidence: float = 0.95,
          progress: bool | str = False, workers: int | None = None, class_map: dict | None = None,
          reference=None, predictions: bool = False, checkpoint=None, checkpoint_every: int = 20,
          amp: bool = False, channels_last: bool | None = None, command: str | None = None) -> AuditResult:
    """Measure how ``model`` responds to the shifts (or rotations, ...) of a protocol, on ``data``.

    Args:
        model: an ``nn.Module`` or a model spec for :func:`shiftlab.load_model` (``"torchvision:resnet18"``;
            its random initialisation follows ``seed``). Put in eval mode during the audit (and restored
            after); moved to ``device`` if given.
        data: images in pixel space [0, 1]: a data spec (``"photos"``, a folder, a ``.txt`` list, a ``.npz``,
            a CIFAR-10 folder; see :func:`shiftlab.data.open_images`), an
            :class:`~shiftlab.data.sources.ImageSource`, a (N, C, H, W) tensor, a list of (C, H, W)
            tensors, a tuple ``(images, labels)``, an in-memory
            :class:`~shiftlab.data.ImageDataset`, or any map-style ``Dataset`` of (C, H, W) tensors or
            (tensor, label) pairs. Labels ``-1`` mean "unlabelled".
        transform: a protocol from :mod:`shiftlab.measure.protocols` or its spec string (``"circular:32"``,
            ``"crop:224:32"``, ``"diagonal:8"``, ...). Default: ``circular:32`` (``circular:3`` below 64 px).
        metrics: names to compute; default: the protocol's defaults (accuracy where the labels fit the
            model). Dense outputs (B, K, H, W) get ``["equivariance"]``.
        batch_size: model inputs per forward pass, copies included. Without layer errors the K copies of
            ``batch_size / gcd(batch_size, K)`` images are packed into full passes; with them (or a dense
            output) the copies of an image go through together, split into groups of whole compared pairs
            when K > ``batch_size``.
        layers: layer names, a module type (or tuple of types), ``"all"`` (every leaf module) or
            ``"stages"`` (:func:`stage_layers`): adds per-layer equivariance and pooled-invariance errors.
        output_key: which element of a tuple/dict model output is scored. Without it, a tuple of several
            outputs (e.g. ``(features, logits)``) is refused, listing them (:func:`shiftlab.models.select_output`).
        seed: random offsets depend only on (seed, dataset index); also seeds a spec model's initialisation.
        indices: audit only these dataset indices (a shard); merge shards with :func:`merge`.
        margin: input pixels left out at the border when comparing layers under non-circular protocols
            (default 16, at most an eighth of the input's shorter side; ignored for circular protocols). With
            ``layers``, a margin of half the input or more is refused.
        normalize: ``True``: the model's preprocessing; ``False``: none; or a callable on (B, C, H, W).
        image_size: the model's input size (int or (H, W)). Default: the protocol's own size (``crop:S:M``),
            else the model's (timm ``pretrained_cfg``, torchvision weight metadata); for a model that declares
            none, the median size of the first 64 readable image files (never the first image alone; files
            under 8 px are skipped and counted), or the tensors' common size. At most 4096 px.
        preprocessing: a :class:`~shiftlab.models.Preprocessing`, or a dict overriding ``mean``, ``std``,
            ``interpolation``, ``crop_pct``, ``input_size`` of the model's own. The values used are recorded.
        resize: resize each image (shorter side to the preprocessing's resize size scaled to the input, e.g.
            256 for 224, then centre crop). Default: on for data read from files (smaller images are enlarged
            and counted in ``upscaled``); for tensors only when their sizes differ (otherwise they are
            centre-cropped and must be large enough).
        confidence: the level of every interval.
        progress: show a progress bar on stderr (a string names the stage).
        workers: DataLoader worker processes (default: :func:`~shiftlab.measure.loader.default_workers`).
        class_map: ``{data class name or label: model class index}`` (see :mod:`shiftlab.measure.labels`).
        reference: a second model (module or spec) run on the very same views, or an earlier
            :class:`AuditResult` of the same protocol, seed and data made with ``predictions=True``: adds
            ``reference_agreement``, P(the model's top-1 equals the reference's on the same view). The reference
            must give class scores (B, K) with the model's number of classes; otherwise it is refused.
        predictions: also keep every view's top-1, the tracked class's probability and copy 0's top-5.
        checkpoint: a folder: write this process's partial statistics there every ``checkpoint_every``
            batches (atomically), and resume from it when it holds a checkpoint of the same audit.
        amp: mixed precision on CUDA (``torch.autocast``, float16); metrics are computed in float64.
        channels_last: run the model in channels-last memory format (default: on, except for float64 models and
            for models with shiftlab's own layers (converted models), which run faster in the contiguous format).
        command: the command line to record in ``reproducibility``.

    Returns:
        an :class:`AuditResult` (the full result on every process of a distributed run).

    Shape:
        Input: images (N, C, H, W) or (C, H, W) each; model output (B, K) or (B, K', H', W').
    """
    from shiftlab.measure import distributed, loader

    # ---------------------------------------------------------------------------- scalar arguments
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, -(2 ** 63))
    margin = _check_int("margin", margin, 0, allow_none=True)
    checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
    workers = _check_int("workers", workers, 0, allow_none=True)
    if image_size is not None:
        check_input_size(image_size, IMAGE_SIZE_ARG)  # before any model is loaded: a huge size is refused at once
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence!r}")
    world = distributed.world()

    # ---------------------------------------------------------------------------- the model(s)
    from shiftlab.models import load_model
    from shiftlab.models._device import resolve_device

    dev = distributed.rank_device(device) if world.size > 1 else resolve_device(device)
    spec_model = isinstance(model, str)
    model_desc = model if spec_model else type(model).__name__
    output_key_arg = output_key  # for the checkpoint's fingerprint (a spec model takes it in below)
    if spec_model:
        if dev is None:
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(model, device=dev, output_key=output_key, seed=seed)
        output_key = None  # the loaded model already returns the selected output
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module or a model spec string, got {type(model).__name__}")
    from shiftlab.models.loading import check_materialized

    check_materialized(model, "the model")  # a meta-device module cannot be moved or run: one line, not a traceback
    if isinstance(reference, torch.nn.Module):
        check_materialized(reference, "the reference model")
    if dev is not None:
        model.to(dev)
    dev = _model_device(model)
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
    source_info = getattr(model, "shiftlab_source", None)
    if not spec_model and isinstance(source_info, dict) and source_info.get("spec"):
        model_desc = source_info["spec"] + (f" (fix {source_info['fix']})" if source_info.get("fix") else "")

    # ---------------------------------------------------------------------------- the data
    src, data_desc = _as_source(data)
    from shiftlab.data.sources import ImageSource, TensorImages

    n_total = len(src)
    if n_total == 0:
        raise InputError("no images to audit")
    all_indices = np.arange(n_total) if indices is None else np.asarray(list(indices), dtype=np.int64)
    if all_indices.ndim != 1 or len(all_indices) == 0:
        raise InputError("indices selects no images")
    if all_indices.min() < 0 or all_indices.max() >= n_total:
        raise InputError(f"indices must lie in [0, {n_total - 1}]")
    if len(np.unique(all_indices)) != len(all_indices):
        raise InputError("indices contain duplicates")
    all_indices = np.sort(all_indices)
    from_files = not isinstance(src, TensorImages)
    uniform = src.uniform if isinstance(src, TensorImages) else False

    probe = loader.first_readable_image(src, all_indices, data_desc)
    prep = _parse_preprocessing(model_preprocessing(model), preprocessing)
    own, size_basis = tuple(int(v) for v in probe.shape[-2:]), "the images' own size"
    if from_files:  # the size never comes from one image, and a tiny image is never the probe
        probe, own, size_basis = _data_size(src, all_indices, data_desc, probe,
                                            sample=image_size is None and not prep.fixed_size)
    C = int(probe.shape[0])
    want_c = _first_conv_channels(model)
    if want_c is not None and want_c != C and not (from_files and C in (1, 3, 4) and want_c in (1, 3)):
        raise ShapeError(f"the model's first convolution takes {want_c} channels, but the images have {C}")
    C = want_c if (want_c is not None and from_files) else C

    # ---------------------------------------------------------------------------- sizes and protocol
    wanted_size = None if image_size is None else check_input_size(image_size, IMAGE_SIZE_ARG)
    if wanted_size is not None and tuple(prep.input_size) != wanted_size:
        prep = prep.with_overrides(input_size=wanted_size)  # the resize follows (same crop_pct)
    protocol = parse_protocol(transform) if transform is not None else _default_protocol(
        wanted_size or (tuple(prep.input_size) if (from_files and prep.fixed_size) else own))
    sizes = _sizes(protocol, prep, own, wanted_size, resize, from_files, uniform, size_basis)
    reason = protocol.fits(sizes.model_in) if hasattr(protocol, "fits") else None
    if reason:
        raise InputError(reason)
    if margin is None or protocol.circular:  # the default fits the input: 16 px, at most an eighth of its side
        margin = 0 if protocol.circular else min(DEFAULT_MARGIN, min(sizes.model_in) // MARGIN_SHARE)
    elif layers is not None and 2 * margin >= min(sizes.model_in):
        raise InputError(f"margin {margin} (CLI: --margin) leaves nothing of the {sizes.model_in[0]}x"
                         f"{sizes.model_in[1]} input to compare layers on; use a margin below "
                         f"{(min(sizes.model_in) + 1) // 2}, e.g. {min(sizes.model_in) // MARGIN_SHARE}")
    norm_fn = loader.normalizer(normalize, prep, C)
    metric_names = _check_metric_names(metrics, protocol)
    if metric_names and "accuracy" in metric_names and isinstance(src, ImageSource) and not src.has_labels:
        raise InputError("accuracy needs labels, but the data has none")
    if metric_names and "reference_agreement" in metric_names and reference is None:
        raise InputError("reference_agreement needs a reference model (CLI: --reference or --fix)")
    if reference_result is not None:
        if not reference_result.has_predictions:
            raise InputError("a reference AuditResult must come from an audit with predictions=True")
        if reference_result.protocol != protocol.to_dict() or reference_result.seed != seed:
            raise InputError("the reference audit used another protocol or seed; its views are not these views")
    chosen_layers = _select_layers(model, layers)
    dtype = _model_dtype(model)
    if channels_last is None:  # faster for torch's own layers (measured: +12-25%), slower for shiftlab's
        channels_last = dtype != torch.float64 and not any(
            type(m).__module__.startswith("shiftlab.") for m in model.modules()) and not any(
            isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters())
    sizing = loader.Sizing(sizes.source, sizes.short_side, prep.interpolation, sizes.resize, C,
                           MIN_IMAGE_SIDE if from_files else 0)

    engine = _Engine(model=model, reference_model=reference_model, protocol=protocol, device=dev, dtype=dtype,
                     norm_fn=norm_fn, output_key=output_key, seed=seed, amp=amp, channels_last=channels_last,
                     record=bool(predictions), batch_size=batch_size)
    if reference_result is not None:
        engine.reference_lookup = _reference_lookup(reference_result)
    was_training = model.training
    ref_training = reference_model.training if reference_model is not None else False
    handles = []
    try:
        engine.prepare_models()
        # ------------------------------------------------------------------------ probe: what the model outputs
        first, _ = loader._prepare(probe, sizing)
        output_kind, classes = engine.probe(first)
        if reference_result is not None:
            if output_kind == "dense":
                _check_reference_output(None, output_kind, classes)
            if reference_result.classes is not None and reference_result.classes != classes:
                raise InputError(f"the reference audit's model gives {reference_result.classes} classes and this "
                                 f"model {classes}: their top-1 classes are not in one label space")
        wanted, omitted = _choose_metrics(metric_names, protocol, output_kind, classes,
                                          reference_model is not None or reference_result is not None)
        labels_doc, table, item_labels = None, None, False
        if output_kind == "logits":
            labels_doc, table, item_labels, wanted, omitted = _decide_labels(src, classes, class_map, wanted,
                                                                             omitted)
        engine.decide(output_kind, classes, wanted, table, item_labels)
        per_batch = engine.plan(bool(chosen_layers) or output_kind == "dense")
        batches = loader.batch_plan(all_indices, per_batch)
        mine = [b for b in range(len(batches)) if b % world.size == world.rank]
        if workers is None:
            workers = loader.default_workers(src, len(mine))

        # ------------------------------------------------------------------------ checkpoint
        state = {"chunks": {}, "done": set(), "failures": {}, "upscaled": {}, "layer_info": {}}
        store = None
        if checkpoint is not None:
            from shiftlab.measure.checkpoint import CheckpointStore

            fingerprint = _fingerprint(
                model=model, model_desc=model_desc, output_key=output_key_arg, reference=reference,
                reference_model=reference_model, src=src, data_desc=data_desc, indices=all_indices,
                protocol=protocol, seed=seed, batch_size=batch_size, per_batch=per_batch, wanted=wanted,
                chosen_layers=chosen_layers, margin=margin, prep=prep, sizes=sizes, normalize=normalize,
                class_map=class_map, predictions=predictions, world=world, dtype=dtype,
                channels_last=channels_last, amp=amp)
            store = CheckpointStore(checkpoint, world.rank, world.size, fingerprint)
            store.check_folder()
            saved = store.load(batches, mine, ("guard", "top1") if output_kind == "logits" else None)
            if saved is not None:
                state = saved
        todo = [b for b in mine if b not in state["done"]]

        # ------------------------------------------------------------------------ the run
        ctx = _Batch(state["chunks"], state["layer_info"], protocol, int(margin))
        engine.ctx = ctx
        handles = [m.register_forward_hook(ctx.hook(name)) for name, m in chosen_layers.items()]
        data_loader = loader.make_loader(src, sizing, [(b, batches[b]) for b in todo], workers, dev.type == "cuda")
        label = progress if isinstance(progress, str) else "auditing"
        since_save = 0
        trimmer = HeapTrimmer(len(all_indices))
        with torch.inference_mode():
            for loaded in track(data_loader, label, total=len(todo), enabled=bool(progress)):
                b = loaded.number
                state["failures"][b] = [(int(i), src.path(i) if isinstance(src, ImageSource) else f"item {i}", r)
                                        for i, r in loaded.failures]
                state["upscaled"][b] = int(loaded.upscaled)
                if loaded.images is not None:
                    engine.run_batch(b, loaded)
                state["done"].add(b)
                trimmer.step()
                since_save += 1
                if store is not None:
                    if since_save >= checkpoint_every:
                        store.save({**state, "chunks": ctx.series()})
                        since_save = 0
                    store.after_batch()
        state["chunks"] = ctx.series()
        if store is not None and since_save:
            store.save(state)
    finally:
        for h in handles:
            h.remove()
        engine.restore_models()
        model.train(was_training)
        if reference_model is not None:
            reference_model.train(ref_training)

    # ---------------------------------------------------------------------------- gather and build
    state = _combine(distributed.gather(state))
    if output_kind == "dense":
        state["layer_info"].pop("(output)", None)
    failures = sorted((f for fs in state["failures"].values() for f in fs), key=lambda f: f[0])
    failed = {f[0] for f in failures}
    audited = np.asarray([i for i in all_indices if int(i) not in failed], dtype=np.int64)
    if len(audited) == 0:
        raise InputError(f"no image of {data_desc} could be read ({len(failures)} skipped, e.g. {failures[0][1]}: "
                         f"{failures[0][2]})")
    skipped = [(str(p), str(r)) for p, r in getattr(src, "skipped", [])] + [(str(p), str(r)) for _, p, r in failures]
    notes = [n for n in (sizes.note,) if n]
    upscaled = sum(state["upscaled"].values())
    if upscaled:
        notes.append(f"{upscaled} image(s) smaller than {sizes.short_side} px on the shorter side were enlarged "
                     f"to it (upscaled)")
    return AuditResult(
        protocol=protocol.to_dict(), seed=int(seed), margin=int(margin), confidence=float(confidence),
        model=str(model_desc), data=str(data_desc), output=output_kind, metric_names=tuple(wanted),
        parameters=protocol.parameters, indices=audited, skipped=skipped,
        layer_info=dict(sorted(state["layer_info"].items(), key=lambda kv: _layer_order(kv[0], chosen_layers))),
        series=state["chunks"], omitted=dict(omitted), labels=labels_doc,
        preprocessing={**prep.to_dict(), "model_input": list(sizes.model_in), "input_size_rule": sizes.rule,
                       "source_size": list(sizes.source),
                       "short_side": sizes.short_side, "resize": sizes.resize,
                       "normalize": "model" if normalize is True else ("custom" if callable(normalize) else "none")},
        source=source_info, notes=notes, upscaled=int(upscaled), ignored=int(getattr(src, "ignored", 0)),
        reproducibility=_reproducibility(command, dev, seed, source_info, world, workers, amp),
        classes=classes or None, nondeterminism=dict(engine.nondeterminism) or None)


def _fingerprint(*, model, model_desc, output_key, reference, reference_model, src, data_desc, indices, protocol,
                 seed, batch_size, per_batch, wanted, chosen_layers, margin, prep, sizes, normalize, class_map,
                 predictions, world, dtype, channels_last, amp) -> dict:
    """Everything that decides an audit's numbers, for its checkpoint: resuming with any of it changed would
    merge two different runs into one number. The model and the reference are known by their weights and layers
    (and the output their wrapper selects), the data by its names, content (file sizes and modification times;
    the bytes of arrays in memory) and labels; the options by their values."""
    from shiftlab.measure.checkpoint import data_identity, fingerprint_model
    from shiftlab.models.loading import SelectOutput

    def key_of(m, given):
        if given is not None:
            return repr(given)
        return repr(m.key) if isinstance(m, SelectOutput) else None

    def describe(m):
        info = getattr(m, "shiftlab_source", None)
        if isinstance(info, dict) and info.get("spec"):
            return str(info["spec"]) + (f" (fix {info['fix']})" if info.get("fix") else "")
        return type(m).__name__

    if isinstance(reference, AuditResult):
        import hashlib

        idx, top1 = _reduce(reference.series[("record", "top1")], reference.protocol["copies"])
        digest = hashlib.sha256(idx.astype(np.int64).tobytes() + top1.astype(np.float64).tobytes())
        ref = {"reference": f"an earlier audit of {reference.model}", "reference_weights": digest.hexdigest()}
    elif reference_model is not None:
        ref = {"reference": reference if isinstance(reference, str) else describe(reference_model),
               "reference_weights": fingerprint_model(reference_model),
               "reference_output_key": key_of(reference_model, None)}
    else:
        ref = {"reference": None}
    if normalize is True or normalize is False:
        norm = "model" if normalize else "none"
    else:
        kind = getattr(normalize, "__qualname__", type(normalize).__qualname__)
        norm = f"{getattr(normalize, '__module__', '')}.{kind}"
    return {
        "model": fingerprint_model(model), "model_spec": str(model_desc), "output_key": key_of(model, output_key),
        **ref, "data": str(data_desc), "images": int(len(src)), **data_identity(src, indices),
        "protocol": protocol.spec(), "seed": int(seed), "batch_size": int(batch_size), "per_batch": int(per_batch),
        "metrics": list(wanted), "layers": sorted(chosen_layers), "margin": int(margin),
        "preprocessing": prep.to_dict(), "input": list(sizes.model_in), "resize": sizes.resize, "normalize": norm,
        "class_map": None if class_map is None else {str(k): v for k, v in class_map.items()},
        "predictions": bool(predictions), "world_size": int(world.size), "dtype": str(dtype),
        "channels_last": bool(channels_last), "amp": bool(amp)}


def _layer_order(name: str, chosen: dict) -> tuple[int, str]:
    base = name.split("#", 1)[0]
    order = list(chosen)
    return (order.index(base) if base in order else len(order), name)


def _reference_lookup(result: AuditResult) -> tuple[np.ndarray, np.ndarray]:
    idx, top1 = _reduce(result.series[("record", "top1")], result.protocol["copies"])
    return idx, top1.astype(np.int64)


def _combine(parts: list[dict]) -> dict:
    """The states of all ranks as one."""
    if len(parts) == 1:
        return parts[0]
    out = {"chunks": {}, "done": set(), "failures": {}, "upscaled": {}, "layer_info": {}}
    for part in parts:
        for key, items in part["chunks"].items():
            out["chunks"].setdefault(key, []).extend(items)
        out["done"] |= set(part["done"])
        out["failures"].update(part["failures"])
        out["upscaled"].update(part["upscaled"])
        for name, info in part["layer_info"].items():
            out["layer_info"].setdefault(name, info)
    return out


class _Engine:
    """The forward passes of an audit: the models, the protocol, the plan of which inputs go together."""

    #: at most this many images in one batch when copies of several images are packed together
    MAX_IMAGES_PER_BATCH = 64

    def __init__(self, model, reference_model, protocol: Protocol, device, dtype, norm_fn, output_key, seed: int,
                 amp: bool, channels_last: bool, record: bool, batch_size: int):
        self.model, self.reference_model, self.protocol = model, reference_model, protocol
        self.device, self.dtype, self.norm_fn, self.output_key = device, dtype, norm_fn, output_key
        self.seed, self.amp, self.channels_last, self.record = seed, amp, channels_last, record
        self.batch_size = batch_size
        self.reference_lookup = None
        self.nondeterminism: dict = {}  # model (and reference) -> relative change between two passes of one input
        self.ctx: _Batch | None = None

    # ---------------------------------------------------------------------------------------- models
    def prepare_models(self) -> None:
        for m in (self.model, self.reference_model):
            if m is not None:
                m.eval()
                if self.channels_last:
                    m.to(memory_format=torch.channels_last)

    def restore_models(self) -> None:
        if self.ctx is not None:
            self.ctx.active = False
        if self.channels_last:
            for m in (self.model, self.reference_model):
                if m is not None:
                    m.to(memory_format=torch.contiguous_format)

    def forward(self, model, x: torch.Tensor, output_key=None) -> torch.Tensor:
        if self.norm_fn is not None:
            x = self.norm_fn(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return _forward(model, x, output_key, self.amp, self.device)

    def probe(self, image: torch.Tensor) -> tuple[str, int]:
        """One forward pass on copy 0 of one image, before any work: the output kind and the class count."""
        images = image[None].to(self.device, self.dtype)
        with torch.inference_mode():
            x = self.protocol.make(images, torch.zeros(1, dtype=torch.long), self.seed, copies=[0]).inputs
            out = self.forward(self.model, x, self.output_key)
            # the clean input twice: a model whose output changes (dropout left on, noise in forward) is flagged
            self.nondeterminism = {"model": _relative_difference(out, self.forward(self.model, x, self.output_key))}
            ref = None
            if self.reference_model is not None:
                ref = self.forward(self.reference_model, x)
                self.nondeterminism["reference"] = _relative_difference(ref, self.forward(self.reference_model, x))
        if not out.is_floating_point():
            raise ShiftlabError(f"the model output is {out.dtype}, not floating point")
        if out.ndim == 2:
            kind = "logits"
        elif out.ndim == 4:
            kind = "dense"
        else:
            raise ShiftlabError(f"the model output has shape {tuple(out.shape)}; the metrics need logits (B, K) or a "
                                f"dense map (B, K, H, W)")
        if ref is not None:
            _check_reference_output(ref, kind, int(out.shape[1]))
        return kind, int(out.shape[1])

    def decide(self, output_kind: str, classes: int, wanted, table, item_labels: bool) -> None:
        self.output_kind, self.classes, self.wanted = output_kind, classes, tuple(wanted)
        self.label_table = None if table is None else torch.as_tensor(table, dtype=torch.int64)
        self.item_labels = item_labels

    # ---------------------------------------------------------------------------------------- plan
    def plan(self, pairs: bool) -> int:
        """Decide how inputs are grouped into forward passes; return the images per batch.

        With pairs to compare inside a pass (layer errors, dense outputs), the copies of an image go through
        the model together (split into groups that each hold whole pairs when K > batch size). Otherwise the
        copies of several images are packed densely: ``batch_size / gcd(batch_size, K)`` images per batch make a
        whole number of full passes.
        """
        K = self.protocol.num_copies
        if pairs:
            self.mode = "groups"
            per_batch, self.groups = _forward_groups(self.protocol, self.batch_size, True)
            self.pairs_by_group = _group_pairs(self.protocol, self.groups)
            return per_batch
        self.mode = "packed"
        per_batch = self.batch_size // math.gcd(self.batch_size, K)
        return max(1, min(per_batch, max(1, self.MAX_IMAGES_PER_BATCH)))

    # ---------------------------------------------------------------------------------------- a batch
    def run_batch(self, number: int, loaded) -> None:
        idx = loaded.indices
        images = loaded.images.to(self.device, non_blocking=self.device.type == "cuda").to(self.dtype)
        check_finite(images, f"images (batch starting at index {int(idx[0])})")
        if self.norm_fn is not None:
            low, high = float(images.min()), float(images.max())
            if low < -1e-6 or high > 1 + 1e-6:
                raise ShapeError(f"images must be in pixel space [0, 1] (got values in [{low:.3g}, {high:.3g}]); "
                                 f"shiftlab normalises with the model's preprocessing (or pass normalize=False)")
        index_tensor = torch.as_tensor(idx)
        if self.mode == "groups":
            logits, ref_top1 = self._grouped(number, idx, images, index_tensor)
        else:
            logits, ref_top1 = self._packed(idx, images, index_tensor)
        if self.output_kind == "dense":
            return
        B = len(idx)
        if self.label_table is not None:
            labels = self.label_table[index_tensor]
        elif self.item_labels:
            labels = torch.where(loaded.labels < self.classes, loaded.labels, torch.full_like(loaded.labels, -1))
        else:
            labels = torch.full((B,), -1, dtype=torch.int64)
        if self.reference_lookup is not None:
            ref_idx, ref_vals = self.reference_lookup
            pos = np.searchsorted(ref_idx, idx)
            if (pos >= len(ref_idx)).any() or (ref_idx[np.minimum(pos, len(ref_idx) - 1)] != idx).any():
                raise InputError("the reference audit does not cover every image of this one")
            ref_top1 = torch.from_numpy(ref_vals[pos])
        self.ctx.batch, self.ctx.indices = number, idx
        _classification_rows(self.ctx, self.protocol, logits, labels, self.wanted, ref_top1, self.record)

    def _check_out(self, out: torch.Tensor, expected: int, idx) -> torch.Tensor:
        if out.shape[0] != expected:
            raise ShiftlabError(f"the model returned {out.shape[0]} outputs for a batch of {expected} inputs")
        want = 2 if self.output_kind == "logits" else 4
        if out.ndim != want:
            raise ShiftlabError(f"the model output changed rank from {want} to {out.ndim}")
        if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
            raise ShiftlabError(f"the model output contains NaN or Inf (or is not floating point), in the batch "
                                f"starting at image {int(idx[0])}")
        return out

    def _packed(self, idx, images, index_tensor):
        """Copy-major inputs of all images, cut into passes of ``batch_size``."""
        K, B, bs = self.protocol.num_copies, len(idx), self.batch_size
        total = K * B
        logits = None
        ref = torch.full((total,), -1, dtype=torch.int64) if self.reference_model is not None else None
        for s in range(0, total, bs):
            e = min(total, s + bs)
            k0, k1 = s // B, (e - 1) // B
            made = self.protocol.make(images, index_tensor, self.seed, copies=list(range(k0, k1 + 1)))
            x = made.inputs[s - k0 * B:e - k0 * B]
            del made
            out = self._check_out(self.forward(self.model, x, self.output_key), e - s, idx)
            if logits is None:
                logits = torch.empty((total, out.shape[1]), dtype=torch.float32, device=out.device)
            logits[s:e] = out.float()
            if ref is not None:
                ref[s:e] = M.top1(self.forward(self.reference_model, x)).cpu()
        logits = logits.reshape(K, B, -1).transpose(0, 1)
        return logits, None if ref is None else ref.reshape(K, B).transpose(0, 1)

    def _grouped(self, number, idx, images, index_tensor):
        """The copies of each image in groups that hold whole pairs; hooks compare inside each group."""
        K, B = self.protocol.num_copies, len(idx)
        logits_full: list = [None] * K
        ref_top1 = torch.full((B, K), -1, dtype=torch.int64) if self.reference_model is not None else None
        for copies, pairs in zip(self.groups, self.pairs_by_group):
            made = self.protocol.make(images, index_tensor, self.seed, copies=copies)
            x, shifts = made.inputs, made.shifts
            del made
            self.ctx.start(number, idx, copies, pairs, tuple(x.shape[-2:]), shifts)
            try:
                out = self._check_out(self.forward(self.model, x, self.output_key), len(copies) * B, idx)
            finally:
                self.ctx.active = False
            if self.output_kind == "dense":
                self.ctx.start(number, idx, copies, pairs, tuple(x.shape[-2:]), shifts)
                self.ctx.features(("metric",), "(output)", out)
                self.ctx.active = False
                continue
            out = out.reshape(len(copies), B, -1)
            for pos, k in enumerate(copies):
                if logits_full[k] is None:
                    logits_full[k] = out[pos].float()
            if self.reference_model is not None:
                ref = self.forward(self.reference_model, x).reshape(len(copies), B, -1)
                for pos, k in enumerate(copies):
                    ref_top1[:, k] = M.top1(ref[pos]).cpu()
        if self.output_kind == "dense":
            return None, None
        return torch.stack(logits_full, 1), ref_top1


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| in float64 (0 for equal outputs, inf when they differ in shape or finiteness)."""
    if a.shape != b.shape:
        return math.inf
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return 0.0 if bool(torch.equal(a.nan_to_num(), b.nan_to_num())) else math.inf
    scale = float(a.abs().max()) if a.numel() else 0.0
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def _check_reference_output(ref: torch.Tensor, kind: str, classes: int) -> None:
    """A reference model must give class scores in the model's label space (as many classes); else one line."""
    if kind == "dense":
        raise InputError("the model outputs a dense map (B, K, H, W); reference_agreement compares top-1 classes, "
                         "so a reference (CLI: --reference, --fix) needs a classifier: drop the reference")
    if not isinstance(ref, torch.Tensor) or not ref.is_floating_point():
        raise InputError(f"the reference model's output is {getattr(ref, 'dtype', type(ref).__name__)}, not "
                         f"floating-point class scores")
    if ref.ndim == 4:
        raise InputError(f"the reference model outputs a dense map {tuple(ref.shape)}; reference_agreement compares "
                         f"top-1 classes, so the reference must give class scores (B, K)")
    if ref.ndim != 2:
        raise InputError(f"the reference model's output has shape {tuple(ref.shape)}; it must give class scores "
                         f"(B, K)")
    if int(ref.shape[1]) != classes:
        raise InputError(f"the reference model gives {int(ref.shape[1])} classes and the model {classes}: their "
                         f"top-1 classes are not in one label space, so agreement would mean nothing; use a "
                         f"reference with the model's classes")


def _forward(model, x, output_key, amp: bool, dev) -> torch.Tensor:
    try:
        if amp:
            with torch.autocast(device_type=dev.type, dtype=torch.float16):
                out = select_output(model(x), output_key)
        else:
            out = select_output(model(x), output_key)
    except ShiftlabError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError, NotImplementedError) as exc:
        text = str(exc).strip().splitlines()
        raise ShiftlabError(f"the model's forward pass failed on an input of shape {tuple(x.shape)}: "
                            f"{type(exc).__name__}: {text[0][:200] if text else ''}") from None
    return out


def _decide_labels(src, classes: int, class_map, wanted, omitted):
    """Whether accuracy can be computed, the label table (index -> model class) and why not when it cannot."""
    from shiftlab.data.sources import ImageSource
    from shiftlab.measure.labels import resolve_labels

    wanted = list(wanted)
    omitted = dict(omitted)
    if isinstance(src, ImageSource):
        mapping = resolve_labels(src.labels, src.class_names, src.label_space, classes, class_map)
        if mapping.usable:
            return mapping.to_dict(), mapping.labels.tolist(), False, tuple(wanted), omitted
        if "accuracy" in wanted:
            wanted.remove("accuracy")
        omitted["accuracy"] = mapping.how
        return mapping.to_dict(), None, False, tuple(wanted), omitted
    # a generic Dataset: labels come with the items; taken as class indices when below the class count
    return ({"used": True, "how": "item labels below the class count taken as the model's class indices"}, None,
            True, tuple(wanted), omitted)
