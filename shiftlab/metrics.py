"""The shift metrics (an alias of :mod:`shiftlab.measure.metrics`): pure functions of model outputs."""

from shiftlab.measure.metrics import (
    MetricValue,
    accuracy,
    consistency,
    feature_equivariance_error,
    feature_invariance_error,
    flip_probability,
    mean_abs_change,
    mean_interval,
    mean_value,
    proportion_value,
    top1_change,
    top5_distance,
    wilson_interval,
    worst_case_stability,
)

__all__ = [
    "MetricValue",
    "wilson_interval",
    "mean_interval",
    "proportion_value",
    "mean_value",
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
