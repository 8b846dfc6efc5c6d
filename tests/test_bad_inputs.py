"""Every bad input a new user can type, for every command: exit code 2, one line naming the problem, no
traceback, and no user file changed. (Issue 12's classes: checkpoints, data files, factories, options,
output locations, devices, outside strings.)"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab.cli import main

NET = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 6))
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    return net

def dense():
    return nn.Conv2d(3, 5, 3, padding=1)

def broken_forward():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
        def forward(self, x):
            return self.conv(x).view(7, -1)
    return Broken()

def raises():
    raise RuntimeError("the factory is broken")

def not_a_module():
    return 42
'''


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "net.py").write_text(NET)
    (root / "syntax.py").write_text("def make(:\n    pass\n")
    (root / "missing.py").write_text("import no_such_package_xyz\n\ndef make():\n    pass\n")
    (root / "empty.pt").write_bytes(b"")
    (root / "text.pt").write_text("this is not a checkpoint")
    torch.save({"weights": _Evil()}, root / "evil.pt")
    torch.save({"conv.weight": torch.zeros(1)}, root / "wrong.pt")
    good = np.random.default_rng(0).integers(0, 255, (4, 40, 40, 3), np.uint8)
    np.savez(root / "good.npz", images=good, labels=np.arange(4))
    (root / "truncated.npz").write_bytes((root / "good.npz").read_bytes()[:300])
    np.savez(root / "strings.npz", images=good, labels=np.array(["cat", "dog", "cat", "dog"]))
    np.savez(root / "objects.npz", images=np.array([{"a": 1}, None], dtype=object))
    (root / "notzip.npz").write_bytes(pickle.dumps({"images": [1, 2]}))
    (root / "float.npz").write_bytes(b"")
    np.savez(root / "float.npz", images=np.full((2, 3, 8, 8), 300.0, np.float32))
    photos = root / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(good[i]).save(photos / f"{i}.png")
    (root / "empty_dir").mkdir()
    (root / "notes_only").mkdir()
    (root / "notes_only" / "notes.txt").write_text("no images here")
    (root / "a_file.txt").write_text("I am a file")
    exp = root / "exp"
    exp.mkdir()
    (exp / "architecture.json").write_text('{"experiment": "architecture", "variants": 5}')
    (root / "existing.json").write_text("{}")
    (root / "map.json").write_text('{"cat": "three"}')
    return root


def _snapshot(root):
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


NETSPEC = "{root}/net.py:make"
CASES = {
    # models and checkpoints
    "unknown timm model": (["audit", "--model", "timm:no_such_net_xyz"], "no_such_net_xyz"),
    "unknown spec form": (["audit", "--model", "resnet18"], "did you mean timm:resnet18"),
    "missing factory file": (["audit", "--model", "{root}/nope.py:make"], "not found"),
    "factory raises": (["audit", "--model", "{root}/net.py:raises"], "the factory is broken"),
    "factory returns a number": (["audit", "--model", "{root}/net.py:not_a_module"], "not a torch.nn.Module"),
    "factory syntax error": (["audit", "--model", "{root}/syntax.py:make"], "syntax error"),
    "factory missing import": (["inspect", "--model", "{root}/missing.py:make", "--input-size", "32", "32"],
                               "no_such_package_xyz"),
    "0-byte checkpoint": (["audit", "--model", NETSPEC, "--weights", "{root}/empty.pt"], "empty.pt"),
    "text checkpoint": (["inspect", "--model", NETSPEC, "--weights", "{root}/text.pt", "--input-size", "32", "32"],
                        "not a PyTorch checkpoint"),
    "malicious checkpoint": (["fix", "--model", NETSPEC, "--weights", "{root}/evil.pt", "--method", "blur",
                              "--out", "{tmp}/o.pt"], "refused"),
    "checkpoint of another model": (["audit", "--model", NETSPEC, "--weights", "{root}/wrong.pt"], "do not fit"),
    "forward fails inside audit": (["audit", "--model", "{root}/net.py:broken_forward", "--data", "{root}/photos"],
                                   "forward pass failed"),
    # data
    "missing data": (["audit", "--model", NETSPEC, "--data", "{root}/no_such_folder"], "not found"),
    "empty folder": (["audit", "--model", NETSPEC, "--data", "{root}/empty_dir"], "no image files"),
    "folder of notes": (["audit", "--model", NETSPEC, "--data", "{root}/notes_only"], "no image files"),
    "truncated npz": (["audit", "--model", NETSPEC, "--data", "{root}/truncated.npz"], "truncated"),
    "npz string labels": (["audit", "--model", NETSPEC, "--data", "{root}/strings.npz"], "must be integers"),
    "npz object arrays": (["audit", "--model", NETSPEC, "--data", "{root}/objects.npz"], "object"),
    "npz not a zip": (["audit", "--model", NETSPEC, "--data", "{root}/notzip.npz"], "not a zip"),
    "npz float out of range": (["audit", "--model", NETSPEC, "--data", "{root}/float.npz"], "[0, 1]"),
    "data is a text file": (["audit", "--model", NETSPEC, "--data", "{root}/a_file.txt"], "names no files that exist"),
    "class map not integers": (["audit", "--model", NETSPEC, "--data", "{root}/good.npz", "--class-map",
                                "{root}/map.json"], "non-negative integer"),
    # options
    "negative margin": (["audit", "--model", NETSPEC, "--margin", "-3"], "--margin"),
    "empty metrics": (["audit", "--model", NETSPEC, "--metrics", ","], "names no metric"),
    "unknown metric": (["audit", "--model", NETSPEC, "--metrics", "sharpness"], "unknown metric"),
    "metric of another protocol": (["audit", "--model", NETSPEC, "--metrics", "top1_change"], "not defined"),
    "zero batch size": (["audit", "--model", NETSPEC, "--batch-size", "0"], "--batch-size"),
    "zero image size": (["audit", "--model", NETSPEC, "--image-size", "0"], "--image-size"),
    "bad transform": (["audit", "--model", NETSPEC, "--transform", "wobble:3"], "unknown transform"),
    "bad transform fields": (["audit", "--model", NETSPEC, "--transform", "crop:abc"], "integers"),
    "bad fill": (["audit", "--model", NETSPEC, "--transform", "diagonal:4:canvas:purple"], "fill"),
    "bad fix": (["audit", "--model", NETSPEC, "--fix", "sharpen"], "--fix"),
    "std zero": (["audit", "--model", NETSPEC, "--std", "0"], "--std"),
    "crop pct": (["audit", "--model", NETSPEC, "--crop-pct", "1.5"], "--crop-pct"),
    "two mean values": (["audit", "--model", NETSPEC, "--mean", "0.1", "0.2"], "--mean"),
    "unknown layer": (["audit", "--model", NETSPEC, "--layers", "nope"], "no layer named"),
    "meta device": (["audit", "--model", NETSPEC, "--device", "meta"], "device"),
    "unknown device": (["inspect", "--model", NETSPEC, "--input-size", "32", "32", "--device", "quantum"], "device"),
    "cuda missing": (["audit", "--model", NETSPEC, "--device", "cuda"], "CUDA"),
    "amp on cpu": (["audit", "--model", NETSPEC, "--amp", "--device", "cpu"], "--amp"),
    "inspect zero size": (["inspect", "--model", NETSPEC, "--input-size", "0", "32"], "input"),
    "fix filter size": (["fix", "--model", NETSPEC, "--method", "blur", "--filter-size", "0", "--out", "{tmp}/o.pt"],
                        "--filter-size"),
    "fix negative shifts": (["fix", "--model", NETSPEC, "--method", "aps", "--out", "{tmp}/o.pt", "--certify", "32",
                             "32", "--shifts", "-1"], "--shifts"),
    "demo unknown": (["demo", "nonsense"], "invalid choice"),
    "experiment unknown": (["experiment", "nonsense", "--out", "{tmp}/e"], "invalid choice"),
    "experiment zero seeds": (["experiment", "architecture", "--out", "{tmp}/e", "--seeds", "0"], "--seeds"),
    "report zero image size": (["report", "--image-size", "0", "--out", "{tmp}/r"], "--image-size"),
    # outputs, refused before any work
    "json is empty": (["audit", "--model", NETSPEC, "--json", ""], "--json is empty"),
    "json exists": (["audit", "--model", NETSPEC, "--json", "{root}/existing.json"], "exists"),
    "json is a folder": (["audit", "--model", NETSPEC, "--json", "{root}/empty_dir"], "is a folder"),
    "json under a file": (["audit", "--model", NETSPEC, "--json", "{root}/a_file.txt/out.json"], "is a file"),
    "json unwritable": (["audit", "--model", NETSPEC, "--json", "/proc/self/out.json"], "cannot write"),
    "inspect json under a file": (["inspect", "--model", NETSPEC, "--input-size", "32", "32", "--json",
                                   "{root}/a_file.txt/x.json"], "is a file"),
    "fix out exists": (["fix", "--model", NETSPEC, "--method", "blur", "--out", "{root}/existing.json"], "exists"),
    "fix out unwritable": (["fix", "--model", NETSPEC, "--method", "blur", "--out", "/proc/self/x.pt"],
                           "cannot write"),
    "fix out under a file": (["fix", "--model", NETSPEC, "--method", "blur", "--out", "{root}/a_file.txt/x.pt"],
                             "is a file"),
    "report out is a file": (["report", "--out", "{root}/a_file.txt"], "is a file"),
    "report out unwritable": (["report", "--out", "/proc/self/report"], "cannot write"),
    "report non-empty folder": (["report", "--out", "{root}/notes_only"], "not empty"),
    "report malformed experiments": (["report", "--out", "{tmp}/r", "--experiments", "{root}/exp"], "architecture"),
    "report dense model fine-tuned": (["report", "--quick", "--model", "{root}/net.py:dense", "--data",
                                       "{root}/photos", "--finetune-steps", "5", "--out", "{tmp}/r"],
                                      "no fine-tuning"),
    "experiment out is a file": (["experiment", "architecture", "--out", "{root}/a_file.txt"], "is a file"),
    "checkpoint dir is a file": (["audit", "--model", NETSPEC, "--checkpoint", "{root}/a_file.txt"], "for a weights file use --weights"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_exception_bad_input_exits_2_with_one_line_and_changes_nothing(name, files, tmp_path, capsys):
    argv, message = CASES[name]
    argv = [a.format(root=files, tmp=tmp_path) for a in argv]
    if argv[0] in ("audit", "report", "experiment", "fix"):
        argv.append("--no-progress") if argv[0] in ("audit", "report", "experiment") else None
    before = _snapshot(files)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (name, code, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shiftlab: error:"), err
    assert message.lower() in lines[0].lower(), (message, lines[0])
    assert _snapshot(files) == before  # no user file was touched
    assert not os.path.exists(os.path.join(str(files), "evil_ran"))


def test_exception_outside_strings_are_shown_literally(files, tmp_path, capsys):
    folder = tmp_path / "data [" / "] [bold red]here[" / "bold red]"  # the path reads 'data [/] [bold red]here[/bold red]'
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "$\\nosuchcmd$.png")
    assert main(["audit", "--model", NETSPEC.format(root=files), "--data", str(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "[bold red]" in out and "[/]" in out
