"""Audits at scale: streaming (memory does not grow with the data), torchrun with 2 CPU processes (gloo) equal to
one process, and resuming after ``kill -9`` at any point, including during a checkpoint write."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _subprocesses import env, torchrun, write_class_images
from _subprocesses import shiftlab as shiftlab_cli

pytestmark = pytest.mark.slow

NET = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6))
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    return net
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    (root / "net.py").write_text(NET)
    images = root / "images"
    write_class_images(images, 5)
    return root


def _args(setup, out, *extra):
    return ["audit", "--model", f"{setup / 'net.py'}:make", "--data", str(setup / "images"), "--transform",
            "diagonal:3:circular", "--layers", "stages", "--batch-size", "8", "--threads", "1", "--json", str(out),
            "--no-progress", "--force", *extra]


def _numbers(path) -> dict:
    doc = json.loads(path.read_text())
    doc.pop("reproducibility")
    return doc


@pytest.fixture(scope="module")
def reference(setup):
    out = setup / "single.json"
    proc = shiftlab_cli(_args(setup, out))
    assert proc.returncode == 0, proc.stderr
    return _numbers(out)


def test_feature_torchrun_two_cpu_processes_equal_one(setup, reference, tmp_path):
    out = tmp_path / "dist.json"
    proc = torchrun(_args(setup, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _numbers(out) == reference  # every metric, layer, interval and count: exactly
    assert json.loads(out.read_text())["reproducibility"]["world_size"] == 2
    assert proc.stdout.count("shiftlab audit:") == 1  # rank 0 alone prints and writes


# killed after the first batch's checkpoint, while writing the first (none behind it), while writing the third
@pytest.mark.parametrize("fault", ["kill-after-batch:1", "kill-in-checkpoint:1", "kill-in-checkpoint:3"])
def test_feature_resume_after_kill_gives_the_uninterrupted_result(setup, reference, tmp_path, fault):
    out, ckpt = tmp_path / "a.json", tmp_path / "ckpt"
    args = _args(setup, out, "--checkpoint", str(ckpt), "--checkpoint-every", "1")
    killed = shiftlab_cli(args, SHIFTLAB_FAULT=fault)
    assert killed.returncode == -9 and not out.exists()
    assert list(ckpt.glob("audit-rank0-of-1.pt")) or fault == "kill-in-checkpoint:1"
    resumed = shiftlab_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert _numbers(out) == reference
    assert not list(ckpt.glob(".*.tmp"))  # the half-written temporary was cleared


def test_feature_resume_under_torchrun(setup, reference, tmp_path):
    out, ckpt = tmp_path / "a.json", tmp_path / "ckpt"
    args = _args(setup, out, "--checkpoint", str(ckpt), "--checkpoint-every", "1")
    assert torchrun(args, SHIFTLAB_FAULT="kill-after-batch:2").returncode != 0 and not out.exists()
    assert torchrun(args).returncode == 0
    assert _numbers(out) == reference
    # a different number of processes is refused, with what to do
    proc = shiftlab_cli(args)
    assert proc.returncode == 2 and "another number of processes" in proc.stderr


def test_exception_checkpoint_of_another_audit_is_refused(setup, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert shiftlab_cli(_args(setup, tmp_path / "a.json", "--checkpoint", str(ckpt))).returncode == 0
    proc = shiftlab_cli(_args(setup, tmp_path / "b.json", "--checkpoint", str(ckpt), "--seed", "4"))
    assert proc.returncode == 2 and "belongs to another audit" in proc.stderr and "seed" in proc.stderr
    assert "Traceback" not in proc.stderr


MEMORY_PROBE = '''
import resource, sys
from shiftlab._runtime import tune_allocator
tune_allocator()
import shiftlab
from shiftlab.data.sources import open_images
result = shiftlab.audit(sys.argv[1], open_images(sys.argv[2]), transform="circular:2", batch_size=64, workers=0)
assert result.n == int(sys.argv[3]), result.n
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
'''


def test_feature_memory_does_not_grow_with_the_data(setup, tmp_path):
    """Auditing 20,000 images needs at most 1.2x the peak memory of auditing 1,000 (images are streamed)."""
    files = sorted(str(p) for p in (setup / "images").rglob("*.png"))
    peaks = {}
    for n in (1000, 20000):
        listing = tmp_path / f"list{n}.txt"
        listing.write_text("\n".join(f"{files[i % len(files)]}\t{i % 6}" for i in range(n)))
        proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, f"{setup / 'net.py'}:make", str(listing), str(n)],
                              capture_output=True, text=True, timeout=600, env=env())
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[n] = int(proc.stdout.split()[-1])
    assert peaks[20000] <= 1.2 * peaks[1000], peaks


def test_feature_report_under_torchrun_equals_one_process(setup, tmp_path):
    """The report is made of audits, so it runs under torchrun too: the same numbers, one page."""
    args = ["report", "--quick", "--model", f"{setup / 'net.py'}:make", "--data", str(setup / "images"),
            "--no-progress"]
    one = shiftlab_cli([*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun([*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert set(a["audits"]) == set(b["audits"])
    for key in a["audits"]:
        assert a["audits"][key]["result"]["metrics"] == b["audits"][key]["result"]["metrics"], key
    assert (tmp_path / "two" / "index.html").exists()
