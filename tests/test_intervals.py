"""Image-level (clustered) intervals: coverage under strong within-image correlation, range, exact merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftlab.measure import metrics as M


def _simulate(draws: int, images: int, trials: int, mean: float, icc: float, seed: int):
    """Coverage of the true proportion by the clustered and the naive 95% intervals."""
    rng = np.random.default_rng(seed)
    a, b = mean * (1 - icc) / icc, (1 - mean) * (1 - icc) / icc
    clustered = naive = 0
    for _ in range(draws):
        p = rng.beta(a, b, images)  # each image has its own success probability: trials of one image correlate
        hits = rng.binomial(trials, p)
        mv = M.clustered_proportion_value("p", hits, np.full(images, trials))
        clustered += mv.ci[0] <= mean <= mv.ci[1]
        lo, hi = M.wilson_interval(int(hits.sum()), images * trials)
        naive += lo <= mean <= hi
    return clustered / draws, naive / draws


def test_feature_clustered_interval_covers_where_the_naive_one_does_not():
    clustered, naive = _simulate(draws=1500, images=50, trials=8, mean=0.8, icc=0.5, seed=0)
    assert 0.93 <= clustered <= 0.97, clustered
    assert naive < 0.85, naive  # pairs from one image counted as independent: far too narrow


def test_feature_clustered_interval_for_means_covers():
    rng = np.random.default_rng(1)
    hits = 0
    draws = 1500
    for _ in range(draws):
        level = rng.gamma(2.0, 0.5, 40)  # per-image level; values of one image share it
        values = np.clip(rng.normal(level[:, None], 0.05, (40, 6)), 0, None)
        mv = M.clustered_mean_value("m", values.reshape(-1), np.repeat(np.arange(40), 6), bounds=(0.0, math.inf))
        hits += mv.ci[0] <= 1.0 <= mv.ci[1]
    assert 0.93 <= hits / draws <= 0.97


def test_feature_one_trial_per_image_is_the_classical_interval():
    hits = np.array([1, 0, 1, 1, 1, 0, 1, 1])
    mv = M.clustered_proportion_value("p", hits, np.ones(8, int))
    assert mv.ci == M.wilson_interval(6, 8) and mv.n == 8 and mv.extra["images"] == 8
    values = np.array([0.1, 0.4, 0.2, 0.7])
    t = M.clustered_mean_value("m", values, np.arange(4))
    assert t.ci == pytest.approx(M.mean_interval(values), rel=1e-12)


def test_exception_top5_distance_interval_never_negative():
    # almost every step unchanged, one large jump: the t interval of the old metric went below 0
    logits = torch.zeros(20, 2, 10)
    logits[..., :5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    logits[0, 1, :5] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    mv = M.top5_distance(logits)
    assert mv.value > 0 and mv.ci[0] >= 0.0 and mv.ci[1] <= 15.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), min_size=1, max_size=30))
def test_feature_proportion_intervals_stay_in_range_and_hold_the_value(pairs):
    hits = np.array([min(h, t) for h, t in pairs])
    trials = np.array([t for _, t in pairs])
    mv = M.clustered_proportion_value("p", hits, trials)
    assert mv.n == trials.sum() and mv.extra["images"] == len(pairs)
    if len(pairs) >= 2 or trials.max() == 1:
        assert 0.0 <= mv.ci[0] <= mv.value <= mv.ci[1] <= 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=5), min_size=2, max_size=20))
def test_feature_mean_intervals_stay_in_the_metric_range(groups):
    values = np.concatenate([np.asarray(g) for g in groups])
    clusters = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    mv = M.clustered_mean_value("m", values, clusters, bounds=(0.0, 1.0))
    assert 0.0 <= mv.ci[0] <= mv.value + 1e-12 and mv.value - 1e-12 <= mv.ci[1] <= 1.0


def test_exception_bad_clustered_inputs():
    from shiftlab.errors import ShiftlabError

    with pytest.raises(ShiftlabError, match="successes <= trials"):
        M.clustered_proportion_value("p", [3], [2])
    with pytest.raises(ShiftlabError, match="sorted"):
        M.clustered_mean_value("m", [1.0, 2.0], [1, 0])


def test_feature_merged_shards_give_the_unsharded_intervals_exactly():
    from shiftlab import audit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())
    x = torch.rand(11, 3, 24, 24)
    whole = audit(model, x, transform="diagonal:3:circular", normalize=False, batch_size=8)
    parts = [audit(model, x, transform="diagonal:3:circular", normalize=False, batch_size=8, indices=i)
             for i in ([0, 3, 4, 9], [1, 2, 5], [6, 7, 8, 10])]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for name, mv in whole.metrics.items():
        assert merged.metrics[name] == mv  # value, interval, n and images, to the last bit
