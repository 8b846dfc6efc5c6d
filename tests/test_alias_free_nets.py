"""Alias-free networks (shiftlab.models.alias_free) and the "ideal" conversion (antialias(method="ideal")).

The networks' claims are checked in float64 against what they promise (:func:`shift_guarantee`): an all-alias-free
network is invariant to fractional circular shifts of band-limited inputs, and each choice that breaks the
promise is shown to break the invariance (negative controls). The conversion keeps a trained CNN's weights and
replaces its subsampling by ideal low-pass subsampling; it does not make the network alias-free.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from shiftlab.errors import InputError, ShapeError
from shiftlab.fix.antialias import antialias
from shiftlab.fix.recipe import METHOD_GUARANTEES, METHODS, parse_fix, recipe_spec
from shiftlab.layers import APSPool2d, BlurPool2d, IdealDownsample2d, band_limit
from shiftlab.models import alias_free_convnext, alias_free_resnet, shift_guarantee
from shiftlab.models.alias_free import ACTIVATIONS, NORMS, SUBSAMPLINGS
from shiftlab.transforms import fourier_shift

F64 = torch.float64
#: the exactness bound of a float64 network: rounding of a few FFTs and convs is ~1e-15 relative; 1e-9 leaves six
#: orders of magnitude of room and is still five below the smallest break of a negative control seen (~1e-4)
TOLERANCE = 1e-9
#: a negative control must deviate by at least this much: far above rounding, so a pass is not luck
BROKEN = 1e-6
#: fractional shifts (i/N, j/N) of one pixel, N = 4, and a few beyond one pixel
FRACTIONAL = [(1, 0), (0, 1), (1, 2), (3, 3), (5, 2), (2, 7)]


def build(kind: str, **kw):
    if kind == "convnext":
        return alias_free_convnext(kw.pop("depth", (1, 1, 1)), kw.pop("width", 4), 5, kernel_size=3, **kw)
    return alias_free_resnet(kw.pop("depth", (1, 1, 1)), kw.pop("width", 4), 5, **kw)


def fractional_gap(net, x, n: int = 4, shifts=FRACTIONAL) -> float:
    """Max relative change of the logits under the Fourier shifts (i/n, j/n) of ``x``."""
    with torch.no_grad():
        y = net(x)
        return max(((net(fourier_shift(x, i / n, j / n)) - y).abs().max() / y.abs().max()).item()
                   for i, j in shifts)


def integer_gap(net, x, shifts=((1, 0), (0, 1), (3, 5))) -> float:
    with torch.no_grad():
        y = net(x)
        return max(((net(torch.roll(x, s, (-2, -1))) - y).abs().max() / y.abs().max()).item() for s in shifts)


def band_limited(*shape, seed=0):
    torch.manual_seed(seed)
    return band_limit(torch.randn(*shape, dtype=F64))


# --- the property and its negative controls ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["resnet", "convnext"])
def test_alias_free_network_is_invariant_to_fractional_shifts_of_band_limited_inputs(kind, device):
    torch.manual_seed(1)
    net = build(kind).double().to(device).eval()
    assert net.guarantee == "fractional" and net.total_stride == 4
    x = band_limited(2, 3, 16, 16).to(device)
    assert fractional_gap(net, x) < TOLERANCE
    assert fractional_gap(net, x, n=3, shifts=[(1, 1), (2, 1)]) < TOLERANCE  # a grid not of the total stride
    # batch norm keeps the guarantee too: a per-channel affine map in eval mode, shift-invariant batch statistics
    # in training (the same shift applied to the whole batch)
    torch.manual_seed(1)
    batch_norm = build(kind, norm="batch").double().to(device)
    assert fractional_gap(batch_norm.eval(), x) < TOLERANCE
    assert fractional_gap(batch_norm.train(), x, shifts=FRACTIONAL[:2]) < TOLERANCE


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(["resnet", "convnext"]), h=st.integers(1, 4), w=st.integers(1, 4),
       dy=st.floats(-3, 3, allow_nan=False), dx=st.floats(-3, 3, allow_nan=False), seed=st.integers(0, 2**31 - 1))
def test_property_any_size_and_any_real_shift(kind, h, w, dy, dx, seed):
    """Random sizes (multiples of the total stride 2, odd periods included) and any real shift, not only a grid."""
    torch.manual_seed(seed)
    net = build(kind, depth=(1, 1), width=3).double().eval()
    x = band_limited(1, 3, 2 * h + 2, 2 * w + 2, seed=seed)
    with torch.no_grad():
        y = net(x)
        gap = ((net(fourier_shift(x, dy, dx)) - y).abs().max() / y.abs().max()).item()
    assert gap < TOLERANCE


@pytest.mark.parametrize("kind", ["resnet", "convnext"])
@pytest.mark.parametrize("change", [dict(subsampling="aps"), dict(subsampling="blur"), dict(activation="gelu"),
                                    dict(subsampling="stride"), dict(norm="layer"), dict(circular=False)],
                         ids=["aps", "blur", "gelu", "stride", "layer-norm", "zero-padding"])
def test_negative_controls_break_fractional_invariance(kind, change, device):
    torch.manual_seed(1)
    net = build(kind, **change).double().to(device).eval()
    assert net.guarantee != "fractional"
    x = band_limited(2, 3, 16, 16).to(device)
    assert fractional_gap(net, x) > BROKEN


def test_every_combination_keeps_exactly_the_guarantee_it_declares():
    """Over all 36 choices: fractional invariance holds iff declared; integer invariance iff fractional or APS."""
    x = band_limited(1, 2, 8, 8, seed=3)
    for subsampling, activation, norm in itertools.product(SUBSAMPLINGS, ACTIVATIONS, NORMS):
        torch.manual_seed(0)
        net = alias_free_resnet((1, 1), 2, 3, in_channels=2, subsampling=subsampling, activation=activation,
                                norm=norm).double().eval()
        declared = shift_guarantee(subsampling, activation, norm, True)
        assert net.guarantee == declared
        what = (subsampling, activation, norm)
        fractional = fractional_gap(net, x, shifts=[(1, 3)])
        assert (fractional < TOLERANCE) == (declared == "fractional"), (what, fractional)
        assert declared == "fractional" or fractional > BROKEN, (what, fractional)
        integer = integer_gap(net, x, shifts=[(1, 2)])
        assert (integer < TOLERANCE) == (declared in ("fractional", "integer")), (what, integer)


def test_aps_network_is_invariant_to_integer_shifts_only(device):
    torch.manual_seed(2)
    net = build("resnet", subsampling="aps").double().to(device).eval()
    x = band_limited(2, 3, 16, 16).to(device)
    assert net.guarantee == "integer"
    assert integer_gap(net, x) < TOLERANCE
    assert fractional_gap(net, x, n=2, shifts=[(1, 0), (0, 1)]) > BROKEN  # half-pixel shifts


# --- training, float32, sizes -------------------------------------------------------------------------------

VARIANTS = [dict(), dict(subsampling="stride", activation="relu", norm="batch"), dict(subsampling="blur"),
            dict(subsampling="aps", activation="gelu", norm="layer")]


@pytest.mark.parametrize("kind", ["resnet", "convnext"])
@pytest.mark.parametrize("variant", VARIANTS, ids=["alias-free", "plain", "blur", "aps"])
def test_variants_train_and_run_in_float32_at_32px(kind, variant):
    torch.manual_seed(0)
    net = build(kind, depth=(1, 1), **variant).train()
    x, labels = torch.randn(8, 3, 8, 8), torch.arange(8) % 5
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x), labels)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.stem.parameters())
    net.eval()
    with torch.no_grad():
        out = build(kind, depth=(1, 1, 1), **variant).eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 5) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["resnet", "convnext"])
def test_parameter_counts_of_one_size_are_close(kind):
    counts = {v: sum(p.numel() for p in build(kind, depth=(2, 2), width=16, **dict(zip(("subsampling",
              "activation", "norm"), v))).parameters()) for v in itertools.product(SUBSAMPLINGS, ACTIVATIONS, NORMS)}
    reference = counts[("ideal", "alias_free", "alias_free")]
    assert max(abs(c - reference) for c in counts.values()) <= 0.01 * reference, counts
    assert counts[("stride", "relu", "batch")] < reference  # the activations' coefficients are counted


def test_layers_are_the_chosen_ones():
    net = alias_free_resnet((1, 1, 1), 4, 5)
    assert sum(isinstance(m, IdealDownsample2d) for m in net.modules()) == 2
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.stride == (1, 1) and c.padding_mode == "circular" for c in convs)
    assert not any(isinstance(m, (nn.ReLU, nn.GELU, nn.BatchNorm2d)) for m in net.modules())
    for subsampling, layer in (("blur", BlurPool2d), ("aps", APSPool2d)):
        assert sum(isinstance(m, layer) for m in alias_free_convnext(3, 4, 5, subsampling=subsampling).modules()) == 2
    strided = alias_free_resnet(3, 4, 5, subsampling="stride", circular=False)
    assert sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in strided.modules()) == 2
    assert all(m.padding_mode == "zeros" for m in strided.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("kw, match", [
    (dict(depth=0), "depth"), (dict(depth=(2, 0)), r"depth\[1\]"), (dict(depth="22"), "depth"),
    (dict(depth=True), "depth"), (dict(depth=()), "depth"), (dict(width=0), "width"),
    (dict(num_classes=1.5), "num_classes"), (dict(in_channels=0), "in_channels"),
    (dict(subsampling="max"), "subsampling"), (dict(activation="tanh"), "activation"),
    (dict(norm="group"), "norm"), (dict(circular=1), "circular"),
])
@pytest.mark.parametrize("builder", [alias_free_resnet, alias_free_convnext])
def test_exception_on_bad_arguments(builder, kw, match):
    args = {**dict(depth=2, width=4, num_classes=3), **kw}
    with pytest.raises(InputError, match=match):
        builder(**args)


def test_exception_on_bad_convnext_options_and_bad_inputs():
    with pytest.raises(InputError, match="kernel_size"):
        alias_free_convnext(2, 4, 3, kernel_size=4)
    with pytest.raises(InputError, match="expansion"):
        alias_free_convnext(2, 4, 3, expansion=0)
    with pytest.raises(InputError, match="subsampling"):
        shift_guarantee("pool")
    net = alias_free_resnet(2, 4, 3)
    with pytest.raises(ShapeError, match="channels"):
        net(torch.randn(1, 1, 8, 8))
    with pytest.raises(ShapeError, match="multiple of the stride"):
        net(torch.randn(1, 3, 9, 9))  # ideal subsampling needs whole periods
    assert alias_free_resnet(2, 4, 3, subsampling="blur")(torch.randn(1, 3, 9, 9)).shape == (1, 3)


# --- antialias(method="ideal") ------------------------------------------------------------------------------

def test_ideal_conversion_of_resnet18_keeps_weights_and_subsamples_ideally():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    converted, report = antialias(model, "ideal")
    assert [r.name for r in report] == ["conv1", "maxpool", "layer2.0.conv1", "layer2.0.downsample.0",
                                        "layer3.0.conv1", "layer3.0.downsample.0", "layer4.0.conv1",
                                        "layer4.0.downsample.0"]
    assert sum(isinstance(m, IdealDownsample2d) for m in converted.modules()) == 8
    assert not any(isinstance(m, (BlurPool2d, nn.MaxPool2d)) for m in converted.modules())
    assert all(m.stride == (1, 1) for m in converted.modules() if isinstance(m, nn.Conv2d))
    original = model.state_dict()
    assert list(converted.state_dict()) == list(original)
    assert all(torch.equal(v, original[k]) for k, v in converted.state_dict().items())
    converted.load_state_dict(original, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = converted(x)
        blurred = antialias(model, "blur", keep_stem=False)[0](x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert (y - blurred).abs().max() > 1e-3 * y.abs().max()  # a different conversion, not blur renamed
    assert converted.shiftlab_fix["method"] == "ideal" and converted.shiftlab_fix["keep_stem"] is False


def test_ideal_conversion_subsamples_before_a_shared_relu_and_equals_the_reference():
    """torchvision reuses one ReLU per block: the ideal subsampling goes after bn1, before that ReLU (an ideal
    low-pass rings below zero, so the ReLU must not be applied twice); checked against the block written out."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().double().eval()
    converted, _ = antialias(model, "ideal")
    block, ref = converted.layer2[0], model.layer2[0]
    x = torch.randn(1, 64, 16, 16, dtype=F64)
    down = IdealDownsample2d(2)
    main = ref.bn2(ref.conv2(torch.relu(down(ref.bn1(nn.functional.conv2d(x, ref.conv1.weight, padding=1))))))
    shortcut = ref.downsample[1](nn.functional.conv2d(down(x), ref.downsample[0].weight))
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(main + shortcut), rtol=1e-12, atol=1e-12)


def test_ideal_conversion_is_not_alias_free():
    """The activations stay pointwise: a half-pixel shift of a band-limited input changes the converted network's
    logits (while the same shift leaves an alias-free network's unchanged, above)."""
    torch.manual_seed(0)
    converted, _ = antialias(torchvision.models.resnet18(num_classes=10).double().eval(), "ideal", circular=True)
    x = band_limited(1, 3, 32, 32)
    assert fractional_gap(converted, x, n=2, shifts=[(1, 0), (1, 1)]) > BROKEN


def test_ideal_recipe_spec_and_guarantees():
    assert "ideal" in METHODS and set(METHOD_GUARANTEES) == set(METHODS)
    assert "NOT alias-free" in METHOD_GUARANTEES["ideal"]
    assert parse_fix("ideal:circular") == {"method": "ideal", "circular": True}
    with pytest.raises(InputError, match="blur only"):
        parse_fix("ideal:before")
    with pytest.raises(InputError, match="placement='before' is for method='blur'"):
        antialias(torchvision.models.resnet18(), "ideal", placement="before")
    assert recipe_spec({"method": "ideal", "circular": True, "filter_size": 5, "keep_stem": True}) == \
        "ideal:circular (stem kept)"


def test_cli_fix_method_ideal_saves_a_checkpoint_that_reloads_as_the_conversion(tmp_path, capsys):
    from shiftlab import load_model
    from shiftlab.cli import main

    out = tmp_path / "ideal.pt"
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "ideal", "--circular", "--out", str(out)]) == 0
    assert "replaced, 0 kept (ideal, circular padding)" in capsys.readouterr().out
    loaded = load_model(out).eval()
    assert loaded.shiftlab_fix["method"] == "ideal" and loaded.shiftlab_fix["circular"] is True
    assert sum(isinstance(m, IdealDownsample2d) for m in loaded.modules()) == 8
    reference, _ = antialias(load_model("torchvision:resnet18"), "ideal", circular=True)
    reference.load_state_dict(torch.load(out, weights_only=True)["state_dict"], strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference.eval()(x), rtol=0, atol=0)


def test_doctests():
    import doctest

    import shiftlab.models.alias_free as module

    failures, attempted = doctest.testmod(module, verbose=False)
    assert attempted >= 3 and failures == 0
