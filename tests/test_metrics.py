"""shiftlab.metrics: analytic truths, hand-computed values, interval coverage, bad input, assertions."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import shiftlab.metrics as SM
from shiftlab.errors import ShapeError, ShiftlabError
from shiftlab.measure.assertions import assert_shift_equivariant, assert_shift_invariant
from shiftlab.measure.metrics import MetricValue, mean_interval, wilson_interval


def _binom_pmf(k, n, p):
    return math.comb(n, k) * p ** k * (1 - p) ** (n - k)


# ---------------------------------------------------------------------------------------------- intervals

@pytest.mark.parametrize("n,p", [(50, 0.3), (200, 0.9), (1000, 0.5)])
def test_wilson_exact_coverage_near_nominal(n, p):
    # exact coverage: sum of binomial probabilities of the k whose interval contains p
    cover = sum(_binom_pmf(k, n, p) for k in range(n + 1) if wilson_interval(k, n)[0] <= p <= wilson_interval(k, n)[1])
    assert 0.93 <= cover <= 0.97


def test_wilson_simulated_coverage():
    # 2000 simulated experiments: the coverage estimate has sd sqrt(.95 * .05 / 2000) = 0.005; band = nominal +- 4 sd
    rng = np.random.default_rng(1)
    n, p = 80, 0.85
    draws = rng.binomial(n, p, size=2000)
    covered = np.mean([lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in draws)])
    assert 0.93 <= covered <= 0.97


def test_t_interval_simulated_coverage_and_reference():
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(2000):
        x = rng.normal(1.5, 2.0, size=12)
        lo, hi = mean_interval(x)
        covered += lo <= 1.5 <= hi
    assert 0.93 <= covered / 2000 <= 0.97
    from scipy import stats

    x = rng.normal(size=30)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean_interval(x) == pytest.approx(ref, rel=1e-10)


def test_wilson_properties_and_exception():
    lo, hi = wilson_interval(3, 10)
    lo2, hi2 = wilson_interval(7, 10)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert lo < 0.3 < hi
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ShiftlabError):
        wilson_interval(11, 10)
    with pytest.raises(ShiftlabError):
        wilson_interval(1, 10, confidence=1.5)


def test_metric_value_to_dict_replaces_nan():
    d = MetricValue("x", math.nan, (math.nan, 1.0), 0, {"k": 1}).to_dict()
    assert d == {"value": None, "ci": [None, 1.0], "n": 0, "k": 1}


# ---------------------------------------------------------------------------------------------- top-1 metrics

def test_invariant_outputs_give_perfect_scores():
    logits = torch.randn(20, 1, 7, dtype=torch.float64).expand(20, 6, 7)
    assert SM.consistency(logits[:, 0], logits[:, 3]).value == 1.0
    assert SM.top1_change(logits).value == 0.0
    assert SM.mean_abs_change(logits).value == 0.0
    assert SM.flip_probability(logits).value == 0.0
    assert SM.top5_distance(logits).value == 0.0
    assert SM.worst_case_stability(logits).value == 1.0


def test_hand_computed_values():
    a = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    c = SM.consistency(a, b)
    assert (c.value, c.n) == (0.5, 4)
    # sequences of top-1 classes 0,0,1,1 (one change of 3) and 2,0,2,2 (two changes of 3)
    seq = torch.zeros(2, 4, 3)
    for i, classes in enumerate([[0, 0, 1, 1], [2, 0, 2, 2]]):
        for t, k in enumerate(classes):
            seq[i, t, k] = 1.0
    assert SM.top1_change(seq).value == pytest.approx(3 / 6)
    assert SM.top1_change(seq).n == 6
    assert SM.flip_probability(seq, reference="first").value == pytest.approx((2 + 1) / 6)
    assert SM.worst_case_stability(seq).value == 0.0
    labels = torch.tensor([0, -1])
    acc = SM.accuracy(seq, labels)
    assert (acc.value, acc.n) == (0.5, 4)


def test_mean_abs_change_by_hand():
    # logits alternate [0, 0] and [0, 1]: top class prob moves by sigmoid(1) - 1/2 at every step
    frames = torch.tensor([[0.0, 0.0], [0.0, 1.0]] * 3).view(1, 6, 2)
    assert SM.mean_abs_change(frames).value == pytest.approx(1 / (1 + math.exp(-1)) - 0.5, abs=1e-12)
    probs = torch.tensor([[0.5, 0.5], [0.2, 0.8], [0.6, 0.4]]).view(1, 3, 2)
    assert SM.mean_abs_change(probs, probabilities=True).value == pytest.approx((0.3 + 0.4) / 2)


def test_top5_distance_by_hand():
    base = torch.arange(10, 0, -1, dtype=torch.float64)  # ranking 0, 1, ..., 9
    swapped = base.clone()
    swapped[[0, 1]] = swapped[[1, 0]]  # classes 0 and 1 trade places: distance 1 + 1
    dropped = base.clone()
    dropped[0] = -5.0  # class 0 falls to the last rank: |0 - 5| + 4 moves of one place
    seq = torch.stack([base, swapped, base, dropped]).unsqueeze(0)
    d = SM.top5_distance(seq)
    assert d.value == pytest.approx((2 + 2 + 9) / 3)
    ties = torch.zeros(1, 3, 10)  # all tied: ranking by class index, unchanged
    assert SM.top5_distance(ties).value == 0.0


@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.zeros(2, 3, 4, 5), torch.zeros(0, 2, 3)])
def test_sequence_metrics_reject_wrong_rank_or_empty(bad):
    with pytest.raises(ShapeError):
        SM.top1_change(bad)


def test_metrics_reject_nan_and_mismatch():
    x = torch.zeros(2, 3, 4)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ShapeError, match="NaN"):
        SM.flip_probability(x)
    with pytest.raises(ShapeError):
        SM.consistency(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ShapeError, match="5 classes"):
        SM.top5_distance(torch.zeros(2, 3, 4))
    with pytest.raises(ShapeError):
        SM.accuracy(torch.zeros(2, 3), torch.zeros(2))


# ---------------------------------------------------------------------------------------------- feature level

def _circular_conv(stride=1, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Conv2d(2, 3, 3, stride=stride, padding=1, padding_mode="circular").double()


@settings(max_examples=15, deadline=None)
@given(h=st.integers(4, 12), w=st.integers(4, 12), dy=st.integers(-20, 20), dx=st.integers(-20, 20),
       k=st.sampled_from([1, 3, 5]), seed=st.integers(0, 100))
def test_circular_conv_has_zero_equivariance_error(h, w, dy, dx, k, seed):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(2, 3, k, padding=k // 2, padding_mode="circular").double()
    x = torch.rand(2, 2, h, w, dtype=torch.float64)
    with torch.no_grad():
        err = SM.feature_equivariance_error(conv(x), conv(torch.roll(x, (dy, dx), (-2, -1))), (dy, dx))
    assert err.n == 2 and err.value <= 1e-12


def test_zero_padding_is_a_negative_control():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        err = SM.feature_equivariance_error(conv(x), conv(torch.roll(x, (1, 2), (-2, -1))), (1, 2))
        inner = SM.feature_equivariance_error(conv(x), conv(torch.roll(x, (1, 2), (-2, -1))), (1, 2),
                                              circular=False, margin=1)
    assert err.value > 1e-3
    assert inner.value <= 1e-12  # inside a 1-px margin (the padding's reach) the shift is exact


def test_stride_two_even_shifts_exact_odd_shifts_unrepresentable():
    conv = _circular_conv(stride=2)
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        even = SM.feature_equivariance_error(conv(x), conv(torch.roll(x, (2, -4), (-2, -1))), (2, -4), stride=2)
        odd = SM.feature_equivariance_error(conv(x), conv(torch.roll(x, (1, 0), (-2, -1))), (1, 0), stride=2)
        pooled = SM.feature_invariance_error(conv(x), conv(torch.roll(x, (1, 0), (-2, -1))))
    assert even.n == 3 and even.value <= 1e-12
    assert odd.n == 0 and odd.extra["unrepresentable"] == 3
    assert pooled.value > 1e-3  # aliasing: the odd shift changes even the pooled features


# ---------------------------------------------------------------------------------------------- assertions

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_assert_shift_equivariant_passes_exact_and_fails_zero_padding(dtype):
    conv = _circular_conv().to(dtype)
    x = torch.rand(2, 2, 10, 10, dtype=dtype)
    assert_shift_equivariant(conv, x)
    assert_shift_equivariant(_circular_conv(stride=2).to(dtype), x)  # stride inferred; shifts of 2
    zero = torch.nn.Conv2d(2, 3, 3, padding=1).to(dtype)
    with pytest.raises(AssertionError, match="not shift-equivariant"):
        assert_shift_equivariant(zero, x)
    with pytest.raises(ShapeError, match="multiple of the stride"):
        assert_shift_equivariant(_circular_conv(stride=2).to(dtype), x, shifts=[(1, 0)])


def test_assert_shift_invariant_passes_pooled_and_fails_position():
    conv = _circular_conv()
    x = torch.rand(2, 2, 10, 10, dtype=torch.float64)
    assert_shift_invariant(lambda t: conv(t).mean(dim=(-2, -1)), x)
    with pytest.raises(AssertionError, match="not shift-invariant"):
        assert_shift_invariant(lambda t: conv(t)[..., 0, 0], x)
    with pytest.raises(ShapeError):
        assert_shift_invariant(lambda t: t.mean(), x)


def test_roll_per_sample_matches_a_slow_reference():
    from shiftlab.measure.metrics import roll_per_sample

    x = torch.rand(5, 2, 6, 7)
    dy = torch.tensor([0, 1, -2, 7, 1])
    dx = torch.tensor([3, -1, 0, 2, 3])
    slow = torch.stack([torch.roll(x[b], (int(dy[b]), int(dx[b])), (-2, -1)) for b in range(5)])
    assert torch.equal(roll_per_sample(x, dy, dx), slow)
    assert torch.equal(roll_per_sample(x, dy * 0 + 2, dx * 0 - 1), torch.roll(x, (2, -1), (-2, -1)))
