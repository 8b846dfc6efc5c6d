"""One assertion style, one error rule, and the device fixture.

Every public ``assert_*`` measures through its public measure function, returns what that measured, raises a
plain ``AssertionError`` carrying the measured value, and hides its frame from pytest tracebacks. Bad argument
values raise ``InputError``; bad tensors raise ``ShapeError`` (see ``shiftlab.errors``).
"""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from shiftlab.equivariance import assert_equivariant, assert_invariant, equivariance_error, invariance_error
from shiftlab.errors import ArgumentShapeError, InputError, ShapeError
from shiftlab.fix.certify import assert_certified, certify
from shiftlab.layers import (APSPool2d, BlurPool2d, LiftConv2d, aps_pool2d, binomial_filter, blur_pool2d,
                             check_filter_size, group_pool)
from shiftlab.measure.assertions import (WorstShift, assert_shift_equivariant, assert_shift_invariant,
                                         shift_equivariance_error, shift_invariance_error)
from shiftlab.measure.inspect import check_input_size, inspect

F64 = torch.float64
ASSERTIONS = [assert_equivariant, assert_invariant, assert_shift_equivariant, assert_shift_invariant,
              assert_certified]


def roll(dy, dx):
    return lambda t: torch.roll(t, (dy, dx), dims=(-2, -1))


def circular_conv(stride=1):
    torch.manual_seed(0)
    return nn.Conv2d(2, 3, 3, stride=stride, padding=1, padding_mode="circular").double()


def zero_padded_conv():
    torch.manual_seed(0)
    return nn.Conv2d(2, 3, 3, padding=1).double()


def strided_net(stride=2):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=stride, padding=1, padding_mode="circular"),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def pooled(conv):
    return lambda t: conv(t).mean(dim=(-2, -1))


def image(seed=0):
    return torch.rand(2, 2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(seed))


# ---- feature: each assert_* returns the value of its measure function ------------------------------------

def test_feature_assert_equivariant_and_invariant_return_the_measured_error(device):
    x = image().to(device)
    conv = circular_conv().to(device)
    assert assert_equivariant(conv, x, roll(1, 2)) == equivariance_error(conv, x, roll(1, 2))
    f = pooled(conv)
    assert assert_invariant(f, x, roll(3, 1)) == invariance_error(f, x, roll(3, 1))


def test_feature_assert_shift_equivariant_and_invariant_return_the_worst_shift(device):
    x = image().to(device)
    conv = circular_conv(stride=2).to(device)
    measured = assert_shift_equivariant(conv, x)
    assert isinstance(measured, WorstShift) and measured == shift_equivariance_error(conv, x)
    assert measured.stride == (2, 2) and measured.shifts_checked == 4 and measured.rel_error <= 1e-10
    f = pooled(circular_conv().to(device))
    assert assert_shift_invariant(f, x, shifts=[(1, 0), (2, 5)]) == shift_invariance_error(f, x, [(1, 0), (2, 5)])


def test_feature_assert_certified_returns_the_certify_result(device):
    net = strided_net().to(device)
    assert assert_certified(net, 8, shifts=[(2, 4)]) == certify(net, 8, shifts=[(2, 4)])


# ---- exception: a failing case is an AssertionError carrying the measured value ---------------------------

def _failure(call) -> str:
    with pytest.raises(AssertionError) as info:
        call()
    assert type(info.value) is AssertionError
    return str(info.value)


def test_exception_failing_equivariance_names_the_measured_error():
    x, f = image(), zero_padded_conv()
    err = equivariance_error(f, x, roll(1, 2))
    assert f"{err.max_abs:.3e}" in _failure(lambda: assert_equivariant(f, x, roll(1, 2)))
    err = invariance_error(f, x, roll(1, 2))
    assert f"{err.max_abs:.3e}" in _failure(lambda: assert_invariant(f, x, roll(1, 2)))


def test_exception_failing_shift_assertions_name_the_measured_error():
    x, f = image(), zero_padded_conv()
    measured = shift_equivariance_error(f, x)
    assert measured.rel_error > 1e-3
    assert f"{measured.rel_error:.3g}" in _failure(lambda: assert_shift_equivariant(f, x))
    position = lambda t: f(t)[..., 0, 0]  # noqa: E731
    measured = shift_invariance_error(position, x)
    assert f"{measured.rel_error:.3g}" in _failure(lambda: assert_shift_invariant(position, x))


def test_exception_failing_certificate_names_the_measured_deviation():
    net = strided_net()
    result = certify(net, 8, shifts=[(1, 0)])
    assert not result.passed
    assert f"{result.max_rel_deviation:.3g}" in _failure(lambda: assert_certified(net, 8, shifts=[(1, 0)]))


# ---- feature: their frames are hidden from pytest tracebacks ---------------------------------------------

@pytest.mark.parametrize("assertion", ASSERTIONS, ids=lambda f: f.__name__)
def test_feature_each_assertion_hides_its_frame(assertion):
    assert "__tracebackhide__" in assertion.__code__.co_varnames


def test_feature_a_failing_assertion_traceback_ends_in_the_test_not_in_shiftlab(tmp_path):
    inner = tmp_path / "test_inner.py"
    inner.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from shiftlab.equivariance import assert_equivariant
        from shiftlab.measure.assertions import assert_shift_equivariant

        def test_fails_equivariant():
            conv = nn.Conv2d(2, 3, 3, padding=1).double()
            assert_equivariant(conv, torch.rand(1, 2, 8, 8, dtype=torch.float64), lambda t: t.roll(1, -1))

        def test_fails_shift_equivariant():
            conv = nn.Conv2d(2, 3, 3, padding=1).double()
            assert_shift_equivariant(conv, torch.rand(1, 2, 8, 8, dtype=torch.float64))
    """))
    run = subprocess.run([sys.executable, "-m", "pytest", str(inner), "-q", "-p", "no:cacheprovider",
                          "--tb=long", "-p", "no:randomly"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    out = run.stdout + run.stderr
    assert "2 failed" in out and "AssertionError: not equivariant" in out and "not shift-equivariant" in out
    assert "shiftlab/equivariance.py" not in out and "shiftlab/measure/assertions.py" not in out


# ---- exception: argument values raise InputError, tensors raise ShapeError --------------------------------

@pytest.mark.parametrize("bad", [
    lambda: certify(strided_net(), 8, n_inputs=0),
    lambda: certify(strided_net(), 8, dtype=torch.int64),
    lambda: certify(strided_net(), (8, 0)),
    lambda: inspect(nn.Conv2d(3, 3, 1), 0),
    lambda: inspect(nn.Conv2d(3, 3, 1), 8, channels=2.5),
    lambda: check_input_size("big"),
    lambda: blur_pool2d(torch.randn(1, 1, 8, 8), filter_size=0),
    lambda: blur_pool2d(torch.randn(1, 1, 8, 8), stride=True),
    lambda: binomial_filter(8),
    lambda: check_filter_size(2.0),
    lambda: BlurPool2d(channels=0),
    lambda: APSPool2d(stride=0),
    lambda: LiftConv2d(1, 2, 4),
    lambda: group_pool(torch.rand(1, 2, 4, 5, 5), "median"),
    lambda: equivariance_error(lambda t: t, image(), roll(1, 1), margin=-1),
    lambda: assert_shift_equivariant(circular_conv(stride=2), image(), shifts=[(1, 0)]),
    lambda: assert_shift_equivariant(circular_conv(), image(), shifts=[]),
    lambda: assert_shift_equivariant(circular_conv(), image(), stride=0),
    lambda: assert_shift_invariant(pooled(circular_conv()), image(), shifts=[(1.5, 0)]),
])
def test_exception_bad_argument_values_raise_input_error(bad):
    with pytest.raises(InputError) as info:
        bad()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [
    lambda: blur_pool2d(torch.randn(3, 8, 8)),
    lambda: blur_pool2d(torch.randint(0, 9, (1, 1, 8, 8))),
    lambda: aps_pool2d(torch.randn(2, 0, 4, 4)),
    lambda: BlurPool2d(channels=5)(torch.randn(1, 4, 8, 8)),
    lambda: equivariance_error(lambda t: t * float("nan"), image(), roll(1, 1)),
    lambda: assert_equivariant(lambda t: t, image(), roll(1, 1), lambda t: t[..., 1:, :]),
    lambda: assert_shift_equivariant(circular_conv(), image()[0]),
    lambda: assert_shift_invariant(lambda t: t.mean(), image()),
])
def test_exception_bad_tensors_raise_shape_error_not_input_error(bad):
    with pytest.raises(ShapeError) as info:
        bad()
    assert not isinstance(info.value, InputError)


def test_exception_old_shape_error_argument_checks_are_both_classes():
    """Argument checks that raised ShapeError before the rule still satisfy ``except ShapeError``."""
    assert issubclass(ArgumentShapeError, InputError) and issubclass(ArgumentShapeError, ShapeError)
    with pytest.raises(ShapeError):
        blur_pool2d(torch.randn(1, 1, 8, 8), filter_size=9)


# ---- smoke: the device fixture ----------------------------------------------------------------------------

def test_smoke_device_option_defaults_to_cpu():
    import conftest

    seen = {}

    class Parser:
        def addoption(self, name, **kwargs):
            seen[name] = kwargs

    conftest.pytest_addoption(Parser())
    assert seen["--device"]["default"] == "cpu"


def test_smoke_device_fixture_is_the_asked_device(device, request):
    assert isinstance(device, torch.device) and device.type == request.config.getoption("--device")


def test_smoke_dtype_fixture_gives_both_float_dtypes(dtype):
    assert dtype in (torch.float32, torch.float64)
