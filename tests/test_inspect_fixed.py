"""Issue 23, point 3: ``shiftlab inspect`` on the files ``shiftlab fix`` writes lists the converted layers with their
kinds, and an input size that is not a multiple of the total stride is warned about (terminal and JSON), naming
the nearest sizes that are, instead of stating the stride-multiple guarantee."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from shiftlab.cli import main
from shiftlab.measure.inspect import inspect
from shiftlab.measure.inspect_notes import nearest_valid_sizes

NET_PY = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
"""
#: the kinds each method's converted layers have (TIPS: a stride-1 blur, then the learned mixture)
METHOD_KINDS = {"blur": {"blur-pool"}, "aps": {"aps"}, "lps": {"aps"}, "tips": {"blur-pool", "tips"},
                "ideal": {"ideal"}}


@pytest.fixture
def net_py(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    return path


def _stride8() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular"), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="circular"),
                         nn.AdaptiveAvgPool2d(1)).eval()


@pytest.mark.parametrize("method", sorted(METHOD_KINDS))
def test_feature_inspect_lists_the_converted_layers_of_every_fix_file(tmp_path, net_py, capsys, method):
    out, doc_path = tmp_path / f"{method}.pt", tmp_path / f"{method}.json"
    assert main(["fix", "--model", f"{net_py}:make", "--method", method, "--stem", "convert", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", "--model", f"{net_py}:make", "--weights", str(out), "--input-size", "32", "32",
                 "--json", str(doc_path)]) == 0
    printed = capsys.readouterr().out
    conversion = json.loads(doc_path.read_text())["conversion"]
    assert conversion["fix"].split(":")[0].split()[0] == method and conversion["file"] == str(out)
    # the three strided layers (two convs, the max pool) are converted: as many subsampling layers of the kinds
    # the method puts in, each named on the terminal with its kind
    kinds = [layer["kind"] for layer in conversion["layers"]]
    assert set(kinds) == METHOD_KINDS[method]
    assert len(kinds) == 3 * len(METHOD_KINDS[method])
    assert f"converted layers (fix {conversion['fix']} in {out}): {len(kinds)}" in printed
    for layer in conversion["layers"]:
        assert any(line.split()[:2] == [layer["name"], layer["kind"]] for line in printed.splitlines())


def test_smoke_a_plain_model_has_no_conversion():
    result = inspect(_stride8(), (64, 64))
    assert result.conversion is None and result.to_dict()["conversion"] is None


@pytest.mark.parametrize("size,nearest", [((60, 60), [(56, 56), (64, 64)]), ((60, 64), [(56, 64), (64, 64)]),
                                          ((4, 12), [(8, 16)])])
def test_feature_nearest_valid_sizes_are_the_multiples_around_the_size(size, nearest):
    assert nearest_valid_sizes(size, (8, 8)) == nearest
    for h, w in nearest:  # negative control: each is a multiple, and none lies nearer the size
        assert h % 8 == 0 and w % 8 == 0 and abs(h - size[0]) < 8 and abs(w - size[1]) < 8
    assert nearest_valid_sizes(nearest[-1], (8, 8)) == []


def test_feature_cli_warns_at_a_size_that_is_not_a_multiple_of_the_total_stride(tmp_path, net_py, capsys):
    doc_path = tmp_path / "i.json"
    assert main(["inspect", "--model", f"{net_py}:make", "--input-size", "60", "60", "--json", str(doc_path)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(doc_path.read_text())
    assert doc["total_stride"] == [8, 8] and doc["stride_multiple"] is False
    assert doc["nearest_valid_sizes"] == [[56, 56], [64, 64]]
    assert len(doc["warnings"]) == 1 and "56x56 or 64x64" in doc["warnings"][0]
    assert f"warning: {doc['warnings'][0]}" in printed
    assert "multiples of it commute" not in printed  # the guarantee is not stated where it does not hold


def test_feature_cli_states_the_guarantee_without_warning_at_a_multiple(tmp_path, net_py, capsys):
    """The negative control of the warning: at 64x64 (a multiple of 8) the guarantee is stated, nothing warned."""
    doc_path = tmp_path / "i.json"
    assert main(["inspect", "--model", f"{net_py}:make", "--input-size", "64", "64", "--json", str(doc_path)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(doc_path.read_text())
    assert doc["stride_multiple"] is True and doc["warnings"] == [] and doc["nearest_valid_sizes"] == []
    assert "total stride 8x8: circular shifts by multiples of it commute" in printed and "warning:" not in printed


def test_feature_the_warning_says_the_truth_circular_shifts_by_the_stride_commute_only_at_a_multiple():
    """What the warning claims, measured in float64: a circular shift by the total stride (8) moves the output of
    a circular-padded stride-8 network by exactly one pixel at 64x64, and not at 60x60."""
    torch.manual_seed(0)
    net = nn.Sequential(*list(_stride8())[:3]).double()
    for side, holds in ((64, True), (60, False)):
        assert inspect(net, (side, side)).stride_multiple is holds
        x = torch.rand(1, 3, side, side, dtype=torch.float64)
        with torch.no_grad():
            y, ys = net(x), net(torch.roll(x, 8, dims=-1))
        commute = torch.allclose(torch.roll(y, 1, dims=-1), ys, atol=1e-12)
        assert commute is holds
