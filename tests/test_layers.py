"""shiftlab.layers: BlurPool2d, MaxBlurPool2d, APSPool2d and SharedPhase, tested under shifts."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftlab.errors import ShapeError, ShiftlabError
from shiftlab.layers import (
    PADDING_MODES,
    APSPool2d,
    BlurPool2d,
    MaxBlurPool2d,
    SharedPhase,
    aps_phase,
    aps_pool2d,
    binomial_filter,
    blur_pool2d,
    max_blur_pool2d,
    polyphase_energies,
    polyphase_norms,
)

F64 = torch.float64


def reference_blur_pool(x, filter_size, stride, padding_mode):
    """Independent reference: pad as Zhang 2019 (floor before, ceil after), depthwise conv2d."""
    before, after = (filter_size - 1) // 2, filter_size // 2
    row = torch.tensor([math.comb(filter_size - 1, i) for i in range(filter_size)], dtype=x.dtype)
    kernel = torch.outer(row, row) / row.sum() ** 2
    mode = "constant" if padding_mode == "zeros" else padding_mode
    padded = F.pad(x, (before, after, before, after), mode=mode)
    return F.conv2d(padded, kernel.expand(x.shape[1], 1, filter_size, filter_size), stride=stride,
                    groups=x.shape[1])


# --- binomial_filter ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", range(1, 8))
def test_binomial_filter_is_the_outer_product_of_binomial_rows(size):
    f = binomial_filter(size, F64)
    row = torch.tensor([math.comb(size - 1, i) for i in range(size)], dtype=F64)
    assert f.shape == (size, size)
    assert torch.allclose(f * row.sum() ** 2, torch.outer(row, row), rtol=0, atol=1e-12)
    assert f.sum().item() == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("size", [0, 8, 2.0, True])
def test_binomial_filter_exception_on_bad_size(size):
    with pytest.raises(ShapeError):
        binomial_filter(size)


# --- blur_pool2d -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("filter_size", range(1, 8))
def test_blur_pool2d_matches_padded_depthwise_conv(filter_size, padding_mode, device):
    torch.manual_seed(filter_size)
    for stride, (h, w) in [(2, (12, 9)), (1, (7, 8)), (3, (10, 11))]:
        x = torch.randn(2, 3, h, w, dtype=F64).to(device)
        got = blur_pool2d(x, filter_size, stride, padding_mode)
        want = reference_blur_pool(x, filter_size, stride, padding_mode)
        assert got.shape == (2, 3, math.ceil(h / stride), math.ceil(w / stride))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_blur_pool2d_gradcheck(padding_mode):
    x = torch.randn(1, 2, 7, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: blur_pool2d(t, 4, 2, padding_mode), (x,))
    # the autograd path and the no-grad path compute the same values
    with torch.no_grad():
        fast = blur_pool2d(x, 4, 2, padding_mode)
    torch.testing.assert_close(blur_pool2d(x, 4, 2, padding_mode), fast, rtol=0, atol=1e-14)


def test_blur_pool2d_filter_size_one_is_plain_subsampling(device):
    x = torch.randn(2, 3, 9, 10).to(device)
    assert torch.equal(blur_pool2d(x, 1, 2), x[..., ::2, ::2])
    assert torch.equal(blur_pool2d(x, 1, 3), x[..., ::3, ::3])


def test_blur_pool2d_removes_the_nyquist_checkerboard(device):
    i = torch.arange(16)
    board = ((-1.0) ** (i[:, None] + i[None, :])).expand(1, 2, 16, 16).to(device, F64)
    assert board[..., ::2, ::2].abs().min() == 1  # plain subsampling aliases it to a constant 1
    assert blur_pool2d(board, 3, 2).abs().max() < 1e-12


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_blur_pool2d_keeps_constants(padding_mode):
    x = torch.full((1, 2, 9, 7), 3.5, dtype=F64)
    torch.testing.assert_close(blur_pool2d(x, 5, 2, padding_mode), torch.full((1, 2, 5, 4), 3.5, dtype=F64))


@settings(max_examples=25, deadline=None)
@given(filter_size=st.integers(1, 7), stride=st.integers(1, 3), cells=st.integers(3, 6),
       dy=st.integers(-6, 6), dx=st.integers(-6, 6), seed=st.integers(0, 2**16))
def test_blur_pool2d_circular_is_equivariant_to_shifts_by_multiples_of_the_stride(filter_size, stride, cells, dy, dx,
                                                                                 seed, device):
    torch.manual_seed(seed)
    x = torch.randn(2, 3, stride * cells, stride * (cells + 1), dtype=F64).to(device)
    shifted = blur_pool2d(torch.roll(x, (stride * dy, stride * dx), (-2, -1)), filter_size, stride, "circular")
    torch.testing.assert_close(shifted, torch.roll(blur_pool2d(x, filter_size, stride, "circular"), (dy, dx), (-2, -1)),
                               rtol=0, atol=1e-12)


def test_blur_pool2d_negative_control_odd_shift_is_not_equivariant(device):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16, dtype=F64).to(device)
    y = blur_pool2d(x, 3, 2, "circular")
    shifted = blur_pool2d(torch.roll(x, 1, -1), 3, 2, "circular")
    assert all((shifted - torch.roll(y, k, -1)).abs().max() > 1e-3 for k in range(8))


def test_blur_pool2d_blur_shrinks_the_change_caused_by_a_one_pixel_shift():
    torch.manual_seed(1)
    x = torch.randn(1, 4, 32, 32, dtype=F64)
    xs = torch.roll(x, 1, -1)

    def change(filter_size):
        a, b = blur_pool2d(x, filter_size, 2, "circular"), blur_pool2d(xs, filter_size, 2, "circular")
        return ((a.mean((2, 3)) - b.mean((2, 3))).norm() + (a.norm() - b.norm()).abs()).item()

    assert change(5) < 0.5 * change(1)


def test_blur_pool2d_exception_on_reflect_map_smaller_than_padding():
    with pytest.raises(ShapeError, match="reflect"):
        blur_pool2d(torch.randn(1, 1, 3, 3), 7, 2, "reflect")
    assert blur_pool2d(torch.randn(1, 1, 3, 3), 7, 2, "replicate").shape == (1, 1, 2, 2)
    assert blur_pool2d(torch.randn(1, 1, 1, 1), 7, 2, "zeros").shape == (1, 1, 1, 1)


@pytest.mark.parametrize("kwargs", [dict(filter_size=0), dict(stride=0), dict(padding_mode="constant"),
                                    dict(filter_size=9)])
def test_blur_pool2d_exception_on_bad_arguments(kwargs):
    with pytest.raises(ShapeError):
        blur_pool2d(torch.randn(1, 1, 8, 8), **kwargs)


@pytest.mark.parametrize("x", [torch.randn(3, 8, 8), torch.randint(0, 9, (1, 1, 8, 8)), [[1.0]]])
def test_blur_pool2d_exception_on_bad_input(x):
    with pytest.raises(ShapeError):
        blur_pool2d(x)


def test_blur_pool_module_agrees_with_function_and_keeps_state_dict_empty():
    x = torch.randn(2, 5, 11, 10)
    layer = BlurPool2d(5, filter_size=4, stride=2, padding_mode="replicate")
    assert torch.equal(layer(x), blur_pool2d(x, 4, 2, "replicate"))
    assert torch.equal(layer.filter, binomial_filter(4))
    assert layer.state_dict() == {}  # the filter is a non-persistent buffer
    assert layer.to(F64).filter.dtype == F64
    with pytest.raises(ShapeError):
        layer(torch.randn(2, 4, 11, 10))  # wrong channel count


def test_blur_pool2d_equals_timm_blurpool_for_odd_filters():
    timm_layers = pytest.importorskip("timm.layers")
    x = torch.randn(2, 6, 14, 15)
    for size in (3, 5):
        peer = timm_layers.BlurPool2d(6, filt_size=size, stride=2, pad_mode="reflect")
        torch.testing.assert_close(blur_pool2d(x, size, 2, "reflect"), peer(x), rtol=1e-6, atol=1e-6)


def test_max_blur_pool2d_is_max_pool_then_blur_pool(device):
    x = torch.randn(2, 3, 12, 13).to(device)
    want = blur_pool2d(F.max_pool2d(x, 2, 1), 3, 2, "reflect")
    assert torch.equal(max_blur_pool2d(x), want)
    assert torch.equal(MaxBlurPool2d(kernel_size=2, filter_size=3, stride=2)(x), want)
    assert max_blur_pool2d(x, 3, 5, 2, "circular").shape == (2, 3, 5, 6)
    with pytest.raises(ShapeError):
        max_blur_pool2d(torch.randn(1, 1, 2, 2), kernel_size=3)


# --- APS ---------------------------------------------------------------------------------------------------

def expected_aps_after_shift(x, stride, dy, dx):
    """APS of a shifted input is the shifted component: phase moves by (dy, dx) mod s, rolled on the grid."""
    y, phase = aps_pool2d(x, stride, return_phase=True)
    out = []
    for b in range(x.shape[0]):
        i, j = divmod(int(phase[b]), stride)
        out.append(torch.roll(y[b], ((i + dy) // stride, (j + dx) // stride), (-2, -1)))
    return torch.stack(out)


@settings(max_examples=30, deadline=None)
@given(stride=st.integers(2, 3), cells=st.integers(2, 5), dy=st.integers(-7, 7), dx=st.integers(-7, 7),
       seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, F64, torch.float16, torch.bfloat16]))
def test_aps_pool2d_output_moves_with_any_circular_shift(stride, cells, dy, dx, seed, dtype, device):
    torch.manual_seed(seed)
    x = torch.randn(3, 4, stride * cells, stride * (cells + 1), dtype=dtype).to(device)
    got = aps_pool2d(torch.roll(x, (dy, dx), (-2, -1)), stride)
    assert torch.equal(got, expected_aps_after_shift(x, stride, dy, dx))  # a selection: bit-exact


def test_aps_negative_control_fixed_subsampling_is_not_invariant(device):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8, dtype=F64).to(device)
    xs = torch.roll(x, 1, -1)
    pooled = lambda t: t[..., ::2, ::2].mean((2, 3))  # noqa: E731
    assert (pooled(xs) - pooled(x)).abs().max() > 1e-3
    torch.testing.assert_close(aps_pool2d(xs).mean((2, 3)), aps_pool2d(x).mean((2, 3)), rtol=0, atol=1e-12)


def test_aps_keeps_the_component_of_largest_norm_per_sample():
    torch.manual_seed(2)
    x = torch.randn(5, 3, 6, 8)
    y, phase = aps_pool2d(x, return_phase=True)
    for b in range(5):
        norms = [x[b, :, i::2, j::2].double().norm().item() for i in range(2) for j in range(2)]
        assert int(phase[b]) == max(range(4), key=norms.__getitem__)
        i, j = divmod(int(phase[b]), 2)
        assert torch.equal(y[b], x[b, :, i::2, j::2])
    explicit = torch.tensor([[x[b, :, i::2, j::2].double().norm().item() for i in range(2) for j in range(2)]
                             for b in range(5)], dtype=F64)
    torch.testing.assert_close(polyphase_norms(x), explicit, rtol=1e-12, atol=0)


def test_aps_energies_depend_only_on_the_values_a_component_holds():
    """Components holding the same values in another order tie exactly: summation order cannot decide."""
    torch.manual_seed(3)
    for dtype in (torch.float32, F64):
        a = torch.randn(1, 2, 4, 4, dtype=dtype) * 1e3
        x = torch.zeros(1, 2, 8, 8, dtype=dtype)
        x[..., 0::2, 1::2] = a  # component 1
        x[..., 1::2, 0::2] = a.flip(-1).flip(-2)  # component 2: the same values, rearranged
        x[..., 0::2, 0::2] = 0.5 * a
        energies = polyphase_energies(x)[0]
        assert energies[1] == energies[2] and energies[1] > energies[0] > energies[3] == 0
        assert int(aps_phase(x)) == 1  # exact tie: the lowest index
        # a real gap wins, however small against float32 rounding of a plain sum
        x[..., 1, 0] *= 1.001
        assert int(aps_phase(x)) == 2
    assert aps_phase(torch.zeros(2, 3, 4, 4)).tolist() == [0, 0]  # all equal: the first phase
    for dtype in (torch.float32, F64):  # the energies are the squared norms to the quantisation step
        x = torch.randn(3, 64, 10, 12, dtype=dtype)
        energies, norms = polyphase_energies(x), polyphase_norms(x)
        ratio = energies / norms**2
        assert (ratio.max(1).values / ratio.min(1).values - 1).max() < 1e-4


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 5), dy=st.integers(0, 7), dx=st.integers(0, 7))
def test_aps_phase_is_bit_identical_under_shifts_and_batching(seed, batch, dy, dx):
    torch.manual_seed(seed)
    x = torch.randn(batch, 16, 8, 8)
    x[..., ::2, :] *= 1 + 1e-7  # near-ties at float32 rounding level
    energies = polyphase_energies(x)
    shifted = polyphase_energies(torch.roll(x, (dy, dx), (-2, -1)))
    # the energies are permuted exactly: phase (i, j) -> ((i + dy) % 2, (j + dx) % 2)
    order = torch.tensor([((i + dy) % 2) * 2 + (j + dx) % 2 for i in range(2) for j in range(2)])
    assert torch.equal(shifted[:, order], energies)
    assert torch.equal(polyphase_energies(x[:1]), energies[:1])  # batch size does not matter


def test_aps_pool2d_odd_sizes_are_padded_circularly():
    x = torch.randn(2, 3, 7, 9)
    y, phase = aps_pool2d(x, 2, return_phase=True)
    assert y.shape == (2, 3, 4, 5)
    wrapped = x[..., torch.arange(8) % 7, :][..., torch.arange(10) % 9]
    for b in range(2):
        i, j = divmod(int(phase[b]), 2)
        assert torch.equal(y[b], wrapped[b, :, i::2, j::2])


def test_aps_pool2d_with_blur_is_blur_then_selection(device):
    x = torch.randn(2, 3, 8, 8).to(device)
    blurred = blur_pool2d(x, 3, 1, "circular")
    y, phase = aps_pool2d(x, 2, filter_size=3, return_phase=True)
    assert torch.equal(y, aps_pool2d(blurred, 2, phase=phase))
    assert torch.equal(phase, aps_phase(blurred))


def test_aps_pool2d_given_phase_and_exceptions():
    x = torch.randn(2, 1, 4, 4)
    y = aps_pool2d(x, phase=torch.tensor([3, 0]))
    assert torch.equal(y[0], x[0, :, 1::2, 1::2]) and torch.equal(y[1], x[1, :, ::2, ::2])
    for bad in (torch.tensor([4, 0]), torch.tensor([0]), torch.tensor([0.0, 1.0]), [0, 1]):
        with pytest.raises(ShapeError):
            aps_pool2d(x, phase=bad)


def test_aps_pool2d_gradient_flows_to_the_kept_component():
    x = torch.randn(1, 2, 4, 4, dtype=F64, requires_grad=True)
    y, phase = aps_pool2d(x, return_phase=True)
    y.sum().backward()
    i, j = divmod(int(phase), 2)
    mask = torch.zeros_like(x)
    mask[..., i::2, j::2] = 1
    assert torch.equal(x.grad, mask)


def test_aps_module_agrees_with_function(device):
    x = torch.randn(3, 2, 6, 6).to(device)
    assert torch.equal(APSPool2d(3, filter_size=2, padding_mode="reflect")(x),
                       aps_pool2d(x, 3, filter_size=2, padding_mode="reflect"))
    assert APSPool2d().state_dict() == {}


class TwoBranches(torch.nn.Module):
    """A residual block: both branches subsample, sharing one phase chosen from the block's input."""

    def __init__(self, shared):
        super().__init__()
        self.main = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),
                                        APSPool2d(shared=shared))
        self.shortcut = APSPool2d(shared=shared)

    def forward(self, x):
        return torch.relu(self.main(x) + self.shortcut(x))  # misaligned branches would change this


def test_shared_phase_is_chosen_from_the_block_input_and_used_by_every_layer():
    shared = SharedPhase(2)
    block = TwoBranches(shared)
    shared.attach(block)
    seen = []
    for layer in (block.main[1], block.shortcut):
        layer.register_forward_hook(lambda m, a, o: seen.append(shared.current().clone()))
    x = torch.randn(4, 2, 8, 8)
    block(x)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1]) and torch.equal(seen[0], aps_phase(x))
    assert shared.current() is None  # forgotten after the forward pass


def test_shared_phase_makes_a_residual_block_equivariant_and_its_absence_breaks_it(device):
    torch.manual_seed(4)
    x = torch.randn(3, 2, 8, 8, dtype=F64).to(device)

    def invariance_gap(block):
        block = block.to(device).double()
        return max((block(torch.roll(x, (dy, dx), (-2, -1))).mean((2, 3)) - block(x).mean((2, 3))).abs().max().item()
                   for dy in range(2) for dx in range(2))

    shared = SharedPhase(2)
    block = TwoBranches(shared)
    shared.attach(block)
    assert invariance_gap(block) < 1e-12
    unshared = TwoBranches(None)
    unshared.load_state_dict(block.state_dict())
    assert invariance_gap(unshared) > 1e-3


def test_shared_phase_is_released_after_an_exception():
    shared = SharedPhase(2)
    block = TwoBranches(shared)
    shared.attach(block)
    with pytest.raises(RuntimeError):
        block(torch.randn(1, 3, 8, 8))  # wrong channel count inside the block
    assert shared.current() is None


def test_shared_phase_exception_on_mismatched_stride():
    with pytest.raises(ShapeError):
        APSPool2d(stride=3, shared=SharedPhase(2))


def test_feature_aps_fast_path_agrees_with_the_exact_rule_and_ties_go_to_it():
    """Clear winners are chosen from the one-pass norms; ties (equal norms in exact arithmetic) by the exact rule."""
    torch.manual_seed(0)
    x = torch.randn(64, 8, 16, 16)
    norms = polyphase_norms(x)
    top2 = norms.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3 * top2[:, 0]
    assert int(clear.sum()) > 48
    assert torch.equal(aps_phase(x)[clear], polyphase_energies(x).argmax(1)[clear])
    # components (0, 0) and (0, 1) hold the same values, placed differently: an exact tie whatever the rounding
    base = torch.rand(3, 8, 8, 8) + 1.0
    y = torch.zeros(3, 8, 16, 16)
    y[..., 0::2, 0::2] = base
    y[..., 0::2, 1::2] = torch.roll(base, (3, 5), (-2, -1))
    assert aps_phase(y).tolist() == [0, 0, 0]  # the tie rule: lowest index
    shifted = torch.roll(y, 1, -1)  # now the tied components are (0, 1) and (0, 0) again, swapped
    assert torch.equal(aps_pool2d(shifted, phase=aps_phase(shifted)), aps_pool2d(shifted, phase=torch.zeros(3, dtype=torch.long)))


@pytest.mark.parametrize("block_bytes", [1, 3 * 8 * 16 * 16 * 4])
def test_aps_blocked_energies_choose_as_one_block(monkeypatch, block_bytes):
    """On CPU the energies run in blocks of samples; the blocking must not change any choice."""
    import shiftlab.layers.aps as aps_module

    torch.manual_seed(5)
    x = torch.randn(10, 8, 16, 16)
    x[3, :, 0::2, 1::2] = x[3, :, 0::2, 0::2].roll(1, -1)  # an exact tie between (0, 0) and (0, 1) ...
    x[3, :, 1::2, :] *= 0.5  # ... for the largest energy
    x[6, :, 1::2, :] = x[6, :, 0::2, :].roll(1, -2) * (1 + 1e-6)  # a near-tie: left to the exact rule
    whole = aps_phase(x)
    monkeypatch.setattr(aps_module, "_BLOCK_BYTES", block_bytes)
    blocks = aps_module._plain_energies(x, 2)
    monkeypatch.setattr(aps_module, "_BLOCK_BYTES", 1 << 40)
    torch.testing.assert_close(blocks, aps_module._plain_energies(x, 2), rtol=1e-6, atol=0)
    monkeypatch.setattr(aps_module, "_BLOCK_BYTES", block_bytes)
    assert torch.equal(aps_phase(x), whole)
    assert int(aps_phase(x)[3]) == 0  # the tie rule, also when decided inside a block
    for dy, dx in ((0, 1), (1, 0), (1, 1), (3, 2)):
        got = aps_pool2d(torch.roll(x, (dy, dx), (-2, -1)))
        assert torch.equal(got[[0, 1, 2, 4, 5, 6, 7, 8, 9]],
                           expected_aps_after_shift(x, 2, dy, dx)[[0, 1, 2, 4, 5, 6, 7, 8, 9]])


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("filter_size", [2, 3, 5])
def test_blur_in_blocks_of_planes_is_the_same_to_the_bit(monkeypatch, padding_mode, filter_size):
    """Large stride-1 CPU blurs run in blocks of channel planes; blocking must not change a single value."""
    import shiftlab.layers.blur_pool as blur_module

    torch.manual_seed(6)
    x = torch.randn(3, 5, 9, 12)
    whole = blur_pool2d(x, filter_size, 1, padding_mode)
    for block_bytes in (1, 9 * 12 * 4 * 4):  # one plane per block; four planes per block (blocks cross samples)
        monkeypatch.setattr(blur_module, "_BLOCK_BYTES", block_bytes)
        assert torch.equal(blur_pool2d(x, filter_size, 1, padding_mode), whole)
    torch.testing.assert_close(whole.double(), reference_blur_pool(x.double(), filter_size, 1, padding_mode),
                               rtol=1e-6, atol=1e-6)


def test_blur_pool2d_works_with_autograd_after_inference_mode():
    """Nothing made under torch.inference_mode may leak into a later differentiable call."""
    x = torch.randn(1, 2, 7, 9)
    with torch.inference_mode():
        blur_pool2d(x, 3, 2, "reflect")
    y = torch.randn(1, 2, 7, 9, requires_grad=True)
    blur_pool2d(y, 3, 2, "reflect").sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


# --- low-precision blur (issue 12: float16 overflowed) --------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("filter_size", range(1, 8))
def test_blur_pool2d_half_precision_matches_a_float64_reference(dtype, filter_size):
    """The taps of a 7-tap filter sum to 64 per axis: summed before normalising, 20.0 became 81920 > 65504."""
    torch.manual_seed(filter_size)
    for x in (torch.full((1, 1, 16, 16), 20.0), 1000 * torch.rand(2, 3, 13, 16), torch.randn(2, 3, 9, 8)):
        low = x.to(dtype)
        for padding_mode in PADDING_MODES:
            got = blur_pool2d(low, filter_size, 2, padding_mode)
            want = reference_blur_pool(low.double(), filter_size, 2, padding_mode)
            assert got.dtype == dtype and torch.isfinite(got).all()
            # one rounding to the dtype at the end: within half an ulp of the float64 result
            torch.testing.assert_close(got.double(), want, rtol=2.0 ** -8 if dtype == torch.float16 else 2.0 ** -7,
                                       atol=1e-3)
            assert torch.equal(BlurPool2d(filter_size=filter_size, padding_mode=padding_mode)(low), got)
    assert torch.equal(blur_pool2d(torch.full((1, 1, 16, 16), 20.0).half(), 7), torch.full((1, 1, 8, 8), 20.0).half())


def test_blur_pool2d_half_precision_gradients_and_aps_blur():
    x = (100 * torch.rand(1, 2, 8, 8)).half().requires_grad_()
    blur_pool2d(x, 7, 2).sum().backward()
    assert x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()
    big = torch.full((1, 2, 8, 8), 3000.0, dtype=torch.float16)
    assert torch.equal(aps_pool2d(big, 2, filter_size=7), torch.full((1, 2, 4, 4), 3000.0, dtype=torch.float16))


# --- input checks: every bad input raises a ShiftlabError, never another exception ------------------------------

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool,
          torch.complex64]


@st.composite
def maybe_bad_tensors(draw):
    """Tensors of any rank 0..5 with sizes 0..6 and any dtype, in several layouts; or things that are not tensors."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([None, 1.0, [[1.0, 2.0]], "x", (1, 1, 4, 4)]))
    shape = draw(st.lists(st.integers(0, 6), min_size=0, max_size=5))
    if draw(st.integers(0, 7)):  # mostly 4-D, so that the argument checks are reached
        shape = [draw(st.integers(0, 3)), draw(st.integers(0, 4)), draw(st.integers(0, 7)), draw(st.integers(0, 7))]
    dtype = draw(mostly_valid(st.sampled_from(DTYPES[:4]), st.sampled_from(DTYPES[4:])))
    x = (10 * torch.randn(shape)).to(dtype) if shape else torch.tensor(1.0).to(dtype)
    layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed", "expanded"]))
    if x.ndim == 4 and layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif x.ndim == 4 and layout == "transposed":
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif x.ndim == 4 and layout == "expanded" and x.shape[0] > 0:
        x = x[:1].expand(x.shape)
    return x


def mostly_valid(valid, bad):
    """Valid values three times in four, so that most examples reach the checks after this argument's."""
    return st.integers(0, 3).flatmap(lambda i: bad if i == 0 else valid)


SIZES = mostly_valid(st.integers(1, 4), st.one_of(st.integers(-2, 9), st.sampled_from([None, 2.0, True, "3", (2, 2)])))
MODES = mostly_valid(st.sampled_from(PADDING_MODES), st.sampled_from(["constant", "", None, 3, ("reflect",)]))


def _call(kind, x, filter_size, stride, padding_mode, kernel_size):
    if kind == "blur_pool2d":
        return blur_pool2d(x, filter_size, stride, padding_mode)
    if kind == "BlurPool2d":
        return BlurPool2d(filter_size=filter_size, stride=stride, padding_mode=padding_mode)(x)
    if kind == "max_blur_pool2d":
        return max_blur_pool2d(x, kernel_size, filter_size, stride, padding_mode)
    if kind == "MaxBlurPool2d":
        return MaxBlurPool2d(kernel_size, filter_size, stride, padding_mode)(x)
    if kind == "aps_pool2d":
        return aps_pool2d(x, stride, filter_size, padding_mode)
    if kind == "APSPool2d":
        return APSPool2d(stride, filter_size, padding_mode)(x)
    if kind == "aps_phase":
        return aps_phase(x, stride)
    if kind == "polyphase_norms":
        return polyphase_norms(x, stride)
    if kind == "polyphase_energies":
        return polyphase_energies(x, stride)
    return binomial_filter(filter_size)


KINDS = ["blur_pool2d", "BlurPool2d", "max_blur_pool2d", "MaxBlurPool2d", "aps_pool2d", "APSPool2d", "aps_phase",
         "polyphase_norms", "polyphase_energies", "binomial_filter"]


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(KINDS), x=maybe_bad_tensors(), filter_size=SIZES, stride=SIZES, padding_mode=MODES,
       kernel_size=SIZES)
def test_exception_property_every_bad_input_raises_a_shiftlab_error(kind, x, filter_size, stride, padding_mode,
                                                                    kernel_size):
    try:
        out = _call(kind, x, filter_size, stride, padding_mode, kernel_size)
    except ShiftlabError:
        return
    # a valid call: the shape is the documented one, and the layout of the input does not matter
    if kind == "binomial_filter":
        assert out.shape == (filter_size, filter_size)
        return
    b, c, h, w = x.shape
    if kind in ("aps_phase",):
        assert out.shape == (b,) and out.dtype == torch.int64
    elif kind in ("polyphase_norms", "polyphase_energies"):
        assert out.shape == (b, stride * stride)
    else:
        if "max" in kind.lower():
            h, w = h - kernel_size + 1, w - kernel_size + 1
        assert out.shape == (b, c, math.ceil(h / stride), math.ceil(w / stride))
    torch.testing.assert_close(out, _call(kind, x.contiguous(), filter_size, stride, padding_mode, kernel_size),
                               rtol=0, atol=0)


@pytest.mark.parametrize("call", [
    lambda: aps_pool2d(torch.randn(2, 0, 4, 4)),
    lambda: APSPool2d()(torch.randn(2, 0, 4, 4)),
    lambda: aps_phase(torch.randn(1, 0, 4, 4)),
    lambda: polyphase_energies(torch.randn(1, 0, 4, 4)),
    lambda: APSPool2d(shared="not a SharedPhase"),
    lambda: BlurPool2d(channels=0),
    lambda: BlurPool2d(channels="3"),
    lambda: binomial_filter(3, dtype=torch.int64),
    lambda: binomial_filter(3, dtype="float32"),
    lambda: SharedPhase(stride=0),
    lambda: blur_pool2d(torch.randn(1, 1, 8, 8), padding_mode=["reflect"]),
])
def test_exception_zero_channels_and_bad_options_raise_one_line_shiftlab_errors(call):
    with pytest.raises(ShiftlabError) as info:
        call()
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_blur_pool2d_zero_channels_and_empty_batches_are_fine():
    assert blur_pool2d(torch.randn(2, 0, 8, 8)).shape == (2, 0, 4, 4)
    assert blur_pool2d(torch.randn(0, 3, 8, 8)).shape == (0, 3, 4, 4)
    assert aps_pool2d(torch.randn(0, 3, 8, 8)).shape == (0, 3, 4, 4)
    with pytest.raises(ShapeError, match="channel"):
        aps_pool2d(torch.randn(2, 0, 4, 4))
