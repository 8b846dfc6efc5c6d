"""shiftlab report: the experiments on a tiny model (analytic truths), the page writer, the CLI's rules.

The real pretrained network is exercised by the session's --quick report (tests/conftest.py::report_dir),
checked here for its content and in tests/test_report_browser.py in a real browser.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from shiftlab.cli import main
from shiftlab.errors import InputError
from shiftlab.experiments import pretrained as P
from shiftlab.report import html as H

EVIL = '<script>alert("x")</script>'


class TinyNet(nn.Module):
    """Conv (circular padding) -> ReLU -> conv -> global average -> linear. Input 32x32, mean = std = 0.5."""

    def __init__(self, stride: int = 1, classes: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=stride, padding=1, padding_mode="circular"), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, classes))
        self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


def tiny_factory():
    return TinyNet(stride=2).eval()


@pytest.fixture(scope="module")
def base():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 32 + P.MARGIN, 32 + P.MARGIN, generator=g)


def _classifier(model):
    from shiftlab.models import preprocessing

    return P.Classifier(model.eval(), preprocessing(model), batch_size=64)


# ------------------------------------------------------------------------------------- experiments


def test_feature_circular_consistency_is_exact_for_a_stride1_circular_net(base):
    result = P.shift_consistency(_classifier(TinyNet(stride=1)), base, seed=3, pairs_per_image=8, grid=3)
    assert result["circular_consistency"]["value"] == 1.0
    assert result["circular_consistency"]["n"] == 3 * 8
    assert len(result["grid_probability"]) == 3 and len(result["grid_probability"][0]) == 3


def test_feature_layer_profile_zero_for_stride1_and_not_for_stride2(base):
    from shiftlab.models import preprocessing

    exact = P.layer_profile(TinyNet(stride=1), preprocessing(TinyNet()), base)
    strided = P.layer_profile(TinyNet(stride=2), preprocessing(TinyNet()), base)
    assert [l["name"] for l in exact["layers"]] == ["features.0", "features.1", "features.2", "features.3"]
    for layer in exact["layers"]:
        assert layer["one_pixel_invariance"]["value"] < 1e-12
        assert layer["stride"] == 1
    # negative control: after a stride-2 convolution a 1-px shift is no longer invisible to the pooled features
    assert [l["stride"] for l in strided["layers"]] == [2, 2, 2, 2]
    assert max(l["one_pixel_invariance"]["value"] for l in strided["layers"]) > 1e-3


def test_feature_layer_profile_marks_subsampling_from_inspect(base):
    from shiftlab.measure.inspect import inspect
    from shiftlab.models import preprocessing

    model = TinyNet(stride=2)
    profile = P.layer_profile(model, preprocessing(model), base, findings=inspect(model, 32))
    marks = {l["name"]: l["marks"] for l in profile["layers"]}
    assert marks["features.0"] == ["stride 2"]
    assert marks["features.2"] == []


def test_feature_diagonal_sweep_tracks_the_class_over_33_offsets(base):
    clf = _classifier(TinyNet(stride=2))
    classes = torch.tensor([0, 1, 2])
    sweep = P.diagonal_sweep(clf, base, classes, protocols=("crop",))
    assert sweep["offsets"] == list(range(33))
    crop = sweep["protocols"]["crop"]
    # the tracked probability at offset o is the model's softmax on the crop at (o, o)
    o = 7
    logits = clf(base[1:2, :, o:o + 32, o:o + 32])
    assert crop["probability"][1][o] == pytest.approx(float(torch.softmax(logits.double(), -1)[0, 1]), rel=1e-6)
    assert crop["top1_change"]["n"] == 3 * 32


def test_feature_results_reproducible_with_the_same_seed(tmp_path):
    np.savez(tmp_path / "images.npz", images=np.random.default_rng(0).integers(0, 255, (2, 40, 40, 3), np.uint8))
    budget = P.Budget(pairs_per_image=2, grid=2, rotations=(0.0, 90.0), scales=(1.0,), brightness=(1.0,),
                      fix_grid=2, certify_shifts=2, certify_size=32)
    runs = [P.run_report_experiments(TinyNet(stride=2), str(tmp_path / "images.npz"), seed=seed, budget=budget)
            for seed in (5, 5, 6)]
    for r in runs:
        r.pop("run")
    assert runs[0] == runs[1]
    assert runs[0]["shift_consistency"]["offsets"] != runs[2]["shift_consistency"]["offsets"]
    names = [row["name"] for row in runs[0]["fixes"]["models"]]
    assert names == ["original", "antialias(blur)", "antialias(aps)", "antialias(aps, circular=True)"]
    assert runs[0]["fixes"]["certify"]["passed"] is True
    json.dumps(runs[0], allow_nan=False)  # plain JSON


# ------------------------------------------------------------------------------------------- page


def _crafted_results() -> dict:
    m = {"value": 0.75, "ci": [0.5, 0.9], "n": 20}
    return {
        "schema": "shiftlab-report/1",
        "shiftlab_version": "0",
        "settings": {"model": f"evil{EVIL}.py:factory", "data": f"/tmp/{EVIL}", "quick": True, "seed": 0,
                     "budget": {}},
        "model": {"name": EVIL, "parameters": 1, "input_size": [32, 32], "classes": 2},
        "data": {"n_images": 1, "source": EVIL, "names": [f"{EVIL}.png"], "skipped": [[f"{EVIL}.jpg", EVIL]],
                 "labelled": 1},
        "predictions": [{"image": f"{EVIL}.png", "top1": 0, "top1_name": EVIL, "probability": 0.5, "label": 0,
                         "label_name": EVIL, "whole_top1": 1, "whole_top1_name": EVIL, "whole_probability": 0.6}],
        "accuracy": m,
        "shift_consistency": {"crop_consistency": m, "circular_consistency": m, "worst_case": m, "grid": 2,
                              "grid_probability": [[[0.1, 0.2], [0.3, 0.4]]]},
        "layer_profile": {"layers": [], "aliasing_map": {"total_stride": [2, 2], "findings": [
            {"name": EVIL, "module_type": EVIL, "kind": EVIL, "detail": EVIL, "stride": [2, 2],
             "cumulative_stride": [2, 2]}]}},
        "fixes": {"models": [{"name": EVIL, "replacements": 1, "crop_consistency": m}]},
        "run": {"seconds": 1.0},
    }


def test_user_strings_are_escaped():
    page = H.render_html(_crafted_results(), {"shift_map": f'figures/x".png'})
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert 'src="figures/x&quot;.png"' in page
    # the page's own markup is intact
    assert page.count("<section") == page.count("</section>") >= 4


def test_page_has_no_network_address_and_a_strict_csp():
    page = H.render_html(_crafted_results(), {})
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "default-src 'none'" in page and "<script" not in page


def test_headline_numbers_with_intervals_and_n():
    page = H.render_html(_crafted_results(), {})
    assert "75.0%" in page and "95% CI 50.0%–90.0%, n = 20" in page


def test_write_report_and_overwrite_rules(tmp_path):
    results = _crafted_results()
    out = tmp_path / "report"
    page = H.write_report(results, out)
    assert page == out / "index.html" and (out / "figures" / "shift_map.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["figures"]) == {"shift_metrics", "shift_map", "fixes"}  # what the crafted results allow
    assert all((out / path).stat().st_size > 0 for path in saved["figures"].values())
    assert H.is_report_folder(out)
    H.write_report(results, out)  # a previous report is replaced without --force
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        H.write_report(results, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    H.check_output_folder(other, force=True)


def test_cli_refuses_a_non_empty_folder_that_is_not_a_report(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not really")
    assert main(["report", "--quick", "--out", str(folder), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["report", "--out", str(target), "--no-progress"]) == 2


def test_cli_experiments_folder_without_results_is_an_error(tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "other.json").write_text('{"a": 1}')
    assert main(["report", "--out", str(tmp_path / "r"), "--experiments", str(tmp_path / "exp")]) == 2
    assert "no experiment results" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_report_on_any_model_and_data(tmp_path):
    """The whole command on a model from a file and a .npz: page, figures, results.json."""
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def tiny_factory():\n"
        "    torch.manual_seed(0)\n"
        "    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),\n"
        "                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))\n"
        "    net.pretrained_cfg = {'input_size': (3, 32, 32), 'mean': (0.5,) * 3, 'std': (0.5,) * 3}\n"
        "    return net\n")
    np.savez(tmp_path / "images.npz", images=np.random.default_rng(1).integers(0, 255, (2, 48, 48, 3), np.uint8))
    out = tmp_path / "out"
    code = main(["report", "--quick", "--model", f"{tmp_path / 'net.py'}:tiny_factory", "--data",
                 str(tmp_path / "images.npz"), "--out", str(out), "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    page = (out / "index.html").read_text()
    for path in results["figures"].values():
        assert (out / path).stat().st_size > 0 and f'src="{path}"' in page
    assert results["data"]["n_images"] == 2 and results["settings"]["quick"] is True


# ------------------------------------------------------------------------------- the real network


@pytest.mark.slow
def test_quick_report_on_the_pretrained_network(report_dir):
    results = json.loads((report_dir / "results.json").read_text())
    by_name = {p["image"]: p for p in results["predictions"]}
    # the acceptance numbers: the cat and the coffee (whole photo resized to the input, no crop)
    assert by_name["chelsea"]["whole_top1"] == 285 and by_name["chelsea"]["label"] == 285
    assert by_name["coffee"]["top1"] == 967 and by_name["coffee"]["whole_top1"] == 967
    assert results["jaggedness"]["offsets"] == list(range(33))
    assert set(results["jaggedness"]["protocols"]) == {"crop", "canvas_black", "canvas_inpaint"}
    assert results["fixes"]["certify"]["passed"] is True
    assert results["layer_profile"]["aliasing_map"]["total_stride"] == [32, 32]
    marked = [l["name"] for l in results["layer_profile"]["layers"] if "stride 2" in l["marks"]]
    assert marked == ["conv_stem", "blocks.1.0", "blocks.2.0", "blocks.3.0", "blocks.5.0"]
    page = (report_dir / "index.html").read_text()
    assert "Egyptian cat" in page and "espresso" in page


def _architecture_result(variant: str) -> dict:
    stat = {"mean": 0.9, "std": 0.01}
    return {"experiment": "architecture", "quick": True, "seeds": [0], "variants": {variant: {
        "summary": {k: dict(stat) for k in ("accuracy", "circular_consistency", "crop_consistency", "top1_change")},
        "sweep_shift": [0, 1, 2], "sweep_agreement": {"mean": [1.0, 0.9, 0.8], "std": [0, 0, 0]},
        "sweep_accuracy": {"mean": [0.9, 0.9, 0.8], "std": [0, 0, 0]}}}}


def test_training_experiments_folder_is_rendered(tmp_path):
    from shiftlab.cli.report import load_experiment_results

    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "architecture.json").write_text(json.dumps(_architecture_result(EVIL)))
    (folder / "notes.json").write_text('{"not": "an experiment"}')
    found = load_experiment_results(folder)
    assert list(found) == ["architecture"]
    results = _crafted_results()
    results["training_experiments"] = found
    page = H.write_report(results, tmp_path / "report").read_text()
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    keys = [k for k in saved["figures"] if k.startswith("experiment_architecture")]
    assert len(keys) == 2  # the overview and the shift sweep
    assert 'id="training"' in page and "<script" not in page.lower()
    assert all(f'src="{saved["figures"][k]}"' in page for k in keys)


def test_subgrid_worst_case_matches_the_metric_on_the_subgrid():
    from shiftlab import metrics, transforms

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 64, 3, generator=g) + torch.randn(40, 1, 3, generator=g) * 3
    consistency = {"grid": 8, "top1": {"grid": logits.argmax(-1).tolist()}}
    full = transforms.shift_grid(8)
    keep = ((full[:, 0] < 4) & (full[:, 1] < 4)).nonzero().squeeze(1)
    expected = metrics.worst_case_stability(logits[:, keep])
    got = P._subgrid_stability(consistency, 4)
    assert got["value"] == pytest.approx(expected.value) and got["n"] == expected.n == 40
    assert 0 < got["value"] < 1  # the check can fail: some images flip within the sub-grid, some do not
    assert got["value"] >= metrics.worst_case_stability(logits).value
