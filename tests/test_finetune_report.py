"""``shiftlab report --finetune-steps N``: a row 'after fine-tuning' made of audits of the saved fine-tuned model,
the model saved in the report folder, outside strings escaped; the default report has no such row."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import shiftlab
from shiftlab.cli import main
from shiftlab.runs import report_plan as P
from shiftlab.report import html as H

EVIL = '<script>alert("x")</script>'.replace("/", "_")

NET = '''
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5))
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    return net
'''

TINY = P.Budget(max_images=None, sweep=4, passes=2, grid=2, rotations=(0.0, 90.0), scales=(1.0, 0.5),
                brightness=(1.0, 2.0), fix_sweep=4, fix_grid=2, certify_shifts=2, certify_size=32, batch_size=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    (root / "net.py").write_text(NET)
    photos = root / EVIL
    photos.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, size=(48, 56, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    return root


def test_feature_the_finetuned_row_is_audits_of_the_saved_model(tiny, tmp_path):
    files = {}
    out = tmp_path / "report"
    results = P.run_report_experiments(f"{tiny / 'net.py'}:make", str(tiny / EVIL), budget=TINY, finetune_steps=3,
                                       finetune_fix="aps:circular", finetune_file=str(out / "ft.pt"), files=files)
    fx = results["fixes"]
    assert fx["models"][-1] == "finetuned" and fx["finetune"]["steps"] == 3 and fx["finetune"]["same_data"]
    assert "fine-tuned (3 steps)" in fx["titles"]["finetuned"]
    keys = [k for k in results["audits"] if k.startswith("finetuned/")]
    assert len(keys) == 4
    for key in keys:
        entry = results["audits"][key]
        # a checkpoint alone never imports the net.py it names (issue 17): the command names the file explicitly
        assert entry["command"].startswith(f"shiftlab audit --model {tiny / 'net.py'}:make --weights {out / 'ft.pt'} ")
        assert " --reference " in entry["command"]
        assert "reference_agreement" in entry["result"]["metrics"]
    # the fine-tuned model is exactly invariant to circular shifts, as its fix promises
    circ = results["audits"]["finetuned/consistency.circular"]["result"]["metrics"]["consistency"]
    assert circ["value"] == 1.0
    page = H.write_report(results, out, files={"ft.pt": files[str(out / "ft.pt")]})
    text = page.read_text()
    assert "After fine-tuning" in text and EVIL not in text and "&lt;script&gt;" in text
    # the saved file is the model the commands name: loading it gives the fine-tuned, converted network
    model = shiftlab.load_model(f"{tiny / 'net.py'}:make", weights=out / "ft.pt")
    assert model.shiftlab_fix == {"method": "aps", "filter_size": 3, "circular": True, "keep_stem": False,
                                  "exclude": [], "placement": "after"}
    assert model.shiftlab_source["recipe"]["finetune"]["steps_done"] == 3
    with pytest.raises(shiftlab.InputError, match="plain file names"):
        H.write_report(results, tmp_path / "other", files={"../x.pt": b""})


def test_feature_the_default_report_has_no_finetuned_row(tiny):
    results = P.run_report_experiments(f"{tiny / 'net.py'}:make", str(tiny / EVIL), budget=TINY)
    assert "finetuned" not in results["fixes"]["models"] and results["fixes"]["finetune"] is None
    assert not any(k.startswith("finetuned/") for k in results["audits"])


def test_exception_report_finetune_flags_are_checked_before_the_work(tiny, tmp_path, capsys):
    base = ["report", "--model", f"{tiny / 'net.py'}:make", "--data", str(tiny / EVIL), "--out", str(tmp_path / "r"),
            "--no-progress"]
    for extra, needle in ((["--finetune-steps", "-1"], "--finetune-steps"),
                          (["--finetune-steps", "2", "--finetune-fix", "lowpass"], "--finetune-fix"),
                          (["--finetune-steps", "2", "--finetune-data", str(tmp_path / "none")], "not found")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
