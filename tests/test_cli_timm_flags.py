"""timm's validate.py flags on ``shiftlab audit`` (issue 23, point 1): --num-classes, --in-chans, --input-size,
--img-size, -b, -j, --amp-dtype, --channels-last, --torchcompile; tiny timm models, random weights, nothing
downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from shiftlab.cli import build_parser, main
from shiftlab.runs import AuditRun


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm-flags")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def _audit(argv, tmp_path, capsys):
    out = tmp_path / "a.json"
    rc = main(["audit", *argv, "--transform", "circular:2", "--device", "cpu", "--no-progress", "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    return json.loads(out.read_text())


def test_num_classes_loads_a_5_class_checkpoint(images, tmp_path, capsys):
    weights = tmp_path / "five.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=5).state_dict(), weights)
    doc = _audit(["--model", "timm:test_resnet", "--weights", str(weights), "--num-classes", "5", "--data", str(images),
                  "--img-size", "32", "-b", "8", "-j", "0"], tmp_path, capsys)
    assert doc["classes"] == 5
    assert "--num-classes 5" in doc["command"] and "--batch-size 8" in doc["command"]
    assert doc["preprocessing"]["model_input"] == [32, 32]
    rc = main(["audit", "--model", "timm:test_resnet", "--weights", str(weights), "--data", str(images),
               "--img-size", "32", "--device", "cpu", "--no-progress"])  # without the flag the file does not fit
    assert rc == 2 and "do not fit" in capsys.readouterr().err


def test_input_size_sets_grey_channels_and_a_non_square_input(images, tmp_path, capsys):
    doc = _audit(["--model", "timm:test_resnet", "--input-size", "1", "32", "48", "--data", str(images), "-j", "0"],
                 tmp_path, capsys)
    assert doc["preprocessing"]["model_input"] == [32, 48]
    assert len(doc["preprocessing"]["mean"]) == 1  # images converted to 1 channel (grey)
    assert "--input-size 1 32 48" in doc["command"]


def test_flags_parse_with_timm_meanings():
    args = build_parser().parse_args(["audit", "--model", "timm:test_resnet", "--img-size", "64", "-b", "4", "-j", "1",
                                      "--amp", "--amp-dtype", "bfloat16", "--channels-last", "--torchcompile",
                                      "--in-chans", "1", "--num-classes", "7"])
    assert (args.image_size, args.batch_size, args.workers) == (64, 4, 1)
    assert (args.amp_dtype, args.channels_last, args.torchcompile) == ("bfloat16", True, "inductor")
    assert (args.in_chans, args.num_classes) == (1, 7)
    run = AuditRun(model="timm:test_resnet", num_classes=7, in_chans=1, channels_last=True, torchcompile="eager",
                   workers=1)
    assert run.command() == "shiftlab audit --model timm:test_resnet --num-classes 7 --in-chans 1"  # "how" left out


def test_mismatched_input_size_is_refused(capsys):
    rc = main(["audit", "--model", "timm:test_resnet", "--input-size", "3", "32", "32", "--image-size", "64"])
    assert rc == 2 and "--input-size" in capsys.readouterr().err


class _Recorder(torch.nn.Module):
    """Identity that records, per call, whether it ran under torch.compile and in channels-last format."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append((torch.compiler.is_compiling(), x.is_contiguous(memory_format=torch.channels_last)))
        return x


def _tiny():
    torch.manual_seed(0)
    rec = _Recorder()
    net = torch.nn.Sequential(rec, torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    return net.double(), rec


def test_channels_last_and_torchcompile_keep_the_numbers(images):
    """float64, where the engine's default is the contiguous format: --channels-last switches it on, eager
    torch.compile traces the model, and the metrics agree with the plain run to float tolerance."""
    run = AuditRun(model="unused", data=str(images), transform="diagonal:2:circular", image_size=32, device="cpu",
                   workers=0)
    results, seen = [], []
    for options in ({}, {"channels_last": True}, {"torchcompile": "eager"}):
        model, rec = _tiny()
        results.append(run.with_(**options).execute(model=model))
        seen.append(rec.seen)
    assert not any(cl for _, cl in seen[0]) and all(cl for _, cl in seen[1])
    assert not any(c for c, _ in seen[0]) and any(c for c, _ in seen[2])
    for other in results[1:]:
        assert set(other.metrics) == set(results[0].metrics)
        for name in results[0].metrics:
            assert other.metrics[name].value == pytest.approx(results[0].metrics[name].value, rel=1e-9, abs=1e-12)


def test_fix_and_inspect_build_a_5_class_grey_checkpoint_and_the_fixed_file_remembers(tmp_path, capsys):
    """--num-classes / --in-chans on fix and inspect; the fixed checkpoint records them, so --model FILE rebuilds
    the 5-class grey model, and a contradicting flag beside it is refused naming the flag."""
    weights, fixed = tmp_path / "five.pth", tmp_path / "five_aps.pt"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=5, in_chans=1).state_dict(), weights)
    assert main(["inspect", "--model", "timm:test_resnet", "--weights", str(weights), "--input-size", "1", "32",
                 "32", "--num-classes", "5"]) == 0  # timm's C H W sets the input channels
    assert main(["fix", "--model", "timm:test_resnet", "--weights", str(weights), "--num-classes", "5", "--in-chans",
                 "1", "--method", "aps", "--out", str(fixed)]) == 0
    capsys.readouterr()
    assert main(["inspect", "--model", str(fixed), "--img-size", "64", "--json", str(tmp_path / "i.json")]) == 0
    assert json.loads((tmp_path / "i.json").read_text())["conversion"]["fix"].startswith("aps")
    from shiftlab import load_model

    model = load_model(str(fixed))
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 5)
    assert main(["inspect", "--model", "timm:test_resnet", "--weights", str(fixed), "--num-classes", "6",
                 "--img-size", "32"]) == 2
    assert "--num-classes 6" in capsys.readouterr().err


def test_weights_for_other_classes_and_channels_name_the_flags(tmp_path, capsys):
    weights = tmp_path / "five.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=5, in_chans=1).state_dict(), weights)
    assert main(["inspect", "--model", "timm:test_resnet", "--weights", str(weights), "--img-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "--in-chans 1 --num-classes 5" in err and len(err.strip().splitlines()) == 1


def test_finetune_builds_the_model_and_teacher_with_num_classes(tmp_path):
    from shiftlab.runs.finetune import FinetuneRun

    weights = tmp_path / "five.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=5).state_dict(), weights)
    run = FinetuneRun(model="timm:test_resnet", weights=str(weights), num_classes=5, data="photos",
                      out=str(tmp_path / "o.pt"), fix="aps")
    run.check()
    teacher, student = run.load()
    assert teacher(torch.rand(1, 3, 32, 32)).shape == (1, 5) and student == {"fix": "aps"}
    with pytest.raises(Exception, match="--num-classes"):
        FinetuneRun(model="pretrained:efficientnet_lite0", num_classes=5, data="photos",
                    out=str(tmp_path / "o.pt"), fix="aps").check()


def test_report_plans_its_audits_with_the_build_flags(tmp_path, capsys):
    """report --num-classes / --in-chans: the model is built with them and every printed command repeats them."""
    from shiftlab.runs.report_plan import QUICK_BUDGET, plan_report

    weights = tmp_path / "five.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=5, in_chans=1).state_dict(), weights)
    setup = plan_report("timm:test_resnet", "photos", QUICK_BUDGET, quick=True, weights=str(weights),
                        image_size=64, build={"num_classes": 5, "in_chans": 1})
    assert setup.model(torch.rand(1, 1, 64, 64)).shape == (1, 5)
    commands = [audit.run.command() for audit in setup.plan]
    assert commands and all("--num-classes 5 --in-chans 1" in c for c in commands)
    assert setup.settings["num_classes"] == 5
    rc = main(["report", "--model", "pretrained:efficientnet_lite0", "--num-classes", "5", "--out",
               str(tmp_path / "r")])
    assert rc == 2 and "--num-classes" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_finetune_checkpoint_given_a_weights_file_points_to_weights(tmp_path, capsys, resume):
    """timm's --checkpoint is a weights file; finetune's is where the run saves its state: the line says so."""
    weights = tmp_path / "r18.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), weights)
    rc = main(["finetune", "--model", "timm:test_resnet", "--fix", "aps", "--data", "photos", "--checkpoint",
               str(weights), *(["--resume"] if resume else []), "--out", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "--weights" in err and "model weights" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.pt").exists()
