"""Polyphase tokenization of vision transformers (issue 22): the layers, the conversion of timm ViT / DeiT, and its
float64 certificate of exact invariance to circular shifts, with the unconverted model as the negative control."""

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

import shiftlab  # noqa: E402
from shiftlab.errors import InputError, ShapeError  # noqa: E402
from shiftlab.layers import (  # noqa: E402
    ConvPositionEncoding,
    PolyphasePatchEmbed,
    PolyphaseTokenize,
    aps_phase,
    conv_position_encoding,
    polyphase_offset,
    polyphase_tokenize,
)

F64 = dict(rtol=1e-12, atol=1e-12)  # float64: exact up to summation order


def tiny(name="vit_tiny_patch16_224", patch=8, size=32, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=size, patch_size=patch, depth=2, num_heads=2,
                             embed_dim=16, num_classes=5, **kw).eval()


# ---------------------------------------------------------------------------------------------------- the layers

def test_polyphase_offset_is_aps_choice_and_moves_with_roll():
    x = torch.randn(3, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = 4
    k = polyphase_offset(x, p)
    assert torch.equal(k, aps_phase(x, stride=p))
    for dy, dx in [(1, 0), (0, 3), (5, 7), (13, 2)]:
        moved = polyphase_offset(torch.roll(x, (dy, dx), (-2, -1)), p)
        assert torch.equal(moved // p, (k // p + dy) % p) and torch.equal(moved % p, (k % p + dx) % p)


def test_polyphase_tokenize_moves_by_whole_patches():
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    p = 4
    y = polyphase_tokenize(x, p)
    for dy, dx in [(1, 2), (3, 3), (6, 9)]:
        ys = polyphase_tokenize(torch.roll(x, (dy, dx), (-2, -1)), p)
        # the same image up to a roll by a multiple of p in each sample: its patches, in a rolled order
        matches = [torch.equal(ys[b], torch.roll(y[b], (a * p, c * p), (-2, -1)))
                   for b in range(2) for a in range(4) for c in range(3)]
        assert sum(matches) == 2
    # negative control: without the polyphase choice, a one-pixel roll is not a roll by whole patches
    xs = torch.roll(x, (1, 0), (-2, -1))
    assert not any(torch.equal(xs[0], torch.roll(x[0], (a * p, 0), (-2, -1))) for a in range(4))


def test_polyphase_tokenize_hand_check():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[..., 1, 2] = 3.0
    y, k = polyphase_tokenize(x, 2, return_offset=True)
    assert k.tolist() == [2]  # row 1 % 2 = 1, column 2 % 2 = 0 -> offset (1, 0) = index 1 * 2 + 0
    assert y[0, 0].nonzero().tolist() == [[0, 2]] and float(y.sum()) == 3.0  # rolled by (-1, 0): on the origin grid


def test_polyphase_ties_go_to_lowest_offset_as_aps():
    const = torch.ones(2, 3, 8, 8, dtype=torch.float64)
    assert polyphase_offset(const, 4).tolist() == [0, 0]
    assert torch.equal(polyphase_tokenize(const, 4), const)
    # two components of equal energy (offsets 1 and 2 of a 2x2 grid): the lower index wins, as in APS
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[..., 0, 1] = 1.0
    x[..., 1, 0] = -1.0
    assert polyphase_offset(x, 2).tolist() == [1] == aps_phase(x, 2).tolist()


def test_tokenize_module_agrees_and_checks_arguments():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(PolyphaseTokenize(4)(x), polyphase_tokenize(x, 4))
    with pytest.raises(InputError, match="patch_size"):
        polyphase_tokenize(x, 0)
    with pytest.raises(ShapeError):
        polyphase_tokenize(x[0], 4)
    with pytest.raises(InputError, match="odd"):
        ConvPositionEncoding(8, kernel_size=2)
    with pytest.raises(ShapeError, match="depthwise"):
        conv_position_encoding(x, torch.zeros(3, 1, 2, 2))


def test_conv_position_encoding_commutes_with_token_roll():
    g = torch.Generator().manual_seed(3)
    t = torch.randn(2, 6, 5, 7, dtype=torch.float64, generator=g)
    pe = ConvPositionEncoding(6, kernel_size=3, init="normal", dtype=torch.float64)
    with torch.no_grad():
        pe.weight.normal_(generator=g)
        pe.bias.normal_(generator=g)
    for d in [(1, 0), (0, 1), (2, 5), (4, 3)]:
        torch.testing.assert_close(pe(torch.roll(t, d, (-2, -1))), torch.roll(pe(t), d, (-2, -1)), **F64)
    # negative control: an absolute position embedding (a fixed map added) does not commute with a roll
    absolute = torch.randn(1, 6, 5, 7, dtype=torch.float64, generator=g)
    moved = torch.roll(t, (1, 0), (-2, -1)) + absolute
    assert (moved - torch.roll(t + absolute, (1, 0), (-2, -1))).abs().max() > 1e-3
    # zero-initialised: the identity, exactly
    assert torch.equal(ConvPositionEncoding(6, dtype=torch.float64)(t), t)


def test_patch_embed_layouts_agree():
    """The same weights give the same tokens whether the embedding returns (B, N, D) or a (B, D, h, w) map."""
    vit = tiny()
    embed = vit.patch_embed.double()
    position = ConvPositionEncoding(16, init="normal", dtype=torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    tokens = PolyphasePatchEmbed(embed, position=position)(x)
    grid = PolyphasePatchEmbed(embed.proj, position=position)(x)
    assert tokens.shape == (2, 16, 16) and grid.shape == (2, 16, 4, 4)
    torch.testing.assert_close(tokens, grid.flatten(2).transpose(1, 2), **F64)
    torch.testing.assert_close(PolyphasePatchEmbed(embed)(x), embed(polyphase_tokenize(x, 8)), **F64)
    assert PolyphasePatchEmbed(embed).patch_size == (8, 8) and PolyphasePatchEmbed(embed).grid_size == (4, 4)


# ---------------------------------------------------------------------------------------------------- conversion

@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_conversion_keeps_every_other_weight(name):
    vit = tiny(name)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    fixed, report = shiftlab.antialias(vit, method="aps", circular=True)
    after = fixed.state_dict()
    assert [r.name for r in report] == ["patch_embed", "pos_embed"]
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())  # the original is untouched
    renamed = {k.replace("patch_embed.", "patch_embed.embed.", 1): v for k, v in before.items()}
    new = set(after) - set(renamed)
    assert new == {"patch_embed.position.weight", "patch_embed.position.bias"}
    assert set(renamed) - set(after) == {"pos_embed"}
    for k, v in renamed.items():
        if k == "cls_token":  # the class token's own position, a constant, folded into it
            assert torch.equal(after[k], v + before["pos_embed"][:, :1])
        elif k != "pos_embed":
            assert torch.equal(after[k], v), k
    assert all(not after[k].any() for k in new)  # zero-initialised
    assert fixed.shiftlab_fix["patch_size"] == 8 and fixed.shiftlab_fix["architecture"] == "vit"


def test_converted_model_is_the_original_without_patch_positions_on_tokenized_input():
    vit = tiny().double()
    fixed, _ = shiftlab.antialias(vit, method="aps")
    reference = tiny().double()
    with torch.no_grad():
        reference.pos_embed[:, 1:] = 0  # the patch tokens' absolute positions gone, the class token's kept
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(fixed(x), reference(polyphase_tokenize(x, 8)), **F64)
    # negative control: the original (with its absolute positions) is a different function
    assert (fixed(x) - vit(polyphase_tokenize(x, 8))).abs().max() > 1e-6


# ---------------------------------------------------------------------------------------------------- certificate

@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_certified_invariant_with_original_as_negative_control(name):
    vit = tiny(name)
    fixed, _ = shiftlab.antialias(vit, method="aps", circular=True)
    result = shiftlab.certify(fixed, (32, 32), shifts="period", dtype=torch.float64)
    assert result.passed and result.full_period and result.shifts_checked == 63
    assert result.total_stride == (8, 8) and result.patch_size == 8 and result.to_dict()["patch_size"] == 8
    large = shiftlab.certify(fixed, (32, 32), shifts=[(8, 16), (13, 29), (31, 7), (17, 23)])
    assert large.passed
    original = shiftlab.certify(vit, (32, 32), shifts=[(1, 0), (0, 1), (3, 5), (13, 29)], n_inputs=1)
    assert not original.passed and original.max_rel_deviation > 1e-3 and original.patch_size is None


def test_certified_at_the_models_own_patch_size():
    vit = tiny("deit_tiny_patch16_224", patch=16)
    fixed, _ = shiftlab.antialias(vit, method="aps")
    result = shiftlab.certify(fixed, (32, 32), shifts=40, n_inputs=1)
    assert result.passed and result.total_stride == (16, 16) and result.patch_size == 16
    assert not shiftlab.certify(vit, (32, 32), shifts=[(1, 1), (5, 9)], n_inputs=1).passed


# ---------------------------------------------------------------------------------------------------- refusals

def test_refusals_name_the_module():
    with pytest.raises(InputError, match="dist_token"):
        shiftlab.antialias(tiny("deit_tiny_distilled_patch16_224"), method="aps")
    with pytest.raises(InputError, match="patch_embed"):
        shiftlab.antialias(tiny(dynamic_img_size=True), method="aps")
    with pytest.raises(InputError, match="method='aps'"):
        shiftlab.antialias(tiny(), method="blur")
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                              mlp_dim=32, num_classes=5)
    with pytest.raises(InputError, match="encoder.pos_embedding"):
        shiftlab.antialias(tv, method="aps")


def test_refuses_relative_position_inside_blocks():
    vit = tiny()
    vit.blocks[1].attn.relative_position_bias_table = nn.Parameter(torch.zeros(49, 2))
    with pytest.raises(InputError, match=r"blocks\.1\.attn\.relative_position_bias_table"):
        shiftlab.antialias(vit, method="aps")


def test_converted_model_is_not_converted_again():
    fixed, _ = shiftlab.antialias(tiny(), method="aps")
    with pytest.raises(InputError, match="already converted"):
        shiftlab.antialias(fixed, method="aps")


# ---------------------------------------------------------------------------------------------------- save / load

def test_save_and_load_rebuild_bit_identical(tmp_path):
    fixed, _ = shiftlab.antialias(tiny(), method="aps", circular=True)
    with torch.no_grad():  # as if fine-tuned: the position encoding learned something
        fixed.patch_embed.position.weight.normal_()
    path = shiftlab.save_fixed(fixed, tmp_path / "vit_aps.pt")
    again = shiftlab.load_model(tiny(), weights=path)
    assert again.shiftlab_fix["patch_size"] == 8 and isinstance(again.patch_embed, PolyphasePatchEmbed)
    saved, loaded = fixed.state_dict(), again.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fixed.eval()(x), again.eval()(x))
    # a file made for another patch size does not fit
    with pytest.raises(Exception):
        shiftlab.load_model(tiny(patch=16), weights=path)


def test_doctests():
    import doctest

    import shiftlab.layers.tokenize as module

    failures, attempted = doctest.testmod(module, verbose=False)
    assert attempted >= 8 and failures == 0
