"""shiftlab report: made of audits (reproducible by their commands), analytic truths on a tiny model, the page
writer (escaping, staging, overwrite rules), guards, and the CLI's rules.

The real pretrained network is exercised by the session's --quick report (tests/conftest.py::report_dir),
checked here for its content and its reproduction commands, and in tests/test_report_browser.py in a browser.
"""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from PIL import Image

from shiftlab.cli import main
from shiftlab.errors import InputError
from shiftlab.runs import report_plan as P
from shiftlab.report import html as H

EVIL = '<script>alert("x")</script>'
MATH = r"$\nosuchcmd$"

NET = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv (circular padding) -> ReLU -> conv -> global average -> linear. Input 32x32, mean = std = 0.5."""

    def __init__(self, stride=1, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=stride, padding=1, padding_mode="circular"), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, classes))
        self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


def stride1():
    return TinyNet(1)


def stride2():
    return TinyNet(2)
'''

TINY = P.Budget(max_images=None, sweep=8, passes=2, grid=2, rotations=(0.0, 90.0, 180.0), scales=(1.0, 0.5),
                brightness=(1.0, 2.0), fix_sweep=4, fix_grid=2, certify_shifts=2, certify_size=32, batch_size=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A factory file with the tiny nets, and a folder of four real-looking photos (one with a hostile name)."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "net.py").write_text(NET)
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a", "b", MATH, EVIL.replace("/", "_")):
        Image.fromarray(rng.integers(0, 256, size=(48, 56, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    return root


def _run(tiny, factory="stride2", seed=0, **kw):
    return P.run_report_experiments(f"{tiny / 'net.py'}:{factory}", str(tiny / "photos"), seed=seed,
                                    budget=kw.pop("budget", TINY), **kw)


# ------------------------------------------------------------------------------------ the report is audits


def test_feature_every_number_is_an_audit_with_its_command(tiny):
    results = _run(tiny)
    audits = results["audits"]
    assert set(audits) >= {"sweep.crop", "consistency.crop", "consistency.circular", "worst_case",
                           "layers.invariance", "rotation", "scale", "brightness", "aps:circular/consistency.circular"}
    for key, entry in audits.items():
        assert entry["command"].startswith("shiftlab audit --model ")
        assert entry["result"]["kind"] == "shiftlab.audit" and entry["result"]["schema_version"] == 2
        assert f"--transform {entry['result']['protocol']['spec']}" in entry["command"] or \
            entry["result"]["protocol"]["spec"].startswith("diagonal:8:")  # diagonal:8:crop is written diagonal:8:crop
        if key.startswith(("blur/", "aps/", "aps:circular/")):
            assert f"--fix {entry['model']}" in entry["command"]
            assert "reference_agreement" in entry["result"]["metrics"]
    # the converted models are measured on the very same views as the original (same seed, same images)
    assert audits["aps/consistency.crop"]["result"]["protocol"] == audits["consistency.crop"]["result"]["protocol"]
    json.dumps(results, allow_nan=False)


def test_feature_results_reproducible_with_the_same_seed(tiny):
    runs = [_run(tiny, seed=seed) for seed in (5, 5, 6)]
    for r in runs:
        r.pop("run")
        for entry in r["audits"].values():
            entry["result"].pop("reproducibility")
    assert runs[0] == runs[1]
    a = runs[0]["audits"]["consistency.crop"]["result"]["predictions"]
    b = runs[2]["audits"]["consistency.crop"]["result"]["predictions"]
    assert a["top1"] != b["top1"] or a["tracked_probability"] != b["tracked_probability"]


def test_feature_circular_consistency_and_layer_invariance_exact_for_a_stride1_circular_net(tiny):
    results = _run(tiny, factory="stride1", budget=TINY)
    circ = results["audits"]["consistency.circular"]["result"]["metrics"]["consistency"]
    assert circ["value"] == 1.0 and circ["n"] == 4 * TINY.passes and circ["images"] == 4
    layers = results["audits"]["layers.invariance"]["result"]["layers"]
    assert list(layers)[:4] == ["features.0", "features.1", "features.2", "features.3"]
    for name in ("features.0", "features.1", "features.2", "features.3"):
        assert layers[name]["pooled_invariance"]["value"] < 1e-5  # float32: exact up to rounding
    # negative control: after a stride-2 convolution a 1-px shift is no longer invisible to the pooled features
    strided = _run(tiny, factory="stride2")["audits"]["layers.invariance"]["result"]["layers"]
    assert max(strided[n]["pooled_invariance"]["value"] for n in ("features.0", "features.2")) > 1e-3
    profile = _run(tiny, factory="stride2")["layer_profile"]
    assert profile["marks"]["features.0"] == ["stride 2"] and profile["marks"].get("features.2", []) == []


def test_feature_the_sweep_tracks_a_class_over_every_offset(tiny):
    results = _run(tiny)
    preds = results["audits"]["sweep.crop"]["result"]["predictions"]
    assert len(preds["tracked_probability"][0]) == TINY.sweep + 1 and len(preds["index"]) == 4
    tc = results["audits"]["sweep.crop"]["result"]["metrics"]["top1_change"]
    assert tc["n"] == 4 * TINY.sweep and tc["images"] == 4
    assert 0.0 <= tc["ci"][0] <= tc["value"] <= tc["ci"][1] <= 1.0


# ------------------------------------------------------------------------------------------ the page


def test_user_strings_are_escaped_and_shown_literally(tiny, tmp_path):
    results = _run(tiny)
    results["settings"]["model"] = f"evil{EVIL}[bold red].py:factory"
    page = H.write_report(results, tmp_path / "report").read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;" in page and "[bold red]" in page
    assert MATH in page  # the photo named like mathtext is listed as is (and its figures were drawn)
    assert page.count("<section") == page.count("</section>") >= 6


def test_page_has_no_network_address_a_strict_csp_and_single_numbering(tiny, tmp_path):
    page = H.render_html(_run(tiny), {})
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "default-src 'none'" in page and "<script" not in page
    assert page.count("1. Jaggedness") == 2  # in the contents and the heading, never "1. 1."
    assert "<nav><ul>" in page and "<ol>" not in page


def test_headline_numbers_with_intervals_n_and_photos(tiny):
    results = _run(tiny)
    page = H.render_html(results, {})
    m = results["audits"]["consistency.crop"]["result"]["metrics"]["consistency"]
    value, ci = H.format_metric(m)
    assert value in page and ci in page and "4 photos" in page
    assert results["audits"]["consistency.crop"]["command"] in page.replace("&#x27;", "'")


def test_guard_banner_for_a_constant_or_random_model(tmp_path):
    (tmp_path / "const.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Const(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 4, 3)\n"
        "        self.pretrained_cfg = {'input_size': (3, 32, 32)}\n"
        "    def forward(self, x):\n"
        "        return self.conv(x).mean((2, 3)) * 0 + torch.tensor([0.0, 1.0, 0.5, 0.2])\n\n"
        "def make():\n    return Const()\n")
    np.savez(tmp_path / "d.npz", images=np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), np.uint8))
    results = P.run_report_experiments(f"{tmp_path / 'const.py'}:make", str(tmp_path / "d.npz"), budget=TINY)
    assert any("constant" in w for w in results["warnings"])
    page = H.render_html(results, {})
    assert "class='banner'" in page and "not meaningful" in page
    assert "100.0%" not in page.split("<nav>")[0]  # nothing above the contents reads as a success


def test_write_report_stages_and_swaps(tiny, tmp_path, monkeypatch):
    results = _run(tiny)
    out = tmp_path / "report"
    page = H.write_report(results, out)
    assert page == out / "index.html"
    saved = json.loads((out / "results.json").read_text())
    assert {"jaggedness", "shift_metrics", "shift_map", "layer_profile", "fixes", "invariances"} <= set(saved["figures"])
    assert all((out / path).stat().st_size > 0 for path in saved["figures"].values())
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # an interrupted second run (a figure fails midway) leaves the previous report exactly as it was
    from shiftlab.report import plots

    def broken(results, ax=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_fix_comparison", broken)
    with pytest.raises(KeyboardInterrupt):
        H.write_report(results, out)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    H.write_report(results, out)  # the next run clears the staging folder and replaces the report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging or previous folder is left
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        H.write_report(results, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(InputError, match="even with --force"):  # a report never writes among a user's files
        H.write_report(results, other, force=True)
    assert [p.name for p in other.iterdir()] == ["notes.txt"] and (other / "notes.txt").read_text() == "keep me"


def test_cli_refuses_bad_output_folders_before_any_work(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not really")
    assert main(["report", "--quick", "--out", str(folder), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["report", "--out", str(target), "--no-progress"]) == 2
    assert main(["report", "--out", str(target / "sub"), "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_cli_experiments_folder_without_results_is_an_error(tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "other.json").write_text('{"a": 1}')
    assert main(["report", "--out", str(tmp_path / "r"), "--experiments", str(tmp_path / "exp")]) == 2
    assert "no experiment results" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_report_on_any_model_and_data(tiny, tmp_path):
    """The whole command on a model from a file and a folder: page, figures, thumbnails, results.json."""
    out = tmp_path / "out"
    code = main(["report", "--quick", "--model", f"{tiny / 'net.py'}:stride2", "--data", str(tiny / "photos"),
                 "--out", str(out), "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    page = (out / "index.html").read_text()
    for path in results["figures"].values():
        assert (out / path).stat().st_size > 0 and f'src="{path}"' in page
    assert any(k.startswith("thumb:") for k in results["figures"])
    assert results["data"]["n_images"] == 2 and results["settings"]["quick"] is True


# ------------------------------------------------------------------------------- the real network


@pytest.mark.slow
def test_quick_report_on_the_pretrained_network(report_dir):
    results = json.loads((report_dir / "results.json").read_text())
    by_name = {p["image"]: p for p in results["predictions"]}
    assert by_name["chelsea"]["label"] == 285 and by_name["chelsea"]["top1"] in (281, 282, 285)
    assert by_name["coffee"]["top1"] == 967
    assert results["audits"]["sweep.crop"]["result"]["protocol"]["n"] == 32
    assert {"sweep.crop", "sweep.canvas_black", "sweep.canvas_inpaint"} <= set(results["audits"])
    assert results["fixes"]["certify"]["passed"] is True
    assert results["layer_profile"]["aliasing_map"]["total_stride"] == [32, 32]
    marked = [name for name, marks in results["layer_profile"]["marks"].items() if "stride 2" in marks]
    assert marked == ["conv_stem", "blocks.1.0", "blocks.2.0", "blocks.3.0", "blocks.5.0"]
    assert results["warnings"] == []  # trained weights, varied predictions
    page = (report_dir / "index.html").read_text()
    assert "Egyptian cat" in page and "espresso" in page
    # the number of replaced layers is the one `shiftlab fix` prints (the kept stem is not a replacement)
    assert results["fixes"]["replacements"]["blur"] == {"replaced": 4, "kept": 1}


@pytest.mark.slow
@pytest.mark.parametrize("key", ["consistency.crop", "sweep.canvas_black", "aps:circular/consistency.crop"])
def test_report_numbers_are_reproduced_by_their_commands(report_dir, tmp_path, key):
    """Three of the page's commands, run as a user would: the same numbers, to every digit."""
    results = json.loads((report_dir / "results.json").read_text())
    entry = results["audits"][key]
    argv = shlex.split(entry["command"])
    assert argv[:2] == ["shiftlab", "audit"]
    out = tmp_path / "a.json"
    assert main(argv[1:] + ["--json", str(out), "--no-progress"]) == 0
    mine = json.loads(out.read_text())
    assert mine["metrics"] == entry["result"]["metrics"]
    assert mine["n_images"] == entry["result"]["n_images"]


def _architecture_result(variant: str) -> dict:
    stat = {"mean": 0.9, "std": 0.01}
    return {"experiment": "architecture", "quick": True, "seeds": [0], "variants": {variant: {
        "summary": {k: dict(stat) for k in ("accuracy", "circular_consistency", "crop_consistency", "top1_change")},
        "sweep_shift": [0, 1, 2], "sweep_agreement": {"mean": [1.0, 0.9, 0.8], "std": [0, 0, 0]},
        "sweep_accuracy": {"mean": [0.9, 0.9, 0.8], "std": [0, 0, 0]}}}}


def test_training_experiments_folder_is_rendered(tiny, tmp_path):
    from shiftlab.report.inputs import load_experiment_results

    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "architecture.json").write_text(json.dumps(_architecture_result(EVIL)))
    (folder / "notes.json").write_text('{"not": "an experiment"}')
    found = load_experiment_results(folder)
    assert list(found) == ["architecture"]
    results = _run(tiny)
    results["training_experiments"] = found
    page = H.write_report(results, tmp_path / "report").read_text()
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    keys = [k for k in saved["figures"] if k.startswith("experiment_architecture")]
    assert len(keys) == 2  # the overview and the shift sweep
    assert 'id="training"' in page and "<script" not in page.lower()
    assert all(f'src="{saved["figures"][k]}"' in page for k in keys)
