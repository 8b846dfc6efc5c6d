"""Experiment "subsampling" (issue 19): strided, max-pool, BlurPool, APS, LPS and TIPS on the real digits.

The quick run goes through the CLI and trains real networks; the tests assert what the constructions
guarantee (APS and LPS with circular padding and global pooling: circular consistency exactly 1, float64
logits unchanged), that TIPS is not claimed exact, that the published table travels with the result, and
that the published orderings are computed from the measured means. No number of a run is copied here.
"""

import json

import pytest
import torch

from shiftlab.cli import main
from shiftlab.errors import InputError


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks on a shared machine: one thread is several times faster
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick(tmp_path_factory, one_thread):
    """``shiftlab experiment subsampling --quick`` through the CLI: (output folder, printed text, result)."""
    out = tmp_path_factory.mktemp("subsampling") / "exp"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["experiment", "subsampling", "--quick", "--out", str(out), "--no-progress"])
    assert code == 0
    return out, printed.getvalue(), json.loads((out / "subsampling.json").read_text())


def _run(result, variant):
    return result["variants"][variant]["runs"][0]


# --------------------------------------------------------------------------------------------- the quick run


@pytest.mark.slow
def test_smoke_quick_cli_writes_json_figure_and_table(quick):
    out, printed, result = quick
    assert result["experiment"] == "subsampling" and result["quick"] and result["seeds"] == [0]
    assert (out / "subsampling.png").stat().st_size > 1000
    from shiftlab.experiments.subsampling import VARIANTS

    assert list(result["variants"]) == list(VARIANTS)
    for variant in VARIANTS:
        assert variant in printed
        run = _run(result, variant)
        for key in ("accuracy", "crop_consistency", "circular_consistency", "top1_change"):
            low, high = run[key]["ci"]  # image-level interval from the audit
            assert low <= run[key]["value"] <= high and run[key]["n"] > 0
            assert result["variants"][variant]["summary"][key]["mean"] == run[key]["value"]
    assert result["statement"] in printed
    assert result["run_seconds"] > 0  # recorded (its size is a benchmark matter, never a test)
    json.dumps(result, allow_nan=False)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["aps-gap-circular", "lps-gap-circular"])
def test_feature_aps_and_lps_with_circular_gap_are_exactly_invariant(quick, variant):
    _, _, result = quick
    entry, run = result["variants"][variant], _run(result, variant)
    assert entry["exact_by_construction"] is True
    assert run["circular_consistency"]["value"] == 1.0
    assert run["circular_consistency"]["n"] == result["data"]["n_test"]
    change = run["circular_logit_change"]  # relative change of the float64 logits between the rolled copies
    assert change["value"] <= 1e-12 and change["pooled"] <= 1e-12
    assert run["accuracy"]["value"] > 0.3  # it learned: chance is 0.1


@pytest.mark.slow
def test_lps_was_trained_with_an_annealed_temperature_and_tips_with_its_shift_term(quick):
    _, _, result = quick
    lps, tips = _run(result, "lps-gap-circular"), _run(result, "tips-gap-circular")
    assert lps["lps_temperature"]["final"] < lps["lps_temperature"]["start"]
    assert tips["tips_alpha"] == result["parameters"]["tips_alpha"] > 0
    assert "lps_temperature" not in _run(result, "aps-gap-circular")


@pytest.mark.slow
def test_negative_control_tips_and_the_baselines_are_not_claimed_or_measured_exact(quick):
    _, _, result = quick
    for variant in ("tips-gap-circular", "stride-gap-circular", "maxpool-gap-circular", "blur-gap-circular"):
        assert result["variants"][variant]["exact_by_construction"] is False
        # the same float64 measurement that is ~1e-16 for APS and LPS sees these logits move
        assert _run(result, variant)["circular_logit_change"]["value"] > 1e-9
    assert "TIPS's invariance is learned, not guaranteed" in " ".join(result["claims"])


@pytest.mark.slow
def test_published_table_and_its_source_are_in_the_json(quick):
    _, _, result = quick
    from shiftlab.experiments.subsampling import PUBLISHED

    published = result["published"]
    assert published == json.loads(json.dumps(PUBLISHED))
    assert "TIPS" in published["source"] and "CIFAR-10" in published["source"] and "ResNet-18" in published["source"]
    assert published["methods"]["baseline"] == {"accuracy": 91.57, "crop_consistency": 87.41,
                                                "circular_consistency": 89.92}
    assert published["methods"]["tips"] == {"accuracy": 98.12, "crop_consistency": 98.67,
                                            "circular_consistency": 100.0}
    methods = {v: e["published_method"] for v, e in result["variants"].items()}
    assert methods == {"stride-gap-circular": "baseline", "maxpool-gap-circular": "baseline",
                       "blur-gap-circular": "blurpool", "aps-gap-circular": "aps", "lps-gap-circular": "lps",
                       "tips-gap-circular": "tips"}


@pytest.mark.slow
def test_published_orderings_are_computed_from_the_measured_means(quick):
    _, _, result = quick
    comparison = result["published_comparison"]
    # 5 methods: 10 pairs per metric, the 4 with the baseline counted for both baselines: 14; 3 metrics
    assert comparison["counts"]["orderings"] == len(comparison["orderings"]) == 42
    table = result["published"]["methods"]
    for o in comparison["orderings"]:
        a, b = o["variants"]
        means = [result["variants"][v]["summary"][o["metric"]]["mean"] for v in (a, b)]
        assert o["means"] == means and o["difference"] == means[0] - means[1]
        assert o["published"] == [table[o["higher"]][o["metric"]], table[o["lower"]][o["metric"]]]
        assert o["published"][0] >= o["published"][1]
        assert o["agrees"] == (o["difference"] == 0 if o["relation"] == "=" else o["difference"] > 0)
        assert o["beyond_seed_spread"] is None  # one seed: no spread to compare with
    # an analytic truth: APS and LPS are both exactly invariant, as published (100 = 100)
    tie = [o for o in comparison["orderings"] if o["metric"] == "circular_consistency"
           and {o["higher"], o["lower"]} == {"aps", "lps"}]
    assert len(tie) == 1 and tie[0]["relation"] == "=" and tie[0]["verdict"] == "holds (equal on digits)"


@pytest.mark.slow
def test_report_renders_the_saved_result(quick, tmp_path):
    from shiftlab.report.inputs import load_experiment_results
    from shiftlab.report import html as H
    from shiftlab.report.experiment_plots import experiment_caption, experiment_title

    out, _, _ = quick
    found = load_experiment_results(out)
    assert list(found) == ["subsampling"]
    results = {"training_experiments": found}
    figures = H.render_figures(results, tmp_path / "figures")
    assert list(figures) == ["experiment_subsampling:"]
    section = H._training(results, figures)
    assert experiment_title(found["subsampling"]) in section and figures["experiment_subsampling:"] in section
    assert "published orderings" in experiment_caption(found["subsampling"])


# --------------------------------------------------------------------------------------------- orderings


def _entry(downsample, values):
    return {"config": {"downsample": downsample, "head": "gap", "padding": "circular"},
            "summary": {"accuracy": {"mean": sum(values) / len(values), "std": 0.0, "min": min(values),
                                     "max": max(values), "values": values}}}


def _only_accuracy(monkeypatch):
    import shiftlab.experiments.subsampling as S

    monkeypatch.setitem(S.PUBLISHED, "metric_names", {"accuracy": "accuracy"})
    return S.published_orderings


def test_feature_orderings_separate_beyond_and_within_the_seed_spread(monkeypatch):
    orderings = _only_accuracy(monkeypatch)
    variants = {"tips-gap-circular": _entry("tips", [0.95, 0.96, 0.97]),  # published first
                "lps-gap-circular": _entry("lps", [0.90, 0.91, 0.92]),  # below every TIPS seed
                "aps-gap-circular": _entry("aps", [0.89, 0.915, 0.93])}  # overlaps LPS
    found = {(o["higher"], o["lower"]): o for o in orderings(variants, seeds=3)["orderings"]}
    assert found[("tips", "lps")]["verdict"] == "holds, beyond the seeds' spread"
    assert found[("lps", "aps")]["agrees"] is False  # negative control: published LPS > APS, here APS higher
    assert found[("lps", "aps")]["verdict"] == "reversed, within the seeds' spread"
    assert found[("tips", "aps")]["beyond_seed_spread"] is True


def test_feature_a_reversed_ordering_beyond_the_spread_is_counted_as_such(monkeypatch):
    orderings = _only_accuracy(monkeypatch)
    variants = {"stride-gap-circular": _entry("stride", [0.97, 0.98, 0.99]),
                "blur-gap-circular": _entry("blur", [0.80, 0.81, 0.82])}
    result = orderings(variants, seeds=3)
    (o,) = result["orderings"]
    assert (o["higher"], o["lower"]) == ("blurpool", "baseline")
    assert o["verdict"] == "reversed, beyond the seeds' spread"
    assert result["counts"] == {"orderings": 1, "agree": 0, "agree_beyond_spread": 0, "fail_beyond_spread": 1}


def test_feature_a_published_tie_holds_only_when_equal_on_digits(monkeypatch):
    import shiftlab.experiments.subsampling as S

    monkeypatch.setitem(S.PUBLISHED, "metric_names", {"accuracy": "accuracy"})
    monkeypatch.setitem(S.PUBLISHED, "methods", {"aps": {"accuracy": 100.0}, "lps": {"accuracy": 100.0},
                                                 "tips": {"accuracy": 100.0}})
    variants = {"aps-gap-circular": _entry("aps", [1.0, 1.0, 1.0]), "lps-gap-circular": _entry("lps", [1.0, 1.0, 1.0]),
                "tips-gap-circular": _entry("tips", [0.99, 0.995, 0.99])}
    result = S.published_orderings(variants, seeds=3)
    verdicts = {(o["higher"], o["lower"]): o["verdict"] for o in result["orderings"]}
    assert verdicts[("aps", "lps")] == "holds (equal on digits)"
    assert verdicts[("aps", "tips")] == "does not hold (unequal on digits, beyond the seeds' spread)"
    assert result["counts"] == {"orderings": 3, "agree": 1, "agree_beyond_spread": 0, "fail_beyond_spread": 2}


# --------------------------------------------------------------------------------------------- bad inputs


def test_exception_bad_variant_names_are_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "subsampling", "--quick", "--out", str(out), "--variants", "lps-gap-circular,nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err and "DOWNSAMPLE-HEAD-PADDING" in err
    assert not out.exists()  # refused before any work or output
    assert main(["experiment", "subsampling", "--quick", "--out", str(out), "--variants", " , "]) == 2
    assert "names no variant" in capsys.readouterr().err
    assert main(["experiment", "rotation", "--quick", "--out", str(out), "--variants", "aps-gap-circular"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--variants applies to" in err


def test_exception_bad_variants_in_the_python_api():
    from shiftlab.experiments import run_subsampling

    for bad, match in ((["lps-gap"], "DOWNSAMPLE-HEAD-PADDING"), (["lps-gap-circular"] * 2, "listed twice"),
                       ([], "at least one"), ([3], "strings")):
        with pytest.raises(InputError, match=match):
            run_subsampling(quick=True, variants=bad)
    with pytest.raises(InputError, match="seeds"):
        run_subsampling(seeds=0, quick=True)


@pytest.mark.slow
def test_other_data_goes_through_the_same_canvas_split(tmp_path, capsys, one_thread):
    """``--data`` as for the other experiments: a labelled .npz of colour images, placed on the canvas."""
    import numpy as np

    rng = torch.Generator().manual_seed(0)
    images = (torch.rand(60, 24, 24, 3, generator=rng) * 255).to(torch.uint8).numpy()
    np.savez(tmp_path / "toy.npz", images=images, labels=(torch.arange(60) % 3).numpy())
    out = tmp_path / "exp"
    assert main(["experiment", "subsampling", "--quick", "--out", str(out), "--no-progress", "--data",
                 str(tmp_path / "toy.npz"), "--variants", "aps-gap-circular,lps-gap-circular,tips-gap-circular"]) == 0
    result = json.loads((out / "subsampling.json").read_text())
    assert "toy.npz" in result["data"]["data"] and result["data"]["n_test"] == 12
    assert list(result["variants"]) == ["aps-gap-circular", "lps-gap-circular", "tips-gap-circular"]
    for variant in ("aps-gap-circular", "lps-gap-circular"):  # 3 channels: still exact
        assert _run(result, variant)["circular_consistency"]["value"] == 1.0
    assert (out / "subsampling.png").exists()
