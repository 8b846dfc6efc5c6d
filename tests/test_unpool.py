"""APS-U, LPU and blurred upsampling (shiftlab.layers.unpool): placement by hand, the phase link, the
ConvTranspose2d identity, in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shiftlab.errors import InputError
from shiftlab.layers import (
    APSPool2d,
    APSUnpool2d,
    BlurUpsample2d,
    LPSPool2d,
    PhaseLink,
    SharedPhase,
    UnpoolConvTranspose2d,
    aps_pool2d,
    aps_unpool2d,
    blur_upsample2d,
    lps_pool2d,
    lps_unpool2d,
    unpool_conv_transpose2d,
)

D = torch.float64


def test_aps_unpool_puts_values_at_the_phase_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=D)
    out = aps_unpool2d(x, torch.tensor([2]))  # phase 2 = offset (1, 0)
    expected = torch.tensor([[0, 0, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0]], dtype=D)
    assert torch.equal(out[0, 0], expected)


def test_unpool_of_aps_pool_keeps_the_kept_component_in_place():
    x = torch.randn(3, 2, 6, 6, dtype=D)
    y, phase = aps_pool2d(x, return_phase=True)
    back = aps_unpool2d(y, phase)
    i, j = phase // 2, phase % 2
    for b in range(3):  # the kept component where it was, zeros elsewhere
        mask = torch.zeros(6, 6, dtype=torch.bool)
        mask[int(i[b])::2, int(j[b])::2] = True
        assert torch.equal(back[b][:, mask], x[b][:, mask])
        assert not back[b][:, ~mask].any()


def test_lps_unpool_weights_each_position_by_its_probability():
    w = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=D)
    out = lps_unpool2d(torch.full((1, 1, 1, 1), 2.0, dtype=D), w)
    assert torch.allclose(out.flatten(), 2 * w.flatten(), rtol=0, atol=1e-15)
    one_hot = lps_unpool2d(torch.ones(1, 1, 1, 1, dtype=D), torch.tensor([3]))
    assert one_hot.flatten().tolist() == [0.0, 0.0, 0.0, 1.0]


def test_decoder_without_its_encoder_phase_raises_naming_the_layer():
    link = PhaseLink(stride=2, name="encoder.down")
    unpool = APSUnpool2d(link, name="decoder.up")
    with pytest.raises(InputError, match="decoder.up.*encoder.down"):
        unpool(torch.randn(1, 2, 3, 3, dtype=D))


def test_link_is_scoped_to_one_forward_pass():
    pool, link = APSPool2d(), PhaseLink(stride=2)
    link.attach(pool)
    model = nn.Sequential(pool, APSUnpool2d(link))
    link.scope(model)
    x = torch.randn(2, 1, 4, 4, dtype=D)
    model(x)
    assert link.current() is None  # forgotten when the model returned
    pool(x)
    assert torch.equal(link.current()[0], aps_pool2d(x, return_phase=True)[1])


def test_link_reads_a_shared_phase():
    shared = SharedPhase(stride=2)
    block = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), APSPool2d(shared=shared)).double()
    nn.init.constant_(block[0].weight, -1.0)  # the pool sees -x, whose energies equal x's: same choice
    shared.attach(block)
    link = PhaseLink(stride=2)
    link.attach(block[1])
    x = torch.zeros(1, 1, 4, 4, dtype=D)
    x[..., 1, 0] = 1.0  # phase 2
    block(x)
    assert link.current()[0].tolist() == [2]


def test_lps_link_in_training_holds_the_layers_own_mixture():
    torch.manual_seed(0)
    pool = LPSPool2d(2, stride=2).double().train()
    link = PhaseLink(stride=2)
    link.attach(pool)
    x = torch.randn(3, 2, 4, 4, dtype=D)
    out = pool(x)
    weights = link.current()[0]
    assert weights.shape == (3, 4) and not torch.equal(weights, weights.round())  # soft, not one-hot
    again = lps_pool2d(x, pool.scorer, training=True, weights=weights)
    assert torch.equal(out, again)


@pytest.mark.parametrize("k, p, op, groups", [(2, 0, 0, 1), (4, 1, 0, 1), (3, 1, 1, 2)])
def test_conv_transpose_replacement_is_the_original_at_phase_zero(k, p, op, groups):
    torch.manual_seed(1)
    conv = nn.ConvTranspose2d(4, 6, k, stride=2, padding=p, output_padding=op, groups=groups).double()
    x = torch.randn(2, 4, 5, 5, dtype=D)
    phase0 = torch.zeros(2, dtype=torch.int64)
    zeros = unpool_conv_transpose2d(x, conv.weight, conv.bias, phase0, 2, p, op, 1, groups, 1, "zeros")
    assert torch.allclose(zeros, conv(x), rtol=0, atol=1e-13)  # every input: zero padding is the original's border
    inner = F.pad(x[..., 1:-1, 1:-1], (1, 1, 1, 1))  # a zero border: circular padding wraps only zeros
    circ = unpool_conv_transpose2d(inner, conv.weight, conv.bias, phase0, 2, p, op, 1, groups, 1, "circular")
    assert torch.allclose(circ, conv(inner), rtol=0, atol=1e-13)
    if k > 2:  # negative control: a non-zero border wraps around
        wrapped = unpool_conv_transpose2d(x, conv.weight, conv.bias, phase0, 2, p, op, 1, groups, 1, "circular")
        assert (wrapped - conv(x)).abs().max() > 1e-3


def test_unpool_conv_transpose_module_keeps_the_parameters_and_follows_the_phase():
    conv = nn.ConvTranspose2d(3, 2, 2, stride=2).double()
    link = PhaseLink(stride=2)
    new = UnpoolConvTranspose2d.from_conv_transpose(conv, link, pad_mode="zeros")
    assert new.weight is conv.weight and new.bias is conv.bias
    x = torch.randn(1, 3, 3, 3, dtype=D)
    link.record(torch.tensor([0]), (6, 6))
    assert torch.allclose(new(x), conv(x), rtol=0, atol=1e-13)
    link.record(torch.tensor([3]), (6, 6))  # phase (1, 1): the same map, one pixel down and right, circularly
    assert torch.allclose(new(x), conv(x), rtol=0, atol=1e-13) is False
    circ = UnpoolConvTranspose2d.from_conv_transpose(conv, link, pad_mode="circular")
    assert torch.allclose(circ(x), torch.roll(conv(x), (1, 1), (-2, -1)), rtol=0, atol=1e-13)


def test_blur_upsample_keeps_constants_and_module_agrees():
    x = torch.full((1, 2, 3, 3), 1.5, dtype=D)
    for mode in ("nearest", "zeros"):
        out = blur_upsample2d(x, 2, 3, "circular", mode)
        assert torch.allclose(out, torch.full((1, 2, 6, 6), 1.5, dtype=D), rtol=0, atol=1e-14)
    y = torch.randn(2, 2, 4, 4, dtype=D)
    assert torch.equal(BlurUpsample2d(2, 3, "circular", "zeros")(y), blur_upsample2d(y, 2, 3, "circular", "zeros"))
    assert not torch.equal(blur_upsample2d(y, 2, 1), blur_upsample2d(y, 2, 3))  # the blur does something
