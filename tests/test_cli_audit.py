"""``shiftlab audit``: in-process runs (table, JSON, exit codes) and one subprocess smoke test."""

import json
import subprocess
import sys

import numpy as np
import pytest

from shiftlab.cli import main

NET = '''
import torch
from torch import nn

def factory():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
'''


@pytest.fixture
def files(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "small.npz", images=rng.integers(0, 256, size=(7, 24, 24, 3), dtype=np.uint8),
             labels=np.array([0, 1, 2, 3, 4, 5, 0]))
    return tmp_path


def test_audit_writes_table_and_versioned_json(files, capsys):
    out = files / "audit.json"
    args = ["audit", "--model", f"{files / 'net.py'}:factory", "--data", str(files / "small.npz"),
            "--transform", "circular:3", "--layers", "all", "--json", str(out), "--no-progress"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "consistency" in stdout and "accuracy" in stdout and "layers" in stdout
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 2 and doc["n_images"] == 7
    assert doc["protocol"]["spec"] == "circular:3" and doc["protocol"]["max_shift"] == 3
    assert "--transform circular:3" in doc["command"] and doc["seed"] == 0
    assert doc["command"].startswith("shiftlab audit --model ")
    cons = doc["metrics"]["consistency"]
    assert cons["value"] == 1.0 and cons["n"] == 7 and len(cons["ci"]) == 2  # circular padding + global pooling
    assert doc["metrics"]["accuracy"]["n"] == 14
    assert doc["layers"]["0"]["equivariance"]["value"] <= 1e-5
    # an existing file is refused (exit 2, before auditing), then overwritten with --force
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main(args + ["--force", "--metrics", "consistency"]) == 0
    assert set(json.loads(out.read_text())["metrics"]) == {"consistency"}


def test_unreadable_file_is_skipped_and_counted(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "net.py").write_text(NET)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "a.json"
    assert main(["audit", "--model", f"{tmp_path / 'net.py'}:factory", "--data", str(folder), "--transform",
                 "diagonal:2:circular", "--json", str(out), "--no-progress"]) == 0
    assert "broken.jpg" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["skipped"]["count"] == 1 and doc["skipped"]["files"][0]["path"].endswith("broken.jpg")
    assert doc["n_images"] == 2 and doc["metrics"]["top1_change"]["n"] == 4


@pytest.mark.parametrize("extra,message", [
    (["--model", "timm:no_such_net_xyz"], "no_such_net_xyz"),
    (["--transform", "wobble:3"], "unknown transform"),
    (["--transform", "crop:224:32", "--no-resize", None], "needs at least"),
    (["--metrics", "top1_change"], "not defined"),
    (["--data", "EMPTY"], ""),
])
def test_bad_input_exits_2_with_one_line(files, capsys, extra, message):
    (files / "empty").mkdir()
    args = {"--model": f"{files / 'net.py'}:factory", "--data": str(files / "small.npz"), "--no-progress": None}
    for k, v in zip(extra[::2], extra[1::2]):
        args[k] = str(files / "empty") if v == "EMPTY" else v  # v None: a flag without a value
    argv = ["audit"] + [x for k, v in args.items() for x in ([k] if v is None else [k, v])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("shiftlab: error:") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_subprocess_help_documents_the_specs():
    proc = subprocess.run([sys.executable, "-m", "shiftlab", "audit", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert "crop:S:M" in proc.stdout and "diagonal:N" in proc.stdout and "docs/audit-json.md" in proc.stdout
