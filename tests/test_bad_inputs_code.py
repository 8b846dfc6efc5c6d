"""Issue 17, class 3 (code that runs without being asked) and, of class 10, meta-device models.

Class 3: a fixed checkpoint records the spec of the model it was made from; resolving that spec when the file is
loaded imported whatever Python file it named (relative to the current folder, absolute, or spelled like a registry
spec), from every entry point that loads a model. A checkpoint is data: only registry specs (timm:, torchvision:,
pretrained:) are resolved from it; a model built by the user's own file is loaded by naming that file,
``--model mymodel.py:make --weights fixed.pt``, and the refusal says exactly that.

Class 10 (meta device): a model whose parameters are on the meta device (shapes without values), from a factory, a
module, or weights that leave them there, ends in a one-line error, not a traceback or a silent no-op.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import shiftlab
from shiftlab.cli import main
from shiftlab.errors import InputError

# a model file that leaves a marker beside itself when it is imported: the marker proves the file ran
NET = '''
import pathlib
pathlib.Path(__file__).with_name("RAN-" + pathlib.Path(__file__).stem).write_text("imported")
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 5))
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    return net
'''

META = '''
import torch
from torch import nn

def make():
    with torch.device("meta"):
        net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(4, 5))
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    return net
'''


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5))


@pytest.fixture()
def zoo(tmp_path, monkeypatch):
    """A working folder (the current directory) with the user's own model file ``mine.py``, files that must never
    run (``evil.py``, ``models.py``, a file named ``timm:evil.py``, an absolute ``elsewhere/evil.py``), a few
    images, and ``fixed(spec)``: a fixed checkpoint made here whose recipe names ``spec``."""
    monkeypatch.chdir(tmp_path)
    for name in ("mine.py", "evil.py", "models.py", "timm:evil.py"):
        (tmp_path / name).write_text(NET)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "evil.py").write_text(NET)
    (tmp_path / "meta.py").write_text(META)
    photos = tmp_path / "imgs"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photos / f"{i}.png")

    def fixed(spec, name="fixed.pt"):
        converted, _ = shiftlab.antialias(_net(), "aps")
        return shiftlab.save_fixed(converted, tmp_path / name, spec=spec)

    return tmp_path, fixed


def _ran(root) -> list[str]:
    """The model files that were imported (their markers), other than the user's own ``mine.py``."""
    return sorted(p.name for p in root.rglob("RAN-*") if p.name != "RAN-mine")


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n"), err
    last = err.splitlines()[-1]  # (report says what it measures first)
    assert last.startswith("shiftlab: error: ") and err.count("shiftlab: error:") == 1, err
    return last


EVIL_SPECS = {
    "relative": "evil.py:make",
    "absolute": "{root}/elsewhere/evil.py:make",
    "models.py in the current folder": "models.py:make",
    "a file spelled like a registry spec": "timm:evil.py:make",
}


@pytest.mark.parametrize("form", list(EVIL_SPECS))
def test_class3_code_runs_unasked_python_load_model_never_imports_the_recorded_file(zoo, form):
    """class 3, code that runs without being asked: shiftlab.load_model("fixed.pt") (and shiftlab.load_fixed) on a
    checkpoint whose recipe names a Python file refuses, naming the explicit call, and the file never runs."""
    root, fixed = zoo
    spec = EVIL_SPECS[form].format(root=root)
    path = fixed(spec)
    for call in (lambda: shiftlab.load_model("fixed.pt"), lambda: shiftlab.load_model(path),
                 lambda: shiftlab.load_fixed(path)):
        with pytest.raises(InputError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and f"--model {spec} --weights " in message, message
    assert _ran(root) == []


def test_class3_code_runs_unasked_every_cli_entry_point_refuses_without_running_it(zoo, capsys):
    """class 3, code that runs without being asked: audit --model, audit --reference, inspect --model, fix --model,
    finetune --model (the student), finetune --teacher and report --model: none imports the file a checkpoint
    names; each says the explicit command in one line."""
    root, fixed = zoo
    fixed("evil.py:make")
    fixed(f"{root}/elsewhere/evil.py:make", name="abs.pt")
    cases = [
        ["audit", "--model", "fixed.pt", "--data", "imgs", "--no-progress"],
        ["audit", "--model", "abs.pt", "--data", "imgs", "--no-progress"],
        ["audit", "--model", "mine.py:make", "--reference", "fixed.pt", "--data", "imgs", "--no-progress"],
        ["inspect", "--model", "fixed.pt", "--input-size", "32", "32"],
        ["inspect", "--model", "abs.pt", "--input-size", "32", "32"],
        ["fix", "--model", "fixed.pt", "--method", "blur", "--out", "again.pt"],
        ["finetune", "--model", "fixed.pt", "--data", "imgs", "--steps", "1", "--out", "ft.pt", "--no-progress"],
        ["finetune", "--model", "mine.py:make", "--fix", "aps", "--teacher", "fixed.pt", "--data", "imgs",
         "--steps", "1", "--out", "ft.pt", "--no-progress"],
        ["report", "--quick", "--model", "fixed.pt", "--data", "imgs", "--out", "report"],
    ]
    for argv in cases:
        err = _one_line_error(capsys, argv)
        assert "--model evil.py:make --weights fixed.pt" in err or \
            f"--model {root}/elsewhere/evil.py:make --weights abs.pt" in err, (argv, err)
        assert _ran(root) == [], argv
    assert not (root / "again.pt").exists() and not (root / "ft.pt").exists() and not (root / "report").exists()


def test_class3_code_runs_unasked_the_explicit_file_loads_the_fixed_model(zoo, capsys):
    """class 3, code that runs without being asked: the way the refusal names works: --model mine.py:make --weights
    fixed.pt applies the recipe to the named model and loads the weights strictly (Python and inspect), and a plain
    loader's refusal names that same call rather than --model fixed.pt."""
    root, fixed = zoo
    path = fixed("mine.py:make")
    model = shiftlab.load_model("mine.py:make", weights="fixed.pt")
    assert model.shiftlab_fix["method"] == "aps"
    x = torch.rand(2, 3, 32, 32)
    expected, _ = shiftlab.antialias(_net(), "aps")
    with torch.inference_mode():
        assert torch.equal(model(x), expected.eval()(x))
    assert main(["inspect", "--model", "mine.py:make", "--weights", "fixed.pt", "--input-size", "32", "32"]) == 0
    assert "APSPool2d" in capsys.readouterr().out
    # the plain loader's refusal and --model fixed.pt name the explicit call, not the file alone
    with pytest.raises(InputError, match=r"--model mine.py:make --weights .*fixed.pt"):
        shiftlab.models.load_model("mine.py:make", weights=path)
    err = _one_line_error(capsys, ["inspect", "--model", "fixed.pt", "--input-size", "32", "32"])
    assert "--model mine.py:make --weights fixed.pt" in err
    # the command that saved it says so too
    capsys.readouterr()
    assert main(["fix", "--model", "mine.py:make", "--method", "aps", "--out", "aps.pt"]) == 0
    out = capsys.readouterr().out
    assert "--model mine.py:make --weights aps.pt" in out and "shiftlab.load_model('mine.py:make'" in out


def test_class3_code_runs_unasked_finetune_teacher_is_never_the_recorded_file(zoo, capsys):
    """class 3, code that runs without being asked: fine-tuning a fixed checkpoint further takes the original its
    recipe names as the teacher; a recorded file spec is never imported for it (the architecture named with
    --model ... --weights is), and the printed commands name the explicit model."""
    root, fixed = zoo
    fixed("evil.py:make")
    argv = ["finetune", "--model", "mine.py:make", "--weights", "fixed.pt", "--data", "imgs", "--steps", "1",
            "--batch-size", "2", "--views", "circular:2", "--threads", "1", "--out", "ft.pt", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert _ran(root) == []
    assert "--model evil.py:make --weights ft.pt" in out  # the file records its original, and says how to load it
    assert shiftlab.load_model("mine.py:make", weights="ft.pt").shiftlab_fix["method"] == "aps"


def test_class3_code_runs_unasked_registry_specs_still_load_from_the_file(tmp_path, capsys):
    """class 3, code that runs without being asked: a checkpoint made from a registry spec is still loaded alone,
    inspect included (it was refused there), and the spec test tells registry specs from files however spelled."""
    from shiftlab.models.loading import is_registry_spec

    path = tmp_path / "f.pt"
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "blur", "--out", str(path)]) == 0
    assert f"shiftlab audit --model {path} " in capsys.readouterr().out
    assert main(["inspect", "--model", str(path), "--input-size", "224", "224"]) == 0
    out = capsys.readouterr().out
    assert "BlurPool2d" in out and "total stride 32x32" in out
    assert [is_registry_spec(s) for s in ("timm:resnet18", "torchvision:resnet18", "pretrained:efficientnet_lite0",
                                          "timm:evil.py:make", "torchvision:", "evil.py:make", "/a/b.py:f",
                                          "models.py", "fixed.pt", None)] == [True] * 3 + [False] * 7


def test_class10_meta_device_models_give_one_line(zoo, capsys):
    """class 10, tracebacks (meta-device models): a factory whose model is on the meta device, a meta module, a meta
    model given real weights (a strict load into it is a no-op), and weights files holding meta tensors (plain or
    fixed) are refused in one line, in Python and from the CLI."""
    root, fixed = zoo
    with torch.device("meta"):
        meta_module = _net()
    torch.save(_net().state_dict(), root / "real.pt")
    torch.save(meta_module.state_dict(), root / "meta_weights.pt")
    doc = torch.load(fixed("mine.py:make"), weights_only=True)
    doc["state_dict"] = {k: v.to("meta") for k, v in doc["state_dict"].items()}
    torch.save(doc, root / "meta_fixed.pt")
    converted, _ = shiftlab.antialias(meta_module, "aps")
    calls = [lambda: shiftlab.save_fixed(converted, root / "m.pt"),
lambda: shiftlab.load_model("meta.py:make"),
             lambda: shiftlab.load_model(meta_module),
             lambda: shiftlab.audit(meta_module, str(root / "imgs"), image_size=32),
             lambda: shiftlab.audit(_net(), str(root / "imgs"), reference=meta_module, image_size=32),
             lambda: shiftlab.models.load_model("meta.py:make", weights="real.pt"),
             lambda: shiftlab.load_model("mine.py:make", weights="meta_weights.pt"),
             lambda: shiftlab.load_model("mine.py:make", weights="meta_fixed.pt")]
    for call in calls:
        with pytest.raises(InputError, match="meta device") as info:
            call()
        assert "\n" not in str(info.value)
    for argv in (["audit", "--model", "meta.py:make", "--data", "imgs", "--no-progress"],
                 ["inspect", "--model", "meta.py:make", "--input-size", "32", "32"],
                 ["fix", "--model", "meta.py:make", "--method", "aps", "--out", "m.pt"],
                 ["audit", "--model", "mine.py:make", "--weights", "meta_weights.pt", "--data", "imgs"]):
        assert "meta device" in _one_line_error(capsys, argv), argv
    assert not (root / "m.pt").exists()
