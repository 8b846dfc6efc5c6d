"""Swin conversion (issue 22): adaptive patch embedding, windows and patch merging, certified in float64."""

import pytest
import torch

timm = pytest.importorskip("timm")

import shiftlab  # noqa: E402
from shiftlab.errors import InputError, ShapeError  # noqa: E402
from shiftlab.fix.swin import convert_swin  # noqa: E402
from shiftlab.layers.windows import (  # noqa: E402
    PolyphasePatchMerging, PolyphaseWindowBlock, roll_to_offset, window_border_mask, window_offset)


def tiny_swin(window=2, size=16):
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=size, embed_dim=8,
                             depths=(2, 2), num_heads=(1, 2), window_size=window, num_classes=5).eval()


def test_window_offset_follows_circular_shift():
    x = torch.randn(3, 8, 12, 4, dtype=torch.float64)
    off = window_offset(x, (4, 3))
    moved = window_offset(torch.roll(x, (5, 7), (1, 2)), (4, 3))
    assert torch.equal(moved, (off + torch.tensor([5, 7])) % torch.tensor([4, 3]))


def test_roll_to_offset_is_a_per_image_roll():
    x = torch.randn(2, 5, 6, 3)
    off = torch.tensor([[1, 4], [3, 0]])
    out = roll_to_offset(x, off)
    for b in range(2):
        assert torch.equal(out[b], torch.roll(x[b], (-1 * int(off[b, 0]), -1 * int(off[b, 1])), (0, 1)))
    assert torch.equal(roll_to_offset(out, -off), x)
    with pytest.raises(ShapeError):
        window_offset(torch.randn(1, 5, 6, 3), 2)


def test_border_mask_is_timms_shifted_window_mask():
    swin = tiny_swin(window=2, size=16)
    block = swin.layers[0].blocks[1]
    assert block.shift_size == (1, 1) and block.attn_mask is not None
    mine = window_border_mask(torch.tensor([[1, 1]]), block.input_resolution, block.window_size)
    assert torch.equal(mine, block.attn_mask.float())
    assert not torch.equal(window_border_mask(torch.tensor([[0, 1]]), block.input_resolution, block.window_size),
                           block.attn_mask.float())  # negative control: another roll, another mask


def test_converted_swin_is_exactly_invariant_and_the_original_is_not():
    swin = tiny_swin()
    fixed, report = convert_swin(swin, "aps", circular=True)
    assert {r.name for r in report} == {"patch_embed", "layers.0.blocks.0", "layers.0.blocks.1",
                                         "layers.1.downsample", "layers.1.blocks.0", "layers.1.blocks.1"}
    assert isinstance(fixed.layers[1].downsample, PolyphasePatchMerging)
    assert isinstance(fixed.layers[0].blocks[1], PolyphaseWindowBlock)
    shifts = [(1, 0), (0, 3), (2, 5), (4, 4), (7, 13)]  # within the patch, across windows, across merges
    cert = shiftlab.certify(fixed, input_size=16, shifts=shifts)
    assert cert.max_rel_deviation < 1e-12
    control = shiftlab.certify(swin, input_size=16, shifts=shifts)
    assert control.max_rel_deviation > 1e-3


def test_circular_false_keeps_the_border_mask_and_is_not_exact():
    swin = tiny_swin()
    fixed, _ = convert_swin(swin, "aps", circular=False)
    assert fixed.layers[0].blocks[1].circular is False
    cert = shiftlab.certify(fixed, input_size=16, shifts=[(1, 1), (3, 5)])
    assert cert.max_rel_deviation > 1e-6


def test_every_weight_is_kept_bit_for_bit():
    swin = tiny_swin()
    fixed, _ = convert_swin(swin)
    before = swin.state_dict()
    after = {k.replace("patch_embed.embed.", "patch_embed."): v for k, v in fixed.state_dict().items()}
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert fixed.layers[0].blocks[0].attn is not swin.layers[0].blocks[0].attn  # a copy, not the caller's model


def test_refusals_name_what_is_left():
    swin = tiny_swin()
    with pytest.raises(InputError, match="'blur' is not available"):
        convert_swin(swin, "blur")
    with pytest.raises(InputError, match="SwinTransformer"):
        convert_swin(torch.nn.Conv2d(3, 3, 1))
    odd = tiny_swin(window=3, size=12)  # 3x3 tokens: an odd map cannot be merged in whole 2x2 phases (timm pads)
    with pytest.raises((InputError, ShapeError)):
        fixed, _ = convert_swin(odd)
        fixed(torch.randn(1, 3, 12, 12))
