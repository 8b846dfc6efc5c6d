"""Transformers as they are (issue 22): token maps in the layer-wise audit, inspect, timm's preprocessing."""

import pytest
import torch

timm = pytest.importorskip("timm")

import shiftlab  # noqa: E402
from shiftlab.measure.inspect import inspect  # noqa: E402
from shiftlab.measure.tokens import TokenLayout, as_token_map, token_layout  # noqa: E402
from shiftlab.models.preprocessing import preprocessing  # noqa: E402


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                             embed_dim=16, num_heads=2, num_classes=5).eval()


def tiny_swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=16, embed_dim=8,
                             depths=(2, 2), num_heads=(1, 2), window_size=2, num_classes=5).eval()


def test_as_token_map_drops_prefix_tokens_in_raster_order():
    grid = torch.randn(2, 3, 4, 6, dtype=torch.float64)  # (B, C, h, w)
    tokens = torch.cat([torch.randn(2, 1, 3, dtype=torch.float64), grid.flatten(2).transpose(1, 2)], 1)
    out, note = as_token_map(tokens, TokenLayout((8, 8), prefix=1), (32, 48))
    assert torch.equal(out, grid) and "1 prefix token dropped" in note
    same, none = as_token_map(tokens[:, :5], TokenLayout((8, 8), prefix=1), (32, 48))  # no grid of 4 tokens
    assert same.shape == (2, 5, 3) and none is None


def test_vit_audit_compares_token_maps_and_leaves_other_outputs():
    vit = tiny_vit()
    assert token_layout(vit) == TokenLayout((8, 8), prefix=1, channels_last=False)
    res = shiftlab.audit(vit, torch.rand(2, 3, 32, 32), transform="circular:9", layers="all", normalize=False,
                         seed=1)
    info = res.layer_info
    assert info["blocks.0.mlp.fc1"]["stride"] == [8, 8] and info["blocks.0.mlp.fc1"]["shape"] == [64, 4, 4]
    assert "1 prefix token dropped" in info["blocks.0.norm1"]["tokens"]
    assert info["patch_embed.norm"]["tokens"] == "tokens (B, N, C) reshaped to (B, C, 4, 4)"  # before the class token
    # negative controls: the pooled features and the logits are not token maps
    for name in ("fc_norm", "head"):
        assert "tokens" not in info[name] and info[name]["stride"] is None
    table = res.to_dict()["layers"]
    assert "equivariance" in table["blocks.0.mlp.fc1"] and "equivariance" not in table["head"]


def test_inspect_lists_the_vit_patch_embedding_as_a_stride_p_subsampling():
    found = inspect(tiny_vit(), (32, 32))
    embed = [f for f in found if f.name == "patch_embed.proj"]
    assert embed and embed[0].kind == "strided-conv" and embed[0].stride == (8, 8)
    assert found.total_stride == (8, 8)


def test_inspect_lists_swin_windows_and_patch_merging():
    found = inspect(tiny_swin(), (16, 16))
    merging = found.of_kind("patch-merging")
    assert [f.name for f in merging] == ["layers.1.downsample"]
    assert merging[0].stride == (2, 2) and merging[0].cumulative_stride == (8, 8) and merging[0].breaks_equivariance
    windows = {f.name: f.detail for f in found.of_kind("window-attention")}
    assert "shifted by 1" in windows["layers.0.blocks.1"] and "not shifted" in windows["layers.0.blocks.0"]
    assert found.total_stride == (8, 8)


def test_swin_audit_permutes_channels_last_stages():
    res = shiftlab.audit(tiny_swin(), torch.rand(2, 3, 16, 16), transform="circular:4", normalize=False,
                         layers=["patch_embed.proj", "layers.0", "layers.1"])
    info = res.layer_info
    assert info["layers.0"]["stride"] == [4, 4] and info["layers.1"]["stride"] == [8, 8]
    assert info["layers.1"]["tokens"].startswith("channels-last") and info["layers.1"]["shape"] == [16, 2, 2]
    assert "tokens" not in info["patch_embed.proj"]  # a convolution's map is already (B, C, h, w)


SMALL_VIT = {"depth": 1, "embed_dim": 16, "num_heads": 2}


@pytest.mark.parametrize("name, mean, small", [
    ("vit_tiny_patch16_224", (0.5, 0.5, 0.5), SMALL_VIT),
    ("deit_tiny_patch16_224", (0.485, 0.456, 0.406), SMALL_VIT),
    ("swin_tiny_patch4_window7_224", (0.485, 0.456, 0.406), {"embed_dim": 8, "depths": (1, 1), "num_heads": (1, 2),
                                                              "window_size": 2})])
def test_preprocessing_is_read_from_timms_config(name, mean, small):
    model = timm.create_model(name, pretrained=False, img_size=32, **small)
    p = preprocessing(model)
    assert p.mean == mean and p.interpolation == model.pretrained_cfg["interpolation"] == "bicubic"
    assert model.pretrained_cfg["input_size"] == (3, 224, 224) and p.input_size == (32, 32)  # the model's own size
    assert "patch_embed.img_size" in p.source
