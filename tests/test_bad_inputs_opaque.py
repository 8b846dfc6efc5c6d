"""Issue 17, class 7, models the tools cannot see into: compiled models (torch.jit.script, torch.jit.trace,
torch.export) and subsampling written as functions in a forward (F.max_pool2d, slicing ::2, a strided F.conv2d,
F.interpolate down, F.avg_pool2d). ``inspect`` lists the functional subsampling or refuses the compiled model
(never "total stride 1"); ``antialias`` refuses compiled models and names what it could not replace; ``fix``
never saves a checkpoint when nothing was replaced (exit 2, one line, no file) and warns when some subsampling
is left. Controls: a model built from nn.MaxPool2d still fixes and inspects as before, and converted networks
show no functional subsampling."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from shiftlab.cli import main
from shiftlab.errors import InputError
from shiftlab.fix.antialias import antialias, replacement_counts
from shiftlab.measure.inspect import OPAQUE_KINDS, inspect

NETS = '''
import torch
import torch.nn.functional as F
from torch import nn


class Base(nn.Module):
    """conv -> ReLU -> (subsampling of the subclass) -> global mean -> linear; 3 classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def subsample(self, x):
        return x

    def forward(self, x):
        return self.fc(self.subsample(torch.relu(self.conv(x))).mean((2, 3)))


class MaxPoolFn(Base):
    def subsample(self, x):
        return F.max_pool2d(x, 2)


class Sliced(Base):
    def subsample(self, x):
        return x[..., ::2, ::2]


class StridedConvFn(Base):
    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(4, 4, 3, 3) / 6)

    def subsample(self, x):
        return F.conv2d(x, self.kernel, stride=2, padding=1)


class InterpolateDown(Base):
    def subsample(self, x):
        return F.interpolate(x, scale_factor=0.5, mode="bilinear")


class AvgPoolFn(Base):
    def subsample(self, x):
        return F.avg_pool2d(x, 2)


class Mixed(Base):
    """One pooling as a layer (replaced) and one as a function (not)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(2)

    def subsample(self, x):
        return F.avg_pool2d(self.pool(x), 2)


class Control(Base):
    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(2)

    def subsample(self, x):
        return self.pool(x)


def maxpool_fn(): return MaxPoolFn()
def sliced(): return Sliced()
def strided_conv_fn(): return StridedConvFn()
def interpolate_down(): return InterpolateDown()
def avgpool_fn(): return AvgPoolFn()
def mixed(): return Mixed()
def control(): return Control()
def dense(): return Base()
def scripted(): return torch.jit.script(Control())
def traced(): return torch.jit.trace(Control().eval(), torch.zeros(1, 3, 16, 16))
def scripted_inside(): return nn.Sequential(torch.jit.script(Control()))
def stem_only():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))
'''

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")

FUNCTIONAL = {"maxpool_fn": "F.max_pool2d", "sliced": "slicing", "strided_conv_fn": "F.conv2d",
              "interpolate_down": "F.interpolate", "avgpool_fn": "F.avg_pool2d"}
COMPILED = {"scripted": "torch.jit.script", "traced": "torch.jit.trace", "scripted_inside": "submodule 0"}


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """The factories above as a module (for the API tests) and as a file (for ``--model FILE:factory``)."""
    import importlib.util

    path = tmp_path_factory.mktemp("opaque") / "nets.py"
    path.write_text(NETS)
    spec = importlib.util.spec_from_file_location("opaque_nets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def _make(nets, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script/trace are deprecated
        return getattr(nets[0], name)()


def _one_line_error(capsys, code) -> str:
    assert code == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if not line.startswith(("  warnings.warn", "/"))]
    assert len(err) == 1 and err[0].startswith("shiftlab: error: "), captured.err
    assert "Traceback" not in captured.err
    return err[0]


# ---- inspect ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FUNCTIONAL))
def test_class7_opaque_inspect_lists_functional_subsampling(nets, name):
    """class 7, opaque models: subsampling written as a function in forward is listed, with where it is, and counts
    in the total stride (it was invisible: total stride 1, no finding)."""
    result = inspect(_make(nets, name), (16, 16))
    found = result.of_kind("functional-subsampling")
    assert len(found) == 1, [(f.kind, f.detail) for f in result]
    f = found[0]
    assert f.name == "(model)" and f.module_type == type(_make(nets, name)).__name__
    assert f.detail.startswith(FUNCTIONAL[name]) and "nets.py:" in f.detail
    assert (f.input_hw, f.output_hw, f.stride) == ((16, 16), (8, 8), (2, 2))
    assert result.total_stride == (2, 2)


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_class7_opaque_inspect_refuses_compiled_models(nets, name):
    """class 7, opaque models: a scripted or traced model (or one holding a scripted part) is refused with one line
    saying the tool cannot see into it, instead of an empty map with total stride 1 (traced) or a RuntimeError
    (scripted)."""
    with pytest.raises(InputError, match="cannot see into") as info:
        inspect(_make(nets, name), (16, 16))
    assert COMPILED[name] in str(info.value) and "\n" not in str(info.value)


def test_class7_opaque_inspect_refuses_exported_programs(nets):
    """class 7, opaque models: a torch.export program and its graph module (aten operations, no layers)."""
    program = torch.export.export(_make(nets, "control").eval(), (torch.zeros(1, 3, 16, 16),))
    for model in (program, program.module()):
        with pytest.raises(InputError, match="cannot see into .*torch.export"):
            inspect(model, (16, 16))
        with pytest.raises(InputError, match="cannot see into .*torch.export"):
            antialias(model, "aps")


def test_class7_opaque_cli_inspect(nets, capsys):
    """class 7, opaque models: `shiftlab inspect` prints the functional subsampling and its legend, and refuses a
    traced model with exit 2 and one line."""
    path = nets[1]
    assert main(["inspect", "--model", f"{path}:maxpool_fn", "--input-size", "16", "16"]) == 0
    out = capsys.readouterr().out
    assert "functional-subsampling" in out and "F.max_pool2d" in out and "total stride 2x2" in out
    line = _one_line_error(capsys, main(["inspect", "--model", f"{path}:traced", "--input-size", "16", "16"]))
    assert "cannot see into" in line and "torch.jit.trace" in line


# ---- antialias ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(COMPILED))
@pytest.mark.parametrize("method", ["aps", "blur"])
def test_class7_opaque_antialias_refuses_compiled_models(nets, name, method):
    """class 7, opaque models: antialias saw no layer in a compiled model and returned it unchanged with an empty
    report; now it refuses, saying to pass the Python model."""
    with pytest.raises(InputError, match="cannot see into .*pass the Python nn.Module"):
        antialias(_make(nets, name), method)


@pytest.mark.parametrize("name", sorted(FUNCTIONAL))
def test_class7_opaque_antialias_names_what_it_could_not_replace(nets, name):
    """class 7, opaque models: functional subsampling is listed in the report as not replaced (was: an empty
    report, as if the model had nothing to fix)."""
    model, report = antialias(_make(nets, name), "aps")
    assert [r.unreplaced for r in report] == [True]
    assert report[0].before.startswith(FUNCTIONAL[name]) and report[0].after.startswith("not replaced")
    assert replacement_counts(report) == {"replaced": 0, "kept": 0, "not_replaced": 1}


def test_class7_opaque_antialias_mixed_model_replaces_the_layer_and_names_the_function(nets):
    """class 7, opaque models: the nn.MaxPool2d is converted, the F.avg_pool2d after it is named as not replaced."""
    model, report = antialias(_make(nets, "mixed"), "aps")
    assert [(r.name, r.unreplaced) for r in report] == [("pool", False), ("(model)", True)]
    assert report[1].before.startswith("F.avg_pool2d")
    assert replacement_counts(report) == {"replaced": 1, "kept": 0, "not_replaced": 1}
    assert inspect(model, 16).of_kind("functional-subsampling")  # still there after the conversion


def test_class7_opaque_control_layers_convert_as_before(nets):
    """class 7, control: a model built from nn.MaxPool2d converts with nothing left unreplaced, and a converted
    torchvision network (APS with shared phases, blur hooks) shows no functional subsampling of shiftlab's own."""
    import torchvision

    model, report = antialias(_make(nets, "control"), "aps", circular=True)
    assert [r.name for r in report] == ["pool", "conv"] and not any(r.unreplaced for r in report)
    assert replacement_counts(report) == {"replaced": 2, "kept": 0}
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    fixed, report = antialias(resnet, "aps", circular=True)
    assert not any(r.unreplaced for r in report)
    result = inspect(fixed, 32)
    assert not result.of_kind(*OPAQUE_KINDS) and result.total_stride == (32, 32)


# ---- shiftlab fix ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,method,expected", [
    ("maxpool_fn", "aps", "F.max_pool2d"), ("sliced", "blur", "slicing"), ("strided_conv_fn", "aps", "F.conv2d"),
    ("interpolate_down", "blur", "F.interpolate"), ("scripted", "aps", "cannot see into"),
    ("traced", "blur", "cannot see into"), ("dense", "aps", "no subsampling layer"),
    ("stem_only", "blur", "--stem convert")])
def test_class7_opaque_fix_writes_nothing_when_nothing_was_replaced(nets, tmp_path, capsys, name, method, expected):
    """class 7, opaque models: `shiftlab fix` saved an "aps"/"blur" checkpoint of an unchanged model; now exit 2,
    one line saying why, and no file."""
    out = tmp_path / "fixed.pt"
    line = _one_line_error(capsys, main(["fix", "--model", f"{nets[1]}:{name}", "--method", method,
                                         "--out", str(out)]))
    assert expected in line and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_class7_opaque_fix_warns_when_some_subsampling_is_left(nets, tmp_path, capsys):
    """class 7, opaque models: a partial fix is saved (something was fixed) with a warning naming the function it
    could not replace; the table marks it NOT replaced."""
    out = tmp_path / "fixed.pt"
    assert main(["fix", "--model", f"{nets[1]}:mixed", "--method", "aps", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert out.exists() and "1 layer(s) replaced, 0 kept, 1 NOT replaced" in captured.out
    assert "shiftlab: warning: 1 subsampling(s) could not be replaced" in captured.err
    assert "F.avg_pool2d" in captured.err


def test_class7_opaque_fix_control_model_saves_without_warning(nets, tmp_path, capsys):
    """class 7, control: the nn.MaxPool2d model fixes fine: exit 0, a file, no warning."""
    out = tmp_path / "fixed.pt"
    assert main(["fix", "--model", f"{nets[1]}:control", "--method", "aps", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert out.exists() and "warning" not in captured.err and "1 layer(s) replaced, 0 kept (aps)" in captured.out
    from shiftlab import load_model

    fixed = load_model(f"{nets[1]}:control", weights=str(out))  # a fixed model of a user's file: given explicitly
    assert fixed.shiftlab_fix["method"] == "aps" and not inspect(fixed, 16).of_kind(*OPAQUE_KINDS)


def test_class7_opaque_functional_subsampling_on_a_hidden_path_is_found(nets):
    """class 7, opaque models: found where the map size alone says nothing, in a container's forward between two
    layers (torchvision's Inception-style F.max_pool2d beside a strided conv, both 16 -> 8)."""

    class Parallel(nn.Module):
        def __init__(self):
            super().__init__()
            self.branch = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.fc = nn.Linear(7, 2)

        def forward(self, x):
            y = torch.cat([self.branch(x), torch.nn.functional.max_pool2d(x, 3, stride=2, padding=1)], 1)
            return self.fc(y.mean((2, 3)))

    result = inspect(Parallel(), 16)
    assert [f.kind for f in result if f.kind in ("strided-conv", "functional-subsampling")] == [
        "strided-conv", "functional-subsampling"]
    _, report = antialias(Parallel(), "blur")
    assert [r.unreplaced for r in report] == [False, True]


def test_class7_opaque_functions_are_read_from_the_graph_when_the_model_cannot_run(nets):
    """class 7, opaque models: a model that runs at none of the probe sizes (64, 32, 224: it needs 20x20) still has
    its functional subsampling named, read from its torch.fx graph (was: nothing said)."""

    class Fixed20(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(4 * 6 * 3, 2)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(self.pool(torch.relu(self.conv(x))), 2)
            y = x[..., ::2, ::2]
            return self.fc(torch.cat([x[..., :3, :3], y], 2).flatten(1))  # 3x3 crop beside a 3x3 map at 20 only

    assert Fixed20()(torch.zeros(1, 3, 20, 20)).shape == (1, 2)
    model, report = antialias(Fixed20(), "aps")
    assert [r.name for r in report if not r.unreplaced] == ["pool"]
    assert [r.before.split(" (graph")[0] for r in report if r.unreplaced] == ["F.max_pool2d", "slicing with a step"]
