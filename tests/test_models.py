"""Loading models by name, their weights and outputs, and their preprocessing."""

import collections
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from shiftlab.errors import InputError, ShapeError
from shiftlab.models import (IMAGENET_MEAN, IMAGENET_STD, Preprocessing, SelectOutput, load_model, load_weights,
                             output_kind, prepare, preprocessing, select_output)

TINY_MODEL_FILE = """
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

def not_a_model():
    return 42

NOT_CALLABLE = 3
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(TINY_MODEL_FILE)
    return path


def _tiny_with_other_weights(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    model[1].running_mean.uniform_(-1, 1)  # buffers must travel with the weights too
    return model.eval()


class Pickled:  # an arbitrary object: weights_only loading must refuse it
    pass


# ------------------------------------------------------------------------------------------ smoke
def test_smoke_timm_and_torchvision_by_name():
    for spec in ("timm:resnet18", "torchvision:resnet18"):
        model = load_model(spec)
        assert isinstance(model, nn.Module) and not model.training
        with torch.no_grad():
            assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_smoke_module_is_returned_as_is_in_eval_mode():
    module = nn.Conv2d(3, 3, 3).train()
    assert load_model(module, device="cpu") is module and not module.training


def test_smoke_file_factory(model_file):
    model = load_model(f"{model_file}:tiny")
    assert isinstance(model, nn.Sequential) and not model.training


# ------------------------------------------------------------------------------------------ feature
@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_feature_weights_round_trip(tmp_path, model_file, wrap):
    source = _tiny_with_other_weights(seed=7)
    state = source.state_dict()
    obj = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state},
           "module_prefix": {f"module.{k}": v for k, v in state.items()}}[wrap]
    path = tmp_path / "weights.pt"
    torch.save(obj, path)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    fresh = load_model(f"{model_file}:tiny")
    loaded = load_model(f"{model_file}:tiny", weights=path)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
        assert not torch.allclose(fresh(x), source(x))  # the factory alone does not give these outputs


def test_feature_torchvision_segmentation_builds_offline_and_is_dense(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = load_model("torchvision:lraspp_mobilenet_v3_large")
    with torch.no_grad():
        output = model(torch.rand(1, 3, 64, 64))
    assert isinstance(output, dict)
    dense = select_output(output)
    assert dense.shape == (1, 21, 64, 64) and output_kind(dense) == "dense"
    wrapped = load_model(model, output_key="out")
    assert isinstance(wrapped, SelectOutput)


def test_feature_select_output_defaults_and_keys():
    a, b = torch.zeros(1, 3), torch.ones(1, 3)
    assert select_output(a) is a
    assert select_output((a, b), 0) is a and select_output([a, b], 1) is b and select_output((a, b), -1) is b
    assert select_output({"aux": b, "logits": a}) is a
    assert select_output({"aux": b, "out": a}) is a
    assert select_output({"only": b}) is b
    assert select_output({"aux": b, "logits": a}, "aux") is b
    Pair = collections.namedtuple("Pair", ["logits", "aux_logits"])
    assert select_output(Pair(a, b), "aux_logits") is b
    assert output_kind(a) == "logits"


def test_feature_select_output_wrapper_in_a_model():
    class TwoHeads(nn.Module):
        def forward(self, x):
            return {"main": x.mean((2, 3)), "aux": x.amax((2, 3))}

    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(load_model(TwoHeads(), output_key="aux")(x), x.amax((2, 3)))
    with pytest.raises(InputError, match="output_key"):  # two outputs, neither "logits" nor "out"
        select_output(load_model(TwoHeads())(x))


def test_feature_preprocessing_defaults_and_timm_cfg():
    default = preprocessing(nn.Identity())
    assert default.mean == IMAGENET_MEAN and default.resize_size == 256 and default.input_size == (224, 224)
    assert not default.fixed_size  # defaults: the model declares no input size
    model = load_model("timm:resnet18")
    assert preprocessing(model).fixed_size and preprocessing(model).source == "timm pretrained_cfg"
    cfg = model.pretrained_cfg
    prep = preprocessing(model)
    assert prep.input_size == tuple(cfg["input_size"][-2:])
    assert prep.resize_size == int(np.floor(cfg["input_size"][-1] / cfg["crop_pct"]))
    assert preprocessing(SelectOutput(model, 0)) == prep  # seen through the wrapper


def test_feature_normalize_matches_formula_float64():
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    out = Preprocessing().normalize(x)
    expected = (x - torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(
        IMAGENET_STD, dtype=torch.float64)[:, None, None]
    assert out.dtype == torch.float64
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_feature_prepare_keeps_a_centred_square_centred():
    image = np.zeros((512, 768, 3), dtype=np.uint8)
    image[128:384, 256:512] = 255  # a centred 256 square
    out = prepare(image, 224, resize_size=256)  # scale 1/2: a 128 square centred in the 224 crop
    assert out.shape == (1, 3, 224, 224) and 0 <= out.min() and out.max() <= 1
    profile = out[0, 0, 112]
    assert profile[50:174].min() > 0.99 and profile[:44].max() < 0.01 and profile[180:].max() < 0.01
    assert torch.allclose(out, out.flip(-1), atol=1e-5) and torch.allclose(out, out.flip(-2), atol=1e-5)


def test_feature_prepare_grey_and_batch_inputs():
    grey = np.random.default_rng(0).random((300, 400))
    out = prepare(grey, 224)
    assert out.shape == (1, 3, 224, 224)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    batch = torch.rand(4, 3, 256, 256)
    assert torch.equal(prepare(batch, 224, resize_size=256), batch[..., 16:240, 16:240])


@settings(max_examples=25, deadline=None)
@given(h=st.integers(8, 60), w=st.integers(8, 60), size=st.integers(4, 40),
       mode=st.sampled_from(["bilinear", "bicubic", "nearest", "area"]))
def test_feature_prepare_output_size_and_range(h, w, size, mode):
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * 100 + w))
    out = prepare(x, size, resize_size=size, interpolation=mode)
    assert out.shape == (2, 3, size, size)
    assert float(out.min()) >= float(x.min()) and float(out.max()) <= float(x.max())


# ------------------------------------------------------------------------------------------ exception
def test_exception_unknown_names():
    with pytest.raises(InputError, match="did you mean resnet18"):
        load_model("timm:resnet181")
    with pytest.raises(InputError, match="list_models"):
        load_model("torchvision:not_a_net")
    with pytest.raises(InputError, match="timm:resnet18"):
        load_model("resnet18")
    with pytest.raises(InputError, match="timm:NAME"):
        load_model("keras:resnet")
    with pytest.raises(InputError, match="nn.Module"):
        load_model(3)


def test_exception_file_factory_problems(tmp_path, model_file):
    with pytest.raises(InputError, match="not found"):
        load_model(f"{tmp_path / 'absent.py'}:tiny")
    with pytest.raises(InputError, match="did you mean tiny"):
        load_model(f"{model_file}:tinny")
    with pytest.raises(InputError, match="not callable"):
        load_model(f"{model_file}:NOT_CALLABLE")
    with pytest.raises(InputError, match="not a torch.nn.Module"):
        load_model(f"{model_file}:not_a_model")
    with pytest.raises(InputError, match="factory"):
        load_model(str(model_file))


def test_exception_weights_that_do_not_fit(tmp_path, model_file):
    model = load_model(f"{model_file}:tiny")
    state = model.state_dict()
    path = tmp_path / "w.pt"
    bad = dict(state)
    del bad["5.bias"]
    bad["extra.weight"] = torch.zeros(1)
    bad["0.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(bad, path)
    with pytest.raises(InputError, match=r"1 missing \(5.bias\); 1 unexpected \(extra.weight\); 1 of other shape"):
        load_weights(model, path)
    with pytest.raises(InputError, match="not found"):
        load_model(model, weights=tmp_path / "absent.pt")
    torch.save({"state_dict": state, "extra": Pickled()}, path)
    with pytest.raises(InputError, match="weights_only"):
        load_weights(model, path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_weights(model, path)
    torch.save({"epoch": 3}, path)
    with pytest.raises(InputError, match="no state_dict"):
        load_weights(model, path)


def test_exception_select_output_ambiguous_or_wrong_key():
    a = torch.zeros(1, 3)
    with pytest.raises(InputError, match="choose one with output_key"):
        select_output({"x": a, "y": a})
    with pytest.raises(InputError, match="not in the model's output keys"):
        select_output({"logits": a}, "aux")
    with pytest.raises(InputError, match="single tensor"):
        select_output(a, 0)
    with pytest.raises(InputError, match="out of range"):
        select_output((a, a), 2)
    with pytest.raises(InputError, match="not a tensor"):
        select_output(("text", a))
    with pytest.raises(ShapeError, match="B, K"):
        output_kind(torch.zeros(2, 3, 4))


def test_exception_devices():
    with pytest.raises(InputError, match="device"):
        load_model(nn.Identity(), device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            load_model(nn.Identity(), device="cuda")


def test_exception_preprocessing_bad_input():
    prep = Preprocessing()
    with pytest.raises(ShapeError, match="3 channels"):
        prep.normalize(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ShapeError, match="NaN"):
        prep.normalize(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ShapeError, match=r"\(B, C, H, W\)"):
        prep.normalize(torch.zeros(3, 8, 8))
    with pytest.raises(ShapeError, match="rank|shape"):
        prepare(torch.zeros(1, 1, 3, 8, 8))
    with pytest.raises(ShapeError, match="channels"):
        prepare(np.zeros((300, 300, 2)))
    with pytest.raises(ShapeError, match="NaN"):
        prepare(np.full((300, 300, 3), np.nan))
    with pytest.raises(ShapeError, match="NaN or Inf"):
        prepare(torch.full((1, 3, 30, 30), float("inf")))
    with pytest.raises(ShapeError, match=r"\[0, 1\]"):
        prepare(np.full((300, 300, 3), 255.0))
    with pytest.raises(InputError, match="resize_size"):
        Preprocessing(input_size=(224, 224), resize_size=200)
    with pytest.raises(InputError, match="interpolation"):
        Preprocessing(interpolation="lanczos")


def test_exception_file_model_source_is_user_code(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(textwrap.dedent("""
        def factory():
            raise RuntimeError("user bug")
    """))
    with pytest.raises(InputError, match="factory.. raised RuntimeError: user bug"):  # named, one line
        load_model(f"{path}:factory")
