"""The report read by a person (issue 23, point 7), on the figure objects and the page, from hand-made results.

Each test holds what a reader saw wrong: a legend of one entry per photo, labels that name their sweep and grid,
a legend that covers no bar, the command under the per-photo table, bar axes from 0 and whiskers that say what
they are (s.d. over seeds only with two seeds or more; one seed: the run's 95% interval). No model runs here.
"""

from __future__ import annotations

import pytest

from shiftlab.report import experiment_plots as E
from shiftlab.report import plots
from shiftlab.report.page import render_classifier_html, table_command
from shiftlab.report.segmentation_plots import plot_segmentation
from shiftlab.report.whiskers import band, whisker, whisker_note

PHOTOS = 9


def _metric(value, lo=None, hi=None, n=72, images=PHOTOS):
    lo = value - 0.1 if lo is None else lo
    hi = min(value + 0.05, 1.0) if hi is None else hi
    return {"value": value, "ci": [lo, hi], "n": n, "images": images}


def _audit(spec, n, metrics, command=None, predictions=None):
    result = {"protocol": {"spec": spec, "n": n}, "metrics": metrics}
    if predictions is not None:
        result["predictions"] = predictions
    return {"title": spec, "model": "original", "command": command or f"shiftlab audit --model M --transform {spec}",
            "result": result}


def _sweep_predictions(steps, panel):
    """Unlabelled photos: each panel tracks another class for every photo (its own first view's top-1)."""
    probs = [[0.5 + 0.3 * ((k + i) % 3 == 0) for k in range(steps + 1)] for i in range(PHOTOS)]
    top1 = [[(i + panel) if (k + i) % 5 else 900 + i for k in range(steps + 1)] for i in range(PHOTOS)]
    return {"index": list(range(PHOTOS)), "tracked_probability": probs, "top1": top1,
            "tracked_class": [10 * panel + i for i in range(PHOTOS)]}


def _results(sweep=32, grid=8, fix_sweep=16, fix_grid=4):
    audits = {}
    for panel, key in enumerate(plots.SWEEPS):
        audits[key] = _audit(f"diagonal:{sweep}:{key.split('.')[1].replace('_', ':')}", sweep,
                             {"top1_change": _metric(0.07), "mean_abs_change": _metric(0.02)},
                             predictions=_sweep_predictions(sweep, panel))
    audits["consistency.crop"] = _audit("crop:224:32:8", 8, {"consistency": _metric(0.75)})
    audits["consistency.circular"] = _audit("circular:32:8", 8, {"consistency": _metric(0.68)})
    audits["worst_case"] = _audit(f"grid:{grid}:1:crop", grid, {"worst_case_stability": _metric(0.56, n=PHOTOS)})
    audits["rotation"] = _audit("rotate:0,-90,90", None, {"agreement": _metric(0.5)},
                                command="shiftlab audit --model M --data photos --transform rotate:0,-90,90 "
                                        "--predictions")
    models = ["original", "blur", "aps", "aps:circular"]
    for j, model in enumerate(models):
        prefix = "" if model == "original" else f"{model}/"
        audits[f"{prefix or 'original/'}sweep{fix_sweep}"] = _audit(f"diagonal:{fix_sweep}:crop", fix_sweep,
                                                                     {"top1_change": _metric(0.09 - 0.02 * j)})
        audits[f"{prefix or 'original/'}grid{fix_grid}"] = _audit(f"grid:{fix_grid}:1:crop", fix_grid,
                                                                  {"worst_case_stability": _metric(0.8)})
        if model != "original":
            audits[f"{prefix}consistency.crop"] = _audit("crop:224:32:8", 8, {
                "consistency": _metric(0.95), "reference_agreement": _metric(0.4), "accuracy": _metric(0.9)})
            audits[f"{prefix}consistency.circular"] = _audit("circular:32:8", 8, {"consistency": _metric(1.0, 0.96)})
    names = [f"photo{i}" for i in range(PHOTOS)]
    return {"settings": {"model": "M", "data": "photos", "budget": {"sweep": sweep, "grid": grid,
                                                                     "fix_sweep": fix_sweep, "fix_grid": fix_grid}},
            "data": {"names": names, "indices": list(range(PHOTOS)), "n_images": PHOTOS},
            "model": {"input_size": [224, 224]}, "audits": audits,
            "predictions": [{"index": i, "image": names[i], "top1": i, "top1_name": f"class {i}", "probability": 0.5,
                             "label": -1, "label_name": None, "top5": []} for i in range(PHOTOS)],
            "fixes": {"models": models, "titles": {m: m for m in models}, "replacements": {}}}


# ------------------------------------------------------------------------------------------------ the figures


def test_cardinality_jaggedness_legend_has_one_entry_per_photo():
    fig = plots.plot_jaggedness(_results())
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) == PHOTOS, texts  # was 2 x 9 + 1: a class per panel, and the crosses
    assert len(set(texts)) == PHOTOS and all(f"photo{i}" in texts[i] for i in range(PHOTOS))
    # one colour per photo, the same in every panel, and no two photos alike
    colors = [tuple(h.get_color()) if not isinstance(h.get_color(), str) else h.get_color()
              for h in legend.legend_handles]
    assert len(set(colors)) == PHOTOS
    for ax in fig.axes:
        assert [line.get_color() for line in ax.get_lines()] == colors


def test_feature_fix_comparison_legend_covers_no_bar():
    from matplotlib.patches import Rectangle

    fig = plots.plot_fix_comparison(_results())
    fig.canvas.draw()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent()
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    assert len(bars) == 4 * 5 - 1  # the original's agreement with itself is no bar
    overlapping = [b for b in bars if legend.overlaps(b.get_window_extent())]
    assert not overlapping, [(b.get_x(), b.get_height()) for b in overlapping]


def test_feature_fix_labels_name_their_sweep_and_grid():
    results = _results(fix_sweep=16, fix_grid=4)
    labels = [t.get_text() for t in plots.plot_fix_comparison(results).axes[0].get_xticklabels()]
    assert any("16-step diagonal sweep" in t for t in labels) and any("4x4" in t and "grid" in t for t in labels)
    shift_labels = [label for label, _, _ in plots.shift_bars(results)]
    assert any("32-step diagonal sweep" in t for t in shift_labels) and any("8x8 grid" in t for t in shift_labels)


# ------------------------------------------------------------------------------------------------ the page


def test_feature_page_labels_name_the_grid_and_the_sweep():
    page = render_classifier_html(_results(), {})
    # the fixes table and the summary card: each grid and each sweep named where its number is
    assert "stable over a 4x4 grid of 1-px shifts" in page and "stable over grid<" not in page
    assert "every shift of an 8x8 grid of 1-px shifts" in page
    assert "top-1 kept over a 16-step diagonal sweep" in page
    assert "over a 32-step diagonal sweep" in page
    assert "top-1 kept over a 1-px step<" not in page


def test_feature_per_photo_table_command_reproduces_the_table():
    results = _results()
    page = render_classifier_html(results, {})
    table = page[page.index("What the network sees"):]
    table = table[:table.index("</section>")]
    command = table_command(results)
    assert command is not None and command in table.replace("&quot;", '"')
    assert "--predictions" in command.split() and "--transform rotate:0," in command
    assert "angle 0" in table and "Reproduce this table" in table
    # without an audit whose first view is the unchanged photo there is no command, not a wrong one
    results["audits"]["rotation"]["result"]["protocol"]["spec"] = "rotate:-90,0,90"
    assert table_command(results) is None


def test_feature_every_table_scrolls_inside_its_box():
    page = render_classifier_html(_results(), {})
    assert page.count("<table") == page.count("<div class='scroll'><table") >= 3
    assert ".scroll { overflow-x: auto" in page


# ------------------------------------------------------------------------------------------------ experiments


def _experiment(name, seeds, keys, ci=(0.40, 0.60)):
    variants = {}
    for v in ("plain", "fixed"):
        runs = [{key: {"value": 0.5, "ci": list(ci), "n": 100} for key in keys} for _ in seeds]
        summary = {key: {"mean": 0.5, "std": 0.03 if len(seeds) > 1 else 0.0} for key in keys}
        variants[v] = {"config": {}, "runs": runs, "summary": summary, "sweep_shift": [0, 1, 2],
                       "sweep_agreement_shift": [1, 2],
                       "sweep_agreement": {"mean": [0.9, 0.8], "std": [0.0, 0.0] if len(seeds) < 2 else [0.02] * 2}}
        for run in runs:
            run["sweep"] = {"agreement_ci": [[0.85, 0.95], [0.7, 0.9]]}
    return {"experiment": name, "quick": True, "seeds": list(seeds), "variants": variants}


ARCH = ["accuracy", "circular_consistency", "crop_consistency", "top1_change"]
TRANSFORMER = ["accuracy", "circular_consistency", "crop_consistency", "worst_case_integer", "worst_case_crop"]


def _caps(ax):
    """The (low, high) y of every vertical whisker drawn on ``ax``."""
    from matplotlib.collections import LineCollection

    out = []
    for coll in ax.collections:
        if isinstance(coll, LineCollection):
            out += [(seg[0][1], seg[1][1]) for seg in coll.get_segments()]
    return out


SUBSAMPLING = ["accuracy", "crop_consistency", "circular_consistency"]
SUBPIXEL = ["accuracy", "worst_case_integer", "worst_case_half_pixel", "worst_case_fractional", "worst_case_crop"]


@pytest.mark.parametrize("plot,name,keys", [(E.plot_architecture, "architecture", ARCH),
                                            (E.plot_transformer, "transformer", TRANSFORMER),
                                            (E.plot_subsampling, "subsampling", SUBSAMPLING),
                                            (E.plot_subpixel, "subpixel", SUBPIXEL)])
@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_feature_experiment_bars_start_at_0_and_whiskers_say_what_they_are(plot, name, keys, seeds):
    fig = plot(_experiment(name, seeds, keys))
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0
    text = fig.texts[0].get_text() if fig.texts else ax.get_title()
    caps = _caps(ax)
    assert caps
    if len(seeds) == 1:
        assert "95% interval" in text and "s.d." not in text.replace("no s.d.", "")
        # the run's interval, not a zero-width s.d. of one value (accuracy 0.5 in [0.40, 0.60])
        assert any(abs(lo - 0.40) < 1e-9 and abs(hi - 0.60) < 1e-9 for lo, hi in caps)
    else:
        assert "s.d." in text and "3 seeds" in text and "95% interval" not in text
        assert any(abs(lo - 0.47) < 1e-9 and abs(hi - 0.53) < 1e-9 for lo, hi in caps)


def test_feature_one_whisker_rule_for_segmentation_too():
    keys = ["miou", "massc_1px", "massc_circular", "massc_crop"]
    one, three = _experiment("segmentation", (0,), keys), _experiment("segmentation", (0, 1, 2), keys)
    assert "95% interval" in plot_segmentation(one).texts[0].get_text()
    assert "s.d." in plot_segmentation(three).texts[0].get_text()


def test_feature_whisker_rule():
    entry = {"summary": {"m": {"mean": 0.7, "std": 0.05}}, "runs": [{"m": {"value": 0.7, "ci": [0.6, 0.75]}}]}
    assert whisker(entry, "m", 3) == (0.7, [[0.05], [0.05]])
    value, err = whisker(entry, "m", 1)
    assert value == 0.7 and err == [[pytest.approx(0.1)], [pytest.approx(0.05)]]
    value, err = whisker(entry, "m", 1, complement=True)  # 1 - 0.7 in [0.25, 0.4]
    assert value == pytest.approx(0.3) and err == [[pytest.approx(0.05)], [pytest.approx(0.1)]]
    assert whisker({"summary": entry["summary"]}, "m", 1) == (0.7, None)  # no run kept: nothing drawn
    assert band({"mean": [0.5], "std": [0.1]}, None, 2) == ([0.4], [0.6])
    assert band({"mean": [0.5], "std": [0.0]}, [[0.3, 0.7]], 1) == ([0.3], [0.7])
    assert band({"mean": [0.5], "std": [0.0]}, None, 1) is None
    assert "s.d." in whisker_note(2) and "95% interval" in whisker_note(1)
