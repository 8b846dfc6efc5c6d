"""Issue 19: fine-tuning LPS and TIPS students by distillation (the digits teacher of test_finetune): LPS keeps exact
circular invariance after training with its temperature annealed and no weight decay on its scorers; TIPS trains
with its shift term; bad settings are refused."""

from __future__ import annotations

import json

import pytest
import torch
from test_finetune import _args, _tune, _value, digits, files  # noqa: F401  (the module-scoped fixtures)

import shiftlab
from shiftlab.cli import main
from shiftlab.errors import InputError
from shiftlab.experiments.finetune import digits_targets
from shiftlab.fix.distill import _param_groups
from shiftlab.fix.finetune import FinetuneConfig
from shiftlab.layers import TIPSPool2d, scoring_parameters


@pytest.mark.slow
def test_feature_lps_student_trains_its_scorers_and_stays_exactly_invariant(digits):  # noqa: F811
    before, after, result = _tune(digits, {"method": "lps", "circular": True})
    targets = digits_targets({"teacher_metrics": digits["teacher_eval"], "after": after})
    assert all(targets.values()), (targets, after["crop"])
    assert _value(after, "reference_agreement") > _value(before, "reference_agreement")
    assert _value(after, "consistency", "circular") == 1.0
    assert after["certificate"]["passed"] and after["certificate"]["max_rel_deviation"] < 1e-12
    scorers = [p for n, p in result.model.named_parameters() if n.endswith("scorer.conv2.weight")]
    assert scorers and all(p.abs().sum() > 0 for p in scorers)  # they left zero: the choice is learned now
    temperatures = [e["lps_temperature"] for e in result.log["entries"]]
    assert temperatures[0] > temperatures[-1] >= 0.1 and temperatures == sorted(temperatures, reverse=True)


@pytest.mark.slow
def test_feature_tips_student_trains_with_its_shift_term(digits):  # noqa: F811
    before, after, result = _tune(digits, {"method": "tips"}, steps=60)
    assert _value(after, "reference_agreement") > _value(before, "reference_agreement")
    assert result.log["config"]["tips_alpha"] == 0.35
    assert not any(h for m in result.model.modules() if isinstance(m, TIPSPool2d) for h in m._forward_pre_hooks.values())


def test_feature_scoring_parameters_get_no_weight_decay():
    from shiftlab.layers import LPSPool2d

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), LPSPool2d(4), TIPSPool2d(4))
    groups = _param_groups(model, 0.05)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}
    assert {id(p) for p in scoring_parameters(model)}.isdisjoint(decayed)


def test_exception_bad_lps_and_tips_settings_are_refused():
    for bad in ((0.0, 0.1), (1.0, 0.0), (0.1, 1.0), (1.0, float("nan")), (1.0,)):
        with pytest.raises(InputError, match="lps_temperature"):
            FinetuneConfig(lps_temperature=bad)
    for bad in (-1.0, float("inf"), True):
        with pytest.raises(InputError, match="tips_alpha"):
            FinetuneConfig(tips_alpha=bad)
    config = FinetuneConfig(steps=100, lps_temperature=(1.0, 0.1))
    assert config.lps_temperature_at(0) == 1.0 and abs(config.lps_temperature_at(100) - 0.1) < 1e-12


def test_feature_cli_finetune_lps_and_tips_and_their_bad_inputs(files, tmp_path, capsys):  # noqa: F811
    for fix in ("lps:circular", "tips"):
        out = tmp_path / f"{fix.replace(':', '_')}.pt"
        assert main(_args(files, out, "--workers", "0", factory="plain", steps=3, fix=fix)) == 0, \
            capsys.readouterr().err
        model = shiftlab.load_model(f"{files / 'net.py'}:plain", weights=out)
        assert model.shiftlab_fix["method"] == fix.split(":")[0]
        log = json.loads(out.with_suffix(".json").read_text())
        if fix.startswith("lps"):
            assert log["entries"][-1]["lps_temperature"] < 1.0
    capsys.readouterr()
    for extra, message in ((["--lps-temperature", "0", "0.1"], "lps_temperature"),
                           (["--lps-temperature", "0.1", "1.0"], "lps_temperature"),
                           (["--tips-alpha", "-1"], "--tips-alpha")):
        bad = tmp_path / "bad.pt"
        assert main(_args(files, bad, *extra, fix="lps")) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and not bad.exists()
    assert main(_args(files, tmp_path / "x.pt", fix="nope")) == 2
    assert "--fix" in capsys.readouterr().err
