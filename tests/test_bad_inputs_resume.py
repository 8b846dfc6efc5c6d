"""Issue 17, class 4, two runs merged into one number: resuming from a checkpoint never merges two different runs,
and a damaged checkpoint is refused with one line.

Every setting that changes a number, and the data's identity, belongs to the checkpoint's fingerprint: an audit or
a fine-tuning run resumed with any of it changed is refused (exit code 2, one line naming what differs); a
checkpoint that is truncated, edited or inconsistent with itself is refused with one line naming the file. A kill
is simulated in the process: the fault hook's ``os.kill`` raises instead of killing.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import shiftlab
from shiftlab.cli import main
from shiftlab.errors import InputError

NET = '''
import torch
from torch import nn

def _net(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    net.pretrained_cfg = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    return net

def make():
    return _net(0)

def other():
    return _net(1)

class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = _net(0), _net(1)
        self.pretrained_cfg = self.a.pretrained_cfg
    def forward(self, x):
        return self.a(x), self.b(x)

def two():
    return Two()
'''


class _Killed(BaseException):
    """What the fault hook raises in place of SIGKILL."""


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return tmp_path


def _audit(files, out, *extra, model="net.py:make"):
    return ["audit", "--model", str(files / model), "--data", str(files / "images"), "--transform",
            "diagonal:2:circular", "--batch-size", "3", "--json", str(out), "--no-progress", "--force",
            "--workers", "0", "--checkpoint", str(files / "ckpt"), "--checkpoint-every", "1", *extra]


def _kill_after(monkeypatch, n: int):
    """Arm the fault hook: the ``n``-th batch 'kills' the process (raises _Killed)."""
    def fake_kill(pid, sig):
        raise _Killed()
    monkeypatch.setenv("SHIFTLAB_FAULT", f"kill-after-batch:{n}")
    monkeypatch.setattr(os, "kill", fake_kill)


def _interrupted(files, monkeypatch, *extra, model="net.py:make"):
    """An audit killed after its 2nd of 4 batches: its checkpoint holds half of the images."""
    with monkeypatch.context() as m:
        _kill_after(m, 2)
        with pytest.raises(_Killed):
            main(_audit(files, files / "killed.json", *extra, model=model))
    assert (files / "ckpt" / "audit-rank0-of-1.pt").exists()


def _numbers(path) -> dict:
    doc = json.loads(path.read_text())
    for key in ("reproducibility", "command"):
        doc.pop(key, None)
    return doc


def _refused(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------------------ the control


def test_class4_control_an_unchanged_resume_equals_the_uninterrupted_run(files, monkeypatch, capsys):
    """class 4, control: killed half-way and resumed with the same command, the audit equals the uninterrupted one
    (the fingerprint is stable between runs: data identity, layers, output key)."""
    whole = files / "whole.json"
    assert main(_audit(files, whole)[:-4]) == 0  # no checkpoint
    _interrupted(files, monkeypatch)
    resumed = files / "resumed.json"
    assert main(_audit(files, resumed)) == 0, capsys.readouterr().err
    assert _numbers(resumed) == _numbers(whole)


# ------------------------------------------------------------------------------------------ changed settings


@pytest.mark.parametrize("first, second, needles", [
    (["--reference", "{root}/net.py:make"], ["--reference", "{root}/net.py:other"],
     ["--reference", "net.py:make", "net.py:other"]),
    ([], ["--reference", "{root}/net.py:other"], ["--reference", "(none)", "net.py:other"]),
    (["--output-key", "0"], ["--output-key", "1"], ["--output-key 0", "--output-key 1"]),
    ([], ["--transform", "circular:2"], ["--transform diagonal:2:circular", "--transform circular:2"]),
    ([], ["--seed", "3"], ["--seed 0", "--seed 3"]),
])
def test_class4_changed_setting_is_refused_naming_what_differs(files, monkeypatch, capsys, first, second, needles):
    """class 4, two runs merged: a resume with another --reference, --output-key, --transform or --seed is refused
    with one line that names the option and both values (before: a changed reference or output key was merged)."""
    model = "net.py:two" if "--output-key" in first else "net.py:make"
    fill = [a.replace("{root}", str(files)) for a in first]
    _interrupted(files, monkeypatch, *fill, model=model)
    base = _audit(files, files / "b.json", model=model)
    if "--transform" in second:
        base = base[:base.index("--transform")] + base[base.index("--transform") + 2:]
    code = main(base + [a.replace("{root}", str(files)) for a in second] +
                [a for a in fill if "--output-key" not in second and "--reference" not in second])
    err = _refused(capsys, code, "belongs to another audit", "this run has", "another --checkpoint folder",
                   *needles)
    assert not (files / "b.json").exists(), err


def test_class4_image_replaced_between_kill_and_resume_is_refused(files, monkeypatch, capsys):
    """class 4, two runs merged: an image replaced under the same name between the kill and the resume (other
    pixels, same size on disk) is refused: the data's identity (sizes and modification times) is fingerprinted."""
    _interrupted(files, monkeypatch)
    victim = files / "images" / "4.png"
    before = os.stat(victim)
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(victim)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + 10 ** 9))
    _refused(capsys, main(_audit(files, files / "b.json")), "image content", "another --checkpoint folder")


def test_class4_image_touched_between_kill_and_resume_is_refused(files, monkeypatch, capsys):
    """class 4, two runs merged: the same file with another modification time (copied over, restored from a
    backup) is another image as far as a checkpoint can know: refused, not merged."""
    _interrupted(files, monkeypatch)
    victim = files / "images" / "0.png"
    st = os.stat(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns - 10 ** 9))
    _refused(capsys, main(_audit(files, files / "b.json")), "image content")


def test_class4_labels_changed_in_a_list_file_are_refused(files, monkeypatch, capsys):
    """class 4, two runs merged: the same images with other labels (a .txt list edited) change accuracy: refused."""
    listing = files / "list.txt"
    paths = sorted((files / "images").glob("*.png"))
    listing.write_text("\n".join(f"{p}\t{i % 5}" for i, p in enumerate(paths)))
    args = _audit(files, files / "a.json")
    args[args.index("--data") + 1] = str(listing)
    with monkeypatch.context() as m:
        _kill_after(m, 2)
        with pytest.raises(_Killed):
            main(args)
    listing.write_text("\n".join(f"{p}\t{(i + 1) % 5}" for i, p in enumerate(paths)))
    _refused(capsys, main(args), "labels")


def test_class4_api_tensor_content_and_reference_weights_are_fingerprinted(tmp_path):
    """class 4, two runs merged (API): other pixels in a tensor of the same shape, a reference module of the same
    type with other weights, and another normalisation callable are each refused."""
    torch.manual_seed(0)

    def net():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(4, 3))

    model, ref_a, ref_b = net(), net(), net()
    images = torch.rand(4, 3, 12, 12)
    kw = dict(transform="circular:2", batch_size=4, workers=0, checkpoint=tmp_path / "ck")
    shiftlab.audit(model, images, reference=ref_a, **kw)
    assert shiftlab.audit(model, images, reference=ref_a, **kw).metrics  # the same audit resumes
    with pytest.raises(InputError, match="image content"):
        shiftlab.audit(model, images.flip(0), reference=ref_a, **kw)
    with pytest.raises(InputError, match="reference model weights"):
        shiftlab.audit(model, images, reference=ref_b, **kw)

    def scale(x):
        return x * 2 - 1

    def shift(x):
        return x - 0.5

    shiftlab.audit(model, images, normalize=scale, **{**kw, "checkpoint": tmp_path / "n"})
    with pytest.raises(InputError, match="normalisation"):
        shiftlab.audit(model, images, normalize=shift, **{**kw, "checkpoint": tmp_path / "n"})


def test_class4_npz_content_changed_is_refused(tmp_path):
    """class 4, two runs merged: a .npz rewritten with other pixels (same name, shape and count) is refused."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, images=rng.integers(0, 255, (4, 12, 12, 3), dtype=np.uint8))
    kw = dict(transform="circular:2", batch_size=4, workers=0, checkpoint=tmp_path / "ck")
    shiftlab.audit(model, str(path), **kw)
    np.savez(path, images=rng.integers(0, 255, (4, 12, 12, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="image content"):
        shiftlab.audit(model, str(path), **kw)


# ------------------------------------------------------------------------------------------ damaged checkpoints


def _edit(path, change):
    saved = torch.load(path, map_location="cpu", weights_only=True)
    change(saved)
    torch.save(saved, path)


def _set(key, value):
    return lambda saved: saved.__setitem__(key, value)


def _all_done(saved):
    saved["done"] = torch.arange(4)  # the header says every batch; the statistics hold two


def _meta(text):
    return _set("meta", text)


@pytest.mark.parametrize("change", [
    lambda s: s.pop("fingerprint"),
    _set("fingerprint", "{not json"),
    _meta("{not json"),
    _meta(json.dumps({"failures": [], "upscaled": {}, "layer_info": {}})),
    lambda s: s.pop("chunks"),
    lambda s: s["chunks"].__setitem__(next(iter(s["chunks"])), {"idx": 3}),
    _set("done", "all of them"),
    _all_done,
], ids=["no fingerprint", "fingerprint not json", "meta not json", "failures a list", "no chunks",
        "chunk not tensors", "done a string", "done edited to all"])
def test_class4_damaged_audit_checkpoint_is_refused_with_one_line(files, monkeypatch, capsys, change):
    """class 4, damaged checkpoint: hand-edited, missing keys, wrong types, or a header that counts every batch
    while the statistics hold half: one line naming the file, never a traceback or a metric over part of the data."""
    _interrupted(files, monkeypatch)
    ckpt = files / "ckpt" / "audit-rank0-of-1.pt"
    _edit(ckpt, change)
    _refused(capsys, main(_audit(files, files / "b.json")), str(ckpt), "damaged", "delete it")
    assert not (files / "b.json").exists()


def test_class4_truncated_audit_checkpoint_is_refused_with_advice(files, monkeypatch, capsys):
    """class 4, damaged checkpoint: a truncated file is refused with the way out (delete it or another folder)."""
    _interrupted(files, monkeypatch)
    ckpt = files / "ckpt" / "audit-rank0-of-1.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    _refused(capsys, main(_audit(files, files / "b.json")), str(ckpt), "damaged", "another --checkpoint folder")


# ------------------------------------------------------------------------------------------ fine-tuning


def _tune(files, out, *extra):
    return ["finetune", "--model", str(files / "net.py:make"), "--data", str(files / "images"), "--steps", "2",
            "--batch-size", "2", "--views", "circular:2", "--workers", "0", "--no-progress", "--out", str(out),
            "--checkpoint", str(files / "tune.ckpt"), "--checkpoint-every", "1", *extra]


def test_class4_finetune_resumed_with_another_fix_is_refused(files, capsys):
    """class 4, two runs merged: a fine-tuning checkpoint made with --fix aps, resumed with --fix blur, is refused
    (before: the file said recipe "blur" with APS-trained weights); so is another --lr."""
    assert main(_tune(files, files / "a.pt", "--fix", "aps")) == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(_tune(files, files / "b.pt", "--fix", "blur", "--resume"))
    _refused(capsys, code, "--fix aps", "--fix blur", "another --checkpoint")
    assert not (files / "b.pt").exists()
    code = main(_tune(files, files / "b.pt", "--fix", "aps", "--resume", "--lr", "0.5"))
    _refused(capsys, code, "--lr")


def test_class4_finetune_images_replaced_are_refused(files, capsys):
    """class 4, two runs merged: fine-tuning resumed on images replaced under the same names is refused."""
    assert main(_tune(files, files / "a.pt", "--fix", "aps")) == 0, capsys.readouterr().err
    capsys.readouterr()
    victim = files / "images" / "2.png"
    st = os.stat(victim)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    _refused(capsys, main(_tune(files, files / "b.pt", "--fix", "aps", "--resume")), "image content")


@pytest.mark.parametrize("change", [
    lambda s: s.pop("step"),
    _set("log", "{not json"),
    lambda s: s["student"].pop(next(iter(s["student"]))),
    _set("step", "2"),
    _set("window", torch.zeros(3)),
    _set("rng", [{"cpu": torch.zeros(3, dtype=torch.uint8)}]),
    lambda s: s.pop("fingerprint"),
], ids=["no step", "log not json", "weights missing", "step a string", "window wrong shape", "rng malformed",
        "no fingerprint"])
def test_class4_damaged_finetune_checkpoint_is_refused_with_one_line(files, capsys, change):
    """class 4, damaged checkpoint: a fine-tuning checkpoint with keys missing or of the wrong type is refused
    with one line naming the file, never a KeyError/JSONDecodeError/RuntimeError traceback."""
    assert main(_tune(files, files / "a.pt", "--fix", "aps", "--steps", "1")) == 0, capsys.readouterr().err
    capsys.readouterr()
    ckpt = files / "tune.ckpt"
    _edit(ckpt, change)
    _refused(capsys, main(_tune(files, files / "b.pt", "--fix", "aps", "--steps", "1", "--resume")), str(ckpt),
             "damaged")
