"""Experiment "subpixel" (issue 20): baseline, BlurPool, APS and alias-free networks on the real digits, worst-case
accuracy on the integer, half-pixel and fractional grids and under crop shifts.

The quick run goes through the CLI and trains real networks; the tests assert what the constructions guarantee
(the alias-free network loses nothing on any circular grid; APS nothing on the integer grid), that the published
table travels with the result, and that the conclusions are computed from the measured means. No number of a
run is copied here.
"""

import json

import pytest
import torch

from shiftlab.cli import main
from shiftlab.errors import InputError


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``shiftlab experiment subpixel --quick`` through the CLI: (output folder, printed text, result)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("subpixel") / "exp"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks on a shared machine
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = main(["experiment", "subpixel", "--quick", "--out", str(out), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out, printed.getvalue(), json.loads((out / "subpixel.json").read_text())


@pytest.mark.slow
def test_smoke_quick_cli_writes_json_figure_and_table(quick):
    out, printed, result = quick
    from shiftlab.experiments.subpixel import GRIDS, VARIANTS

    assert result["experiment"] == "subpixel" and result["quick"] and result["seeds"] == [0]
    assert (out / "subpixel.png").stat().st_size > 1000
    assert list(result["variants"]) == list(VARIANTS)
    for variant in VARIANTS:
        assert variant in printed
        run = result["variants"][variant]["runs"][0]
        for key in ("accuracy", *(f"worst_case_{g}" for g in GRIDS)):
            entry = run[key]
            assert 0.0 <= entry["ci"][0] <= entry["value"] <= entry["ci"][1] <= 1.0, (variant, key)
            assert entry["n"] == result["data"]["n_test"], (variant, key)  # one trial per image
        # the worst case over a grid that holds the unshifted image is never above the clean accuracy
        for grid in ("integer", "half_pixel", "fractional"):
            assert run[f"worst_case_{grid}"]["value"] <= run["accuracy"]["value"] + 1e-12


@pytest.mark.slow
def test_guarantees_hold_exactly_where_the_construction_promises(quick):
    """Alias-free: no image lost on any circular grid (Fourier shifts), exactly; APS: none on the integer grid.
    Their declared guarantees travel with the result."""
    _, _, result = quick
    free, aps = result["variants"]["alias-free"], result["variants"]["aps"]
    assert free["guarantee"] == "fractional" and aps["guarantee"] == "integer"
    assert result["variants"]["baseline"]["guarantee"] == "none"
    for grid in ("integer", "half_pixel", "fractional"):
        assert free["runs"][0][f"worst_case_{grid}"]["value"] == free["runs"][0]["accuracy"]["value"], grid
    assert aps["runs"][0]["worst_case_integer"]["value"] == aps["runs"][0]["accuracy"]["value"]


@pytest.mark.slow
def test_published_table_and_conclusions_follow_the_measured_means(quick):
    _, _, result = quick
    from shiftlab.experiments.subpixel import PUBLISHED, published_conclusions

    assert result["published"] == PUBLISHED
    assert result["published"]["methods"]["alias-free"]["worst_case_half_pixel"] == 81.04
    recomputed = published_conclusions(result["variants"])
    assert result["published_conclusions"] == json.loads(json.dumps(recomputed))
    first = recomputed[0]
    assert first["verdict"] == "holds"  # the alias-free network, by construction
    # a made-up result where the alias-free network loses an image on the half-pixel grid: the verdict flips
    altered = json.loads(json.dumps(result["variants"]))
    altered["alias-free"]["summary"]["worst_case_half_pixel"]["mean"] -= 0.01
    assert published_conclusions(altered)[0]["verdict"] == "does not hold"


def test_conclusions_on_hand_made_means():
    """The verdicts are computed, not copied: baseline losing everywhere holds, APS losing on the integer grid
    does not."""
    from shiftlab.experiments.subpixel import published_conclusions

    def entry(acc, integer, half, frac):
        keys = {"accuracy": acc, "worst_case_integer": integer, "worst_case_half_pixel": half,
                "worst_case_fractional": frac, "worst_case_crop": integer}
        return {"summary": {k: {"mean": v} for k, v in keys.items()}}

    variants = {"baseline": entry(0.9, 0.8, 0.7, 0.75), "aps": entry(0.9, 0.85, 0.8, 0.8),
                "alias-free": entry(0.88, 0.88, 0.88, 0.88)}
    verdicts = [c["verdict"] for c in published_conclusions(variants)]
    assert verdicts == ["holds", "holds", "does not hold", "holds"]


def test_bad_variants_are_refused_before_work():
    from shiftlab.experiments.subpixel import run_subpixel

    for bad in (["nope"], [], ["aps", "aps"]):
        with pytest.raises(InputError, match="variants"):
            run_subpixel(seeds=1, quick=True, variants=bad)


def test_report_renders_the_experiment(quick):
    """The report's experiment section takes the saved result: title, caption with the statement, figure."""
    _, _, result = quick
    from shiftlab.report.experiment_plots import experiment_caption, experiment_figures, experiment_title

    assert "Sub-pixel" in experiment_title(result)
    caption = experiment_caption(result)
    assert "alias-free: accuracy" in caption and result["statement"] in caption
    figures = experiment_figures(result)
    assert list(figures) == [""]
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)


def test_the_report_plans_the_half_pixel_row_and_renders_it(tmp_path):
    """`shiftlab report` gains the sub-pixel row: worst-case stability under the half-pixel grid, with its command,
    on the page and in the shift-metric bars."""
    from shiftlab.report import page, plots
    from shiftlab.runs.report_plan import DEFAULT_BUDGET, QUICK_BUDGET, report_audits

    for budget in (DEFAULT_BUDGET, QUICK_BUDGET):
        plan = {a.key: a for a in report_audits("pretrained:efficientnet_lite0", "photos", 224, budget)}
        assert plan["subpixel"].run.transform == f"halfpixel:{budget.half_pixel}"
        assert plan["subpixel"].run.command().startswith("shiftlab audit ")
    metric = {"value": 0.75, "ci": [0.4, 0.93], "n": 4, "images": 4}
    results = {"audits": {"subpixel": {"command": "shiftlab audit --transform halfpixel:2",
                                       "result": {"protocol": {"spec": "halfpixel:2"},
                                                  "metrics": {"worst_case_stability": metric}}}}}
    rows = plots.shift_bars(results)
    assert [r[2] for r in rows] == ["subpixel"]
    assert "1 ≤ i, j ≤ 2" in page._half_pixel_grid(results)
