"""Experiment "segmentation" (issue 21): baseline, BlurPool, APS-U and LPU U-Nets on the real digit segmentation
task, mIoU and mASSC (1-pixel, circular, crop) from shiftlab.audit.

The quick run goes through the CLI and trains real networks; the tests assert the result's structure (every metric
with its interval and counts), the CLI's refusal to overwrite, that the training loss leaves ignore-index pixels
out (against a hand computation, with the unignored loss as the negative control), and the exactness APS-U promises
(float64 audit, the strided baseline as the negative control). No number of a run is copied here.
"""

import contextlib
import copy
import io
import json

import pytest
import torch

from shiftlab.cli import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``shiftlab experiment segmentation --quick`` through the CLI: (output folder, printed text, result)."""
    out = tmp_path_factory.mktemp("segmentation") / "exp"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks on a shared machine
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = main(["experiment", "segmentation", "--quick", "--out", str(out), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out, printed.getvalue(), json.loads((out / "segmentation.json").read_text())


@pytest.mark.slow
def test_smoke_quick_cli_writes_json_figures_and_every_metric_with_intervals(quick):
    out, printed, result = quick
    from shiftlab.experiments.segmentation import METRICS, VARIANTS

    assert result["experiment"] == "segmentation" and result["quick"] and result["seeds"] == [0]
    assert (out / "segmentation.png").stat().st_size > 1000 and (out / "segmentation_maps.png").stat().st_size > 1000
    assert list(result["variants"]) == list(VARIANTS)
    n_test, side = result["data"]["n_test"], result["data"]["canvas"]
    for variant, entry in result["variants"].items():
        assert variant in printed
        run = entry["runs"][0]
        for key in METRICS:
            m = run[key]
            assert 0.0 <= m["ci"][0] <= m["value"] <= m["ci"][1] <= 1.0, (variant, key)
            assert m["images"] == n_test and m["n"] > 0, (variant, key)
            assert entry["summary"][key]["values"] == [m["value"]]
        assert run["massc_circular"]["n"] == n_test * side * side  # one compared pair per image, every pixel
        assert run["massc_1px"]["n"] == n_test * side * side
        assert run["massc_crop"]["n"] < n_test * side * side  # the overlap only
        assert run["miou"]["pixels"] == n_test * side * side
        assert isinstance(run["warnings"], list)
        maps = entry["maps"]
        assert len(maps["disagreement"][0]) == side and set(sum(maps["disagreement"][0], [])) <= {0, 1}
    assert "lps_temperature" in result["variants"]["lpu"]["runs"][0]
    assert result["published"]["statement"].startswith("100% shift consistency")


@pytest.mark.slow
def test_phase_linked_decoders_are_exact_on_the_trained_networks(quick):
    _, _, result = quick
    for variant in ("aps-u", "lpu"):
        entry = result["variants"][variant]
        assert entry["guarantee"] == "integer"
        assert entry["runs"][0]["massc_circular"]["value"] == 1.0
        assert entry["runs"][0]["massc_1px"]["value"] == 1.0
    assert result["variants"]["baseline"]["guarantee"] == "total-stride"
    assert result["published_conclusions"][0]["verdict"] == "holds"


def test_cli_refuses_to_overwrite_without_force(quick, monkeypatch, capsys):
    out, _, result = quick
    import shiftlab.experiments.segmentation as seg

    calls = []
    monkeypatch.setattr(seg, "run_segmentation", lambda **kw: calls.append(kw) or copy.deepcopy(result))
    before = (out / "segmentation.json").read_bytes()
    assert main(["experiment", "segmentation", "--quick", "--out", str(out), "--no-progress"]) != 0
    assert "exists; pass --force" in capsys.readouterr().err
    assert calls == [] and (out / "segmentation.json").read_bytes() == before  # refused before any work
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["experiment", "segmentation", "--quick", "--out", str(out), "--no-progress", "--force"]) == 0
    assert len(calls) == 1 and json.loads((out / "segmentation.json").read_text())["experiment"] == "segmentation"


def test_pixel_loss_leaves_the_ignore_index_out():
    """Against a hand computation: the mean over kept pixels only; the mean over all pixels differs (control)."""
    from shiftlab.experiments.train import pixel_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    masks = torch.randint(0, 3, (2, 4, 5), generator=g)
    masks[0, :2] = 2  # class 2 is the ignore index here: a valid class, so an unignored loss would not fail
    per_pixel = -torch.log_softmax(logits, 1).gather(1, masks[:, None])[:, 0]
    kept = masks != 2
    loss = pixel_cross_entropy(logits, masks, ignore_index=2)
    assert torch.allclose(loss, per_pixel[kept].mean(), rtol=1e-12, atol=0)
    assert not torch.allclose(loss, per_pixel.mean(), rtol=1e-6, atol=0)  # negative control
    loss.backward()
    assert logits.grad.permute(0, 2, 3, 1)[~kept].abs().max() == 0  # ignored pixels pull nothing
    assert logits.grad.permute(0, 2, 3, 1)[kept].abs().max() > 0


def test_training_loss_is_the_ignoring_loss():
    """train_segmentation's recorded loss (one batch, one epoch) is the ignoring loss of the initial network."""
    from shiftlab.experiments.segmentation import segmentation_network
    from shiftlab.experiments.train import TrainConfig, build_model, pixel_cross_entropy, train_segmentation

    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 1, 8, 8, generator=g)
    masks = torch.randint(0, 3, (4, 8, 8), generator=g)
    masks[:, :3] = 255
    net = build_model(lambda: segmentation_network("baseline", 2, 4, 3, 1), 0)
    start = copy.deepcopy(net).train()
    record = train_segmentation(net, images, masks, TrainConfig(epochs=1, batch_size=4, lr=1e-2), 0)
    with torch.no_grad():
        out = start(images)
    # the seeded order permutes the batch: a per-pixel mean does not depend on it
    assert record["losses"][0] == pytest.approx(pixel_cross_entropy(out, masks, 255).item(), rel=1e-5)
    unignored = torch.nn.functional.cross_entropy(out, torch.where(masks == 255, 0, masks)).item()
    assert record["losses"][0] != pytest.approx(unignored, rel=1e-3)  # negative control


@pytest.mark.parametrize("variant,exact", [("aps-u", True), ("lpu", True), ("baseline", False)])
def test_aps_u_is_exactly_shift_consistent_and_the_baseline_is_not(variant, exact):
    """float64 audits of tiny random U-Nets: mASSC is exactly 1.0 for the phase-linked decoders, below it for the
    strided baseline (the negative control)."""
    from shiftlab.data import TensorMasks
    from shiftlab.experiments.segmentation import dense_metrics, segmentation_network
    from shiftlab.experiments.train import build_model

    g = torch.Generator().manual_seed(2)
    images, masks = torch.rand(6, 1, 16, 16, generator=g), torch.randint(0, 3, (6, 16, 16), generator=g)
    net = build_model(lambda: segmentation_network(variant, 3, 4, 3, 1), 0)
    with torch.no_grad():  # a random head's bias alone picks the top-1 everywhere: let the features decide
        net.head.bias.zero_()
        net.head.weight.mul_(10.0)
    metrics, maps = dense_metrics(net, images, masks, TensorMasks(images, masks, 3), {"max_shift": 2, "canvas": 16},
                                  seed=0, maps=1)
    for key in ("massc_1px", "massc_circular"):
        assert (metrics[key]["value"] == 1.0) is exact, (variant, key, metrics[key]["value"])
    if exact:
        assert not (maps["disagreement"] == 1).any()  # the figure's map: nothing changes


def test_report_renders_the_experiment(quick, tmp_path):
    """The report's experiment section takes the saved result: title, caption with the statement, two figures;
    the report's loader accepts the file."""
    out, _, result = quick
    from shiftlab.report.experiment_plots import experiment_caption, experiment_figures, experiment_title
    from shiftlab.report.inputs import load_experiment_results

    assert "Segmentation" in experiment_title(result)
    caption = experiment_caption(result)
    assert "aps-u: mIoU" in caption and result["statement"] in caption
    figures = experiment_figures(result)
    assert list(figures) == ["", "_maps"]
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    assert list(load_experiment_results(out)) == ["segmentation"]


def test_conclusions_on_hand_made_means():
    from shiftlab.experiments.segmentation import published_conclusions

    def entry(miou, circ, crop):
        return {"summary": {"miou": {"mean": miou, "min": miou}, "massc_1px": {"mean": circ, "min": circ},
                            "massc_circular": {"mean": circ, "min": circ}, "massc_crop": {"mean": crop, "min": crop}}}

    good = published_conclusions({"baseline": entry(0.5, 0.9, 0.8), "aps-u": entry(0.55, 1.0, 0.9),
                                  "lpu": entry(0.56, 1.0, 0.85)})
    assert [c["verdict"] for c in good] == ["holds"] * 4
    bad = published_conclusions({"baseline": entry(0.5, 0.9, 0.8), "lpu": entry(0.4, 0.85, 0.7)})
    assert [c["verdict"] for c in bad] == ["does not hold"] * 4
