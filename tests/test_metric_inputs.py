"""Property tests of the metrics' input checks: any malformed input raises a ShiftlabError, nothing else."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftlab.errors import ShiftlabError
from shiftlab.measure import metrics as M

SEQUENCE_METRICS = (M.top1_change, M.mean_abs_change, M.flip_probability, M.top5_distance, M.worst_case_stability)

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool, torch.complex64])
specials = st.sampled_from([None, math.nan, math.inf, -math.inf])


def _tensor(shape, dtype, special):
    x = torch.zeros(shape, dtype=torch.float64).normal_() if shape else torch.tensor(1.0, dtype=torch.float64)
    if special is not None and x.numel():
        x.view(-1)[0] = special
    return x.to(dtype) if dtype is not torch.bool else x > 0


@settings(max_examples=300, deadline=None)
@given(shape=shapes, dtype=dtypes, special=specials, which=st.integers(0, len(SEQUENCE_METRICS) - 1))
def test_exception_sequence_metrics_accept_well_formed_input_or_raise_one_error_type(shape, dtype, special, which):
    fn = SEQUENCE_METRICS[which]
    x = _tensor(shape, dtype, special)
    try:
        result = fn(x)
    except ShiftlabError:
        return
    # accepted: it must have been a finite floating (N, T, K) tensor, and the answer must be in range
    assert x.ndim == 3 and x.is_floating_point() and bool(torch.isfinite(x).all())
    assert result.n >= 0 and (math.isnan(result.value) or result.value >= 0)


@settings(max_examples=200, deadline=None)
@given(a=shapes, b=shapes, dtype=dtypes, special=specials)
def test_exception_pair_metrics(a, b, dtype, special):
    x, y = _tensor(a, dtype, special), _tensor(b, dtype, None)
    for fn in (M.consistency, lambda p, q: M.feature_invariance_error(p, q)):
        try:
            fn(x, y)
        except ShiftlabError:
            continue
        assert x.shape == y.shape and x.is_floating_point() and bool(torch.isfinite(x).all())


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 5), labels=st.lists(st.integers(-3, 9), max_size=6),
       label_dtype=st.sampled_from([torch.int64, torch.float32, torch.int32]))
def test_exception_accuracy_labels(n, labels, label_dtype):
    logits = torch.randn(n, 4)
    y = torch.tensor(labels, dtype=label_dtype)
    try:
        mv = M.accuracy(logits, y)
    except ShiftlabError:
        return
    assert n > 0 and len(labels) == n and not y.is_floating_point()
    assert math.isnan(mv.value) or 0.0 <= mv.value <= 1.0


@pytest.mark.parametrize("successes,trials", [([1.5, 1], [2, 2]), ([-1, 0], [2, 2]), (["x", 1], [2, 2]),
                                              ([3, 1], [2, 2]), ([1, 1], [2]), ([math.nan, 1], [2, 2])])
def test_exception_clustered_proportion_inputs(successes, trials):
    with pytest.raises(ShiftlabError):
        M.clustered_proportion_value("p", successes, trials)


def test_exception_interval_inputs():
    with pytest.raises(ShiftlabError):
        M.wilson_interval(5, 3)
    with pytest.raises(ShiftlabError):
        M.mean_value("m", [1.0], confidence=1.5)
    with pytest.raises(ShiftlabError):
        M.clustered_mean_value("m", [1.0, 2.0], [0])
