"""What a fix is (shiftlab.fix.recipe) and model loading in one layer (shiftlab.models.fixed_checkpoint): a model
knows whether it is converted, antialias and the checkpoint writer do not import each other, and the models layer
loads saved fixed checkpoints itself, through the rebuilder the fix layer registers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import shiftlab
from shiftlab.errors import InputError
from shiftlab.fix import antialias as antialias_module
from shiftlab.fix import checkpoint as checkpoint_module
from shiftlab.fix import recipe as R
from shiftlab.fix.antialias import antialias
from shiftlab.models import fixed_checkpoint as F

PKG = Path(shiftlab.__file__).resolve().parent


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_feature_is_converted_on_plain_converted_and_loaded_models(tmp_path):
    plain = _net()
    assert not R.is_converted(plain) and R.conversion_of(plain) is None
    assert not R.is_converted("torchvision:resnet18") and not R.is_converted(None)
    fixed, _ = antialias(plain, "aps", circular=True)
    assert R.is_converted(fixed) and not R.is_converted(plain)  # a copy is converted, the original is not
    assert R.conversion_of(fixed)["method"] == "aps" and R.recipe_spec(R.conversion_of(fixed)) == "aps:circular"
    path = shiftlab.save_fixed(fixed, tmp_path / "f.pt")
    loaded = F.load_any_model(_net(), weights=path)
    assert R.is_converted(loaded) and R.conversion_of(loaded) == R.conversion_of(fixed)
    wrapped = F.load_any_model(_net(), weights=path, output_key=0)  # a wrapper keeps the conversion
    assert R.is_converted(wrapped)


def test_feature_antialias_and_checkpoint_do_not_import_each_other():
    fix = PKG / "fix"
    assert not {m for m in _imported_modules(fix / "antialias.py") if m.startswith("shiftlab.fix.checkpoint")}
    assert not {m for m in _imported_modules(fix / "checkpoint.py") if m.startswith("shiftlab.fix.antialias")}
    assert not {m for m in _imported_modules(fix / "recipe.py")
                if m.startswith(("shiftlab.fix.antialias", "shiftlab.fix.checkpoint"))}
    # the models layer imports nothing of fix (it reaches the rebuilder only through its entry point's name)
    assert not {m for m in _imported_modules(PKG / "models" / "fixed_checkpoint.py") if m.startswith("shiftlab.fix")}


def test_feature_moved_names_stay_importable_from_their_old_modules():
    for name in ("METHODS", "PLACEMENTS", "POLYPHASE_METHODS"):
        assert getattr(antialias_module, name) is getattr(R, name)
    for name in ("FIX_METHODS", "FIX_OPTIONS", "parse_fix", "recipe_spec", "conversion_kwargs"):
        assert getattr(checkpoint_module, name) is getattr(R, name)
    for name in ("FORMAT", "VERSION", "read_fixed", "load_fixed", "is_fixed", "load_arguments"):
        assert getattr(checkpoint_module, name) is getattr(F, name)
    assert checkpoint_module.load_model is F.load_any_model is shiftlab.load_model
    assert shiftlab.load_fixed is F.load_fixed


@pytest.mark.parametrize("method", ["blur", "aps"])
def test_feature_the_models_layer_loads_a_fixed_checkpoint(tmp_path, method):
    with torch.no_grad():  # weights that differ from a fresh _net()
        trained = _net()
        for p in trained.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fixed, _ = antialias(trained, method)
    path = shiftlab.save_fixed(fixed, tmp_path / f"{method}.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        expected = fixed.eval()(x)
        assert torch.equal(F.load_any_model(_net(), weights=path)(x), expected)
        assert torch.equal(checkpoint_module.load_model(_net(), weights=path)(x), expected)
        assert torch.equal(F.load_fixed(path, _net())(x), expected)
    # the plain loader still refuses the file, naming the loader that rebuilds it
    with pytest.raises(InputError, match="lose the conversion"):
        shiftlab.models.load_model(_net(), weights=path)


def test_feature_models_alone_load_a_fixed_checkpoint_through_the_entry_point(tmp_path):
    """A fresh interpreter that imports only the models layer loads a fixed checkpoint: the fix layer's rebuilder
    is imported by name the first time such a file is read."""
    fixed, _ = antialias(shiftlab.load_model("torchvision:resnet18"), "aps", circular=True)
    path = shiftlab.save_fixed(fixed, tmp_path / "r18.pt")
    x = torch.rand(1, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    with torch.inference_mode():
        torch.save(fixed.eval()(x), tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "from shiftlab.models.fixed_checkpoint import load_any_model\n"
        "assert 'shiftlab.fix.antialias' not in sys.modules\n"
        f"model = load_any_model({str(path)!r})\n"
        f"x, expected = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "with torch.inference_mode():\n"
        "    assert torch.equal(model(x), expected)\n"
        "print(model.shiftlab_source['fix'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "aps:circular"


def test_exception_a_format_without_rebuilder_is_refused_in_one_line():
    with pytest.raises(InputError, match="no rebuilder") as info:
        F.rebuilder_for("someone-else.checkpoint")
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="Rebuilder"):
        F.register_rebuilder("someone-else.checkpoint", lambda model, recipe: model)
    assert F.rebuilder_for(F.FORMAT).rebuild.__module__ == "shiftlab.fix.rebuild"


def test_exception_a_converted_architecture_is_refused(tmp_path):
    fixed, _ = antialias(_net(), "blur")
    path = shiftlab.save_fixed(fixed, tmp_path / "f.pt")
    with pytest.raises(InputError, match="already converted; pass the original"):
        F.load_any_model(fixed, weights=path)
