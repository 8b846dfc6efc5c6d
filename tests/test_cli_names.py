"""Counts and names on the command line (issue 23, point 5): ``fix`` counts distinct layers, ``finetune`` counts
only readable images and names the others, CLI messages name flags (not only Python arguments), and a bare
``shiftlab`` is a usage error."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from torch import nn

from shiftlab.cli import main
from test_unet_fix import NoEncoder  # an upsampling with no encoder stage to pair it with

# a Python argument named in a message (keep_stem=False, method='aps', force=True), not introduced by "Python"
PYTHON_ONLY = re.compile(r"(?<!Python )(?<!Python: )(?<!pass )\b[a-z_]+=(True|False|'[a-z]+')")
CHANGED = re.compile(r"\b(keep_stem|keep_unpaired|force|circular|method|placement)=")


def _bare_python_arguments(text: str) -> list[str]:
    """Python arguments in ``text`` that no CLI flag stands beside (a message phrased for both names ``--flag``)."""
    return [line for line in text.splitlines() if PYTHON_ONLY.search(line) and " --" not in line]


def test_exception_bare_shiftlab_is_a_usage_error_with_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "shiftlab"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout[-500:]
    assert proc.stderr.startswith("usage: shiftlab") and "shiftlab: error: name a command" in proc.stderr
    assert proc.stdout == ""  # the usage is on stderr, as argparse's own usage errors


def _changed_layers(before: nn.Module, after: nn.Module) -> set[str]:
    """Names of the original leaf modules whose type or settings (stride, kernel, ...) the conversion changed."""
    changed = set()
    for name, module in before.named_modules():
        if not name or next(module.children(), None) is not None:
            continue
        new = after.get_submodule(name)
        if type(new) is not type(module) or new.extra_repr() != module.extra_repr():
            changed.add(name)
    return changed


def test_cardinality_fix_counts_distinct_layers_changed(tmp_path, capsys, monkeypatch):
    import copy

    from shiftlab.fix import antialias as antialias_module

    seen = {}
    convert = antialias_module.antialias

    def recording(model, *args, **kwargs):  # the model the CLI converts, as it was and as it became
        seen["before"] = copy.deepcopy(model)
        seen["after"], seen["report"] = convert(model, *args, **kwargs)
        return seen["after"], seen["report"]

    monkeypatch.setattr(antialias_module, "antialias", recording)
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "aps", "--out", str(tmp_path / "f.pt")]) == 0
    out = capsys.readouterr().out
    printed = int(re.search(r"^(\d+) layer\(s\) replaced", out, re.M).group(1))
    changed = _changed_layers(seen["before"], seen["after"])
    assert printed == len(changed) == 8 and changed <= {r.name for r in seen["report"]}
    # the three residual blocks share one phase between their branches: listed and named, not counted as layers
    assert len(seen["report"]) == 11 and "(11 changes: also the block(s) layer2.0, layer3.0, layer4.0" in out


STRIDED = '''
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1))
'''


def test_feature_fix_kept_stem_names_the_flag(tmp_path, capsys):
    (tmp_path / "net.py").write_text(STRIDED)
    assert main(["fix", "--model", f"{tmp_path / 'net.py'}:make", "--method", "blur", "--out",
                 str(tmp_path / "f.pt")]) == 0
    out = capsys.readouterr().out
    assert "1 layer(s) replaced, 1 kept" in out and "--stem convert, Python keep_stem=False" in out
    assert not CHANGED.search(out.replace("Python keep_stem=", ""))  # (the table's module reprs name theirs)


def _images(folder, n=5):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"a{i}.png")
    (folder / "x.png").write_bytes(rng.integers(0, 255, 300, dtype=np.uint8).tobytes())  # not an image


NET = '''
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4))
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    return net
'''


@pytest.mark.parametrize("steps", [3, 1])
def test_feature_finetune_counts_readable_images_and_names_the_unreadable(tmp_path, capsys, steps):
    _images(tmp_path / "imgs")
    (tmp_path / "net.py").write_text(NET)
    out = tmp_path / "ft.pt"
    assert main(["finetune", "--model", f"{tmp_path / 'net.py'}:make", "--fix", "aps", "--data", str(tmp_path / "imgs"),
                 "--steps", str(steps), "--batch-size", "2", "--threads", "1", "--workers", "0", "--out", str(out),
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["files"] == 6 and log["skipped"]["read"] == min(6, 2 * steps) and "unreadable" not in log
    if steps == 3:  # 6 images read: the corrupt one named in the log and on stderr, and not counted
        assert log["images"] == 5 and log["skipped"]["count"] == 1
        assert log["skipped"]["files"][0]["path"].endswith("x.png") and log["skipped"]["files"][0]["reason"]
        assert "on 5 images (1 unreadable files skipped)" in captured.out
        assert re.search(r"^skipped \S*x\.png: ", captured.err, re.M)
    else:  # 2 of the 6 read: said so, never counted as checked
        assert "its steps reached 2 of the 6 files" in captured.out
        assert log["images"] == 6 - log["skipped"]["count"]


def test_exception_fix_messages_name_the_flags(tmp_path, capsys):
    # --placement before with aps: the library's refusal names the flags too
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "aps", "--placement", "before",
                 "--out", str(tmp_path / "a.pt")]) == 2
    err = capsys.readouterr().err
    assert "--placement before with --method blur" in err and not _bare_python_arguments(err)
    # a vision transformer with --method blur: pointed to --method aps
    assert main(["fix", "--model", "timm:vit_tiny_patch16_224", "--method", "blur",
                 "--out", str(tmp_path / "v.pt")]) == 2
    err = capsys.readouterr().err
    assert "--method aps" in err and not _bare_python_arguments(err)


def test_exception_library_messages_reachable_from_the_cli_say_which_name_is_python():
    from shiftlab.errors import InputError
    from shiftlab.fix.antialias import antialias

    with pytest.raises(InputError) as decoder:  # shiftlab fix on such a model: the way out is Python only
        antialias(NoEncoder(), "aps", circular=True)
    assert "keep_unpaired=True (Python only" in str(decoder.value)


def test_exception_existing_output_names_the_flag_and_the_python_argument(tmp_path):
    from shiftlab._io import atomic_write_bytes
    from shiftlab.errors import InputError

    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(InputError, match=r"pass --force \(Python: force=True\) to overwrite"):
        atomic_write_bytes(path, b"{}")
    assert path.read_text() == "{}"  # left as it was
