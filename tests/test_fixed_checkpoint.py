"""Fixed checkpoints: ``shiftlab fix --out FILE`` saves the recipe with the weights, ``--model FILE`` (and the
architecture with ``--weights FILE``) gives back the converted model everywhere, the plain architecture refuses
the file, and a damaged recipe is refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import shiftlab
from shiftlab.cli import main
from shiftlab.data.sources import open_images
from shiftlab.errors import InputError
from shiftlab.fix import checkpoint as C
from shiftlab.fix.antialias import antialias


def _numbers(path) -> dict:
    doc = json.loads(path.read_text())
    return doc["metrics"]


@pytest.mark.slow
def test_feature_fix_then_audit_model_file_gives_the_converted_models_figures(tmp_path, capsys):
    """The issue's round trip, on the pretrained network and real photos: the saved model measures as the Python
    conversion does, and not as the unconverted network."""
    out = tmp_path / "eff_blur.pt"
    assert main(["fix", "--model", "pretrained:efficientnet_lite0", "--method", "blur", "--out", str(out)]) == 0
    common = ["--data", "photos", "--limit", "3", "--transform", "diagonal:4", "--no-progress", "--force"]
    runs = {
        "file": ["--model", str(out)],
        "weights": ["--model", "pretrained:efficientnet_lite0", "--weights", str(out)],
        "fix": ["--model", "pretrained:efficientnet_lite0", "--fix", "blur", "--metrics",
                "top1_change,mean_abs_change,accuracy"],
        "original": ["--model", "pretrained:efficientnet_lite0"],
    }
    numbers = {}
    for name, args in runs.items():
        assert main(["audit", *args, *common, "--json", str(tmp_path / f"{name}.json")]) == 0
        numbers[name] = _numbers(tmp_path / f"{name}.json")
    python = shiftlab.audit(antialias(shiftlab.load_model("pretrained:efficientnet_lite0"), "blur")[0],
                            open_images("photos", limit=3), transform="diagonal:4")
    expected = {k: v.to_dict() for k, v in python.metrics.items()}
    assert numbers["file"] == numbers["weights"] == expected
    assert {k: numbers["fix"][k] for k in expected} == expected  # the same as converting on the fly
    assert numbers["original"] != expected
    assert numbers["original"]["mean_abs_change"]["value"] != expected["mean_abs_change"]["value"]
    doc = json.loads((tmp_path / "file.json").read_text())
    assert doc["model"] == "pretrained:efficientnet_lite0 (fix blur)" and doc["model_source"]["fix"] == "blur"
    assert doc["warnings"] == []


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


NET_FILE = """
import torch
from torch import nn


def make():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))
"""

RECIPES = [dict(method="blur"), dict(method="blur", placement="before", filter_size=5),
           dict(method="aps"), dict(method="aps", circular=True, filter_size=1),
           dict(method="blur", keep_stem=False, exclude=("4",), circular=True)]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: "-".join(f"{k}={v}" for k, v in r.items()))
def test_feature_every_recipe_round_trips_exactly(tmp_path, recipe):
    spec = tmp_path / "net.py"
    spec.write_text(NET_FILE)
    model = shiftlab.load_model(f"{spec}:make")
    with torch.no_grad():  # weights that differ from a fresh factory() call
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fixed, _ = antialias(model, **recipe)
    path = shiftlab.save_fixed(fixed, tmp_path / "fixed.pt")
    with pytest.raises(InputError, match="never runs code"):  # the file alone does not import net.py (issue 17)
        shiftlab.load_model(path)
    again = shiftlab.load_model(f"{spec}:make", weights=path)
    x = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(again(x), fixed.eval()(x))
    assert again.shiftlab_fix == fixed.shiftlab_fix
    assert type(again[3]).__name__ == type(fixed[3]).__name__
    # through the architecture too
    via_weights = shiftlab.load_model(f"{spec}:make", weights=path)
    with torch.inference_mode():
        assert torch.equal(via_weights(x), again(x))
    # negative control: the plain state_dict in the plain architecture computes something else
    plain = shiftlab.models.load_model(f"{spec}:make")
    plain.load_state_dict(C.read_fixed(path)["state_dict"])
    with torch.inference_mode():
        assert not torch.allclose(plain(x), again(x))


def test_exception_the_plain_architecture_refuses_a_fixed_checkpoint(tmp_path, capsys):
    fixed, _ = antialias(shiftlab.load_model("torchvision:resnet18"), "aps", circular=True)
    path = shiftlab.save_fixed(fixed, tmp_path / "r18.pt")
    for call in (lambda: shiftlab.models.load_model("torchvision:resnet18", weights=path),
                 lambda: shiftlab.models.load_weights(shiftlab.models.load_model("torchvision:resnet18"), path),
                 lambda: shiftlab.models.load_model(str(path))):
        with pytest.raises(InputError) as info:
            call()
        message = str(info.value)
        assert "fixed" in message and "shiftlab.load_model" in message and f"--model {path}" in message
        assert "\n" not in message
    # the fix-aware loader is the public one, and it rebuilds the converted network
    assert shiftlab.load_model is C.load_model
    assert shiftlab.load_model(path).shiftlab_fix["method"] == "aps"
    # the random weights of the original are still flagged as random
    assert shiftlab.load_model(path).shiftlab_source["random_init"] is True


def test_exception_cli_refuses_double_conversion_and_names_the_way(tmp_path, capsys):
    path = tmp_path / "r18.pt"
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "blur", "--out", str(path)]) == 0
    capsys.readouterr()
    for argv, needle in ((["audit", "--model", str(path), "--fix", "aps", "--limit", "1"], "drop --fix"),
                         (["fix", "--model", str(path), "--method", "aps", "--out", str(tmp_path / "x.pt")],
                          "fixed checkpoint already")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    # a plain weights file named as a model says what to do
    torch.save(shiftlab.models.load_model("torchvision:resnet18").state_dict(), tmp_path / "plain.pt")
    assert main(["audit", "--model", str(tmp_path / "plain.pt"), "--limit", "1"]) == 2
    assert "--weights" in capsys.readouterr().err


def _damaged(tmp_path, change):
    fixed, _ = antialias(_net(), "blur")
    good = tmp_path / "good.pt"
    shiftlab.save_fixed(fixed, good, spec="unused.py:make")
    doc = torch.load(good, weights_only=True)
    change(doc)
    bad = tmp_path / "bad.pt"
    torch.save(doc, bad)
    return bad


@pytest.mark.parametrize("change,needle", [
    (lambda d: d["recipe"].update(method="lowpass"), "method"),
    (lambda d: d["recipe"].update(filter_size=99), "filter_size"),
    (lambda d: d["recipe"].update(circular="yes"), "circular"),
    (lambda d: d["recipe"].pop("placement"), "placement"),
    (lambda d: d["recipe"].update(placement="before", method="aps"), "placement"),
    (lambda d: d.update(recipe="blur"), "not a dict"),
    (lambda d: d.update(version=7), "version 7"),
    (lambda d: d["state_dict"].update(extra=[1, 2]), "state_dict"),
])
def test_exception_a_damaged_recipe_is_refused(tmp_path, change, needle):
    bad = _damaged(tmp_path, change)
    with pytest.raises(InputError, match=needle):
        shiftlab.load_model(_net(), weights=bad)


def test_feature_a_python_module_needs_its_architecture(tmp_path):
    fixed, _ = antialias(_net(), "aps")
    path = shiftlab.save_fixed(fixed, tmp_path / "m.pt")
    with pytest.raises(InputError, match="records no model spec"):
        shiftlab.load_model(path)
    again = shiftlab.load_model(_net(), weights=path)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(again(x), fixed.eval()(x))
    # another architecture does not fit, and the message says what the file was made with
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(InputError, match="converted with aps"):
        shiftlab.load_model(other, weights=path)
    # an unconverted model has no recipe to save
    with pytest.raises(InputError, match="not converted"):
        shiftlab.save_fixed(_net(), tmp_path / "plain.pt")
    # nor is a converted model converted again
    with pytest.raises(InputError, match="already converted"):
        antialias(fixed, "blur")


def test_feature_parse_fix_specs():
    assert C.parse_fix("aps:circular") == {"method": "aps", "circular": True}
    assert C.parse_fix("blur:before") == {"method": "blur", "circular": False, "placement": "before"}
    for bad in ("lowpass", "aps:before", "blur:circular:circular", "blur:fast"):
        with pytest.raises(InputError):
            C.parse_fix(bad)
