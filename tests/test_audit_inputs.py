"""What a new user feeds ``shiftlab audit``: folders of any image size, label spaces, the model's preprocessing,
guards against meaningless results, and the reproducibility record."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab.cli import main

TEN_CLASSES = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
'''


def _photo_like(rng, h, w):
    """An image with structure (a smooth gradient plus noise), so that predictions vary between images."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / rng.uniform(3, 9)), np.cos(yy / rng.uniform(3, 9)), np.sin((xx + yy) / 7)], -1)
    img = (base + 1) / 2 * 200 + rng.integers(0, 55, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "small"
    root.mkdir()
    for i in range(4):
        Image.fromarray(_photo_like(rng, 96, 96)).save(root / f"{i}.png")
    (root / "notes.txt").write_text("not an image, and not an unreadable image either")
    (tmp_path / "ten.py").write_text(TEN_CLASSES)
    return tmp_path


def _audit(tmp_path, *args, name="a.json"):
    out = tmp_path / name
    code = main(["audit", *args, "--json", str(out), "--no-progress", "--force"])
    return code, (json.loads(out.read_text()) if code == 0 else None)


# ------------------------------------------------------------------------------------------- sizes


def test_feature_small_images_audit_from_the_cli_upscaled_to_the_model_input(folder, capsys):
    code, doc = _audit(folder, "--model", "pretrained:efficientnet_lite0", "--data", str(folder / "small"),
                       "--transform", "crop:224:32")
    assert code == 0
    assert doc["n_images"] == 4 and doc["skipped"]["count"] == 0
    assert doc["images"]["upscaled"] == 4 and doc["images"]["ignored_files"] == 1  # notes.txt is not an image
    assert any("upscaled" in n for n in doc["notes"])
    assert doc["preprocessing"]["model_input"] == [224, 224] and doc["preprocessing"]["source"] == "timm pretrained_cfg"
    assert "upscaled" in capsys.readouterr().out


def test_feature_a_model_without_an_input_size_is_measured_at_the_images_own_size(folder):
    code, doc = _audit(folder, "--model", f"{folder / 'ten.py'}:make", "--data", str(folder / "small"))
    assert code == 0
    assert doc["preprocessing"]["model_input"] == [96, 96] and doc["images"]["upscaled"] == 0
    assert doc["protocol"]["spec"] == "circular:32"
    code, doc = _audit(folder, "--model", f"{folder / 'ten.py'}:make", "--data", str(folder / "small"),
                       "--image-size", "48")
    assert doc["preprocessing"]["model_input"] == [48, 48]


def test_feature_preprocessing_flags_are_used_and_recorded(folder):
    code, doc = _audit(folder, "--model", f"{folder / 'ten.py'}:make", "--data", str(folder / "small"),
                       "--mean", "0.5", "--std", "0.25", "0.5", "0.5", "--interpolation", "bicubic",
                       "--crop-pct", "0.5", "--image-size", "32")
    pre = doc["preprocessing"]
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.25, 0.5, 0.5] and pre["interpolation"] == "bicubic"
    assert pre["resize_size"] == 64 and pre["short_side"] == 64 and "given" in pre["source"]
    other = _audit(folder, "--model", f"{folder / 'ten.py'}:make", "--data", str(folder / "small"),
                   "--image-size", "32", name="b.json")[1]
    assert other["metrics"] != doc["metrics"] or other["preprocessing"] != pre  # the flags changed the run


# ------------------------------------------------------------------------------------------ labels


def test_feature_accuracy_is_left_out_when_labels_are_not_the_models_classes(folder, capsys):
    code, doc = _audit(folder, "--model", f"{folder / 'ten.py'}:make", "--data", "photos", "--limit", "4",
                       "--image-size", "64")
    assert code == 0
    assert "accuracy" not in doc["metrics"]
    assert "ImageNet classes" in doc["omitted"]["accuracy"] and "--class-map" in doc["omitted"]["accuracy"]
    assert doc["labels"]["used"] is False
    assert "accuracy: left out" in capsys.readouterr().out
    # with a class map the same labels are scored
    (folder / "map.json").write_text(json.dumps({"Egyptian cat": 3, "espresso": 7}))
    code, doc = _audit(folder, "--model", f"{folder / 'ten.py'}:make", "--data", "photos", "--limit", "4",
                       "--image-size", "64", "--class-map", str(folder / "map.json"))
    assert doc["metrics"]["accuracy"]["images"] == 2 and doc["labels"]["how"].startswith("mapped by the class map")


def test_feature_folder_names_matched_to_imagenet_classes(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("espresso", "n02123045"):  # a class name and a synset id (tabby)
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.fromarray(_photo_like(rng, 64, 64)).save(tmp_path / "data" / name / "x.png")
    code, doc = _audit(tmp_path, "--model", "pretrained:efficientnet_lite0", "--data", str(tmp_path / "data"),
                       "--transform", "circular:4")
    assert doc["labels"] == {"used": True, "how": "class names matched to ImageNet classes", "scored": 2}
    assert doc["metrics"]["accuracy"]["n"] == 4


def test_feature_image_list_file_with_labels(folder):
    lines = [f"small/{i}.png\t{i % 10}" for i in range(4)] + ["# a comment", "", "small/missing.png\t1"]
    (folder / "list.txt").write_text("\n".join(lines))
    code, doc = _audit(folder, "--model", f"{folder / 'ten.py'}:make", "--data", str(folder / "list.txt"))
    assert code == 0 and doc["n_images"] == 4 and doc["skipped"]["count"] == 1
    assert doc["skipped"]["files"][0]["path"].endswith("missing.png")
    assert doc["metrics"]["accuracy"]["images"] == 4  # integer labels below the class count


# ------------------------------------------------------------------------------------------ guards


def test_feature_random_weights_are_flagged_and_follow_the_seed(tmp_path, capsys):
    args = ["--model", "timm:resnet10t", "--limit", "3", "--transform", "circular:8", "--image-size", "64"]
    a = _audit(tmp_path, *args, name="a.json")[1]
    b = _audit(tmp_path, *args, name="b.json")[1]
    assert a == b  # two identical commands, identical JSON (the random initialisation is seeded)
    assert any("random" in w for w in a["warnings"]) and a["model_source"]["random_init"] is True
    assert "warning: the model's weights are random" in capsys.readouterr().out
    c = _audit(tmp_path, *args, "--seed", "1", name="c.json")[1]
    assert c["model_source"]["seed"] == 1 and c["reproducibility"]["seed"] == 1


def test_feature_a_constant_predictor_never_reads_as_a_success(folder, capsys):
    (folder / "const.py").write_text("import torch\nfrom torch import nn\n\ndef make():\n"
                                     "    return nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), "
                                     "nn.Flatten(), nn.Linear(2, 5))\n")
    import torch.nn as nn  # noqa: F401  (the factory's own imports)

    code, doc = _audit(folder, "--model", f"{folder / 'const.py'}:make", "--data", str(folder / "small"),
                       "--transform", "circular:8")
    cons = doc["metrics"]["consistency"]
    assert cons["value"] == 1.0 and cons["flag"] == "constant predictions"
    assert any("constant" in w for w in doc["warnings"])
    out = capsys.readouterr().out
    assert "1.0000 !" in out and "good by construction" in out
    # negative control: a model whose predictions vary is not flagged
    code, doc = _audit(folder, "--model", "pretrained:efficientnet_lite0", "--data", "photos", "--limit", "4",
                       "--transform", "circular:8", name="b.json")
    assert doc["warnings"] == [] and "flag" not in doc["metrics"]["consistency"]


# -------------------------------------------------------------------------------------- reproducibility


def test_feature_reproducibility_block(folder):
    torch.manual_seed(0)
    weights = folder / "w.pt"
    exec(TEN_CLASSES, namespace := {})
    torch.save(namespace["make"]().state_dict(), weights)
    code, doc = _audit(folder, "--model", f"{folder / 'ten.py'}:make", "--weights", str(weights), "--data",
                       str(folder / "small"), "--seed", "3")
    repro = doc["reproducibility"]
    assert repro["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert repro["seed"] == 3 and repro["device"].startswith("cpu") and repro["world_size"] == 1
    assert set(repro["versions"]) >= {"shiftlab", "torch", "torchvision", "timm", "python"}
    assert repro["command"].startswith("shiftlab audit --model ") and "--seed 3" in repro["command"]
    assert doc["command"] == repro["command"]
