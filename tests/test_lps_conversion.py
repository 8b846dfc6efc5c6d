"""Issue 19: LPS and TIPS conversion of trained CNNs. LPS chooses exactly as APS at conversion; after brief training
(scores no longer the APS prior) LPS + circular padding is still exactly invariant (float64 certificate, LPS authors'
protocol) with the unconverted model as negative control; TIPS is converted but never certified."""

from __future__ import annotations

import pytest
import torch

import shiftlab
from torch import nn

from shiftlab.cli import main
from shiftlab.errors import InputError
from shiftlab.fix.antialias import antialias
from shiftlab.fix.certify import certify
from shiftlab.fix.checkpoint import save_fixed
from shiftlab.layers import LearnedPhase, LPSPool2d, TIPSPool2d
from shiftlab.models import load_model

from _models import make

SIZE = 64


def briefly_trained(model: nn.Module, steps: int = 3, seed: int = 0) -> nn.Module:
    """A few optimiser steps on the LPS scorers in training mode (Gumbel mixtures), so the learned score is no
    longer zero and the choice is no longer the APS prior's."""
    torch.manual_seed(seed)
    scorers = [p for n, p in model.named_parameters() if ".scorer." in n]
    assert scorers, "no LPS scorer in the model"
    optimiser = torch.optim.SGD(scorers, lr=5.0)
    model.train()
    for _ in range(steps):
        x = torch.randn(2, 3, SIZE, SIZE)
        loss = -model(x).logsumexp(1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_mobilenet_v2", "timm_resnet26d", "timm_lite0",
                                  "timm_regnetx_002"])
@pytest.mark.parametrize("circular", [False, True])
def test_feature_lps_at_conversion_computes_exactly_what_aps_does(name, circular):
    model = make(name)
    aps, _ = antialias(model, "aps", circular=circular)
    lps, report = antialias(model, "lps", circular=circular)
    assert any(isinstance(m, (LPSPool2d, LearnedPhase)) for m in lps.modules())
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(aps(x), lps(x))
    # every original weight is kept under its own name
    original = model.state_dict()
    state = lps.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original.items())
    assert {k for k in state if k not in original} == {k for k in state if ".scorer." in k or "temperature" in k}


MODELS = ["torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v2", "timm:resnet18",
          "timm:tf_efficientnet_lite0"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_acceptance_trained_lps_circular_is_certified_exactly_invariant_and_the_original_is_not(name):
    torch.manual_seed(0)
    model = load_model(name)
    converted, _ = antialias(model, "lps", circular=True)
    converted = briefly_trained(converted)
    assert any(p.abs().sum() > 0 for n, p in converted.named_parameters() if n.endswith("scorer.conv2.weight"))
    exact = certify(converted, SIZE, shifts=3, n_inputs=1)
    original = certify(model, SIZE, shifts=3, n_inputs=1, dtype=torch.float32)
    print(f"\n{name}: trained LPS+circular rel. deviation {exact.max_rel_deviation:.2e} (float64); unconverted "
          f"{original.max_rel_deviation:.2e}")
    assert exact.passed and exact.max_rel_deviation <= 1e-10
    assert original.max_rel_deviation > 1e-3


def test_feature_trained_lps_resnet_chooses_otherwise_than_aps_and_holds_the_authors_protocol():
    model = make("tv_resnet18")
    aps, _ = antialias(model, "aps", circular=True)
    lps = briefly_trained(antialias(model, "lps", circular=True)[0])
    torch.manual_seed(2021)
    differs = False
    for batch in range(1, 7):
        x = torch.randn(batch, 3, 32, 32, dtype=torch.float64)
        shift = tuple(int(v) for v in torch.randint(-3, 3, (2,)))
        net = lps.double()
        with torch.no_grad():
            out = net(x)
            torch.testing.assert_close(net(x.roll(shift, dims=(-2, -1))), out, rtol=1e-10, atol=1e-10)
            differs |= not torch.allclose(aps.double()(x), out)
    assert differs  # the scores are no longer the APS prior


def test_feature_lps_and_tips_fixed_checkpoints_reload_with_their_scorers(tmp_path):
    model = load_model("torchvision:resnet18")
    x = torch.randn(2, 3, SIZE, SIZE)
    for method in ("lps", "tips"):
        converted, _ = antialias(model, method, circular=True)
        if method == "lps":
            converted = briefly_trained(converted)
        else:
            with torch.no_grad():
                for m in converted.modules():
                    if isinstance(m, TIPSPool2d):
                        m.mix.weight.normal_()
        path = tmp_path / f"{method}.pt"
        save_fixed(converted, path)
        back = shiftlab.load_model(str(path))  # the recipe names a registry spec: the file alone loads it
        assert back.shiftlab_fix["method"] == method
        with torch.no_grad():
            assert torch.equal(back.eval()(x), converted.eval()(x))


def test_feature_tips_converts_and_is_measured_not_certified():
    model = make("tv_resnet18")
    tips, report = antialias(model, "tips", circular=True)
    # the stem, the max pool, and the main branch and shortcut of the first block of stages 2-4
    assert sum(isinstance(m, TIPSPool2d) for m in tips.modules()) == 8
    with pytest.raises(InputError, match="learned, not guaranteed"):
        certify(tips, SIZE)


def test_exception_cli_fix_new_methods_and_their_bad_inputs(tmp_path, capsys):
    out = tmp_path / "lps.pt"
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "lps", "--circular", "--out", str(out),
                 "--certify", "64", "64", "--shifts", "2"]) == 0
    text = capsys.readouterr().out
    assert "LPSPool2d" in text and "certify at 64x64: invariant" in text and out.exists()
    tips = tmp_path / "tips.pt"
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "tips", "--circular", "--out", str(tips),
                 "--certify", "64", "64"]) == 2
    err = capsys.readouterr().err
    assert "learned, not guaranteed" in err and "Traceback" not in err and not tips.exists()
    assert main(["fix", "--model", "torchvision:resnet18", "--method", "nope", "--out", str(tmp_path / "x.pt")]) == 2
    assert "--method" in capsys.readouterr().err
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(InputError, match="temperature"):
            LPSPool2d(3, temperature=bad)
