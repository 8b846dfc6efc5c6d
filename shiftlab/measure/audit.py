"""Audit any model: the shift metrics of its outputs and, optionally, the equivariance error of its layers.

>>> import torch, shiftlab
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
>>> images = torch.rand(6, 3, 16, 16)                       # pixel space, [0, 1]
>>> result = shiftlab.audit(model, images, transform="circular:4", normalize=False)
>>> result.metrics["consistency"].value
1.0

How it works. Images are taken in batches; the protocol (``transform=``) makes K copies of each on the
model's device; the copies are normalised and go through ONE forward pass under ``torch.inference_mode``.
Only per-sample statistics leave the batch (integer successes, float64 values), keyed by dataset index.
Layer errors are computed inside forward hooks, on the current batch only: no feature map outlives its
forward pass. Final values sum the per-sample statistics in index order (``math.fsum``), so
``audit(indices=A).merge(audit(indices=B)) == audit(indices=A + B)`` exactly, as long as the model gives
the same outputs for a sample in either run (same batches, or a batch-independent model).

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from shiftlab._checks import check_finite
from shiftlab._progress import track
from shiftlab.errors import InputError, ShapeError, ShiftlabError
from shiftlab.measure import metrics as M
from shiftlab.models import preprocessing, select_output
from shiftlab.measure.protocols import CircularShiftPair, Protocol, parse_protocol

__all__ = ["audit", "AuditResult", "merge", "SCHEMA_VERSION", "METRIC_NAMES"]

SCHEMA_VERSION = 1
METRIC_NAMES = ("consistency", "top1_change", "mean_abs_change", "flip_probability", "top5_distance",
                "worst_case_stability", "agreement", "accuracy", "equivariance")
_PROPORTIONS = {"consistency", "top1_change", "flip_probability", "worst_case_stability", "agreement", "accuracy"}
_CURVES = {"agreement", "accuracy"}
DEFAULT_MARGIN = 16  # input pixels left out at the border for layer errors under non-circular protocols


# ----------------------------------------------------------------------------------------------------
# per-sample series: chunks of (dataset index, values); merged by concatenation, reduced in index order


def _reduce_order(chunks: list[tuple[np.ndarray, np.ndarray]], width: int) -> tuple[np.ndarray, np.ndarray]:
    if not chunks:
        return np.zeros(0, np.int64), np.zeros((0, width), np.float64)
    idx = np.concatenate([c[0] for c in chunks])
    val = np.concatenate([c[1] for c in chunks])
    order = np.argsort(idx, kind="stable")
    return idx[order], val[order]


def _proportion(name: str, chunks, confidence: float, parameters: list | None, extra: dict) -> M.MetricValue:
    _, val = _reduce_order(chunks, 2)
    success = val[:, 0].astype(np.int64)
    value = M.proportion_value(name, int(success.sum()), len(success), confidence, **extra)
    if parameters is not None and name in _CURVES:
        param = val[:, 1].astype(np.int64)
        points = []
        for p, label in enumerate(parameters):
            sel = param == p
            if sel.any():
                points.append((label, M.proportion_value(name, int(success[sel].sum()), int(sel.sum()), confidence)))
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
    _, val = _reduce_order(chunks, 1)
    return M.mean_value(name, val[:, 0].tolist(), confidence, **extra)


def _error_value(name: str, chunks, skipped_chunks, confidence: float, extra: dict) -> M.MetricValue:
    """Relative errors sqrt(err2 / ref2) per row, mean with t interval; pooled ratio in extra."""
    _, val = _reduce_order(chunks, 2)
    err2 = torch.from_numpy(val[:, 0].copy())
    ref2 = torch.from_numpy(val[:, 1].copy())
    rel = M.relative_errors(err2, ref2).tolist()
    den = math.fsum(val[:, 1].tolist())
    pooled = math.sqrt(math.fsum(val[:, 0].tolist()) / den) if den > 0 else None
    extra = {**extra, "pooled": pooled}
    if skipped_chunks is not None:
        _, sk = _reduce_order(skipped_chunks, 1)
        extra["unrepresentable"] = int(sk[:, 0].sum())
    return M.mean_value(name, rel, confidence, **extra)


# ----------------------------------------------------------------------------------------------------
# result


@dataclass(eq=False)
class AuditResult:
    """What :func:`audit` measured. ``metrics`` and ``layers`` are computed from per-sample statistics.

    Attributes:
        protocol: the protocol's name, spec string and parameters.
        indices: the dataset indices audited (sorted).
        skipped: (file, reason) for every unreadable input file of the dataset.
        layer_info: for each hooked layer, its output shape (C, H, W) and stride, or why it was not compared.
    """

    protocol: dict
    seed: int
    margin: int
    confidence: float
    model: str
    data: str
    output: str
    metric_names: tuple[str, ...]
    parameters: list | None
    indices: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layer_info: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        """Number of images audited."""
        return int(len(self.indices))

    @property
    def metrics(self) -> dict[str, M.MetricValue]:
        """Metric name -> :class:`~shiftlab.metrics.MetricValue` (``extra`` holds the protocol spec, curves)."""
        out = {}
        extra = {"protocol": self.protocol["spec"], "images": self.n}
        for name in self.metric_names:
            chunks = self.series.get(("metric", name), [])
            if name == "equivariance":
                out[name] = _error_value(name, chunks, self.series.get(("metric", "equivariance.skip"), []),
                                         self.confidence, extra)
            elif name in _PROPORTIONS:
                out[name] = _proportion(name, chunks, self.confidence, self.parameters, extra)
            else:
                out[name] = _mean(name, chunks, self.confidence, extra)
        return out

    @property
    def layers(self) -> dict[str, dict[str, M.MetricValue]]:
        """Layer name -> {"equivariance": MetricValue, "pooled_invariance": MetricValue} (when defined)."""
        out: dict[str, dict[str, M.MetricValue]] = {}
        for name, info in self.layer_info.items():
            entry = {}
            if info.get("stride") is not None and self.protocol.get("shifts", True):
                entry["equivariance"] = _error_value(
                    "equivariance", self.series.get(("layer", name, "equivariance"), []),
                    self.series.get(("layer", name, "skip"), []), self.confidence, {})
            entry["pooled_invariance"] = _error_value(
                "pooled_invariance", self.series.get(("layer", name, "invariance"), []), None, self.confidence, {})
            out[name] = entry
        return out

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
        return {
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
            "n_images": self.n,
            "skipped": {"count": len(self.skipped), "files": [{"path": p, "reason": r} for p, r in self.skipped]},
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "layers": layers,
        }

    def __eq__(self, other) -> bool:
        if not isinstance(other, AuditResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def summary_rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, value, 95% interval, n) rows as strings, for tables."""
        rows = []
        for name, mv in self.metrics.items():
            rows.append((name, _fmt(mv.value), f"[{_fmt(mv.ci[0])}, {_fmt(mv.ci[1])}]", str(mv.n)))
        return rows


def _fmt(v: float) -> str:
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
    for r in results:
        for k, chunks in r.series.items():
            series.setdefault(k, []).extend(chunks)
        for name, info in r.layer_info.items():
            layer_info.setdefault(name, info)
        skipped.extend(s for s in r.skipped if s not in skipped)
    return AuditResult(first.protocol, first.seed, first.margin, first.confidence, first.model, first.data,
                       first.output, first.metric_names, first.parameters, np.sort(indices), skipped,
                       dict(sorted(layer_info.items(), key=lambda kv: list(first.layer_info).index(kv[0])
                                   if kv[0] in first.layer_info else len(first.layer_info))), series)


# ----------------------------------------------------------------------------------------------------
# inputs


@dataclass
class _Source:
    n: int
    get: Callable[[Sequence[int]], list[torch.Tensor] | torch.Tensor]
    labels: torch.Tensor | None
    skipped: list[tuple[str, str]]
    description: str
    uniform: bool


def _source(data) -> _Source:
    description = "tensor"
    if isinstance(data, str):
        from shiftlab.data import load_dataset

        description = data
        data = load_dataset(data)
    skipped = [(str(p), str(r)) for p, r in getattr(data, "skipped", [])]
    labels = None
    if isinstance(data, torch.Tensor):
        images = data
    elif isinstance(data, tuple) and len(data) == 2:
        images, labels = data
    elif isinstance(data, list):
        images = data
    elif hasattr(data, "images"):
        images, labels = data.images, getattr(data, "labels", None)
        if description == "tensor":
            description = type(data).__name__
    else:
        raise InputError(f"data must be a (N, C, H, W) tensor, (images, labels), a dataset or a data spec string, "
                         f"got {type(data).__name__}")
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ShapeError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ShapeError(f"images must be a floating tensor in [0, 1], got {images.dtype}")
        n, uniform = images.shape[0], True

        def get(idx):
            return images[torch.as_tensor(list(idx), dtype=torch.long)]
    else:
        images = list(images)
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.ndim != 3:
                raise ShapeError(f"image {i} must be a (C, H, W) tensor, got "
                                 f"{tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__}")
        n = len(images)
        uniform = len({tuple(im.shape) for im in images}) <= 1

        def get(idx):
            return [images[i] for i in idx]
    if n == 0:
        extra = f" ({len(skipped)} unreadable files skipped)" if skipped else ""
        raise InputError(f"no images to audit{extra}")
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1).to(torch.long)
        if labels.shape[0] != n:
            raise ShapeError(f"got {labels.shape[0]} labels for {n} images")
        if not bool((labels >= 0).any()):
            labels = None
    return _Source(n, get, labels, skipped, description, uniform)


def _fit(image: torch.Tensor, size: tuple[int, int], short_side: int) -> torch.Tensor:
    """Resize (antialiased bilinear) the shorter side to ``short_side`` (at least covering ``size``), then
    centre-crop to ``size``."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    scale = max(size[0] / h, size[1] / w, short_side / min(h, w))
    nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    return _centre_crop(image[None], size)[0]


def _centre_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    H, W = images.shape[-2:]
    top, left = (H - size[0]) // 2, (W - size[1]) // 2
    return images[..., top:top + size[0], left:left + size[1]]


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


def _select_layers(model: torch.nn.Module, layers) -> dict[str, torch.nn.Module]:
    named = dict(model.named_modules())
    if layers is None:
        return {}
    if isinstance(layers, str) and layers == "all":
        chosen = {n: m for n, m in named.items() if not list(m.children())}
    elif isinstance(layers, type) or (isinstance(layers, tuple) and layers
                                      and all(isinstance(t, type) for t in layers)):
        chosen = {n: m for n, m in named.items() if isinstance(m, layers)}
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        missing = [n for n in names if n not in named]
        if missing:
            some = ", ".join(n for n in list(named)[1:9])
            raise InputError(f"no layer named {', '.join(map(repr, missing))} in the model; names look like: "
                             f"{some}, ...")
        chosen = {n: named[n] for n in names}
    if not chosen:
        raise InputError(f"layers={layers!r} selects no module of the model")
    return {(n or "(model)"): m for n, m in chosen.items()}


# ----------------------------------------------------------------------------------------------------
# the batch context and the hooks


class _Batch:
    """What the hooks need to know about the current forward pass; features never leave a hook."""

    def __init__(self, series: dict, layer_info: dict, protocol: Protocol, margin: int):
        self.series = series
        self.layer_info = layer_info
        self.protocol = protocol
        self.margin = margin
        self.calls: dict[str, int] = {}

    def start(self, indices: np.ndarray, num_copies: int, input_hw: tuple[int, int], shifts):
        self.indices = indices
        self.B = len(indices)
        self.K = num_copies
        self.input_hw = input_hw
        self.shifts = None if shifts is None else shifts.to("cpu")
        self.calls = {}

    def _add(self, key, idx: np.ndarray, values: np.ndarray):
        if len(idx):
            self.series.setdefault(key, []).append((idx, values))

    def hook(self, name: str):
        def fn(module, inputs, output):
            count = self.calls.get(name, 0)
            self.calls[name] = count + 1
            key = name if count == 0 else f"{name}#{count}"
            feat = output
            while isinstance(feat, (tuple, list)) and feat:
                feat = feat[0]
            self.features(("layer", key), key, feat)
        return fn

    def features(self, prefix: tuple, name: str, feat):
        """Accumulate equivariance/invariance rows of ``feat`` (K*B, ...) for the protocol's layer pairs."""
        if not isinstance(feat, torch.Tensor) or feat.ndim < 2 or feat.shape[0] != self.K * self.B:
            self.layer_info.setdefault(name, {"stride": None, "shape": None,
                                              "note": "output is not a batched tensor; not compared"})
            return
        if not feat.is_floating_point():
            self.layer_info.setdefault(name, {"stride": None, "shape": list(feat.shape[1:]),
                                              "note": "integer output; not compared"})
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
        pooled = f.mean(dim=(-2, -1)) if feat.ndim == 4 else f.flatten(2)
        pairs = self.protocol.layer_pairs
        idx = np.asarray(self.indices, np.int64)
        # rows are ordered (sample, pair): the order a sample's rows have in any sharding
        inv = [torch.stack(M.invariance_stats(pooled[i], pooled[j]), 1) for i, j in pairs]
        inv = torch.stack(inv, 1).cpu().numpy()  # (B, P, 2)
        key = (lambda kind: (*prefix, kind)) if prefix[0] == "layer" else (lambda kind: ("metric", kind))
        self._add(key("invariance"), np.repeat(idx, len(pairs)), inv.reshape(-1, 2))
        if stride is None or self.shifts is None:
            return
        margin = 0 if self.protocol.circular else -(-self.margin // min(stride))
        eq = np.full((self.B, len(pairs), 2), np.nan)
        for p, (i, j) in enumerate(pairs):
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
        done = ~np.isnan(eq[..., 0])  # (B, P)
        done_rows = done.reshape(-1)
        self._add(key("equivariance"), np.repeat(idx, len(pairs))[done_rows], eq.reshape(-1, 2)[done_rows])
        skip_key = (*prefix, "skip") if prefix[0] == "layer" else ("metric", "equivariance.skip")
        self._add(skip_key, idx, (~done).sum(1).astype(np.float64).reshape(-1, 1))


def _classification_rows(batch: _Batch, logits: torch.Tensor, labels: torch.Tensor | None, wanted: Sequence[str]):
    """Per-sample statistics of (B, K, classes) logits for the wanted metrics."""
    protocol = batch.protocol
    idx = np.asarray(batch.indices, np.int64)
    B, K = logits.shape[:2]
    t1 = M.top1(logits)

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
        batch._add(("metric", name), rows_idx, vals)

    def mean(name, values: torch.Tensor):
        values = values.reshape(B, -1)
        batch._add(("metric", name), np.repeat(idx, values.shape[1]), values.reshape(-1, 1).cpu().numpy())

    for name in wanted:
        if name == "consistency":
            a = torch.tensor([p[0] for p in protocol.consistency_pairs])
            b = torch.tensor([p[1] for p in protocol.consistency_pairs])
            prop(name, t1[:, a.to(t1.device)] == t1[:, b.to(t1.device)])
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
        elif name == "accuracy" and labels is not None:
            lab = labels.to(t1.device)
            keep = (lab >= 0)[:, None].expand(B, K)
            prop(name, t1 == lab[:, None], torch.arange(K), keep)


# ----------------------------------------------------------------------------------------------------
# the audit


def _check_metrics(metrics, protocol: Protocol, output_kind: str, has_labels: bool) -> tuple[str, ...]:
    if output_kind == "dense":
        metrics = [] if metrics is None else ([metrics] if isinstance(metrics, str) else list(metrics))
        bad = [m for m in metrics if m != "equivariance"]
        if bad:
            raise ShiftlabError(f"{', '.join(bad)} need class scores (B, K), but the model output is a dense map "
                                f"(B, K, H, W); use metrics=['equivariance']")
        if not protocol.shifts:
            raise ShiftlabError(f"equivariance of a dense output needs a shift protocol, not {protocol.spec()!r}")
        return ("equivariance",)
    if metrics is None:
        chosen = [m for m in protocol.default_metrics if m != "accuracy" or has_labels]
        return tuple(chosen)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ShiftlabError(f"unknown metric {', '.join(map(repr, unknown))}; choose from {', '.join(METRIC_NAMES)}")
    if "equivariance" in metrics:
        raise ShiftlabError("equivariance is the metric of dense outputs; for a classifier use layers= to get "
                            "per-layer equivariance errors")
    unsupported = [m for m in metrics if m not in protocol.metrics]
    if unsupported:
        raise ShiftlabError(f"{', '.join(unsupported)} not defined for protocol {protocol.spec()!r}; it supports "
                            f"{', '.join(protocol.metrics)}")
    if "accuracy" in metrics and not has_labels:
        raise ShiftlabError("accuracy needs labels, but the data has none")
    return tuple(dict.fromkeys(metrics))


def _default_protocol(hw: tuple[int, int]) -> Protocol:
    # ImageNet-size inputs: APS/LPS's [-32, 31]; small (CIFAR-size) inputs: [-3, 2]
    return CircularShiftPair(32 if min(hw) >= 64 else 3)


def audit(model, data, transform: Protocol | str | None = None, metrics: Sequence[str] | str | None = None,
          batch_size: int = 32, device: str | torch.device | None = None, layers=None, *,
          output_key=None, seed: int = 0, indices: Sequence[int] | None = None, margin: int | None = None,
          normalize: bool | Callable = True, image_size: int | tuple[int, int] | None = None,
          resize: bool | None = None, confidence: float = 0.95, progress: bool = False) -> AuditResult:
    """Measure how ``model`` responds to the shifts (or rotations, ...) of a protocol, on ``data``.

    Args:
        model: an ``nn.Module`` or a model spec for :func:`shiftlab.load_model` (``"torchvision:resnet18"``).
            It is put in eval mode during the audit (and restored after); moved to ``device`` if given.
        data: images in pixel space [0, 1]: a (N, C, H, W) tensor, a list of (C, H, W) tensors,
            a tuple ``(images, labels)``, a dataset from
            :func:`shiftlab.data.load_dataset`, or a data spec string. Labels ``-1`` mean "unlabelled".
        transform: a protocol from :mod:`shiftlab.measure.protocols` or its spec string (``"circular:32"``,
            ``"crop:224:32"``, ``"diagonal:8"``, ...). Default: ``circular:32`` (``circular:3`` below 64 px).
        metrics: names to compute; default: the protocol's defaults (accuracy only with labels). Dense
            outputs (B, K, H, W) get ``["equivariance"]``.
        batch_size: model inputs per forward pass; a batch holds ``max(1, batch_size // K)`` images.
        layers: layer names, a module type (or tuple of types), or ``"all"`` (every leaf module): adds
            per-layer equivariance and pooled-invariance errors (see the module docstring).
        output_key: which element of a tuple/dict model output is scored.
        seed: random offsets depend only on (seed, dataset index).
        indices: audit only these dataset indices (a shard); merge shards with :func:`merge`.
        margin: input pixels left out at the border when comparing layers under non-circular protocols
            (default 16; ignored for circular protocols).
        normalize: ``True``: the model's preprocessing (``shiftlab.models.preprocessing``); ``False``: none;
            or a callable on (B, C, H, W).
        image_size: the model's input size (int or (H, W)). Default: the protocol's own size (``crop:S:M``),
            else the model's preprocessing size (224) when the images are large enough for it plus the
            protocol's extent (a 256 image is centre-cropped to 224, the standard evaluation), else the
            largest square the images allow.
        resize: resize each image (shorter side to the preprocessing's resize size, e.g. 256 for 224, then
            centre crop) to the protocol's source size (input size plus extent). Default: only when images
            differ in size; otherwise larger images are centre-cropped and images smaller than needed raise
            :class:`~shiftlab.errors.ShapeError`.

    Returns:
        an :class:`AuditResult`.

    Shape:
        Input: images (N, C, H, W) or a list of (C, H, W); model output (B, K) or (B, K, H', W').
    """
    model_desc = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        from shiftlab.models import load_model

        model = load_model(model, device=device, output_key=output_key)
        output_key = None  # the loaded model already returns the selected output
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module or a model spec string, got {type(model).__name__}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ShiftlabError(f"batch_size must be a positive integer, got {batch_size!r}")
    if device is not None:
        model.to(device)
    dev = _model_device(model)
    src = _source(data)
    data_desc = src.description

    all_indices = np.arange(src.n) if indices is None else np.asarray(list(indices), dtype=np.int64)
    if all_indices.ndim != 1 or len(all_indices) == 0:
        raise InputError("indices selects no images")
    if all_indices.min() < 0 or all_indices.max() >= src.n:
        raise InputError(f"indices must lie in [0, {src.n - 1}]")
    if len(np.unique(all_indices)) != len(all_indices):
        raise InputError("indices contain duplicates")
    all_indices = np.sort(all_indices)

    # working size and the protocol
    probe = src.get([int(all_indices[0])])
    probe = probe[0] if isinstance(probe, list) else probe[0]
    C = probe.shape[0]
    want_c = _first_conv_channels(model)
    if want_c is not None and want_c != C:
        raise ShapeError(f"the model's first convolution takes {want_c} channels, but the images have {C}")
    do_resize = (not src.uniform) if resize is None else bool(resize)
    norm_fn = None
    prep = None
    prep = preprocessing(model)
    if normalize is True:
        norm_fn = prep.normalize
        if C != len(prep.mean):
            raise ShapeError(f"the model's preprocessing normalises {len(prep.mean)} channels, but the images have "
                             f"{C}; pass normalize=False or a callable")
    elif callable(normalize):
        norm_fn = normalize
    elif normalize not in (False, None):
        raise ShiftlabError(f"normalize must be True, False or a callable, got {normalize!r}")
    own = tuple(int(v) for v in probe.shape[-2:])
    wanted_size = None if image_size is None else (
        (int(image_size),) * 2 if isinstance(image_size, int) else tuple(int(v) for v in image_size))
    default_in = tuple(int(v) for v in prep.input_size)
    protocol = parse_protocol(transform) if transform is not None else _default_protocol(
        wanted_size or (default_in if do_resize else own))
    ey, ex = protocol.extent
    if protocol.size is not None:
        model_in = (protocol.size, protocol.size)
    elif wanted_size is not None:
        model_in = wanted_size
    elif do_resize or (own[0] >= default_in[0] + ey and own[1] >= default_in[1] + ex):
        model_in = default_in  # the standard evaluation: e.g. 224 centre crop of a 256 image
    else:
        side = min(own[0] - ey, own[1] - ex)  # smaller images: the largest square input they allow
        model_in = (side, side)
    source = (model_in[0] + ey, model_in[1] + ex)
    if min(model_in) < 1:
        raise ShapeError(f"images of {own[0]}x{own[1]} are too small for {protocol.spec()!r}")
    if not do_resize and (own[0] < source[0] or own[1] < source[1]):
        raise ShapeError(f"images are {own[0]}x{own[1]} but {protocol.spec()!r} needs at least "
                         f"{source[0]}x{source[1]}; pass resize=True (CLI: --resize) or a smaller protocol")
    # the usual evaluation resize (256 for a 224 input), scaled to the input size; never below the source
    short_side = max(max(source), round(prep.resize_size * model_in[0] / default_in[0]))
    if margin is None:
        margin = 0 if protocol.circular else DEFAULT_MARGIN
    if protocol.circular:
        margin = 0

    if metrics is not None:  # names checked before any forward pass; the output kind is checked after the first
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in names if m not in METRIC_NAMES]
        if unknown:
            raise ShiftlabError(f"unknown metric {', '.join(map(repr, unknown))}; choose from {', '.join(METRIC_NAMES)}")
        unsupported = [m for m in names if m != "equivariance" and m not in protocol.metrics]
        if unsupported:
            raise ShiftlabError(f"{', '.join(unsupported)} not defined for protocol {protocol.spec()!r}; it supports "
                                f"{', '.join(protocol.metrics)}")
    chosen_layers = _select_layers(model, layers)
    K = protocol.num_copies
    per_batch = max(1, int(batch_size) // K)
    series: dict = {}
    layer_info: dict = {}
    ctx = _Batch(series, layer_info, protocol, int(margin))
    handles = [m.register_forward_hook(ctx.hook(name)) for name, m in chosen_layers.items()]
    dtype = _model_dtype(model)
    output_kind = None
    wanted: tuple[str, ...] = ()
    was_training = model.training
    model.eval()
    starts = range(0, len(all_indices), per_batch)
    try:
        with torch.inference_mode():
            for start in track(starts, "auditing", total=len(starts), enabled=progress):
                idx = all_indices[start:start + per_batch]
                raw = src.get(idx.tolist())
                if isinstance(raw, list):
                    if do_resize:
                        raw = [_fit(im.to(dev), source, short_side) for im in raw]
                    elif len({tuple(im.shape) for im in raw}) > 1:
                        raise ShapeError("images differ in size; pass resize=True (CLI: --resize)")
                    images = torch.stack([im.to(dev) for im in raw])
                else:
                    images = raw.to(dev)
                    if do_resize:
                        images = torch.stack([_fit(im, source, short_side) for im in images])
                if images.shape[1] != C:
                    raise ShapeError(f"images have {images.shape[1]} channels, expected {C}")
                images = _centre_crop(images, source).to(dtype)
                check_finite(images, f"images (batch starting at index {int(idx[0])})")
                if norm_fn is not None and (float(images.min()) < -1e-6 or float(images.max()) > 1 + 1e-6):
                    raise ShapeError(f"images must be in pixel space [0, 1] (got values in [{float(images.min()):.3g}, "
                                     f"{float(images.max()):.3g}]); shiftlab normalises with the model's preprocessing")
                copies = protocol.make(images, torch.as_tensor(idx), seed)
                x = copies.inputs if norm_fn is None else norm_fn(copies.inputs)
                ctx.start(idx, K, tuple(x.shape[-2:]), copies.shifts)
                del copies, images, raw  # only the model input stays alive during the forward
                out = select_output(model(x), output_key)
                if out.shape[0] != K * len(idx):
                    raise ShiftlabError(f"the model returned {out.shape[0]} outputs for a batch of {K * len(idx)} "
                                        f"inputs")
                if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
                    raise ShiftlabError("the model output contains NaN or Inf (or is not floating point)")
                if output_kind is None:
                    if out.ndim == 2:
                        output_kind = "logits"
                    elif out.ndim == 4:
                        output_kind = "dense"
                    else:
                        raise ShiftlabError(f"the model output has shape {tuple(out.shape)}; the metrics need logits "
                                            f"(B, K) or a dense map (B, K, H, W)")
                    has_labels = src.labels is not None
                    wanted = _check_metrics(metrics, protocol, output_kind, has_labels)
                    if metrics is None and out.shape[1] < 5:  # a default, not asked for: left out
                        wanted = tuple(m for m in wanted if m != "top5_distance")
                    if "top5_distance" in wanted and out.shape[1] < 5:
                        raise ShiftlabError(f"top5_distance needs at least 5 classes, the model gives {out.shape[1]}")
                if output_kind == "dense":
                    if out.ndim != 4:
                        raise ShiftlabError(f"the model output changed rank to {out.ndim}")
                    ctx.features(("metric",), "(output)", out)
                else:
                    logits = out.reshape(K, len(idx), -1).transpose(0, 1)
                    labels = None if src.labels is None else src.labels[torch.as_tensor(idx)]
                    _classification_rows(ctx, logits, labels, wanted)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if output_kind == "dense":
        layer_info.pop("(output)", None)
    return AuditResult(protocol=protocol.to_dict(), seed=int(seed), margin=int(margin), confidence=float(confidence),
                       model=str(model_desc), data=str(data_desc), output=output_kind, metric_names=wanted,
                       parameters=protocol.parameters, indices=all_indices, skipped=src.skipped,
                       layer_info=layer_info, series=series)
