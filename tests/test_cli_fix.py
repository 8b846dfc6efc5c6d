"""``shiftlab fix``: converts, saves a fixed checkpoint (weights and recipe, weights_only-loadable) atomically, prints
the replacements and how to use the file."""

import pytest
import torch

from shiftlab.cli import main

antialias_module = pytest.importorskip("shiftlab.fix.antialias")
antialias = antialias_module.antialias


def _fresh(method, circular=False):
    from shiftlab.models import load_model

    return antialias(load_model("torchvision:resnet18"), method=method, circular=circular)


def _state(path):
    doc = torch.load(path, weights_only=True)
    assert doc["format"] == "shiftlab.fixed-checkpoint"
    return doc["state_dict"]


@pytest.mark.parametrize("method,circular", [("aps", True), ("blur", False)])
def test_feature_saved_weights_load_strictly_into_a_fresh_conversion(tmp_path, capsys, method, circular):
    out = tmp_path / "fixed.pt"
    argv = ["fix", "--model", "torchvision:resnet18", "--method", method, "--out", str(out)]
    assert main(argv + (["--circular"] if circular else [])) == 0
    text = capsys.readouterr().out
    state = _state(out)
    model, report = _fresh(method, circular)
    model.load_state_dict(state, strict=True)
    # the table names every replaced layer, and says how to use the file
    assert report and all(r.name in text for r in report)
    kept = sum(r.after.startswith("kept") for r in report)
    replaced = antialias_module.replacement_counts(report)["replaced"]  # distinct layers (tests/test_cli_names.py)
    assert f"{replaced} layer(s) replaced" in text and f", {kept} kept" in text
    assert (kept == 1) == (method == "blur")  # blur keeps the stem strided by default; aps converts it
    assert f"--model {out}" in text and f"shiftlab.load_model({str(out)!r})" in text
    # the saved weights are the converted model's: same keys, and the file records the conversion
    assert set(state) == set(model.state_dict())
    recipe = torch.load(out, weights_only=True)["recipe"]
    assert recipe["method"] == method and recipe["circular"] is circular
    assert recipe["model"]["spec"] == "torchvision:resnet18"


def test_feature_converted_weights_reproduce_the_converted_model(tmp_path, capsys):
    # with --weights, the saved file carries those weights into the converted model
    from shiftlab.models import load_model

    torch.manual_seed(3)
    source = load_model("torchvision:resnet18")
    weights = tmp_path / "source.pt"
    torch.save(source.state_dict(), weights)
    out = tmp_path / "fixed.pt"
    assert main(["fix", "--model", "torchvision:resnet18", "--weights", str(weights), "--method", "blur",
                 "--out", str(out)]) == 0
    reference, _ = antialias(source, method="blur")
    loaded, _ = _fresh("blur")
    loaded.load_state_dict(_state(out), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), reference.eval()(x))


def test_feature_certify_option_reports_exact_invariance(tmp_path, capsys):
    out = tmp_path / "fixed.pt"
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "aps", "--circular", "--out", str(out),
                 "--certify", "64", "64", "--shifts", "2"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("certify")][0]
    assert ": invariant" in line and "2 shifts" in line


def test_exception_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "fixed.pt"
    out.write_bytes(b"precious")
    argv = ["fix", "--model", "torchvision:resnet18", "--method", "blur", "--out", str(out)]
    assert main(argv) == 2
    assert out.read_bytes() == b"precious" and "exists" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    assert set(_state(out)) == set(_fresh("blur")[0].state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["fixed.pt"]  # no temporary file left behind


@pytest.mark.parametrize("argv,message", [
    (["--model", "torchvision:no_such_net", "--method", "aps"], "no_such_net"),
    (["--model", "torchvision:resnet18", "--method", "aps", "--filter-size", "0"], "filter-size"),
    (["--model", "torchvision:resnet18", "--method", "aps", "--out", "/proc/version/x.pt"], "--out"),
])
def test_exception_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "fixed.pt"
    assert main(["fix", "--out", str(out), *argv]) == 2  # a later --out in argv wins
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
