"""Label-free fine-tuning: the digits targets (a small CI run), negative controls, batch-norm handling, the CLI,
checkpoints that resume to the very weights of an uninterrupted run after ``kill -9`` (also during a checkpoint
write), and torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from _subprocesses import shiftlab as shiftlab_cli
from _subprocesses import torchrun, write_class_images

import shiftlab
from shiftlab.cli import main
from shiftlab.errors import InputError
from shiftlab.experiments.finetune import CROP, PAD, digits_targets, evaluate_digits
from shiftlab.fix.antialias import antialias
from shiftlab.fix.finetune import FinetuneConfig, finetune


@pytest.fixture(scope="module")
def digits():
    """A max-pool teacher (batch norm, global average pooling) trained on real digits, and its data."""
    from shiftlab.experiments._common import train_variant
    from shiftlab.experiments.digits import make_canvas_split
    from shiftlab.experiments.train import TrainConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the figures below were calibrated with one thread
    try:
        split = make_canvas_split(seed=0)
        teacher, _ = train_variant("maxpool-gap-zeros", split, 8, TrainConfig(epochs=10), 0)
        train = (F.pad(split.train.images, (PAD,) * 4), split.train.labels)
        yield {"teacher": teacher, "train": train, "test": (split.test.images, split.test.labels),
               "teacher_eval": evaluate_digits(teacher, teacher, split.test.images, split.test.labels, False)}
    finally:
        torch.set_num_threads(threads)


def _tune(digits, fix: dict, steps: int = 150, **settings):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        student, _ = antialias(digits["teacher"], **fix)
        before = evaluate_digits(student, digits["teacher"], *digits["test"], bool(fix.get("circular")))
        result = finetune(digits["teacher"], digits["train"], student=student, steps=steps, batch_size=64, lr=1e-3,
                          views=CROP, normalize=False, **settings)
        after = evaluate_digits(result.model, digits["teacher"], *digits["test"], bool(fix.get("circular")))
    finally:
        torch.set_num_threads(threads)
    return before, after, result


def _value(evaluation, metric, audit="crop"):
    return evaluation[audit][metric]["value"]


@pytest.mark.slow
@pytest.mark.parametrize("fix", [{"method": "blur", "keep_stem": False}, {"method": "aps", "circular": True}],
                         ids=["blur", "aps-circular"])
def test_feature_finetuning_meets_the_digits_targets(digits, fix):
    before, after, result = _tune(digits, fix)
    run = {"teacher_metrics": digits["teacher_eval"], "after": after}
    targets = digits_targets(run)
    assert all(targets.values()), (targets, digits["teacher_eval"]["crop"], after["crop"])
    # fine-tuning is what brought the predictions back: agreement with the teacher rises
    assert _value(after, "reference_agreement") > _value(before, "reference_agreement")
    if fix.get("circular"):  # still exactly invariant to circular shifts (float64), whatever the new weights
        assert _value(after, "consistency", "circular") == 1.0
        assert after["certificate"]["passed"] and after["certificate"]["max_rel_deviation"] < 1e-12
    log = result.log
    assert log["kind"] == "shiftlab.finetune" and log["steps_done"] == 150 and log["views"] == CROP
    assert [e["step"] for e in log["entries"]][-1] == 150 and log["entries"][-1]["lr"] < log["entries"][0]["lr"]


@pytest.mark.slow
def test_feature_without_the_kl_term_agreement_does_not_rise(digits):
    """Negative control: the consistency term alone (no teacher, no labels) does not bring the predictions back."""
    before, after, _ = _tune(digits, {"method": "blur", "keep_stem": False}, steps=60, kl=0.0, consistency=1.0)
    assert _value(after, "reference_agreement") <= _value(before, "reference_agreement")


def test_feature_batch_norm_frozen_keeps_the_statistics_and_train_changes_them(digits):
    images, labels = digits["train"]
    data = (images[:64], labels[:64])
    stats = {}
    for mode in ("frozen", "train", "reestimate"):
        student, _ = antialias(digits["teacher"], "blur", keep_stem=False)
        start = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
        result = finetune(digits["teacher"], data, student=student, steps=2, batch_size=16, views=CROP,
                          normalize=False, batch_norm=mode, bn_batches=2)
        stats[mode] = {k: v for k, v in result.model.state_dict().items() if "running" in k}
        changed = any(not torch.equal(start[k], stats[mode][k]) for k in start)
        assert changed == (mode != "frozen"), mode
        assert not result.model.training
    assert any(not torch.equal(stats["train"][k], stats["reestimate"][k]) for k in stats["train"])


def test_exception_bad_settings_are_refused(digits):
    data = (digits["train"][0][:8], digits["train"][1][:8])
    for settings, needle in ((dict(kl=0.0), "nothing to learn"), (dict(batch_norm="eval"), "batch_norm"),
                             (dict(steps=0), "steps"), (dict(views="diagonal:4"), "pair"),
                             (dict(lr=-1.0), "lr"), (dict(warmup=10, steps=5), "warmup"),
                             (dict(sweeps=3), "unknown fine-tuning setting")):
        with pytest.raises(InputError, match=needle):
            finetune(digits["teacher"], data, fix="blur", normalize=False, **settings)
    with pytest.raises(InputError, match="not both"):
        finetune(digits["teacher"], data, normalize=False)


def test_feature_schedule_warms_up_then_decays_to_zero():
    config = FinetuneConfig(steps=100, warmup=10)
    factors = [config.lr_factor(k) for k in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:])) and factors[-1] < 0.001


# ----------------------------------------------------------------------------------------- the command line

NET = '''
import torch
from torch import nn


def make(dropout=0.3):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Dropout(dropout), nn.Linear(16, 6))
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    return net


def plain():
    return make(0.0)
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    (root / "net.py").write_text(NET)
    write_class_images(root / "images", 6)
    return root


def _args(files, out, *extra, factory="make", steps=12, batch=4, fix="aps", data=None):
    return ["finetune", "--model", f"{files / 'net.py'}:{factory}", "--fix", fix, "--data",
            str(data or files / "images"), "--steps", str(steps), "--batch-size", str(batch), "--lr", "3e-3",
            "--threads", "1", "--out", str(out), "--no-progress", "--force", *extra]


def _weights(path) -> dict:
    from shiftlab.fix.checkpoint import read_fixed

    return read_fixed(path)["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(files):
    out = files / "reference.pt"
    proc = shiftlab_cli(_args(files, out, "--workers", "0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _weights(out), json.loads(out.with_suffix(".json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill-after-step:5", "kill-in-checkpoint:2"])
def test_feature_resume_after_kill_gives_the_uninterrupted_weights(files, uninterrupted, tmp_path, fault):
    out, ckpt = tmp_path / "ft.pt", tmp_path / "ft.ckpt"
    args = _args(files, out, "--checkpoint", str(ckpt), "--checkpoint-every", "3", "--resume")
    killed = shiftlab_cli(args + ["--workers", "0"], SHIFTLAB_FAULT=fault)
    assert killed.returncode == -9 and not out.exists()
    assert ckpt.exists()  # a half-written checkpoint never replaces the previous one
    assert len(list(tmp_path.glob(".*.tmp"))) == (0 if fault.startswith("kill-after") else 1)  # the half-written one
    workers = "1" if fault.startswith("kill-after") else "0"  # the loader's workers do not change the data either
    resumed = shiftlab_cli(args + ["--workers", workers])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights, log = uninterrupted
    assert _same(_weights(out), weights)  # dropout's random state and the optimizer came back exactly
    mine = json.loads(out.with_suffix(".json").read_text())
    assert mine["entries"] == log["entries"]
    assert mine["resumed_at"] == [3]  # from the last whole checkpoint
    assert not list(tmp_path.glob(".*.tmp"))  # the half-written temporary was cleared


def test_exception_cli_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys):
    out = tmp_path / "ft.pt"
    base = _args(files, out)
    cases = [
        (_args(files, out, fix="lowpass"), "--fix"),
        (["finetune", "--model", f"{files / 'net.py'}:make", "--data", str(files / "images"), "--steps", "2",
          "--out", str(out)], "not converted"),
        (base + ["--views", "diagonal:3"], "pair"),
        (base + ["--resume"], "--checkpoint"),
        (base + ["--amp", "--device", "cpu"], "CUDA"),
        (base + ["--kl", "0"], "nothing to learn"),
        (base + ["--log", str(out)], "same file"),
        (_args(files, out, data=tmp_path / "nothing"), "not found"),
        (base + ["--label-weight", "1", "--data", "photos", "--limit", "1"], "labels"),
        (_args(files, "/proc/version/x.pt"), "--out"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not out.exists()
    # an existing checkpoint is not overwritten without --resume; another run's checkpoint is refused
    ckpt = tmp_path / "run.ckpt"
    assert main(base + ["--steps", "2", "--checkpoint", str(ckpt)]) == 0
    capsys.readouterr()
    assert main(base + ["--steps", "2", "--checkpoint", str(ckpt)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--steps", "2", "--checkpoint", str(ckpt), "--resume", "--lr", "1e-2"]) == 2
    assert "another fine-tuning run" in capsys.readouterr().err


def test_feature_cli_writes_a_fixed_checkpoint_and_a_log(files, tmp_path, capsys):
    out = tmp_path / "ft.pt"
    assert main(_args(files, out, "--workers", "0", factory="plain", steps=3)) == 0
    text = capsys.readouterr().out
    plain = f"{files / 'net.py'}:plain"
    assert f"--model {plain} --weights {out}" in text and "--reference" in text  # a file never imports net.py
    model = shiftlab.load_model(plain, weights=out)
    assert model.shiftlab_fix["method"] == "aps"
    recipe = model.shiftlab_source["recipe"]
    assert recipe["finetune"]["steps_done"] == 3 and recipe["model"]["spec"].endswith("net.py:plain")
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["teacher"].endswith("net.py:plain") and log["out"] == str(out) and len(log["entries"]) == 1
    # fine-tuning a fixed checkpoint further: the teacher is the original its recipe names
    again = tmp_path / "again.pt"
    assert main(["finetune", "--model", plain, "--weights", str(out), "--data", str(files / "images"), "--steps", "2",
                 "--batch-size", "4", "--workers", "0", "--out", str(again), "--no-progress"]) == 0
    assert json.loads(again.with_suffix(".json").read_text())["teacher"].endswith("net.py:plain")


@pytest.mark.slow
def test_feature_torchrun_two_processes_equal_one_with_twice_the_batch(files, tmp_path):
    single, double = tmp_path / "one.pt", tmp_path / "two.pt"
    def args(out, batch):
        return _args(files, out, "--workers", "0", factory="plain", steps=6, batch=batch)

    proc = shiftlab_cli(args(single, 8))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = torchrun(args(double, 4))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("saved the fine-tuned model") == 1  # rank 0 alone prints and writes
    a, b = _weights(single), _weights(double)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    assert json.loads(double.with_suffix(".json").read_text())["world_size"] == 2
    # killed under torchrun, resumed under torchrun: the uninterrupted weights
    resumed, ckpt = tmp_path / "three.pt", tmp_path / "three.ckpt"
    extra = ["--checkpoint", str(ckpt), "--checkpoint-every", "2", "--resume"]
    assert torchrun(args(resumed, 4) + extra, SHIFTLAB_FAULT="kill-after-step:3").returncode != 0
    assert not resumed.exists()
    proc = torchrun(args(resumed, 4) + extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _same(_weights(resumed), b)
