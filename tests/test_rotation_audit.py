"""``audit --transform rotate:...`` inside a network: per-layer rotation equivariance errors."""

from __future__ import annotations

import torch
from torch import nn

from shiftlab import audit
from shiftlab.experiments.nets import GroupCNN, HarmonicCNN


def _images(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g, dtype=torch.float64)


def test_feature_p4_network_is_equivariant_layer_by_layer_at_quarter_turns():
    torch.manual_seed(0)
    net = GroupCNN("p4", width=2).double().eval()
    r = audit(net, _images(), transform="rotate:0,90,180,270", layers="all", normalize=False, batch_size=64)
    compared = {name: entry["equivariance"] for name, entry in r.layers.items() if "equivariance" in entry}
    assert len(compared) >= 8  # every map of the network, group features included
    for name, mv in compared.items():
        assert mv.n == 3 * 3 and mv.value < 1e-12, (name, mv.value)
    assert r.layer_info["features.0"]["layout"] == "group axis of 4"
    assert r.metrics["agreement"].value == 1.0  # the same top-1 at every quarter turn


def test_negative_control_a_plain_conv_is_not_rotation_equivariant():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    r = audit(net, _images(), transform="rotate:0,90", layers=["0"], normalize=False)
    assert r.layers["0"]["equivariance"].value > 0.1


def test_feature_harmonic_layers_far_below_a_plain_conv_at_45_degrees():
    torch.manual_seed(0)
    harmonic = HarmonicCNN(width=2).double().eval()
    plain = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).double().eval()
    x = _images(size=32)
    first = next(n for n, m in harmonic.named_modules() if type(m).__name__ == "HarmonicConv2d")
    h = audit(harmonic, x, transform="rotate:0,45", layers=[first], normalize=False)
    p = audit(plain, x, transform="rotate:0,45", layers=["0"], normalize=False)
    assert h.layers[first]["equivariance"].value < 0.25 * p.layers["0"]["equivariance"].value
    assert h.layer_info[first]["layout"] == "complex streams"
