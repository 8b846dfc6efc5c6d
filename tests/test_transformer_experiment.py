"""Experiment "transformer" (issue 22): a small timm ViT on the real digits, baseline against polyphase tokenization
(the same network converted by ``antialias(method="aps")`` before training).

The quick run goes through the CLI and trains real networks; the tests assert what the construction guarantees (the
polyphase network's logits do not move under circular shifts, so it loses nothing on the integer grid) with the
baseline as the negative control, that the published figures travel with the result, and that the conclusions are
computed from the measured means. No number of a run is copied here.
"""

import json

import pytest
import torch

from shiftlab.cli import main
from shiftlab.errors import InputError


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``shiftlab experiment transformer --quick`` through the CLI: (output folder, printed text, result)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("transformer") / "exp"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks on a shared machine
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = main(["experiment", "transformer", "--quick", "--out", str(out), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out, printed.getvalue(), json.loads((out / "transformer.json").read_text())


@pytest.mark.slow
def test_smoke_quick_cli_writes_json_figure_and_table(quick):
    out, printed, result = quick
    from shiftlab.experiments.transformer import METRICS, VARIANTS

    assert result["experiment"] == "transformer" and result["quick"] and result["seeds"] == [0]
    assert (out / "transformer.png").stat().st_size > 1000
    assert list(result["variants"]) == list(VARIANTS)
    for variant in VARIANTS:
        assert variant in printed
        run = result["variants"][variant]["runs"][0]
        for key in METRICS:
            entry = run[key]
            assert 0.0 <= entry["ci"][0] <= entry["value"] <= entry["ci"][1] <= 1.0, (variant, key)
        # the worst case over a grid that holds the unshifted image is never above the clean accuracy
        assert run["worst_case_integer"]["value"] <= run["accuracy"]["value"] + 1e-12
        assert run["worst_case_integer"]["n"] == result["data"]["n_test"]  # one trial per image


@pytest.mark.slow
def test_polyphase_is_exact_where_the_baseline_is_not(quick):
    """Polyphase tokenization: the logits do not move under circular shifts (float64), so every image keeps its
    top-1 and none is lost on the integer grid. The baseline (absolute position embeddings) is the negative control:
    its logits move."""
    _, _, result = quick
    poly, base = result["variants"]["polyphase"]["runs"][0], result["variants"]["baseline"]["runs"][0]
    assert poly["circular_logit_change"]["value"] < 1e-10
    assert base["circular_logit_change"]["value"] > 1e-4
    assert poly["circular_consistency"]["value"] == 1.0
    assert poly["worst_case_integer"]["value"] == poly["accuracy"]["value"]


@pytest.mark.slow
def test_published_figures_and_conclusions_follow_the_measured_means(quick):
    _, _, result = quick
    from shiftlab.experiments.transformer import PUBLISHED, published_conclusions

    assert result["published"] == PUBLISHED
    recomputed = published_conclusions(result["variants"])
    assert result["published_conclusions"] == json.loads(json.dumps(recomputed))
    assert recomputed[0]["verdict"] == "holds"  # 100% circular consistency, by construction
    altered = json.loads(json.dumps(result["variants"]))
    altered["polyphase"]["summary"]["circular_consistency"]["mean"] -= 0.01
    assert published_conclusions(altered)[0]["verdict"] == "does not hold"


def test_conclusions_on_hand_made_means():
    """The verdicts are computed, not copied: a polyphase network losing an image under a shift does not hold, a
    baseline that loses nothing does not hold either."""
    from shiftlab.experiments.transformer import published_conclusions

    def entry(acc, circular, integer):
        keys = {"accuracy": acc, "circular_consistency": circular, "crop_consistency": circular,
                "worst_case_integer": integer, "worst_case_crop": integer}
        return {"summary": {k: {"mean": v} for k, v in keys.items()}}

    good = {"baseline": entry(0.9, 0.95, 0.7), "polyphase": entry(0.88, 1.0, 0.88)}
    assert [c["verdict"] for c in published_conclusions(good)] == ["holds"] * 3
    bad = {"baseline": entry(0.9, 1.0, 0.9), "polyphase": entry(0.88, 0.99, 0.87)}
    assert [c["verdict"] for c in published_conclusions(bad)] == ["does not hold"] * 3


def test_polyphase_variant_is_the_baseline_network_converted():
    """Same seed, same network: every weight the conversion does not replace is equal bit for bit, and only the
    position embedding is gone (a circular position encoding in its place)."""
    from shiftlab.experiments.transformer import QUICK, build_variant

    base = build_variant("baseline", 3, QUICK["vit"], 1, 10).state_dict()
    poly = build_variant("polyphase", 3, QUICK["vit"], 1, 10).state_dict()
    assert "pos_embed" in base and "pos_embed" not in poly
    shared = [k for k in base if k in poly]
    assert len(shared) >= len(base) - 3 and all(torch.equal(base[k], poly[k]) for k in shared)
    assert torch.equal(base["patch_embed.proj.weight"], poly["patch_embed.embed.proj.weight"])
    assert any(k.startswith("patch_embed.position") for k in poly)


def test_bad_variants_are_refused_before_work():
    from shiftlab.experiments.transformer import build_variant, run_transformer

    for bad in (["nope"], [], ["baseline", "baseline"]):
        with pytest.raises(InputError, match="variants"):
            run_transformer(seeds=1, quick=True, variants=bad)
    with pytest.raises(InputError, match="variant"):
        build_variant("swin", 0, {}, 1, 10)


@pytest.mark.slow
def test_report_renders_the_experiment(quick):
    """The saved result renders: title, caption with the statement, one figure whose whiskers are the run's
    interval (one seed)."""
    _, _, result = quick
    from shiftlab.report.experiment_plots import experiment_caption, experiment_figures, experiment_title

    assert "transformer" in experiment_title(result).lower()
    caption = experiment_caption(result)
    assert "polyphase: accuracy" in caption and result["statement"] in caption
    figures = experiment_figures(result)
    assert list(figures) == [""]
    fig = figures[""]
    assert "95% interval" in fig._suptitle.get_text()
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0.0
    import matplotlib.pyplot as plt

    plt.close(fig)
