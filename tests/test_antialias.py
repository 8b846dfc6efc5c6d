"""shiftlab.fix.antialias: the one-call conversion to BlurPool or APS, keeping every trained parameter."""

import copy
import io
import pickle

import pytest
import torch
import torchvision
from _models import make
from torch import nn

from shiftlab.errors import InputError
from shiftlab.fix.antialias import Replacement, antialias
from shiftlab.layers import APSPool2d, BlurPool2d, aps_phase, blur_pool2d

F64 = torch.float64
timm = pytest.importorskip("timm")


def relative_gap(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def circular_invariance_gap(model, x, shifts):
    with torch.no_grad():
        y = model(x)
        return max(relative_gap(model(torch.roll(x, s, (-2, -1))), y) for s in shifts)


SHIFTS = [(1, 0), (0, 1), (5, 3), (31, 17)]


# --- blur ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tv_resnet18", "tv_mobilenet_v2", "timm_resnet26d", "timm_lite0"])
def test_blur_with_filter_size_one_computes_the_original_function(name, device):
    model = make(name).double().to(device)
    converted, report = antialias(model, "blur", filter_size=1)
    assert report and all(isinstance(r, Replacement) for r in report)
    for size in (64, 49):  # odd sizes too: the stride-1 layers pad as their strided originals did
        x = torch.randn(2, 3, size, size, dtype=F64).to(device)
        with torch.no_grad():
            assert relative_gap(converted(x), model(x)) < 1e-12
    # negative control: a real blur changes the function
    blurred, _ = antialias(model, "blur", filter_size=3)
    with torch.no_grad():
        assert relative_gap(blurred(x), model(x)) > 1e-6  # far above the 1e-12 asserted above


@pytest.mark.parametrize("name", ["tv_resnet18", "timm_resnet26d"])
def test_blur_with_filter_size_one_has_the_original_gradients(name):
    """Same parameter gradients: the re-applied activations (in place) and the hooks do not disturb autograd.

    Eval mode: in train mode batch norm after a stride-1 conv takes its statistics over every position,
    not only the kept ones, so the converted function differs there by construction.
    """
    model = make(name).double()
    converted, _ = antialias(model, "blur", filter_size=1, keep_stem=False)
    x = torch.randn(3, 3, 48, 48, dtype=F64)
    weights = torch.randn(3, 1000, dtype=F64)
    grads = []
    for net in (model, converted):
        net.zero_grad()
        (net(x) * weights).sum().backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    assert list(grads[0]) == list(grads[1])
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["blur", "aps"])
def test_parameters_are_kept_and_the_original_state_dict_loads_strictly(method):
    model = make("timm_resnet26d")
    converted, _ = antialias(model, method, filter_size=3, circular=True)
    original = model.state_dict()
    assert list(converted.state_dict()) == list(original)
    for key, value in converted.state_dict().items():
        assert value.shape == original[key].shape and torch.equal(value, original[key])
    converted.load_state_dict(original, strict=True)
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in model.parameters())


def test_original_model_is_untouched_unless_inplace():
    model = make("tv_resnet18")
    converted, _ = antialias(model, "blur", keep_stem=False)
    assert model.conv1.stride == (2, 2) and isinstance(model.maxpool, nn.MaxPool2d)
    assert converted.conv1.stride == (1, 1)
    same, _ = antialias(model, "blur", inplace=True, keep_stem=False)
    assert same is model and model.conv1.stride == (1, 1)
    assert same.layer2[0].conv1.weight is model.layer2[0].conv1.weight


def test_blur_report_names_every_strided_layer_and_the_placement():
    model = make("tv_resnet18")
    _, report = antialias(model, "blur", filter_size=3, keep_stem=False)
    names = [r.name for r in report]
    strided = [n for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.MaxPool2d)) and m.stride not in (1, (1, 1))]
    assert names == strided
    by_name = {r.name: r for r in report}
    assert "stride=(2, 2)" in by_name["layer2.0.conv1"].before
    assert "after layer2.0.bn1, with layer2.0.relu applied first" in by_name["layer2.0.conv1"].after
    assert by_name["layer2.0.downsample.0"].after.startswith("BlurPool2d")  # shortcut: blurred first
    assert "after relu" in by_name["conv1"].after


def test_blur_goes_after_the_activation():
    """Block-level check: BasicBlock's conv1 -> bn1 -> relu -> blur, computed by hand."""
    model = make("tv_resnet18").double()
    converted, _ = antialias(model, "blur", filter_size=3)
    block, original = converted.layer2[0], model.layer2[0]
    x = torch.randn(1, 64, 16, 16, dtype=F64)
    with torch.no_grad():
        hidden = torch.relu(original.bn1(nn.functional.conv2d(x, original.conv1.weight, padding=1)))
        main = original.bn2(original.conv2(blur_pool2d(hidden, 3, 2, "reflect")))
        shortcut = original.downsample[1](nn.functional.conv2d(blur_pool2d(x, 3, 2, "reflect"),
                                                               original.downsample[0].weight))
        want = torch.relu(main + shortcut)
        torch.testing.assert_close(block(x), want, rtol=1e-12, atol=1e-12)


def test_blur_raises_shift_consistency_of_a_network(device):
    """Outputs of a blur-converted network change less under 1-pixel circular shifts than the original's."""
    model = make("tv_resnet18").to(device)
    blurred, _ = antialias(model, "blur", filter_size=5)
    torch.manual_seed(1)
    x = nn.functional.avg_pool2d(torch.randn(4, 3, 68, 68), 5, 1).to(device)  # smooth, image-like inputs

    def mean_change(net):
        with torch.no_grad():
            y = net(x)
            return sum(relative_gap(net(torch.roll(x, s, (-2, -1))), y) for s in [(0, 1), (1, 0), (1, 1), (0, 3)])

    assert mean_change(blurred) < 0.5 * mean_change(model)


@pytest.mark.parametrize("method", ["blur", "aps"])
def test_converted_models_still_train(method):
    model = make("tv_resnet18")
    converted, _ = antialias(model, method, filter_size=3)
    converted.train()
    torch.manual_seed(2)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    optimizer = torch.optim.SGD(converted.parameters(), lr=0.01)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(converted(x), labels)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert converted.conv1.weight.grad.abs().sum() > 0 and converted.layer4[0].downsample[0].weight.grad.abs().sum() > 0
    assert losses[-1] < losses[0]


def test_converted_model_survives_deepcopy_and_pickling():
    model = make("tv_resnet18")
    converted, _ = antialias(model, "aps", filter_size=3, circular=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = converted(x)
        for clone in (copy.deepcopy(converted), pickle.loads(pickle.dumps(converted))):
            assert torch.equal(clone(x), y)
            assert clone.layer2[0].conv1.weight is not converted.layer2[0].conv1.weight
    buffer = io.BytesIO()
    torch.save(converted.state_dict(), buffer)
    buffer.seek(0)
    fresh, _ = antialias(make("tv_resnet18"), "aps", filter_size=3, circular=True)
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), y)


def test_exclude_leaves_named_layers_strided():
    model = make("tv_resnet18")
    converted, report = antialias(model, "blur", exclude=("layer2.0.conv1",))
    assert converted.layer2[0].conv1.stride == (2, 2) and "layer2.0.conv1" not in [r.name for r in report]
    assert converted.layer3[0].conv1.stride == (1, 1)
    with pytest.raises(InputError):
        antialias(model, "blur", exclude=("no_such_layer",))


@pytest.mark.parametrize("key", ["tv_resnet18", "tv_mobilenet_v2"])
def test_blur_keeps_the_stem_strided_by_default_and_aps_does_not(key):
    """Zhang (2019) and timm leave the stem conv strided; APS must convert it for exact invariance."""
    model = make(key)
    stem = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    blurred, report = antialias(model, "blur")
    assert blurred.get_submodule(stem).stride == (2, 2)
    assert report[0].name == stem and report[0].after.startswith("kept strided")
    converted, _ = antialias(model, "blur", keep_stem=False)
    assert converted.get_submodule(stem).stride == (1, 1)
    aps, report = antialias(model, "aps")
    assert aps.get_submodule(stem).stride == (1, 1) and not report[0].after.startswith("kept strided")


# --- APS -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tv_resnet18", "timm_resnet26d", "timm_regnetx_002", "timm_lite0"])
def test_aps_circular_is_exactly_invariant_to_circular_shifts(name, device):
    model = make(name).to(device)
    converted, _ = antialias(model, "aps", filter_size=1, circular=True)
    x = torch.randn(2, 3, 64, 64).to(device)
    assert circular_invariance_gap(converted, x, SHIFTS) < 1e-5
    assert circular_invariance_gap(converted.double(), x.double(), SHIFTS) < 1e-10
    # negative control: the original model is not invariant
    assert circular_invariance_gap(model.double(), x.double(), SHIFTS[:2]) > 1e-4


def test_aps_negative_controls_without_circular_padding_or_without_phase_sharing(monkeypatch, device):
    model = make("tv_resnet18").double().to(device)
    x = torch.randn(2, 3, 64, 64, dtype=F64).to(device)
    not_circular, _ = antialias(model, "aps", filter_size=3, circular=False)
    assert circular_invariance_gap(not_circular, x, SHIFTS[:2]) > 1e-4
    shared, _ = antialias(model, "aps", filter_size=3, circular=True)
    assert circular_invariance_gap(shared, x, SHIFTS[:2]) < 1e-10
    import shiftlab.fix.antialias as module
    monkeypatch.setattr(module, "_find_blocks", lambda *args: {})
    # (with filter_size=1 the branches of these random-weight blocks happen to pick the same phases anyway)
    unshared, report = antialias(model, "aps", filter_size=3, circular=True)
    assert not any("phase" in r.after for r in report)
    assert circular_invariance_gap(unshared, x, SHIFTS + [(3, 0), (0, 7), (2, 2), (6, 6)]) > 1e-4


def test_aps_main_branch_and_shortcut_use_the_phase_of_the_block_input():
    converted, report = antialias(make("timm_resnet26d"), "aps", filter_size=1, circular=True)
    block = converted.layer3[0]
    assert any(r.name == "layer3.0" and "layer3.0.conv2" in r.after and "layer3.0.downsample.0" in r.after
               for r in report)
    layers = [m for m in block.modules() if isinstance(m, APSPool2d)]
    assert len(layers) == 2 and layers[0].shared is layers[1].shared is not None
    seen, inputs = [], []
    block.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    for layer in layers:
        layer.register_forward_hook(lambda m, a, o: seen.append(m.shared.current().clone()))
    with torch.no_grad():
        converted(torch.randn(3, 3, 64, 64))
    assert len(seen) == 2 and torch.equal(seen[0], seen[1]) and torch.equal(seen[0], aps_phase(inputs[0]))


def test_aps_moves_every_stride_and_circular_pads_everything():
    converted, report = antialias(make("tv_mobilenet_v2"), "aps", filter_size=3, circular=True)
    strided = [n for n, m in converted.named_modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert strided == []
    assert sum(isinstance(m, APSPool2d) for m in converted.modules()) == 5
    padded = [m for m in converted.modules() if isinstance(m, nn.Conv2d) and m.padding != (0, 0)]
    assert padded and all(m.padding_mode == "circular" for m in padded)
    assert all(not isinstance(m, BlurPool2d) for m in converted.modules())
    assert any(r.after.endswith("with circular padding") for r in report)


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


@pytest.mark.parametrize("model, method, match", [
    (Inception(), "aps", "in parallel"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, stride=(2, 1))), "blur", "square"),
    (nn.Sequential(nn.LPPool2d(2, 2)), "blur", "LPPool2d"),
    (nn.Sequential(nn.Conv2d(3, 4, 3)), "lanczos", "method"),
    ("resnet18", "blur", "nn.Module"),
])
def test_antialias_exception_on_unsupported_models_and_arguments(model, method, match):
    with pytest.raises(InputError, match=match):
        antialias(model, method)
    with pytest.raises(InputError, match="filter_size"):
        antialias(nn.Sequential(nn.Conv2d(3, 4, 3)), "blur", filter_size=8)


def test_inception_blur_is_fine():
    converted, report = antialias(Inception(), "blur")
    assert [r.name for r in report] == ["a", "b"]
    assert converted(torch.randn(1, 3, 16, 16)).shape == (1, 7, 8, 8)


# --- the dense pools the conversion uses ---------------------------------------------------------------------

POOL_CONFIGS = [(k, s, p, d, ceil) for k in (1, 2, 3, 4) for s in (1, 2, 3) for p in range(k // 2 + 1)
                for d in (1, 2) for ceil in (False, True) if not (k == 1 and d == 2)]


@pytest.mark.parametrize("k, s, p, d, ceil", POOL_CONFIGS)
def test_dense_pool_samples_are_the_pool_and_gradients_agree(k, s, p, d, ceil):
    from shiftlab.fix._ops import DensePool2d

    torch.manual_seed(k * 100 + s * 10 + p)
    pools = [nn.MaxPool2d(k, s, p, dilation=d, ceil_mode=ceil)]
    if d == 1:
        pools += [nn.AvgPool2d(k, s, p, ceil_mode=ceil), nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=False)]
    for pool in pools:
        for size in ((9, 11), (8, 8)):
            x = torch.randn(2, 3, *size, dtype=F64, requires_grad=True)
            want = pool(x)
            dense = DensePool2d(pool)(x)
            got = dense[..., ::s, ::s]
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            weights = torch.randn_like(want)
            (grad_want,) = torch.autograd.grad((want * weights).sum(), x)
            (grad_got,) = torch.autograd.grad((got * weights).sum(), x)
            torch.testing.assert_close(grad_got, grad_want, rtol=1e-12, atol=1e-12)
            with torch.no_grad():  # the in-place fast path gives the same numbers
                assert torch.equal(DensePool2d(pool)(x), dense.detach())


# --- blur before the strided conv (placement="before", MosaicML Composer's blur_first) ------------------------

@pytest.mark.parametrize("name", ["tv_resnet18", "tv_mobilenet_v2", "timm_resnet26d", "timm_lite0"])
def test_blur_before_with_filter_size_one_is_the_original_function(name):
    model = make(name).double()
    converted, report = antialias(model, "blur", filter_size=1, placement="before", keep_stem=False)
    assert report
    x = torch.randn(2, 3, 49, 49, dtype=F64)
    with torch.no_grad():
        got, want = converted(x), model(x)
    if name in ("tv_resnet18", "tv_mobilenet_v2"):  # every conv runs as before and max pools are exact: bit for bit
        assert torch.equal(got, want)
    assert relative_gap(got, want) < 1e-12
    # negative control: a real blur before the conv changes the function
    blurred, _ = antialias(model, "blur", filter_size=3, placement="before")
    with torch.no_grad():
        assert relative_gap(blurred(x), want) > 1e-6


def test_blur_before_keeps_strides_and_blurs_each_strided_conv_input():
    model = make("tv_resnet18").double()
    converted, report = antialias(model, "blur", filter_size=3, placement="before")
    by_name = {r.name: r for r in report}
    block, original = converted.layer2[0], model.layer2[0]
    assert block.conv1.stride == (2, 2) and converted.conv1.stride == (2, 2)  # the stem is kept, as with "after"
    assert by_name["layer2.0.conv1"].after.startswith("BlurPool2d(filter_size=3, stride=1")
    assert "stride=(2, 2)" in by_name["layer2.0.conv1"].after
    assert by_name["layer2.0.downsample.0"].after.startswith("BlurPool2d(filter_size=3, stride=2")  # as "after"
    assert isinstance(converted.maxpool[1], BlurPool2d)  # pools as Zhang's
    x = torch.randn(1, 64, 16, 16, dtype=F64)
    with torch.no_grad():  # BasicBlock by hand: blur (stride 1), then the strided conv
        hidden = torch.relu(original.bn1(nn.functional.conv2d(blur_pool2d(x, 3, 1, "reflect"), original.conv1.weight,
                                                              stride=2, padding=1)))
        main = original.bn2(original.conv2(hidden))
        shortcut = original.downsample[1](nn.functional.conv2d(blur_pool2d(x, 3, 2, "reflect"),
                                                               original.downsample[0].weight))
        torch.testing.assert_close(block(x), torch.relu(main + shortcut), rtol=1e-12, atol=1e-12)
    converted.load_state_dict(model.state_dict(), strict=True)
    assert list(converted.state_dict()) == list(model.state_dict())


def test_blur_before_raises_shift_consistency_of_a_network():
    """As test_blur_raises_shift_consistency_of_a_network, for the cheaper placement; filter 1 is the control."""
    model = make("tv_resnet18")
    torch.manual_seed(1)
    x = nn.functional.avg_pool2d(torch.randn(4, 3, 68, 68), 5, 1)

    def mean_change(net):
        with torch.no_grad():
            y = net(x)
            return sum(relative_gap(net(torch.roll(x, s, (-2, -1))), y) for s in [(0, 1), (1, 0), (1, 1), (0, 3)])

    blurred, _ = antialias(model, "blur", filter_size=5, placement="before")
    unblurred, _ = antialias(model, "blur", filter_size=1, placement="before")
    assert mean_change(blurred) < 0.5 * mean_change(model)
    assert mean_change(unblurred) == pytest.approx(mean_change(model), rel=1e-6)  # negative control


def test_blur_before_with_circular_padding_and_same_convs():
    model = make("timm_lite0").double()
    converted, report = antialias(model, "blur", filter_size=3, placement="before", circular=True)
    convs = [m for m in converted.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert convs and all(type(m).__name__ == "SamePaddedConv2d" and m.pad_mode == "circular" for m in convs
                         if m.kernel_size != (1, 1))
    blurs = [m for m in converted.modules() if isinstance(m, BlurPool2d) and m.stride == 1]
    assert blurs and all(m.padding_mode == "circular" for m in blurs)
    # circular padding everywhere and a total stride of 32: invariant to shifts by multiples of 32
    x = torch.randn(2, 3, 64, 64, dtype=F64)
    assert circular_invariance_gap(converted, x, [(32, 0), (0, 32)]) < 1e-10
    assert circular_invariance_gap(converted, x, [(1, 0)]) > 1e-4  # and not to others: blur is not APS


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="aps", placement="before"), "placement='before' is for method='blur'"),
    (dict(method="blur", placement="first"), "placement must be one of after, before"),
    (dict(method="blur", placement=None), "placement"),
])
def test_antialias_exception_on_bad_placement(kwargs, match):
    with pytest.raises(InputError, match=match):
        antialias(make("tv_resnet18"), **kwargs)


def test_cli_fix_placement_flag_converts_and_says_how_to_load(tmp_path, capsys):
    from shiftlab.cli import main

    out = tmp_path / "fixed.pt"
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "blur", "--placement", "before",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "stride=1, padding_mode='reflect') first, then Conv2d(64, 128" in text
    assert "the recipe (blur:before)" in text  # saved with the weights
    model, _ = antialias(torchvision.models.resnet18(), "blur", placement="before")
    model.load_state_dict(torch.load(out, weights_only=True)["state_dict"], strict=True)
    import shiftlab

    assert shiftlab.load_model(out).shiftlab_fix["placement"] == "before"
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "blur", "--placement", "first",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "--placement: invalid choice: 'first'" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "aps", "--placement", "before",
                 "--out", str(tmp_path / "y.pt")]) == 2
    assert "placement='before' is for method='blur'" in capsys.readouterr().err
