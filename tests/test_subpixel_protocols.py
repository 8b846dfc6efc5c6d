"""Worst-case grids (shiftlab.measure.grid_protocols): specs and their bad forms, exact fractional shifts with
negative controls, worst-case accuracy on a model wrong under exactly one copy, audits end to end."""

import doctest
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import shiftlab.measure.grid_protocols as G
import shiftlab.measure.rows as R
from shiftlab import transforms as T
from shiftlab.errors import InputError, ShapeError
from shiftlab.measure import metrics as M
from shiftlab.measure.audit import audit
from shiftlab.measure.protocols import parse_protocol

SPECS = ["subpixel:3", "subpixel:2:bilinear", "halfpixel:2", "halfpixel:3:bilinear", "fractional:2", "intgrid:2",
         "cropattack:8:1"]


def band_limited(batch=2, channels=3, height=8, width=10, seed=0):
    """Random periodic images with no energy at the Nyquist frequencies: Fourier shifts compose exactly on them."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.fft.rfft2(torch.rand(batch, channels, height, width, generator=g, dtype=torch.float64))
    if height % 2 == 0:
        spectrum[..., height // 2, :] = 0
    if width % 2 == 0:
        spectrum[..., -1] = 0
    return torch.fft.irfft2(spectrum, s=(height, width))


def test_doctests():
    for module in (G, R):
        failures, attempted = doctest.testmod(module, verbose=False)
        assert attempted >= 1 and failures == 0


# ------------------------------------------------------------------------------------------- specs

@pytest.mark.parametrize("spec", SPECS + ["halfpixel", "fractional", "fractional:12", "subpixel:16"])
def test_spec_round_trips(spec):
    p = parse_protocol(spec)
    assert parse_protocol(p.spec()) == p
    d = p.to_dict()
    assert d["spec"] == p.spec() and d["copies"] == p.num_copies == len(p.parameters)
    assert json.loads(json.dumps(d)) == d
    assert p.default_metrics == ("worst_case_accuracy", "worst_case_stability")


def test_grid_sizes_follow_their_definitions():
    assert parse_protocol("subpixel:5").num_copies == 25
    assert parse_protocol("halfpixel:63").num_copies == 1 + 63 ** 2  # the anchor's half-pixel grid
    assert parse_protocol("intgrid:31").num_copies == 32 ** 2
    assert parse_protocol("cropattack:224:3").num_copies == 49
    # the m/n grid: one value per reduced fraction m/n, 1 <= m <= n <= N (sum of Euler's phi: 46 for N = 12)
    for n in (1, 5, 12):
        distinct = sum(math.gcd(m, k) == 1 for k in range(1, n + 1) for m in range(1, k + 1))
        values = G.fraction_values(n)
        assert len(values) == distinct and all(0 < v <= 1 for v in values)
        assert parse_protocol(f"fractional:{n}").num_copies == 1 + distinct ** 2
    assert parse_protocol("subpixel:4:fourier") == parse_protocol("subpixel:4") != parse_protocol("subpixel:4:bilinear")


@pytest.mark.parametrize("bad", ["subpixel:0", "subpixel", "subpixel:17", "subpixel:4:cubic", "subpixel:2:3",
                                 "halfpixel:0", "halfpixel:65", "halfpixel:x", "fractional:0", "fractional:13",
                                 "fractional:-2", "intgrid:0", "intgrid", "cropattack:8:0", "cropattack:8",
                                 "cropattack:0:2", "cropattack:8:2:1", "cropattack:8:33"])
def test_bad_specs_give_one_clear_line(bad):
    with pytest.raises(InputError) as info:
        parse_protocol(bad)
    message = str(info.value)
    assert "\n" not in message and repr(bad) in message


def test_constructors_refuse_bad_values():
    for make in (lambda: G.SubpixelGrid(0), lambda: G.FractionalGrid(0), lambda: G.HalfPixelGrid(2, "lanczos"),
                 lambda: G.CropAttack(8, 0), lambda: G.IntegerGrid(True)):
        with pytest.raises(InputError):
            make()


def test_a_grid_larger_than_the_image_is_refused():
    assert G.HalfPixelGrid(15).fits((8, 8)) is None  # shifts up to 7.5 px on an 8-px side
    assert "wraps around" in G.HalfPixelGrid(16).fits((8, 8))
    assert "wraps around" in G.HalfPixelGrid(16).fits((8, 40))  # the shorter side decides
    assert G.IntegerGrid(7).fits((8, 8)) is None and G.IntegerGrid(8).fits((8, 8))
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    for spec in ("halfpixel:16", "intgrid:8"):
        with pytest.raises(InputError, match="wraps around"):
            audit(MeanColour(), x, transform=spec, normalize=False)


# ------------------------------------------------------------------------------------------- the copies

@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 16), i=st.integers(0, 15), j=st.integers(0, 15), h=st.integers(5, 12),
       w=st.integers(5, 12), seed=st.integers(0, 50))
def test_fourier_fractional_shifts_round_trip_exactly(n, i, j, h, w, seed):
    x = band_limited(2, 2, h, w, seed)
    dy, dx = (i % n) / n, (j % n) / n
    moved = T.fourier_shift(x, dy, dx)
    assert (T.fourier_shift(moved, -dy, -dx) - x).abs().max() <= 1e-12
    # and they compose: two shifts by d are one shift by 2d
    assert (T.fourier_shift(moved, dy, dx) - T.fourier_shift(x, 2 * dy, 2 * dx)).abs().max() <= 1e-12


def test_subpixel_copies_are_fourier_shifts_that_return_to_the_image():
    x = band_limited(2, 3, 8, 10)
    p = G.SubpixelGrid(4)
    copies = p.make(x, torch.arange(2), 0)
    K = p.num_copies
    views = copies.inputs.view(K, 2, 3, 8, 10)
    assert torch.equal(views[0], x)  # copy 0: the image itself
    for k, (dy, dx) in enumerate(p.parameters):
        assert torch.equal(copies.shifts[:, k], torch.tensor([[dy, dx]] * 2, dtype=torch.float64))
        assert (views[k] - T.fourier_shift(x, dy, dx)).abs().max() <= 1e-12
        assert (T.fourier_shift(views[k], -dy, -dx) - x).abs().max() <= 1e-12
    some = p.make(x, torch.arange(2), 0, copies=[5, 2])  # any subset, in the order asked
    assert torch.equal(some.inputs, torch.cat([views[5], views[2]]))


def test_half_pixel_twice_is_a_whole_pixel_roll_and_whole_copies_are_exact_rolls():
    x = band_limited(1, 2, 8, 8)
    p = G.HalfPixelGrid(2)  # (0, 0), (.5, .5), (.5, 1), (1, .5), (1, 1)
    views = p.make(x, torch.arange(1), 0).inputs
    assert p.parameters[4] == (1.0, 1.0) and torch.equal(views[4:5], torch.roll(x, (1, 1), (-2, -1)))
    assert (T.fourier_shift(views[1:2], 0.5, 0.5) - views[4:5]).abs().max() <= 1e-12


def test_negative_controls_bilinear_and_nyquist_energy_do_not_round_trip():
    x = band_limited(2, 3, 8, 10)
    back = T.bilinear_shift(T.bilinear_shift(x, 1 / 3, 0.5), -1 / 3, -0.5)
    assert (back - x).abs().max() > 1e-2  # bilinear resampling blurs: no round trip
    rough = torch.rand(1, 1, 8, 8, dtype=torch.float64)  # energy at the Nyquist frequency
    assert (T.fourier_shift(T.fourier_shift(rough, 0.5, 0), -0.5, 0) - rough).abs().max() > 1e-3


def test_bilinear_shift_matches_its_definition():
    x = torch.rand(2, 1, 5, 6, dtype=torch.float64)
    dy, dx = torch.tensor([0.25, -1.5]), torch.tensor([2.75, 0.0])
    out = T.bilinear_shift(x, dy, dx)
    H, W = 5, 6
    for b in range(2):
        for i in range(H):
            for j in range(W):
                y, z = i - float(dy[b]), j - float(dx[b])
                y0, z0 = math.floor(y), math.floor(z)
                fy, fz = y - y0, z - z0
                v = sum(wy * wz * float(x[b, 0, (y0 + a) % H, (z0 + c) % W])
                        for a, wy in ((0, 1 - fy), (1, fy)) for c, wz in ((0, 1 - fz), (1, fz)))
                assert abs(float(out[b, 0, i, j]) - v) <= 1e-12
    assert torch.equal(T.bilinear_shift(x, torch.tensor([2.0, -3.0]), 1), T.circular_shift(x, torch.tensor([2, -3]), 1))


def test_crop_attack_copies_are_every_crop_centre_first():
    x = torch.rand(1, 2, 12, 12, dtype=torch.float64)
    p = G.CropAttack(8, 2)
    made = p.make(x, torch.arange(1), 0)
    assert made.inputs.shape == (25, 2, 8, 8)
    assert torch.equal(made.inputs[0], x[0, :, 2:10, 2:10]) and made.shifts[0, 0].tolist() == [0, 0]
    seen = set()
    for k, (sy, sx) in enumerate(made.shifts[0].tolist()):
        oy, ox = 2 - sy, 2 - sx  # window offset; the content moves by max_shift - offset
        assert torch.equal(made.inputs[k], x[0, :, oy:oy + 8, ox:ox + 8])
        seen.add((oy, ox))
    assert seen == {(a, b) for a in range(5) for b in range(5)}


def test_integer_grid_copies_are_circular_shifts():
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    p = G.IntegerGrid(2)
    made = p.make(x, torch.arange(2), 0)
    for k, (dy, dx) in enumerate(p.parameters):
        assert torch.equal(made.inputs[2 * k:2 * k + 2], torch.roll(x, (dy, dx), (-2, -1)))


# ------------------------------------------------------------------------------------------- layers

@pytest.mark.parametrize("spec, compared, unrepresentable", [
    ("halfpixel:2", 1, 3),  # of (.5, .5), (.5, 1), (1, .5), (1, 1) only (1, 1) is whole
    ("subpixel:2", 0, 3),
    ("fractional:2", 1, 3),
    ("intgrid:1", 3, 0),
    ("cropattack:8:1", 8, 0),
])
def test_fractional_pairs_are_never_compared_at_layers(spec, compared, unrepresentable):
    x = band_limited(3, 3, 10, 10)
    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.LazyLinear(3)).double()
    r = audit(model, x, transform=spec, normalize=False, layers=["0"], margin=0)
    eq = r.layers["0"]["equivariance"]
    assert eq.n == 3 * compared and eq.extra["unrepresentable"] == 3 * unrepresentable
    if compared:
        assert eq.value <= 1e-12


def test_negative_control_fractional_shifts_reported_as_whole_are_compared_wrongly():
    class Rounded(G.HalfPixelGrid):
        def make(self, images, indices, seed, copies=None):
            c = super().make(images, indices, seed, copies)
            return type(c)(c.inputs, c.shifts.floor().long(), c.num_copies)

    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.LazyLinear(3)).double()
    r = audit(model, band_limited(3, 3, 10, 10), transform=Rounded(2), normalize=False, layers=["0"], margin=0)
    eq = r.layers["0"]["equivariance"]
    assert eq.extra["unrepresentable"] == 0 and eq.value > 1e-2


# ------------------------------------------------------------------------------------------- worst-case accuracy

class MeanColour(nn.Module):
    """Class = the channel with the largest mean. Every circular shift, whole or fractional, Fourier or bilinear,
    keeps each channel's mean, so the model is correct under all copies of an image whose label is its brightest
    channel; ``poison`` (C, H, W), when given, is one input that gets the next class instead."""

    def __init__(self, poison=None):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0, dtype=torch.float64))
        self.poison = poison

    def forward(self, x):
        logits = self.scale * x.mean(dim=(-2, -1))
        if self.poison is not None:
            hit = (x - self.poison.to(x)).flatten(1).abs().amax(1) <= 1e-9
            logits = torch.where(hit[:, None], logits.roll(1, dims=1), logits)
        return logits


def coloured(batch=5, side=10, seed=0):
    """Images whose channel (index % 3) is brighter on average, and those labels."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.rand(batch, 3, side, side, generator=g, dtype=torch.float64)
    labels = torch.arange(batch) % 3
    x[torch.arange(batch), labels] += 0.5
    return x, labels


@pytest.mark.parametrize("spec, copy", [("subpixel:3", 5), ("halfpixel:2:bilinear", 2), ("fractional:2", 3),
                                        ("intgrid:2", 4), ("cropattack:8:1", 6)])
def test_worst_case_accuracy_counts_an_image_wrong_under_one_copy(spec, copy):
    x, labels = coloured()
    B, p = len(x), parse_protocol(spec)
    K = p.num_copies
    clean = audit(MeanColour(), (x, labels), transform=spec, normalize=False, metrics=[
        "worst_case_accuracy", "worst_case_stability", "accuracy"])
    assert clean.metrics["worst_case_accuracy"].value == 1.0 == clean.metrics["accuracy"].value
    poison = p.make(x[:1], torch.zeros(1, dtype=torch.long), 0, copies=[copy]).inputs[0]
    r = audit(MeanColour(poison), (x, labels), transform=spec, normalize=False, predictions=True,
              metrics=["worst_case_accuracy", "worst_case_stability", "accuracy"])
    top1 = torch.tensor(r.predictions()["top1"])
    assert (top1 != labels[:, None]).nonzero().tolist() == [[0, copy]]  # one copy of image 0, nothing else
    assert r.metrics["accuracy"].value == (B * K - 1) / (B * K)
    worst = r.metrics["worst_case_accuracy"]
    assert worst.value == (B - 1) / B and worst.n == B and worst.extra["images"] == B
    assert worst.ci == pytest.approx(M.wilson_interval(B - 1, B))  # one trial per image: the classical interval
    assert r.metrics["worst_case_stability"].value == (B - 1) / B


def test_worst_case_accuracy_uses_labelled_images_only_and_needs_labels():
    x, labels = coloured()
    labels[1] = -1  # an image without a label in the model's classes
    r = audit(MeanColour(), (x, labels), transform="subpixel:2", normalize=False)
    assert r.metrics["worst_case_accuracy"].n == len(x) - 1
    unlabelled = audit(MeanColour(), x, transform="subpixel:2", normalize=False)
    assert "worst_case_accuracy" not in unlabelled.metrics and "worst_case_accuracy" in unlabelled.omitted
    assert unlabelled.metrics["worst_case_stability"].n == len(x)
    with pytest.raises(InputError, match="worst_case_accuracy needs labels"):
        audit(MeanColour(), x, transform="subpixel:2", normalize=False, metrics=["worst_case_accuracy"])
    with pytest.raises(InputError, match="not defined for protocol"):
        audit(MeanColour(), (x, labels), transform="circular:2", normalize=False, metrics=["worst_case_accuracy"])
    with pytest.raises(ShapeError):
        R.worst_case_correct(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_worst_case_accuracy_on_the_integer_grid_matches_a_hand_count():
    # class = column of the brightest pixel // 4 on 16 px; a dot at column c stays in its class under shifts
    # 0..2 iff c % 4 <= 1 (the audit's existing grid:3 is the same grid as intgrid:2)
    class Column(nn.Module):
        def forward(self, x):
            col = x.sum(1).flatten(1).argmax(1) % x.shape[-1]
            return 10.0 * nn.functional.one_hot(col // 4, 4).to(x.dtype)

    cols = [0, 1, 2, 3, 5, 9]
    x = torch.zeros(len(cols), 3, 16, 16, dtype=torch.float64)
    x[torch.arange(len(cols)), :, 5, torch.tensor(cols)] = 1.0
    labels = torch.tensor([c // 4 for c in cols])
    r = audit(Column(), (x, labels), transform="intgrid:2", normalize=False)
    assert r.metrics["worst_case_accuracy"].value == sum(c % 4 <= 1 for c in cols) / len(cols)
    g = audit(Column(), (x, labels), transform="grid:3", normalize=False, metrics=["worst_case_accuracy"])
    assert g.metrics["worst_case_accuracy"].value == r.metrics["worst_case_accuracy"].value


# ------------------------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("spec", SPECS)
def test_audit_runs_end_to_end(spec, device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular"), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()
    x, labels = coloured(3, side=10)
    p = parse_protocol(spec)
    r = audit(model, (x, labels), transform=spec, normalize=False, batch_size=64, layers=["0"], device=device)
    assert r.protocol == p.to_dict() and parse_protocol(r.protocol["spec"]) == p
    assert set(r.metrics) == {"worst_case_accuracy", "worst_case_stability"}
    for value in r.metrics.values():
        assert value.n == 3 and value.extra["images"] == 3
        assert 0.0 <= value.ci[0] <= value.value <= value.ci[1] <= 1.0
    json.dumps(r.to_dict())
    layer = r.layers["0"]["equivariance"]
    assert layer.n + layer.extra["unrepresentable"] + layer.extra.get("margin_excluded", 0) == 3 * (p.num_copies - 1)


def test_the_anchors_fractional_grid_streams_through_the_engine():
    x, labels = coloured(2, side=6)
    r = audit(MeanColour(), (x, labels), transform="fractional", normalize=False, batch_size=500)
    assert r.protocol["copies"] == 2117 and r.protocol["spec"] == "fractional:12"
    assert r.metrics["worst_case_accuracy"].value == 1.0 and r.metrics["worst_case_accuracy"].n == 2
