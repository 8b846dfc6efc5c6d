"""The report of a dense model (issue 21, item 5): a (B, K, H, W) output gets the dense report (its audits, maps
figure, metrics table with intervals and counts, escaping, staged write, JSON documented) instead of a refusal;
``shiftlab audit --maps N``.

Tiny fully convolutional nets from a factory file (the way the CLI loads user models), 32x32 inputs.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shiftlab.cli import main
from shiftlab.errors import InputError
from shiftlab.report import html as H
from shiftlab.runs import AuditRun
from shiftlab.runs import report_plan as P
from shiftlab.runs.report_extras import thumbnails

EVIL = '<b>"x"&'  # a folder name from outside (no slash)

NET = '''
import torch
from torch import nn


class TinySeg(nn.Module):
    """Circular conv (stride s) -> ReLU -> conv -> upsample -> 1x1 conv to K classes: a (B, K, H, W) map."""

    def __init__(self, classes=11, stride=1, channels=3):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Conv2d(channels, 8, 3, stride=stride, padding=1, padding_mode="circular"),
                                 nn.ReLU())
        self.dec = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                                 nn.Upsample(scale_factor=stride), nn.Conv2d(8, classes, 1))
        self.pretrained_cfg = {"input_size": (channels, 32, 32), "mean": (0.5,) * channels,
                               "std": (0.5,) * channels, "crop_pct": 1.0}

    def forward(self, x):
        return self.dec(self.enc(x))


class DictSeg(TinySeg):
    def forward(self, x):
        return {"out": super().forward(x), "aux": x}


def rgb():
    return TinySeg(classes=4, stride=2)


def grey():
    return TinySeg(stride=2, channels=1)


def dictseg():
    return DictSeg(classes=4)


def classifier():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
'''

TINY = P.Budget(max_images=3, sweep=4, passes=2, grid=2, fixes=(), batch_size=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    (root / "net.py").write_text(NET)
    photos = root / f"photos{EVIL}"
    photos.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, size=(40, 44, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def photos_report(tiny, tmp_path_factory):
    """The dense report of the RGB net on the photos (one named EVIL), written to a folder."""
    results = P.run_report_experiments(f"{tiny / 'net.py'}:rgb", str(tiny / f"photos{EVIL}"), budget=TINY)
    thumbs = thumbnails(results["settings"]["data"], results["data"]["indices"], (32, 32))
    out = tmp_path_factory.mktemp("out") / "report"
    H.write_report(results, out, images={f"thumb:{i}": a for i, a in thumbs.items()})
    return results, out


def test_feature_dense_model_gets_a_dense_report(photos_report):
    results, out = photos_report
    assert results["kind"] == "dense" and results["model"]["output"]["kind"] == "dense"
    assert set(results["audits"]) == {"dense.sweep", "dense.circular", "dense.crop"}
    for key in ("dense.circular", "dense.crop"):
        massc = results["audits"][key]["result"]["metrics"]["massc"]
        lo, hi = massc["ci"]
        assert 0 <= lo <= massc["value"] <= hi <= 1 and massc["n"] > 0 and massc["images"] == 3
    # the circular audit compares every pixel of every pair; the crops only their overlap
    circular = results["audits"]["dense.circular"]["result"]["metrics"]["massc"]
    crop = results["audits"]["dense.crop"]["result"]["metrics"]["massc"]
    assert circular["n"] == 3 * TINY.passes * 32 * 32 and crop["n"] < 3 * TINY.passes * 32 * 32
    assert "miou" not in results["audits"]["dense.sweep"]["result"]["metrics"]  # photos have no masks
    saved = json.loads((out / "results.json").read_text())
    assert {"dense_maps", "dense_layers"} <= set(saved["figures"])
    assert all((out / path).stat().st_size > 0 for path in saved["figures"].values())
    page = (out / "index.html").read_text()
    assert "mASSC" in page and "95% interval" in page
    value = f"{100 * crop['value']:.1f}%"
    assert value in page and str(crop["n"]) in page  # the table shows the value and its count
    for entry in results["audits"].values():  # every number is an audit with the command that repeats it
        assert entry["command"].startswith("shiftlab audit ") and "--maps" in entry["command"]
        assert html.escape(entry["command"], quote=True) in page
    assert EVIL not in page and html.escape(EVIL) in page  # the data's name is shown escaped
    assert (out / ".shiftlab-report").is_file()  # the same staged, marker-listed folder


def test_feature_maps_figure_from_the_audits_maps(photos_report):
    results, _ = photos_report
    maps = results["audits"]["dense.sweep"]["result"]["maps"]
    assert maps["pair"] == [0, 1] and len(maps["images"]) == 3
    d = np.asarray(maps["images"][0]["disagreement"])
    assert d.shape == (32, 32) and set(np.unique(d)) <= {-1, 0, 1}


def test_feature_masks_add_miou(tiny):
    results = P.run_report_experiments(f"{tiny / 'net.py'}:grey", "digit-masks", budget=TINY)
    metrics = results["audits"]["dense.sweep"]["result"]["metrics"]
    assert "miou" in metrics and 0 <= metrics["miou"]["ci"][0] <= metrics["miou"]["value"] <= metrics["miou"]["ci"][1]
    assert results["data"]["masks"] is True and results["data"]["ignore_index"] == 255
    assert results["class_names"]["0"] == "background" and len(results["class_names"]) == 11
    assert "--data digit-masks" in results["audits"]["dense.sweep"]["command"]
    assert "crop:" in results["audits"]["dense.crop"]["command"]  # in-memory 32-px images: smaller crops
    from shiftlab.report.dense_page import render_dense_html

    assert "mIoU against the masks" in render_dense_html(results, {})


def test_feature_dict_output_measures_out_and_says_so(tiny):
    results = P.run_report_experiments(f"{tiny / 'net.py'}:dictseg", str(tiny / f"photos{EVIL}"), budget=TINY)
    output = results["model"]["output"]
    assert output["output_key"] == "out" and output["keys"] == ["out", "aux"]
    assert all("--output-key out" in a["command"] for a in results["audits"].values())
    assert results["model"]["name"] == "DictSeg"
    assert list(results["audits"]["dense.sweep"]["result"]["layers"])[0].startswith("model.")
    from shiftlab.report.dense_page import render_dense_html

    page = render_dense_html(results, {})
    assert "the report measures the entry <code>out</code>" in page


def test_exception_dense_report_refuses_finetuning(tiny):
    with pytest.raises(InputError, match="finetune-steps"):
        P.run_report_experiments(f"{tiny / 'net.py'}:rgb", str(tiny / f"photos{EVIL}"), budget=TINY, finetune_steps=1)


@pytest.mark.parametrize("value", ["17", "-1", "x", "2.5"])
def test_exception_audit_maps_bad_values(value, capsys):
    assert main(["audit", "--model", "timm:resnet18", "--maps", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--maps" in err[0]


def test_audit_run_maps_is_checked_and_repeated_by_its_command():
    with pytest.raises(InputError, match="--maps"):
        AuditRun(model="m.py:f", maps=17).check()
    with pytest.raises(InputError, match="--maps"):
        AuditRun(model="m.py:f", maps=True).check()
    assert "--maps 3" in AuditRun(model="m.py:f", maps=3).command()
    assert "--maps" not in AuditRun(model="m.py:f").command()


def test_cli_audit_maps_writes_the_maps(tiny, tmp_path):
    out = tmp_path / "a.json"
    assert main(["audit", "--model", f"{tiny / 'net.py'}:grey", "--data", "digit-masks", "--limit", "2",
                 "--transform", "circular:3", "--maps", "2", "--no-progress", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "--maps 2" in doc["command"] and len(doc["maps"]["images"]) == 2


def _doc_section() -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / "report-json.md").read_text(encoding="utf-8")
    return text[text.index("## Dense reports"):]


def test_doc_matches_what_a_dense_report_writes(photos_report):
    _, out = photos_report
    saved = json.loads((out / "results.json").read_text())
    section = _doc_section()
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    assert set(example) - {"classic"} == set(saved)  # the CLI adds the demonstrations (classic)
    assert set(example["model"]) == set(saved["model"])
    assert set(example["model"]["output"]) == set(saved["model"]["output"])
    assert set(example["data"]) == set(saved["data"])
    audits = set(re.findall(r"^\| `(dense\.[a-z]+)` \|", section, re.M))
    assert audits == set(saved["audits"])
    documented = set(re.findall(r"^\| `([a-z_.]+)`", section, re.M))
    assert {"kind", "model.output", "class_names"} <= documented
    assert saved["kind"] == "dense"
