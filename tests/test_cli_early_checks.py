"""Every argument of ``shiftlab audit`` is checked before any work: a bad flag exits 2 with one line naming it,
and the model loader is never called (issue 23, point 2). The protocol/metric rule is the engine's own."""

from __future__ import annotations

import pytest
import torch

import shiftlab
from shiftlab.cli import main
from shiftlab.errors import InputError
from shiftlab.runs import AuditRun


@pytest.fixture
def no_loader(monkeypatch):
    """The one loader of every model spec raises: reaching it means the check came too late."""
    import shiftlab.models.fixed_checkpoint as fixed_checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("the model loader was called before the arguments were checked")

    monkeypatch.setattr(fixed_checkpoint, "load_any_model", refuse)


def _bad_flags(tmp_path):
    weights_file = tmp_path / "r18.pth"
    weights_file.write_bytes(b"not used")
    return [
        (["--metrics", "bogus"], "--metrics"),
        (["--transform", "sequence:4", "--metrics", "consistency"], "--metrics"),
        (["--transform", "rotate:0,90", "--maps", "2"], "--maps"),
        (["--layers", "layer1;conv"], "--layers"),
        (["--output-key", " "], "--output-key"),
        (["--weights", str(tmp_path / "missing.pt")], "--weights"),
        (["--data", str(tmp_path / "no-such-folder")], "--data"),
        (["--class-map", str(tmp_path / "missing.json")], "--class-map"),
        (["--fix", "bogus"], "--fix"),
        (["--checkpoint", str(weights_file)], "--checkpoint"),
        (["--amp-dtype", "bfloat16"], "--amp-dtype"),
        (["--torchcompile", "no-such-backend"], "--torchcompile"),
        (["--model", "torchvision:resnet18", "--in-chans", "1"], "--in-chans"),
        (["--model", "pretrained:efficientnet_lite0", "--num-classes", "5"], "--num-classes"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_flag_is_refused_before_the_loader(case, tmp_path, no_loader, capsys):
    flags, flag = _bad_flags(tmp_path)[case]
    model = [] if "--model" in flags else ["--model", "timm:resnet10t"]
    rc = main(["audit", *model, *flags, "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shiftlab: error:"), err
    assert flag in lines[0]


def test_checkpoint_file_points_to_weights(tmp_path, no_loader, capsys):
    weights_file = tmp_path / "r18.pth"
    weights_file.write_bytes(b"x")
    rc = main(["audit", "--model", "timm:resnet18", "--checkpoint", str(weights_file), "--no-progress"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == (f"shiftlab: error: --checkpoint is shiftlab's resume folder; for a "
                                               f"weights file use --weights {weights_file}")


def test_good_flags_pass_the_check(tmp_path):
    """The checks refuse only what is wrong: the same flags, well formed, pass (negative control)."""
    (tmp_path / "ckpt").mkdir()
    cuda = torch.cuda.is_available()  # --amp needs one (refused before any work otherwise)
    AuditRun(model="timm:resnet10t", transform="sequence:4", metrics=("top1_change", "flip_probability"),
             layers="layer1.0,stem.conv1", output_key="0", checkpoint=str(tmp_path / "ckpt"), amp=cuda,
             amp_dtype="bfloat16" if cuda else None, torchcompile="eager", num_classes=5, in_chans=1).check()


def test_engine_and_check_share_one_metric_rule():
    """The engine refuses the same request with the same words (one rule: measure.prepare.check_metric_names)."""
    with pytest.raises(InputError) as early:
        AuditRun(model="timm:resnet10t", transform="sequence:4", metrics=("consistency",)).check()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(InputError) as late:
        shiftlab.audit(model, torch.rand(2, 3, 16, 16), transform="sequence:4", metrics=["consistency"], workers=0)
    assert str(late.value) in str(early.value)
