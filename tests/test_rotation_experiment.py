"""Experiment "rotation" (issue 14) in quick mode: plain, p4 and harmonic CNNs trained on the real digits.

The quick run trains real networks and asserts what the articles' claims predict, never copied numbers:
the plain network fails away from upright, the p4 and harmonic networks give the same answer at every
multiple of 90 degrees (exactly, float64 logits), the harmonic network's curve is flatter than the plain one's.
"""

import json
import math

import pytest


@pytest.fixture(scope="module")
def result(rotation_quick):
    return rotation_quick  # conftest: trained once per session


def _run(result, name):
    return result["variants"][name]["runs"][0]


def _curve(result, name):
    return dict(zip(result["sweeps"]["angles"], _run(result, name)["angles"]))


@pytest.mark.slow
def test_plain_network_fails_away_from_upright_and_is_not_quarter_turn_invariant(result):
    plain = _curve(result, "none")
    assert plain[0.0] > 0.7  # it learned (chance is 0.1)
    assert plain[90.0] < plain[0.0] - 0.3 and plain[45.0] < plain[0.0] - 0.3
    run = _run(result, "none")
    assert run["quarter_turn_agreement"] < 0.5  # negative control for the exactness below
    assert run["quarter_turn_max_logit_difference"] > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["p4", "harmonic"])
def test_equivariant_networks_give_the_same_answer_at_every_multiple_of_90_degrees(result, name):
    run = _run(result, name)
    assert run["quarter_turn_agreement"] == 1.0
    assert run["quarter_turn_max_logit_difference"] <= 1e-12 * max(1.0, run["logit_scale"])  # float64
    curve = _curve(result, name)
    quarter = [curve[a] for a in (0.0, 90.0, 180.0, 270.0)]
    assert len(set(quarter)) == 1, quarter  # the audit's float32 accuracies, equal to the digit
    assert curve[0.0] > 0.3  # learned something even in 4 quick epochs


@pytest.mark.slow
def test_harmonic_network_is_flatter_than_the_plain_one_and_beats_it_off_the_quarter_turns(result):
    plain, harmonic = _run(result, "none"), _run(result, "harmonic")
    assert harmonic["accuracy_spread_over_angles"] < plain["accuracy_spread_over_angles"]
    assert _curve(result, "harmonic")[45.0] > _curve(result, "none")[45.0] + 0.1
    assert harmonic["logit_change_at_45_deg"] < plain["logit_change_at_45_deg"]


@pytest.mark.slow
def test_rotation_augmentation_flattens_the_plain_curve(result):
    none, rotation = _run(result, "none"), _run(result, "rotation")
    assert rotation["accuracy_spread_over_angles"] < none["accuracy_spread_over_angles"]
    assert _curve(result, "rotation")[90.0] > _curve(result, "none")[90.0] + 0.1


@pytest.mark.slow
def test_result_records_intervals_costs_and_renders(result):
    json.dumps(result, allow_nan=False)
    n_test = result["data"]["n_test"]
    for name, entry in result["variants"].items():
        run = entry["runs"][0]
        assert run["n"] == n_test and entry["parameters"] > 1000 and entry["macs"] > 0
        for value, (low, high) in zip(run["angles"], run["intervals"]["angles"]):
            assert low <= value <= high  # 95% Wilson interval from the audit
        assert run["inference_ms_per_image"] > 0 and run["train_seconds"] > 0
        assert math.isclose(run["mean_accuracy_over_angles"], sum(run["angles"]) / len(run["angles"]))
        assert entry["summary"]["accuracy"]["mean"] == run["accuracy"]
    # the rotation-equivariant networks cost more per parameter than the plain one
    assert result["variants"]["p4"]["macs"] > result["variants"]["none"]["macs"]
    assert result["variants"]["harmonic"]["macs"] > result["variants"]["p4"]["macs"]

    import matplotlib.pyplot as plt

    from shiftlab.report.experiment_plots import experiment_caption, experiment_figures

    figures = experiment_figures(result)
    assert set(figures) == {"", "_cost"}
    for fig in figures.values():
        plt.close(fig)
    caption = experiment_caption(result)
    assert "harmonic" in caption and "mean over all angles" in caption


def test_exception_unknown_network_condition():
    from shiftlab.errors import InputError
    from shiftlab.experiments.rotation import run_rotation

    with pytest.raises(InputError, match="unknown conditions"):
        run_rotation(quick=True, conditions=["p6"])
