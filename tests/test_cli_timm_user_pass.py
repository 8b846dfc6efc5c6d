"""What a timm user's first pass over the CLI found (issue 23): each refusal comes before any work, in one line
naming the flag the user typed; a conversion that cannot run is never saved."""

from __future__ import annotations

import pytest
import timm
import torch

from shiftlab.cli import main


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: the refusals below must come from the arguments alone."""
    import shiftlab.models.fixed_checkpoint as fixed
    import shiftlab.models.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(fixed, "load_any_model", refuse)
    monkeypatch.setattr(loading, "load_model", refuse)
    monkeypatch.setattr(fixed, "load_model", refuse)


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", [["inspect", "--img-size", "64"], ["fix", "--method", "aps", "--out", "x.pt"],
                                     ["report", "--quick"]])
def test_timms_checkpoint_flag_points_to_weights_on_every_command(command, tmp_path, capsys, no_loading):
    err = _refused([command[0], "--model", "timm:test_resnet", *command[1:], "--checkpoint", "r18.pth"], capsys)
    assert "--weights r18.pth" in err and "unrecognized" not in err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
@pytest.mark.parametrize("argv, words", [
    (["audit", "--amp"], "--amp"),
    (["audit", "--device", "cud"], "--device 'cud'"),
    (["audit", "--device", "cuda"], "no CUDA device"),
    (["finetune", "--fix", "aps", "--data", "photos", "--out", "o.pt", "--amp"], "--amp"),
    (["report", "--quick", "--device", "cuda:0"], "no CUDA device"),
])
def test_device_and_amp_are_checked_before_any_model_loads(argv, words, tmp_path, capsys, no_loading, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _refused([argv[0], "--model", "timm:test_resnet", *argv[1:]], capsys)
    assert words in err


def test_report_finetune_fix_typo_is_refused_without_finetune_steps(tmp_path, capsys, no_loading):
    err = _refused(["report", "--quick", "--finetune-fix", "apss", "--out", str(tmp_path / "r")], capsys)
    assert "--finetune-fix" in err and "apss" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv", [["report", "--img-size", "0"], ["inspect", "--model", "x", "--img-size", "0"]])
def test_a_zero_image_size_is_refused_as_the_flag_was_typed(argv, capsys):
    err = _refused(argv, capsys)
    assert "--img-size" in err and "(H, W)" not in err


def test_fix_never_saves_a_conversion_that_cannot_run_at_the_models_size(tmp_path, capsys):
    """timm's test_resnet (160 px) converted with ideal subsampling meets an odd map: refused with the reason, and no
    file; torchvision's resnet18 converts and runs (control)."""
    out = tmp_path / "ideal.pt"
    err = _refused(["fix", "--model", "timm:test_resnet", "--method", "ideal", "--out", str(out)], capsys)
    assert "does not run at 160x160" in err and "not a multiple of the stride" in err and not out.exists()
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "ideal", "--out", str(out)]) == 0
    assert out.exists()


def test_timms_input_size_on_a_fixed_checkpoint_follows_the_file(tmp_path, capsys):
    """--input-size C H W beside a fixed checkpoint (built as it was saved): C does not try to rebuild it."""
    import json

    weights, fixed = tmp_path / "w.pth", tmp_path / "f.pt"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=5, in_chans=1).state_dict(), weights)
    assert main(["fix", "--model", "timm:test_resnet", "--weights", str(weights), "--num-classes", "5", "--in-chans",
                 "1", "--method", "aps", "--out", str(fixed)]) == 0
    out = tmp_path / "a.json"
    assert main(["audit", "--model", str(fixed), "--input-size", "1", "64", "64", "--limit", "2", "--transform",
                 "circular:2", "--no-progress", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["preprocessing"]["model_input"] == [64, 64] and doc["classes"] == 5


@pytest.mark.parametrize("extra, size, why", [
    (["--circular"], "40", "not a multiple of the total stride"),
    ([], "64", "add --circular"),
    (["--circular"], "64", None),  # control: certified, no reason printed
])
def test_fix_certify_says_why_a_certificate_fails(extra, size, why, tmp_path, capsys):
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "aps", *extra, "--certify", size, size,
                 "--shifts", "2", "--out", str(tmp_path / "f.pt")]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("certify at")][0]
    assert ("NOT invariant" in line and why in line) if why else (" invariant" in line and ";" not in line)
