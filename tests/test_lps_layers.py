"""LPS and TIPS layers: exact invariance of LPS (float64, with negative controls), LPS equals APS until trained,
gradients reach the scorers in training and not in evaluation, TIPS's learned (not exact) invariance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shiftlab.errors import InputError
from shiftlab.layers import aps_phase
from shiftlab.layers.lps import (
    LearnedPhase,
    LPSPool2d,
    PolyphaseScorer,
    TemperatureSchedule,
    TIPSPool2d,
    lps_logits,
    lps_pool2d,
    set_temperature,
    tips_shift_loss,
)


def _trained(scorer: PolyphaseScorer, seed: int = 0) -> PolyphaseScorer:
    """A scorer whose learned part is no longer zero (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in scorer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return scorer


def _net(pool: nn.Module, channels: int = 3, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, padding_mode="circular"), nn.ReLU(), pool,
                        nn.Conv2d(channels, 5, 3, padding=1, padding_mode="circular"), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    return net.to(dtype).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_feature_lps_at_conversion_chooses_exactly_as_aps(seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, 8, 10, generator=g).to(device)
    x[3] = 0.0  # all-zero map: every energy ties
    x[4] = 1.0  # constant map
    x[5, :, :, :] = x[5, :, :1, :1]  # constant per channel
    x[6] = x[7].roll((1, 1), dims=(-2, -1))  # components that are shifts of one another
    scorer = PolyphaseScorer(4).to(device)
    _, phase = lps_pool2d(x, scorer, return_phase=True)
    assert torch.equal(phase, aps_phase(x))
    trained = _trained(PolyphaseScorer(4), seed).to(device)
    _, moved = lps_pool2d(x, trained, return_phase=True)
    assert not torch.equal(moved, aps_phase(x))  # negative control: a trained scorer chooses otherwise


@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (1, 1), (3, -5), (-2, 7)])
def test_feature_trained_lps_network_is_exactly_invariant_to_circular_shifts_float64(shift, device):
    pool = LPSPool2d(3)
    _trained(pool.scorer, 3)
    net = _net(pool.double()).to(device)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        out, moved = net(x), net(x.roll(shift, dims=(-2, -1)))
    assert (moved - out).abs().max().item() <= 1e-12 * out.abs().max().item()
    # negative control: the same network with a fixed stride-2 slice is not invariant
    plain = _net(nn.AvgPool2d(1, 2)).to(device)
    with torch.no_grad():
        error = (plain(x.roll(shift, dims=(-2, -1))) - plain(x)).abs().max().item()
    if shift[0] % 2 or shift[1] % 2:
        assert error > 1e-3


def test_feature_lps_authors_protocol_batch_1_to_6_rolls_in_minus3_to_2():
    torch.manual_seed(2021)
    pool = LPSPool2d(3)
    _trained(pool.scorer, 5)
    net = _net(pool.double())
    for batch in range(1, 7):
        x = torch.randn(batch, 3, 32, 32, dtype=torch.float64)
        shift = tuple(int(v) for v in torch.randint(-3, 3, (2,)))
        with torch.no_grad():
            torch.testing.assert_close(net(x.roll(shift, dims=(-2, -1))), net(x), rtol=1e-12, atol=1e-12)


def test_feature_gradients_reach_the_scorer_in_training_and_not_in_evaluation():
    pool = LPSPool2d(3)
    x = torch.randn(4, 3, 8, 8)
    pool.train()
    pool(x).square().sum().backward()
    assert pool.scorer.conv2.weight.grad is not None and pool.scorer.conv2.weight.grad.abs().sum() > 0
    _trained(pool.scorer)
    pool.zero_grad(set_to_none=True)
    pool(x).square().sum().backward()
    assert pool.scorer.conv1.weight.grad.abs().sum() > 0
    pool.zero_grad(set_to_none=True)
    pool.eval()
    y = pool(x.requires_grad_())
    y.square().sum().backward()
    assert all(p.grad is None for p in pool.scorer.parameters())


def test_feature_training_mixture_is_convex_and_follows_the_temperature():
    scorer = _trained(PolyphaseScorer(2))
    x = torch.randn(3, 2, 6, 6)
    torch.manual_seed(0)
    _, hot = lps_pool2d(x, scorer, training=True, temperature=100.0, return_phase=True)
    torch.manual_seed(0)
    _, cold = lps_pool2d(x, scorer, training=True, temperature=1e-4, return_phase=True)
    torch.testing.assert_close(hot.sum(1), torch.ones(3))
    assert cold.max(1).values.min() > 0.99 > hot.max(1).values.max()


def test_exception_temperature_must_be_positive():
    for bad in (0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(InputError, match="temperature"):
            LPSPool2d(2, temperature=bad)
        with pytest.raises(InputError, match="temperature"):
            lps_pool2d(torch.randn(1, 2, 4, 4), PolyphaseScorer(2), training=True, temperature=bad)
    with pytest.raises(InputError, match="in_channels"):
        LPSPool2d()


def test_feature_temperature_schedule_anneals_every_layer_to_its_floor():
    schedule = TemperatureSchedule(start=1.0, factor=0.5, every=10, floor=0.1)
    assert [schedule.value(s) for s in (0, 9, 10, 25, 1000)] == [1.0, 1.0, 0.5, 0.25, 0.1]
    model = nn.Sequential(LPSPool2d(2), LPSPool2d(2))
    assert schedule.apply(model, 20) == 0.25
    assert all(float(m.temperature) == 0.25 for m in model)
    assert set_temperature(model, 0.3) == 2
    assert {k for k in model.state_dict() if k.endswith("temperature")} == {"0.temperature", "1.temperature"}


def test_feature_shared_choice_keeps_branches_aligned_in_eval_and_training():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            shared = LearnedPhase(3)
            shared.attach(self)
            self.main = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"),
                                      LPSPool2d(shared=shared))
            self.shortcut = LPSPool2d(shared=shared)

        def forward(self, x):
            return self.main(x) - self.main[0](self.shortcut(x)) * 0 + self.shortcut(x)

    block = Block().eval()
    assert "lps_phase.scorer.conv1.weight" in block.state_dict()
    _trained(block.lps_phase.scorer)
    x = torch.randn(5, 3, 8, 8)
    phase = block.lps_phase.choose(x)
    expected = lps_pool2d(x, block.lps_phase.scorer, phase=phase)
    out = block(x)
    main = lps_pool2d(block.main[0](x), block.lps_phase.scorer, phase=phase)
    torch.testing.assert_close(out, main + expected)
    assert block.lps_phase.current() is None  # released after the block


def test_feature_function_and_module_agree(device):
    pool = LPSPool2d(3).eval()
    _trained(pool.scorer)
    pool.to(device)
    x = torch.randn(2, 3, 7, 9).to(device)
    torch.testing.assert_close(pool(x), lps_pool2d(x, pool.scorer))
    assert pool(x).shape == (2, 3, 4, 5)
    logits = lps_logits(x, pool.scorer)
    assert logits.shape == (2, 4)


def test_feature_tips_starts_as_a_2x2_average_and_mixes_convexly():
    pool = TIPSPool2d(3)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(pool(x), nn.functional.avg_pool2d(x, 2))


def test_feature_tips_invariance_is_learned_not_exact_and_the_shift_term_trains_it():
    torch.manual_seed(0)
    pool = TIPSPool2d(4).double()
    with torch.no_grad():
        pool.mix.weight.normal_(0, 3.0)
        pool.spatial.weight.normal_(0, 1.0)
    net = _net(pool, channels=4)
    x = torch.randn(4, 4, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        error = (net(x.roll((1, 0), dims=(-2, -1))) - net(x)).abs().max().item()
    assert error > 1e-6  # not exactly invariant: measured, never certified
    loss = tips_shift_loss(pool, x, max_shift=1, generator=torch.Generator().manual_seed(3))
    assert loss.item() >= 0
    loss.backward()
    assert pool.mix.weight.grad.abs().sum() > 0
    with pytest.raises(InputError, match="max_shift"):
        tips_shift_loss(pool, x, max_shift=0)


def test_doctests():
    import doctest

    import shiftlab.layers.lps as module

    failures, attempted = doctest.testmod(module, verbose=False)
    assert attempted >= 3 and failures == 0


def test_feature_phase_scores_equal_the_scorer_on_each_component():
    scorer = _trained(PolyphaseScorer(3, hidden=5)).double()
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    expected = torch.stack([scorer(x[..., i::2, j::2]) for i in range(2) for j in range(2)], dim=1)
    torch.testing.assert_close(scorer.phase_scores(x, 2), expected, rtol=1e-12, atol=1e-12)


def test_feature_tips_shift_term_collects_training_inputs_only_and_detaches():
    from shiftlab.layers import TIPSShiftTerm

    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), TIPSPool2d(3), TIPSPool2d(3))
    with torch.no_grad():
        for m in model[1:]:
            m.mix.weight.normal_()
    x = torch.randn(2, 2, 16, 16)
    with TIPSShiftTerm(model, alpha=0.5, generator=torch.Generator().manual_seed(0)) as term:
        model.eval()
        model(x)
        assert term.loss() == 0.0  # nothing collected in evaluation
        model.train()
        model(x)
        loss = term.loss()
        assert loss.requires_grad and loss.item() > 0
        loss.backward()
        assert model[0].weight.grad is not None  # the term trains the layers before TIPS too
        assert term.loss() == 0.0  # cleared
    assert all(not m._forward_pre_hooks for m in model)
    with pytest.raises(InputError, match="alpha"):
        TIPSShiftTerm(model, alpha=-1)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_exception_lps_refuses_graph_capture_and_tips_exports():
    net = _net(LPSPool2d(3).double())
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(InputError, match="cannot be exported"):
        torch.jit.trace(net, x)
    tips = _net(TIPSPool2d(3).double())
    traced = torch.jit.trace(tips, x)
    torch.testing.assert_close(traced(x), tips(x))
