"""shiftlab.inspect: the aliasing map, in data-flow order, with cumulative strides."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.errors import InputError, ShapeError
from shiftlab.measure.inspect import KINDS, SUBSAMPLING_KINDS, Finding, inspect


class EveryOtherPixel(nn.Module):
    """A leaf that subsamples with slicing, which no type check can recognise."""

    def forward(self, x):
        return x[..., ::2, ::2]


class ReversedOrder(nn.Module):
    """Registers its layers in the opposite order to the one it runs them in."""

    def __init__(self):
        super().__init__()
        self.last = nn.Conv2d(3, 3, 3, stride=2, padding=1, padding_mode="circular")
        self.first = nn.MaxPool2d(2)
        self.stem = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        return self.last(self.first(self.stem(x)))


# ---- feature: the findings of models whose structure we know -------------------------------------------------

def test_feature_hand_built_net_kinds_strides_and_order():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),  # reflect padding, stride 1
        nn.MaxPool2d(2),                                         # subsamples: cumulative 2
        nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="circular"),  # subsamples: 4, circular is fine
        EveryOtherPixel(),                                       # hidden subsampling: 8
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 10),                                # position-dependent head
    )
    result = inspect(net, (16, 16))
    assert [(f.name, f.kind) for f in result] == [
        ("0", "reflect-padding"), ("1", "max-pool"), ("2", "strided-conv"), ("3", "other-subsampling"),
        ("5", "flatten-fc")]
    assert [f.cumulative_stride for f in result] == [(1, 1), (2, 2), (4, 4), (8, 8), (8, 8)]
    assert [f.output_hw for f in result] == [(16, 16), (8, 8), (4, 4), (2, 2), None]
    assert result.total_stride == (8, 8)
    assert result.breaks_equivariance


def test_feature_order_is_execution_order_not_registration_order():
    result = inspect(ReversedOrder(), (8, 8))
    assert [f.name for f in result] == ["stem", "first", "last"]
    assert [f.kind for f in result] == ["reflect-padding", "max-pool", "strided-conv"]


def test_feature_torchvision_resnet18_map():
    torchvision = pytest.importorskip("torchvision")
    result = inspect(torchvision.models.resnet18(weights=None), (64, 64))
    sub = result.of_kind(*SUBSAMPLING_KINDS)
    assert [f.name for f in sub] == ["conv1", "maxpool", "layer2.0.conv1", "layer2.0.downsample.0",
                                     "layer3.0.conv1", "layer3.0.downsample.0", "layer4.0.conv1",
                                     "layer4.0.downsample.0"]
    assert [f.cumulative_stride[0] for f in sub] == [2, 4, 8, 8, 16, 16, 32, 32]
    assert result.total_stride == (32, 32)
    assert result[-1].kind == "global-pool" and not result[-1].breaks_equivariance
    # all 3x3 convolutions zero-pad; the 1x1 shortcuts do not
    padded = {f.name for f in result.of_kind("zero-padding")}
    assert "layer1.0.conv1" in padded and "layer2.0.downsample.0" not in padded
    assert result.of_kind("flatten-fc") == []


def test_feature_vgg_style_head_flattens_a_map_into_its_classifier():
    # torchvision's VGG head: adaptive pooling to a fixed map, flattened into a fully connected layer
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                        nn.Linear(4 * 3 * 3, 10))
    result = inspect(net, (12, 12))
    assert result.kinds() == ["zero-padding", "max-pool", "adaptive-pool", "flatten-fc"]
    fc = result.of_kind("flatten-fc")[0]
    assert fc.name == "4" and fc.input_hw == (3, 3) and fc.cumulative_stride == (2, 2)
    assert result.of_kind("adaptive-pool")[0].breaks_equivariance is True  # 6x6 -> 3x3 resamples
    # at 6x6 the adaptive pool receives 3x3 and is the identity: noted, not blamed
    identity = inspect(net, (6, 6)).of_kind("adaptive-pool")[0]
    assert identity.breaks_equivariance is False and "identity" in identity.detail


def test_feature_timm_dynamic_same_padding_is_asymmetric_at_even_sizes():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    even = inspect(model, (64, 64))
    stem = [f for f in even if f.name == "conv_stem"]
    assert [f.kind for f in stem] == ["strided-conv", "same-padding-asymmetric"]
    assert "bottom 1" in stem[1].detail and "top 0" in stem[1].detail
    assert even.total_stride == (32, 32)
    # at 65x65 the stem's 'same' padding is one pixel on each side: symmetric, plain zero padding
    odd = inspect(model, (65, 65))
    assert [f.kind for f in odd if f.name == "conv_stem"] == ["strided-conv", "zero-padding"]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_feature_torch_same_padding_with_even_kernel_is_asymmetric():
    net = nn.Sequential(nn.Conv2d(3, 2, 4, padding="same"), nn.Conv2d(2, 2, 3, padding="same"))
    assert [f.kind for f in inspect(net, 8)] == ["same-padding-asymmetric", "zero-padding"]


def test_feature_padding_modules_and_constant_fill():
    net = nn.Sequential(nn.ReflectionPad2d(1), nn.ReplicationPad2d((1, 1, 1, 1)), nn.ConstantPad2d(1, 0.5),
                        nn.ZeroPad2d((0, 1, 0, 1)))
    assert [f.kind for f in inspect(net, 8)] == ["reflect-padding", "replicate-padding", "constant-padding",
                                                 "same-padding-asymmetric"]


def test_feature_circular_stride_one_net_has_only_a_harmless_global_pool():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    result = inspect(net, (10, 12))
    assert [f.kind for f in result] == ["global-pool"]
    assert result.total_stride == (1, 1)
    assert not result.breaks_equivariance


def test_feature_timm_blur_pool_is_marked_anti_aliased():
    timm = pytest.importorskip("timm")
    from timm.layers import BlurPool2d

    model = timm.create_model("resnet18", pretrained=False, aa_layer=BlurPool2d)
    result = inspect(model, (64, 64))
    blur = result.of_kind("blur-pool")
    assert blur and all(f.stride == (2, 2) for f in blur)
    assert result.total_stride == (32, 32)


def test_feature_shiftlab_layers_are_marked_anti_aliased():
    layers = pytest.importorskip("shiftlab.layers")
    if not hasattr(layers, "BlurPool2d") or not hasattr(layers, "APSPool2d"):
        pytest.skip("shiftlab.layers has no BlurPool2d/APSPool2d yet")
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), layers.BlurPool2d(4),
                        nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), layers.APSPool2d(),
                        nn.AdaptiveAvgPool2d(1))
    result = inspect(net, (16, 16))
    assert [f.kind for f in result] == ["blur-pool", "aps", "global-pool"]
    assert [f.cumulative_stride for f in result] == [(2, 2), (4, 4), (4, 4)]
    assert result.of_kind("aps")[0].breaks_equivariance is False


def test_feature_a_shiftlab_layer_hides_its_children():
    class MaxThenBlur(nn.Module):  # stands in for a composite shiftlab layer
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(2, stride=1)
            self.down = nn.AvgPool2d(2)

        def forward(self, x):
            return self.down(self.pool(x))

    MaxThenBlur.__module__ = "shiftlab.layers.composite_for_test"
    result = inspect(nn.Sequential(MaxThenBlur()), 8)
    assert [(f.name, f.kind) for f in result] == [("0", "blur-pool")]


# ---- smoke / cardinality ------------------------------------------------------------------------------------

def test_smoke_result_serialises_and_kinds_are_documented():
    torchvision = pytest.importorskip("torchvision")
    result = inspect(torchvision.models.mobilenet_v2(weights=None), (32, 32))
    assert all(isinstance(f, Finding) and f.kind in KINDS for f in result)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["total_stride"] == [32, 32] and len(d["findings"]) == len(result)


def test_smoke_model_is_left_as_it_was():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.Dropout(0.5))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    inspect(net, 16)
    assert net.training and all(m.training for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not net[0]._forward_hooks


# ---- exception --------------------------------------------------------------------------------------------

def test_exception_not_a_module():
    with pytest.raises(InputError):
        inspect(lambda x: x, 8)


@pytest.mark.parametrize("size", [0, (4, -1), "big", (1, 2, 3)])
def test_exception_bad_input_size(size):
    with pytest.raises(ShapeError):
        inspect(nn.Conv2d(3, 3, 1), size)


def test_exception_model_that_cannot_take_the_size():
    net = nn.Sequential(nn.Conv2d(3, 3, 5))  # a 'valid' 5x5 conv cannot run on 3x3
    with pytest.raises(ShapeError, match="failed"):
        inspect(net, 3)


def test_functional_pooling_is_invisible_but_the_classifier_is_not_flagged():
    class FunctionalHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1))

    assert [f.kind for f in inspect(FunctionalHead(), 4)] == []


# ---- the command line --------------------------------------------------------------------------------------

def test_cli_inspect_prints_the_map_and_writes_json(tmp_path, capsys):
    from shiftlab.cli import main

    out = tmp_path / "map.json"
    assert main(["inspect", "--model", "torchvision:resnet18", "--input-size", "64", "64", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "total stride 32x32" in text
    lines = text.splitlines()
    # data-flow order in the table: the stem before the last block, the global pool last
    assert next(i for i, l in enumerate(lines) if " conv1 " in l) < next(i for i, l in enumerate(lines)
                                                                          if "layer4.0.downsample.0" in l)
    assert "strided-conv, zero-padding" in text and "global-pool" in text
    saved = json.loads(out.read_text())
    assert saved["model"] == "torchvision:resnet18" and saved["total_stride"] == [32, 32]
    assert saved["findings"][0]["name"] == "conv1"


def test_cli_inspect_refuses_to_overwrite_and_rejects_unknown_models(tmp_path, capsys):
    from shiftlab.cli import main

    out = tmp_path / "map.json"
    out.write_text("keep me")
    assert main(["inspect", "--model", "torchvision:resnet18", "--input-size", "32", "32", "--json", str(out)]) == 2
    assert out.read_text() == "keep me" and "exists" in capsys.readouterr().err
    assert main(["inspect", "--model", "timm:no_such_net", "--input-size", "32", "32"]) == 2
    assert "error" in capsys.readouterr().err
