"""shiftlab.certify: exact invariance to circular shifts, checked in float64 with negative controls."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from shiftlab.errors import InputError, ShapeError
from shiftlab.fix.certify import CertifyResult, assert_certified, certify, period_shifts
from shiftlab.fix.certify_setup import _roll_per_sample


def strided_circular_net(stride: int = 2) -> nn.Module:
    """Circular padding everywhere, one plain strided conv, global pooling: invariant only to shifts that are
    multiples of the stride."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=stride, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))


class PolyphaseMax(nn.Module):
    """A minimal adaptive polyphase subsampling (keep the 2x2 phase of largest norm), written here so certify
    can be tested without depending on shiftlab.layers."""

    def forward(self, x):
        phases = torch.stack([x[..., i::2, j::2] for i in range(2) for j in range(2)], dim=1)
        best = phases.flatten(2).norm(dim=2).argmax(dim=1)
        return phases[torch.arange(x.shape[0]), best]


def adaptive_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"), nn.ReLU(), PolyphaseMax(),
        nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular"), nn.ReLU(), PolyphaseMax(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))


# ---- feature: exactness in float64 with negative controls -------------------------------------------------

def test_feature_multiples_of_the_stride_pass_odd_shifts_fail(device):
    net = strided_circular_net().to(device)
    even = certify(net, (12, 12), shifts=[(2, 0), (0, 4), (6, 10)])
    assert even.passed and even.max_rel_deviation <= 1e-10
    odd = certify(net, (12, 12), shifts=[(2, 0), (1, 0), (0, 4)])
    assert not odd.passed and odd.max_rel_deviation > 1e-3
    assert odd.worst_shift == (1, 0)


def test_feature_full_period_of_a_polyphase_net_passes_and_plain_subsampling_fails(device):
    # inspect sees PolyphaseMax as an unknown subsampling leaf, so the period is that of stride 4
    exact = certify(adaptive_net(), (16, 16), batch=32, device=device)
    assert exact.total_stride == (4, 4) and exact.full_period
    assert exact.shifts_checked == 15 and exact.max_rel_deviation <= 1e-10
    plain = nn.Sequential(*[nn.AvgPool2d(1, stride=2) if isinstance(m, PolyphaseMax) else m for m in adaptive_net()])
    control = certify(plain, (16, 16), batch=32, device=device)
    assert control.total_stride == (4, 4) and control.full_period and control.shifts_checked == 15
    assert control.max_rel_deviation > 1e-3


def test_feature_float32_deviation_is_within_float32_tolerance(device):
    result = certify(adaptive_net(), (16, 16), shifts=period_shifts(4), dtype=torch.float32, device=device)
    assert result.dtype == "float32" and result.tolerance == 1e-5
    assert result.max_rel_deviation <= 1e-5


@settings(max_examples=15, deadline=None)
@given(dy=st.integers(-20, 20), dx=st.integers(-20, 20))
def test_property_strided_net_is_invariant_exactly_at_multiples_of_its_stride(dy, dx):
    result = certify(strided_circular_net(), (8, 8), shifts=[(dy, dx)], n_inputs=1)
    assert result.passed == (dy % 2 == 0 and dx % 2 == 0)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 4), h=st.integers(1, 7), w=st.integers(1, 7), data=st.data())
def test_property_per_sample_roll_matches_torch_roll(b, h, w, data, device):
    x = torch.randn(b, 2, h, w, dtype=torch.float64).to(device)
    dy = torch.tensor(data.draw(st.lists(st.integers(-10, 10), min_size=b, max_size=b))).to(device)
    dx = torch.tensor(data.draw(st.lists(st.integers(-10, 10), min_size=b, max_size=b))).to(device)
    out = _roll_per_sample(x, dy, dx)
    for i in range(b):
        assert torch.equal(out[i], torch.roll(x[i], (int(dy[i]), int(dx[i])), (-2, -1)))


# ---- cardinality: which shifts are checked --------------------------------------------------------------

def test_cardinality_period_shifts():
    shifts = period_shifts((4, 2))
    assert shifts.shape == (7, 2)
    assert {tuple(s) for s in shifts.tolist()} == {(i, j) for i in range(4) for j in range(2)} - {(0, 0)}
    assert period_shifts(1).tolist() == [[0, 1], [1, 0], [1, 1]]
    assert period_shifts(3, include_zero=True).shape == (9, 2)


def test_cardinality_sampled_shifts_include_the_odd_shift_and_are_seeded():
    net = strided_circular_net(stride=2)
    a = certify(net, (8, 8), shifts=2, seed=3)
    assert a.shifts_checked == 2 and not a.full_period
    assert not a.passed  # (1, 1) is always in the sample, and this net is not invariant to it
    assert certify(net, (8, 8), shifts=100).shifts_checked == 3  # more than the period: the whole period
    assert certify(net, (8, 8), shifts=100).full_period


def test_smoke_result_fields_and_model_untouched():
    net = strided_circular_net()
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    result = certify(net, 8, shifts=[(2, 2)], n_inputs=3)
    assert isinstance(result, CertifyResult)
    assert result.n_inputs == 3 and result.input_size == (8, 8) and result.total_stride == (2, 2)
    assert set(result.to_dict()) >= {"max_abs_deviation", "max_rel_deviation", "worst_shift", "passed"}
    assert net.training and next(net.parameters()).dtype == torch.float32
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))


def test_assert_certified_passes_and_fails(device):
    net = strided_circular_net().to(device)
    assert assert_certified(net, 8, shifts=[(2, 4)]).passed
    with pytest.raises(AssertionError, match="not invariant"):
        assert_certified(net, 8, shifts=[(1, 0)])


# ---- exception --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shifts", ["all", 0, True, [(1, 2, 3)], [], [(0.5, float("nan"))]])
def test_exception_bad_shifts(shifts):
    with pytest.raises(InputError):
        certify(strided_circular_net(), 8, shifts=shifts)


def test_exception_bad_dtype_and_model():
    with pytest.raises(ShapeError):
        certify(strided_circular_net(), 8, dtype=torch.int64)
    with pytest.raises(InputError):
        certify("resnet18", 8)


def test_exception_model_not_returning_a_tensor():
    class DictOut(nn.Module):
        def forward(self, x):
            return {"logits": x.mean((2, 3))}

    with pytest.raises(InputError, match="one tensor"):
        certify(DictOut(), 8, shifts=[(1, 1)], channels=3)


# ---- non-finite outputs never pass (issue 12) --------------------------------------------------------------

class Broken(nn.Module):
    """A circular, exactly invariant net whose output is made NaN or Inf: everywhere, or only for some inputs."""

    def __init__(self, how):
        super().__init__()
        self.net = adaptive_net()
        self.how = how

    def forward(self, x):
        y = self.net(x)
        if self.how == "nan":
            return y * float("nan")
        if self.how == "inf":
            return y + float("inf")
        # NaN only where the top-left pixel is negative: the unshifted output can be finite, some shifted ones not
        return y + torch.log(x[:, :1, 0, 0]) * 0


@pytest.mark.parametrize("how", ["nan", "inf", "some"])
def test_feature_non_finite_outputs_fail_certification(how):
    net = Broken(how)
    result = certify(net, (8, 8), n_inputs=2)
    assert not result.passed
    assert result.non_finite > 0 and "NaN or Inf" in result.reason
    assert result.max_rel_deviation == float("inf") and result.max_abs_deviation == float("inf")
    d = result.to_dict()
    assert d["passed"] is False and d["max_rel_deviation"] is None and d["non_finite"] == result.non_finite
    import json
    json.loads(json.dumps(d, allow_nan=False))  # strict JSON
    with pytest.raises(AssertionError, match="NaN or Inf"):
        assert_certified(net, (8, 8))
    # negative control: the same net without the breakage is certified, with no reason given
    fine = certify(net.net, (8, 8))
    assert fine.passed and fine.non_finite == 0 and fine.reason is None


def test_feature_cli_fix_certify_reports_a_nan_model_as_not_certified(tmp_path, capsys):
    from shiftlab.cli import main

    factory = tmp_path / "nan_net.py"
    factory.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)\n"
        "    def forward(self, x):\n"
        "        return self.conv(x).mean((2, 3)) * float('nan')\n"
        "def make():\n"
        "    return Net()\n")
    code = main(["fix", "--model", f"{factory}:make", "--method", "aps", "--circular", "--out",
                 str(tmp_path / "fixed.pt"), "--certify", "16", "16"])
    out = capsys.readouterr().out
    line = [l for l in out.splitlines() if l.startswith("certify")][0]
    assert code == 0 and "NOT certified" in line and "NaN or Inf" in line and ": invariant" not in line


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_inputs="a"), "n_inputs"), (dict(n_inputs=0), "n_inputs"), (dict(n_inputs=2.5), "n_inputs"),
    (dict(batch=True), "batch"), (dict(batch=0), "batch"), (dict(seed=-1), "seed"), (dict(seed="0"), "seed"),
    (dict(channels="3"), "channels"), (dict(channels=0), "channels"),
])
def test_exception_bad_counts_name_the_argument(kwargs, name):
    with pytest.raises(InputError, match=name) as info:
        certify(strided_circular_net(), 8, **kwargs)
    assert "\n" not in str(info.value)


def test_feature_a_list_with_floats_is_fractional_and_an_integer_list_stays_integer():
    # [(0.5, 1.0)] was refused before fractional shifts existed; it is now a Fourier shift of band-limited inputs
    net = strided_circular_net()
    fractional = certify(net, 8, shifts=[(0.5, 1.0)], n_inputs=1)
    assert fractional.shift_kind == "fractional" and fractional.fractional_shifts == ((0.5, 1.0),)
    assert fractional.band_limit == 1.0 and fractional.tolerance == 1e-9
    assert not fractional.passed  # a strided net: a half-pixel shift changes its logits
    integer = certify(net, 8, shifts=[(2, 4)], n_inputs=1)
    assert integer.shift_kind == "integer" and integer.passed and integer.band_limit is None
    assert integer.worst_shift == (2, 4) and all(isinstance(v, int) for v in integer.worst_shift)
