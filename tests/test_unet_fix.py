"""U-Nets and encoder-decoder conversion: exact dense equivariance in float64, with negative controls."""

import pytest
import torch
import torchvision
from torch import nn

from shiftlab import antialias, certify
from shiftlab.errors import InputError
from shiftlab.layers import APSUnpool2d, UnpoolConvTranspose2d
from shiftlab.models import SelectOutput, unet

D = torch.float64


def _every_shift_deviation(net: nn.Module, x: torch.Tensor) -> float:
    """max over every circular shift d of the input's size of |f(roll(x, d)) - roll(f(x), d)| / max|f(x)|."""
    h, w = x.shape[-2:]
    with torch.no_grad():
        ref = net(x)
        shifted = torch.cat([torch.roll(x, (dy, dx), (-2, -1)) for dy in range(h) for dx in range(w)])
        out = net(shifted)
        expected = torch.cat([torch.roll(ref, (dy, dx), (-2, -1)) for dy in range(h) for dx in range(w)])
    return float((out - expected).abs().max() / ref.abs().max())


@pytest.mark.parametrize("subsampling", ["aps", "lps"])
def test_unet_with_unpooling_is_exactly_equivariant_to_every_circular_shift(subsampling):
    torch.manual_seed(0)
    net = unet(2, 4, 3, in_channels=2, subsampling=subsampling, upsampling="unpool").double().eval()
    assert net.guarantee == "integer"
    x = torch.randn(1, 2, 6, 6, dtype=D)
    assert _every_shift_deviation(net, x) <= 1e-12
    baseline = unet(2, 4, 3, in_channels=2, subsampling="stride", upsampling="transpose").double().eval()
    assert _every_shift_deviation(baseline, x) > 1e-6  # negative control: strides and phase-0 upsampling


def test_unet_refuses_unpool_without_an_adaptive_encoder_and_bad_sizes():
    with pytest.raises(InputError, match="unpool"):
        unet(2, 4, 2, subsampling="max", upsampling="unpool")
    with pytest.raises(Exception, match="multiples of its total stride 4"):
        unet(3, 4, 2)(torch.randn(1, 3, 6, 6))


class PlainUNet(nn.Module):
    """A user's U-Net: strided conv, max pool, ConvTranspose2d and nn.Upsample, zero padding."""

    def __init__(self):
        super().__init__()
        self.inc = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU())
        self.down1 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.conv1 = nn.Conv2d(16, 4, 3, padding=1)
        self.up2 = nn.Upsample(scale_factor=2, mode="bilinear")
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        a = self.inc(x)
        b = self.down1(a)
        c = self.down2(b)
        d = torch.relu(self.conv1(torch.cat([b, self.up1(c)], 1)))
        return self.out(torch.cat([a, self.up2(d)], 1))


def test_plain_unet_conversion_keeps_every_weight_and_is_certified():
    torch.manual_seed(0)
    plain = PlainUNet().double()
    fixed, report = antialias(plain, "aps", filter_size=1, circular=True)
    before, after = plain.state_dict(), fixed.state_dict()
    assert list(before) == list(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(fixed.up1, UnpoolConvTranspose2d) and isinstance(fixed.up2, APSUnpool2d)
    assert fixed.shiftlab_fix["decoders"] == [["up1", "down2.0.1"], ["up2", "down1.1.subsample.0"]]
    assert {r.name for r in report} >= {"up1", "up2"}
    result = certify(fixed, (16, 16))
    assert result.passed and result.output_stride == 1 and result.shifts_checked == 15
    assert _every_shift_deviation(fixed.eval(), torch.randn(1, 2, 8, 8, dtype=D)) <= 1e-12
    negative = certify(plain, (16, 16))  # the unconverted network, and one with only the encoder converted
    assert not negative.passed and negative.max_rel_deviation > 1e-6


def test_converted_unet_of_the_builder_matches_the_unpool_unet():
    torch.manual_seed(0)
    plain = unet(2, 4, 3, subsampling="stride", upsampling="transpose").double().eval()
    fixed, _ = antialias(plain, "aps", filter_size=1, circular=True)
    assert certify(fixed, (8, 8)).passed
    assert not certify(plain, (8, 8)).passed


class NoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.lift = nn.ConvTranspose2d(2, 2, 2, stride=2)

    def forward(self, x):
        return self.lift(self.conv(x))


def test_a_decoder_that_cannot_be_paired_is_refused_naming_it():
    with pytest.raises(InputError, match="decoder layer lift"):
        antialias(NoEncoder(), "aps", circular=True)
    fixed, report = antialias(NoEncoder(), "aps", circular=True, keep_unpaired=True)
    assert isinstance(fixed.lift, nn.ConvTranspose2d) and not isinstance(fixed.lift, UnpoolConvTranspose2d)
    assert any(r.name == "lift" and r.unreplaced for r in report)


def test_converted_unet_saved_as_a_fixed_checkpoint_loads_back_bit_for_bit(tmp_path):
    import shiftlab

    torch.manual_seed(0)
    plain = unet(2, 4, 3, subsampling="stride", upsampling="transpose").double().eval()
    fixed, _ = antialias(plain, "aps", filter_size=1, circular=True)
    path = shiftlab.save_fixed(fixed, tmp_path / "unet_aps.pt")
    torch.manual_seed(1)  # a fresh architecture with other random weights: the file's must replace them
    again = shiftlab.load_model(unet(2, 4, 3, subsampling="stride", upsampling="transpose").double(), weights=path)
    pairs = [["decoder.0.up", "encoder.1.convs.0.subsample.0"]]
    assert again.shiftlab_fix["decoders"] == fixed.shiftlab_fix["decoders"] == pairs
    assert isinstance(again.decoder[0].up, UnpoolConvTranspose2d)
    x = torch.randn(3, 3, 8, 8, dtype=D)
    with torch.no_grad():
        assert torch.equal(again(x), fixed(x))
        assert not torch.equal(again(x), plain(x))  # the conversion, not the original, was rebuilt


def test_blur_route_on_a_unet_reduces_the_shift_deviation_without_exactness():
    torch.manual_seed(0)
    plain = unet(3, 4, 3, subsampling="stride", upsampling="transpose").double().eval()
    fixed, report = antialias(plain, "blur", filter_size=3, circular=True)
    assert sum("blur after upsampling" in r.after for r in report) == 2
    x = torch.randn(2, 3, 8, 8, dtype=D)
    before, after = _every_shift_deviation(plain, x), _every_shift_deviation(fixed.eval(), x)
    assert after < before  # measured: less aliasing ...
    assert after > 1e-6  # ... but no guarantee: strides at a fixed phase remain
    assert not certify(fixed, (8, 8)).passed


def test_aps_with_a_blur_before_choosing_and_after_unpooling_is_exact():
    torch.manual_seed(0)
    plain = PlainUNet().double()
    fixed, _ = antialias(plain, "aps", filter_size=3, circular=True)
    assert fixed.up1.filter_size == 3 and fixed.up2.filter_size == 3
    assert _every_shift_deviation(fixed.eval(), torch.randn(1, 2, 8, 8, dtype=D)) <= 1e-12
    one = antialias(PlainUNet().double(), "aps", filter_size=1, circular=True)[0].eval()
    one.load_state_dict(fixed.state_dict())
    x = torch.randn(1, 2, 8, 8, dtype=D)
    with torch.no_grad():
        assert (one(x) - fixed.eval()(x)).abs().max() > 1e-6  # the blur is there: another function, also exact
