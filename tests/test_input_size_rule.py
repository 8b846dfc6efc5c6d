"""Issue 23, point 4: one input-size rule for a model that declares no input size, stated identically in
``audit --help`` and ``report --help`` and applied by both: on images of many sizes, 224 px rounded up to a
multiple of the model's total stride (not the size of the first file), recorded in the result's preprocessing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import shiftlab
from shiftlab._sizes import INPUT_SIZE_RULE
from shiftlab.cli import main

NET_PY = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5)).eval()
"""
#: the rule's size for a total stride of 3: 224 rounded up to a multiple of 3
RULE_SIDE = 225


@pytest.fixture
def mixed(tmp_path):
    """Images of 50 to 640 px; the one sorted first is 150 px (the size the first file used to set)."""
    root = tmp_path / "mixed"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a_first": (150, 150), "b": (50, 60), "c": (640, 480), "d": (300, 200), "e": (90, 120)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{name}.png")
    net = tmp_path / "net.py"
    net.write_text(NET_PY)
    return root, f"{net}:make"


def test_feature_audit_measures_mixed_sizes_at_224_rounded_up_to_the_total_stride(mixed):
    folder, spec = mixed
    result = shiftlab.audit(shiftlab.load_model(spec), str(folder), transform="circular:2", workers=0)
    assert result.preprocessing["model_input"] == [RULE_SIDE, RULE_SIDE]  # was [150, 150] (the first file)
    assert "default 224 rounded up to 225, a multiple of total stride 3" in result.preprocessing["input_size_rule"]


def test_feature_audit_keeps_the_images_common_size_a_multiple_of_the_stride(mixed, tmp_path):
    """The rule's other branch: images that all have one size (here 30 px, stride 3) are measured at it; 31 px is
    rounded up to 33."""
    _, spec = mixed
    for side, expected in ((30, 30), (31, 33)):
        folder = tmp_path / f"same{side}"
        folder.mkdir()
        for n in range(3):
            Image.new("RGB", (side, side), (n * 40, 80, 120)).save(folder / f"{n}.png")
        result = shiftlab.audit(shiftlab.load_model(spec), str(folder), transform="circular:2", workers=0)
        assert result.preprocessing["model_input"] == [expected, expected]
        assert "common size" in result.preprocessing["input_size_rule"]


def test_feature_report_plan_uses_the_same_rule(mixed):
    from shiftlab.runs.report_plan import QUICK_BUDGET, plan_report

    folder, spec = mixed
    setup = plan_report(spec, str(folder), QUICK_BUDGET, quick=True)
    assert tuple(setup.input_size) == (RULE_SIDE, RULE_SIDE)  # was 224 (not a multiple of the stride 3)


def _help(command: str, capsys) -> str:
    try:
        assert main([command, "--help"]) == 0
    except SystemExit as exc:  # argparse's own exit, where main does not catch it
        assert exc.code == 0
    return re.sub(r"\s+", " ", capsys.readouterr().out)


def test_feature_audit_and_report_help_state_the_same_rule(capsys):
    sentence = re.sub(r"\s+", " ", INPUT_SIZE_RULE)
    assert sentence in _help("audit", capsys) and sentence in _help("report", capsys)
