"""The field's shift metrics as pure functions of model outputs, each with a 95% interval and its count.

Every metric returns a :class:`MetricValue` ``(name, value, ci, n, extra)``:

- proportions (consistency, P(top-1 change), flip probability, worst-case stability, accuracy) carry a
  Wilson score interval, with ``n`` the number of trials;
- means (mean absolute change, top-5 distance, feature errors) carry a Student-t interval, with ``n`` the
  number of values averaged.

Image-level (clustered) intervals. Trials that come from one image (the adjacent steps of one sweep, several
random pairs of one photo) are not independent: the image is the unit of sampling. Wherever an image gives
more than one trial, the interval is computed from the variance of the ratio estimator across images
(the cluster-robust, "sandwich" variance ``n/(n-1) * sum_i (y_i - r m_i)^2 / M^2`` for image sums y_i, trial
counts m_i, M = sum m_i, estimate r = sum y_i / M) with a Student-t quantile on ``images - 1`` degrees of
freedom:

- a proportion gets a Wilson score interval at the effective sample size ``r (1 - r) / variance`` (kept
  between the number of images and the number of trials; the number of images when r is 0 or 1), so it
  never leaves [0, 1];
- a mean gets ``r +- t * sqrt(variance)``, intersected with the metric's range (``[0, 1]`` for the mean
  absolute change, ``[0, 15]`` for the top-5 distance, ``[0, inf)`` for errors).

With one trial per image both reduce to the classical intervals (Wilson with the normal quantile, the
t interval of the mean). Every :class:`MetricValue` carries ``n`` (trials: pairs, steps, frames, values) and
``extra["images"]`` (the images behind them).

Each metric is split into a per-sample statistic (``*_stats``: integer successes or float64 values per
sample) and an aggregator (:func:`proportion_value`, :func:`mean_value`) that sums in sample order with
``math.fsum``. :func:`shiftlab.audit` keeps only the per-sample statistics, so a run split into shards and
merged gives exactly the unsplit result.

Shift convention: a shift (dy, dx) moves content down by dy and right by dx (``torch.roll``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch

from shiftlab._checks import check_finite, check_tensor
from shiftlab.errors import ShapeError, ShiftlabError

__all__ = [
    "MetricValue",
    "wilson_interval",
    "mean_interval",
    "proportion_value",
    "mean_value",
    "clustered_proportion_value",
    "clustered_mean_value",
    "consistency",
    "top1_change",
    "mean_abs_change",
    "flip_probability",
    "top5_distance",
    "worst_case_stability",
    "accuracy",
    "feature_equivariance_error",
    "feature_invariance_error",
]


@dataclass(frozen=True)
class MetricValue:
    """A metric: its value, a confidence interval ``ci = (low, high)``, the count ``n`` and extra fields.

    ``value`` and the interval are ``nan`` when ``n`` is too small to define them; :meth:`to_dict`
    writes those as ``None`` (JSON ``null``).
    """

    name: str
    value: float
    ci: tuple[float, float]
    n: int
    extra: dict = field(default_factory=dict, compare=True, hash=False)

    def to_dict(self) -> dict:
        """``{"value", "ci": [low, high], "n", **extra}`` with non-finite numbers as ``None``."""
        return {"value": _json_float(self.value), "ci": [_json_float(self.ci[0]), _json_float(self.ci[1])],
                "n": int(self.n), **self.extra}


def _json_float(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------------------------------
# intervals


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ShiftlabError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``; ``(nan, nan)`` when ``n == 0``.

    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.49, 0.943)
    """
    _check_confidence(confidence)
    successes, n = int(successes), int(n)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ShiftlabError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def _mean_and_interval(values: Sequence[float], confidence: float) -> tuple[float, tuple[float, float]]:
    n = len(values)
    if n == 0:
        return math.nan, (math.nan, math.nan)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, (math.nan, math.nan)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    if var == 0.0:
        return mean, (mean, mean)
    from scipy.special import stdtrit

    t = float(stdtrit(n - 1, 0.5 + confidence / 2.0))
    half = t * math.sqrt(var / n)
    return mean, (mean - half, mean + half)


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of ``values``; ``(nan, nan)`` for fewer than two values.

    Sums are taken with ``math.fsum`` in the given order, so the result does not depend on batching.
    """
    _check_confidence(confidence)
    values = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    return _mean_and_interval(values, confidence)[1]


def proportion_value(name: str, successes: int, n: int, confidence: float = 0.95, **extra) -> MetricValue:
    """A proportion ``successes / n`` with its Wilson interval (``nan`` when ``n == 0``)."""
    value = successes / n if n else math.nan
    return MetricValue(name, float(value), wilson_interval(successes, n, confidence), int(n), dict(extra))


def mean_value(name: str, values, confidence: float = 0.95, **extra) -> MetricValue:
    """The mean of ``values`` (summed in order with ``math.fsum``) with its t interval."""
    _check_confidence(confidence)
    values = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    mean, ci = _mean_and_interval(values, confidence)
    return MetricValue(name, float(mean), ci, len(values), dict(extra))


def _t_quantile(df: int, confidence: float) -> float:
    from scipy.special import stdtrit

    return float(stdtrit(df, 0.5 + confidence / 2.0))


def _wilson_z(p: float, n: float, z: float) -> tuple[float, float]:
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1.0 - p), 0.0) / n + z * z / (4.0 * n * n)) / denom
    lo = 0.0 if p <= 0.0 else max(0.0, centre - half)
    hi = 1.0 if p >= 1.0 else min(1.0, centre + half)
    return lo, hi


def _cluster_sums(values: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums and counts of ``values``; ``clusters`` sorted (rows of one cluster adjacent)."""
    if len(values) == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]])
    return np.add.reduceat(values, starts), np.diff(np.r_[starts, len(values)])


def _ratio_variance(sums: np.ndarray, counts: np.ndarray, ratio: float) -> float:
    """Cluster-robust variance of ``sum(sums) / sum(counts)`` across clusters."""
    k = len(sums)
    total = float(counts.sum())
    resid = sums - ratio * counts
    return k / (k - 1) * math.fsum((resid * resid).tolist()) / (total * total)


def clustered_proportion_value(name: str, successes, trials, confidence: float = 0.95, **extra) -> MetricValue:
    """A proportion over images that each give ``trials[i]`` trials with ``successes[i]`` successes.

    The interval is a Wilson score interval at the effective sample size from the variance across images
    (see the module docstring); with one trial per image it is the classical Wilson interval.

    >>> clustered_proportion_value("p", [2, 2, 0], [2, 2, 2]).n, clustered_proportion_value("p", [2, 2, 0], [2, 2, 2]).extra
    (6, {'images': 3})
    """
    _check_confidence(confidence)
    try:
        s_raw = np.asarray(successes, dtype=np.float64).reshape(-1)
        m_raw = np.asarray(trials, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ShiftlabError("successes and trials must be numbers, one per image") from None
    if not (np.isfinite(s_raw).all() and np.isfinite(m_raw).all() and (s_raw == np.round(s_raw)).all()
            and (m_raw == np.round(m_raw)).all()):
        raise ShiftlabError("successes and trials must be whole numbers, one per image")
    s, m = s_raw.astype(np.int64), m_raw.astype(np.int64)
    if s.shape != m.shape or (m < 0).any() or (s < 0).any() or (s > m).any():
        raise ShiftlabError("need 0 <= successes <= trials per image, with one entry per image")
    keep = m > 0
    s, m = s[keep], m[keep]
    k, total, hits = len(m), int(m.sum()), int(s.sum())
    extra = {**extra, "images": int(k)}
    if total == 0:
        return MetricValue(name, math.nan, (math.nan, math.nan), 0, extra)
    p = hits / total
    if int(m.max()) <= 1:
        return MetricValue(name, float(p), wilson_interval(hits, total, confidence), total, extra)
    if k < 2:
        return MetricValue(name, float(p), (math.nan, math.nan), total, extra)
    t = _t_quantile(k - 1, confidence)
    if hits in (0, total):
        return MetricValue(name, float(p), _wilson_z(p, k, t), total, extra)
    var = _ratio_variance(s.astype(np.float64), m.astype(np.float64), p)
    n_eff = p * (1.0 - p) / var if var > 0 else float(total)
    n_eff = min(max(n_eff, float(k)), float(total))
    return MetricValue(name, float(p), _wilson_z(p, n_eff, t), total, extra)


def clustered_mean_value(name: str, values, clusters, confidence: float = 0.95,
                         bounds: tuple[float, float] = (-math.inf, math.inf), **extra) -> MetricValue:
    """The mean of ``values`` grouped by ``clusters`` (image ids, sorted), with a cluster-robust t interval.

    The mean is ``fsum(values) / len(values)``; the interval uses the variance across clusters and
    ``clusters - 1`` degrees of freedom, and is intersected with ``bounds`` (the metric's range). With one
    value per cluster it is the classical t interval.
    """
    _check_confidence(confidence)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    c = np.asarray(clusters).reshape(-1)
    if v.shape != c.shape:
        raise ShiftlabError(f"got {len(v)} values for {len(c)} cluster ids")
    if len(c) > 1 and (c[1:] < c[:-1]).any():
        raise ShiftlabError("cluster ids must be sorted")
    sums, counts = _cluster_sums(v, c)
    k = len(sums)
    extra = {**extra, "images": int(k)}
    if len(v) == 0:
        return MetricValue(name, math.nan, (math.nan, math.nan), 0, extra)
    mean = math.fsum(v.tolist()) / len(v)
    if k < 2 or not math.isfinite(mean):
        return MetricValue(name, float(mean), (math.nan, math.nan), len(v), extra)
    var = _ratio_variance(sums, counts.astype(np.float64), mean)
    half = _t_quantile(k - 1, confidence) * math.sqrt(var)
    lo, hi = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return MetricValue(name, float(mean), (float(lo), float(hi)), len(v), extra)


# ----------------------------------------------------------------------------------------------------
# per-sample statistics (used by the public metrics and by the audit)


def _check_logits(x, name: str, ndim: int, min_classes: int = 1) -> torch.Tensor:
    check_tensor(x, name)
    if x.ndim != ndim:
        want = {2: "(N, K)", 3: "(N, T, K)"}[ndim]
        raise ShapeError(f"{name} must have shape {want} (logits or probabilities), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ShapeError(f"{name} must be a floating tensor of logits or probabilities, got {x.dtype}")
    if x.shape[0] == 0:
        raise ShapeError(f"{name} is empty: no samples")
    if x.shape[-1] < min_classes:
        raise ShapeError(f"{name} must have at least {min_classes} classes, got {x.shape[-1]}")
    return check_finite(x, name)


def _check_sequence(x, name: str, min_len: int = 2, min_classes: int = 1) -> torch.Tensor:
    x = _check_logits(x, name, 3, min_classes)
    if x.shape[1] < min_len:
        raise ShapeError(f"{name} needs at least {min_len} frames along dim 1, got {x.shape[1]}")
    return x


def _frame_pairs(T: int, reference: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (a, b) compared along a sequence: adjacent frames, or every frame against the first."""
    if reference == "adjacent":
        return torch.arange(T - 1), torch.arange(1, T)
    if reference == "first":
        return torch.zeros(T - 1, dtype=torch.long), torch.arange(1, T)
    raise ShiftlabError(f"reference must be 'adjacent' or 'first', got {reference!r}")


def top1(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 class along the last dim; ties go to the lowest class index."""
    return logits.argmax(dim=-1)


def change_stats(top1_seq: torch.Tensor, reference: str = "adjacent") -> torch.Tensor:
    """(N, T) top-1 classes -> (N, T-1) bool: did the top-1 change between the compared frames."""
    a, b = _frame_pairs(top1_seq.shape[1], reference)
    return top1_seq[:, a.to(top1_seq.device)] != top1_seq[:, b.to(top1_seq.device)]


def mac_stats(logits_seq: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """(N, T, K) -> (N, T-1) float64: |p_k*(x_c) - p_k*(x_c+1)| with k* the top-1 class of frame c."""
    p = logits_seq.to(torch.float64)
    if not probabilities:
        p = torch.softmax(p, dim=-1)
    k = p[:, :-1].argmax(dim=-1, keepdim=True)
    return (p[:, :-1].gather(-1, k) - p[:, 1:].gather(-1, k)).abs().squeeze(-1)


def _ranks_of(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """0-based rank of each of ``classes`` (N, m) within ``logits`` (N, K); ties broken by class index."""
    v = logits.gather(-1, classes).unsqueeze(-1)  # (N, m, 1)
    all_v = logits.unsqueeze(1)  # (N, 1, K)
    idx = torch.arange(logits.shape[-1], device=logits.device)
    higher = (all_v > v).sum(-1)
    tied_before = ((all_v == v) & (idx < classes.unsqueeze(-1))).sum(-1)
    return higher + tied_before


def top5_stats(logits_seq: torch.Tensor, reference: str = "adjacent") -> torch.Tensor:
    """(N, T, K) -> (N, T-1) float64 top-5 distances between the compared frames (ImageNet-P).

    For the top-5 classes c_0..c_4 of frame a (in rank order) and their 0-based ranks r_i in frame b,
    the distance is sum_i |i - min(r_i, 5)|: 0 when the top-5 ranking is unchanged, at most 15.
    """
    a, b = _frame_pairs(logits_seq.shape[1], reference)
    la = logits_seq[:, a.to(logits_seq.device)].flatten(0, 1)
    lb = logits_seq[:, b.to(logits_seq.device)].flatten(0, 1)
    order = torch.sort(la, dim=-1, descending=True, stable=True).indices[:, :5]
    ranks = _ranks_of(lb, order).clamp(max=5)
    pos = torch.arange(order.shape[-1], device=la.device)
    dist = (ranks - pos).abs().sum(-1).to(torch.float64)
    return dist.view(logits_seq.shape[0], -1)


#: the range of the top-5 distance (ImageNet-P): 0 when the ranking is unchanged, at most 15
TOP5_RANGE = (0.0, 15.0)


def _per_row_proportion(name: str, success: torch.Tensor, confidence: float, **extra) -> MetricValue:
    """A proportion over an (N, T) bool tensor whose rows are images (image-level interval)."""
    success = success.reshape(success.shape[0], -1).cpu()
    hits = success.sum(dim=1).numpy()
    trials = np.full(success.shape[0], success.shape[1], dtype=np.int64)
    return clustered_proportion_value(name, hits, trials, confidence, **extra)


def _per_row_mean(name: str, values: torch.Tensor, confidence: float, bounds, **extra) -> MetricValue:
    """A mean over an (N, T) float tensor whose rows are images (image-level interval, within ``bounds``)."""
    values = values.reshape(values.shape[0], -1).to(torch.float64).cpu()
    clusters = np.repeat(np.arange(values.shape[0]), values.shape[1])
    return clustered_mean_value(name, values.reshape(-1).numpy(), clusters, confidence, bounds, **extra)


# ----------------------------------------------------------------------------------------------------
# public metrics


def consistency(logits_a, logits_b, confidence: float = 0.95) -> MetricValue:
    """Top-1 agreement between two transformed copies of each image (Zhang 2019), with a Wilson interval.

    Shape:
        Input: ``logits_a``, ``logits_b``: (N, K) logits or probabilities.
        Output: a :class:`MetricValue` with ``n = N``.

    >>> a = torch.tensor([[2.0, 1.0], [0.0, 1.0]]); b = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    >>> consistency(a, b).value
    0.5
    """
    a = _check_logits(logits_a, "logits_a", 2)
    b = _check_logits(logits_b, "logits_b", 2)
    if a.shape != b.shape:
        raise ShapeError(f"logits_a and logits_b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    same = top1(a) == top1(b)
    return proportion_value("consistency", int(same.sum()), same.numel(), confidence, images=same.numel())


def top1_change(logits_seq, confidence: float = 0.95) -> MetricValue:
    """P(top-1 change) between adjacent frames (Azulay & Weiss 2019), with a Wilson interval.

    Shape:
        Input: (N, T, K), frame t+1 being frame t shifted by one more pixel.
        Output: ``n = N * (T - 1)`` adjacent pairs; ``extra["images"] = N``; image-level interval.
    """
    x = _check_sequence(logits_seq, "logits_seq")
    changed = change_stats(top1(x), "adjacent")
    return _per_row_proportion("top1_change", changed, confidence)


def mean_abs_change(logits_seq, probabilities: bool = False, confidence: float = 0.95) -> MetricValue:
    """Mean absolute change of the top-class probability between adjacent frames (Azulay & Weiss 2019).

    For each adjacent pair (c, c+1): |p_k*(x_c) - p_k*(x_c+1)| with k* the top-1 class of x_c and p the
    softmax of the logits (or ``logits_seq`` itself when ``probabilities=True``). t interval.

    Shape:
        Input: (N, T, K). Output: ``n = N * (T - 1)``.
    """
    x = _check_sequence(logits_seq, "logits_seq")
    return _per_row_mean("mean_abs_change", mac_stats(x, probabilities), confidence, (0.0, 1.0))


def flip_probability(logits_seq, reference: str = "adjacent", confidence: float = 0.95) -> MetricValue:
    """Flip probability along a sequence (ImageNet-P): the fraction of compared frames whose top-1 differs.

    ``reference="adjacent"`` compares frame t with t+1 (translation sequences); ``"first"`` compares every
    frame with the first (noise sequences). Wilson interval.

    Shape:
        Input: (N, T, K). Output: ``n = N * (T - 1)``.
    """
    x = _check_sequence(logits_seq, "logits_seq")
    changed = change_stats(top1(x), reference)
    return _per_row_proportion("flip_probability", changed, confidence, reference=reference)


def top5_distance(logits_seq, reference: str = "adjacent", confidence: float = 0.95) -> MetricValue:
    """Mean top-5 distance between compared frames (ImageNet-P), with a t interval; 0 when rankings agree.

    Shape:
        Input: (N, T, K) with K >= 5. Output: ``n = N * (T - 1)``.
    """
    x = _check_sequence(logits_seq, "logits_seq", min_classes=5)
    return _per_row_mean("top5_distance", top5_stats(x, reference), confidence, TOP5_RANGE, reference=reference)


def worst_case_stability(logits_grid, confidence: float = 0.95) -> MetricValue:
    """Fraction of images whose top-1 is identical for every one of the G shifts (Michaeli et al. 2023).

    Shape:
        Input: (N, G, K). Output: ``n = N`` images.
    """
    x = _check_sequence(logits_grid, "logits_grid", min_len=1)
    t = top1(x)
    stable = (t == t[:, :1]).all(dim=1)
    return proportion_value("worst_case_stability", int(stable.sum()), stable.numel(), confidence,
                            images=stable.numel())


def accuracy(logits, labels, confidence: float = 0.95) -> MetricValue:
    """Top-1 accuracy with a Wilson interval; samples labelled ``-1`` are left out.

    Shape:
        Input: ``logits`` (N, K) or (N, T, K) (every copy counts as a trial); ``labels`` (N,) int.
        Output: ``n`` = labelled samples x copies.
    """
    check_tensor(logits, "logits")
    x = _check_logits(logits, "logits", 3 if logits.ndim == 3 else 2)
    check_tensor(labels, "labels")
    if labels.ndim != 1 or labels.shape[0] != x.shape[0] or labels.is_floating_point():
        raise ShapeError(f"labels must be an integer tensor of shape ({x.shape[0]},), got {tuple(labels.shape)} "
                         f"{labels.dtype}")
    keep = labels >= 0
    pred = top1(x)[keep]
    lab = labels[keep].to(pred.device)
    correct = pred == (lab if pred.ndim == 1 else lab[:, None])
    if correct.numel() == 0:  # no labelled sample
        return MetricValue("accuracy", math.nan, (math.nan, math.nan), 0, {"images": 0})
    return _per_row_proportion("accuracy", correct.reshape(correct.shape[0], -1), confidence)


# ----------------------------------------------------------------------------------------------------
# feature level


def roll_per_sample(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Circular shift of sample b by (dy[b], dx[b]): ``torch.roll`` when all shifts agree, else an index gather."""
    from shiftlab.transforms import circular_shift

    dy = torch.as_tensor(dy).reshape(-1).to(torch.long)
    dx = torch.as_tensor(dx).reshape(-1).to(torch.long)
    if bool((dy == dy[0]).all()) and bool((dx == dx[0]).all()):
        out = torch.roll(x, (int(dy[0]), int(dx[0])), dims=(-2, -1))
    else:
        out = circular_shift(x, dy.to(x.device), dx.to(x.device))
    # always a new tensor (callers may write into it)
    return out.clone() if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() else out


def equivariance_stats(phi_x: torch.Tensor, phi_tx: torch.Tensor, dy, dx, circular: bool = True,
                       margin: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample ``||phi_tx - T' phi_x||^2``, ``||T' phi_x||^2`` (float64) and a validity flag.

    ``dy``, ``dx`` are the shifts in feature pixels, (B,) int. With ``circular=True`` T' is a circular
    shift and the whole map is compared. Otherwise only positions p with p and p - (dy, dx) both at least
    ``margin`` feature pixels inside the map are compared; a sample with no such position is invalid.
    """
    B, _, H, W = phi_x.shape
    dy = torch.as_tensor(dy, device=phi_x.device).reshape(-1).to(torch.long).expand(B)
    dx = torch.as_tensor(dx, device=phi_x.device).reshape(-1).to(torch.long).expand(B)
    # one temporary the size of phi_x: the shifted reference, turned into the difference in place
    ref = roll_per_sample(phi_x, dy, dx)
    if circular:
        ref2 = torch.linalg.vector_norm(ref.flatten(1), dim=1).to(torch.float64) ** 2
        err2 = torch.linalg.vector_norm(ref.sub_(phi_tx).flatten(1), dim=1).to(torch.float64) ** 2
        return err2, ref2, torch.ones(B, dtype=torch.bool, device=phi_x.device)
    py = torch.arange(H, device=phi_x.device)
    px = torch.arange(W, device=phi_x.device)
    my = (py >= margin) & (py < H - margin) & ((py - dy[:, None]) >= margin) & ((py - dy[:, None]) < H - margin)
    mx = (px >= margin) & (px < W - margin) & ((px - dx[:, None]) >= margin) & ((px - dx[:, None]) < W - margin)
    mask = (my[:, :, None] & mx[:, None, :]).unsqueeze(1).to(phi_x.dtype)  # (B, 1, H, W)
    ref.mul_(mask)
    ref2 = torch.linalg.vector_norm(ref.flatten(1), dim=1).to(torch.float64) ** 2
    err2 = torch.linalg.vector_norm(ref.sub_(phi_tx * mask).flatten(1), dim=1).to(torch.float64) ** 2
    return err2, ref2, mask.flatten(1).any(dim=1)


def relative_errors(err2: torch.Tensor, ref2: torch.Tensor) -> torch.Tensor:
    """sqrt(err2 / ref2), with 0 where both are 0 and inf where only the reference is 0."""
    rel = torch.sqrt(err2 / ref2)
    return torch.where((err2 == 0) & (ref2 == 0), torch.zeros_like(rel), rel)


def feature_equivariance_error(phi_x, phi_tx, shift, stride: int | tuple[int, int] = 1, circular: bool = True,
                               margin: int = 0, confidence: float = 0.95) -> MetricValue:
    """Layer-wise equivariance error ``||phi(T x) - T' phi(x)|| / ||phi(x)||``, mean over samples, t interval.

    ``shift`` is the input shift (dy, dx) (int pair, or (B, 2) int tensor, one per sample); T' is that shift
    divided by the layer's cumulative ``stride``. Only shifts the stride represents exactly are evaluated;
    samples whose shift is not a multiple of the stride are counted in ``extra["unrepresentable"]``. With
    ``circular=False`` only positions ``margin`` feature pixels inside the border (before and after the
    shift) are compared. ``extra["pooled"]`` is sqrt(sum err^2 / sum ref^2) over all evaluated samples.

    Shape:
        Input: ``phi_x``, ``phi_tx``: (B, C, H', W') features of x and of T x.
    """
    from shiftlab._checks import check_bchw

    check_bchw(phi_x, "phi_x")
    check_bchw(phi_tx, "phi_tx")
    check_finite(phi_x, "phi_x")
    check_finite(phi_tx, "phi_tx")
    if phi_x.shape != phi_tx.shape:
        raise ShapeError(f"phi_x and phi_tx must have the same shape, got {tuple(phi_x.shape)} and "
                         f"{tuple(phi_tx.shape)}")
    B = phi_x.shape[0]
    s = torch.as_tensor(shift, dtype=torch.long).reshape(-1, 2).expand(B, 2)
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    ok = (s[:, 0] % sy == 0) & (s[:, 1] % sx == 0)
    if not bool(ok.any()):
        return MetricValue("feature_equivariance_error", math.nan, (math.nan, math.nan), 0,
                           {"pooled": None, "unrepresentable": int(B), "stride": [sy, sx]})
    keep = ok.nonzero().squeeze(1)
    err2, ref2, valid = equivariance_stats(phi_x[keep], phi_tx[keep], s[keep, 0] // sy, s[keep, 1] // sx,
                                           circular, margin)
    err2, ref2 = err2[valid], ref2[valid]
    rel = relative_errors(err2, ref2)
    den = math.fsum(ref2.tolist())
    pooled = math.sqrt(math.fsum(err2.tolist()) / den) if den > 0 else None
    return clustered_mean_value("feature_equivariance_error", rel.cpu().numpy(), np.arange(len(rel)), confidence,
                                (0.0, math.inf), pooled=pooled, unrepresentable=int((~ok).sum()), stride=[sy, sx])


def invariance_stats(psi_x: torch.Tensor, psi_tx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``||psi_tx - psi_x||^2`` and ``||psi_x||^2`` (float64) of (B, ...) features."""
    err2 = torch.linalg.vector_norm((psi_tx - psi_x).flatten(1), dim=1).to(torch.float64) ** 2
    ref2 = torch.linalg.vector_norm(psi_x.flatten(1), dim=1).to(torch.float64) ** 2
    return err2, ref2


def feature_invariance_error(psi_x, psi_tx, confidence: float = 0.95) -> MetricValue:
    """Invariance error ``||psi(T x) - psi(x)|| / ||psi(x)||`` of pooled features, mean over samples.

    Shape:
        Input: (B, C) pooled features, or (B, C, H, W) maps (averaged over H, W first).
    """
    check_tensor(psi_x, "psi_x")
    check_tensor(psi_tx, "psi_tx")
    if psi_x.shape != psi_tx.shape or psi_x.ndim not in (2, 4):
        raise ShapeError(f"psi_x and psi_tx must both be (B, C) or (B, C, H, W) of one shape, got "
                         f"{tuple(psi_x.shape)} and {tuple(psi_tx.shape)}")
    for t, name in ((psi_x, "psi_x"), (psi_tx, "psi_tx")):
        if not t.is_floating_point():
            raise ShapeError(f"{name} must be a floating tensor of features, got {t.dtype}")
        if t.numel() == 0:
            raise ShapeError(f"{name} is empty: {tuple(t.shape)}")
    check_finite(psi_x, "psi_x")
    check_finite(psi_tx, "psi_tx")
    if psi_x.ndim == 4:
        psi_x, psi_tx = psi_x.mean(dim=(-2, -1)), psi_tx.mean(dim=(-2, -1))
    err2, ref2 = invariance_stats(psi_x, psi_tx)
    den = math.fsum(ref2.tolist())
    pooled = math.sqrt(math.fsum(err2.tolist()) / den) if den > 0 else None
    rel = relative_errors(err2, ref2).cpu().numpy()
    return clustered_mean_value("feature_invariance_error", rel, np.arange(len(rel)), confidence, (0.0, math.inf),
                                pooled=pooled)
