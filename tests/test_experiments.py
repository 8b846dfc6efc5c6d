"""Training experiments (issue 6): data on a canvas, the CNN family, and each experiment in quick mode.

The quick runs train real networks on the real digits and assert the qualitative facts the articles'
claims predict; none of the numbers is copied from a run.
"""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftlab.cli import main
from shiftlab.errors import InputError, ShapeError
from shiftlab.experiments.digits import draw_positions, load_objects, make_canvas_split, place, region_bounds
from shiftlab.experiments.nets import SmallCNN
from shiftlab.transforms import circular_shift

# --------------------------------------------------------------------------------------------- data


def test_place_matches_a_per_sample_paste():
    objects = torch.rand(5, 2, 4, 4)
    top, left = torch.tensor([0, 3, 6, 1, 2]), torch.tensor([6, 0, 2, 5, 2])
    out = place(objects, top, left, 10)
    for n in range(5):  # reference: one slice assignment per sample
        ref = torch.zeros(2, 10, 10)
        ref[:, top[n]:top[n] + 4, left[n]:left[n] + 4] = objects[n]
        assert torch.equal(out[n], ref)


def test_place_rejects_positions_off_the_canvas():
    with pytest.raises(ShapeError):
        place(torch.rand(2, 1, 4, 4), torch.tensor([0, 7]), 0, 10)


def test_digits_are_real_and_upsampled():
    objects, labels, num_classes, _ = load_objects(None, 16)
    assert objects.shape == (1797, 1, 16, 16) and num_classes == 10
    assert objects.min() >= 0 and objects.max() <= 1 and objects.max() > 0.9
    assert torch.bincount(labels).min() >= 170  # every class present, about 180 each


@pytest.mark.parametrize("region", ["all", "quadrant", "band", "centre", ((2, 5), (0, 9))])
def test_positions_stay_in_their_region_and_depend_only_on_seed_and_index(region):
    (y0, y1), (x0, x1) = region_bounds(region, 48, 16)
    idx = torch.arange(300)
    pos = draw_positions(region, idx, 48, 16, seed=3)
    assert pos[:, 0].min() >= y0 and pos[:, 0].max() <= y1 and pos[:, 1].min() >= x0 and pos[:, 1].max() <= x1
    # the draw of sample i does not depend on which other samples are drawn with it
    assert torch.equal(draw_positions(region, idx[100:150], 48, 16, seed=3), pos[100:150])
    if (y1 - y0 + 1) * (x1 - x0 + 1) > 4:
        assert not torch.equal(draw_positions(region, idx, 48, 16, seed=4), pos)


def test_all_region_covers_the_canvas():
    pos = draw_positions("all", torch.arange(2000), 32, 16, seed=0)
    assert pos.min() == 0 and pos.max() == 16


def test_unknown_region_raises():
    with pytest.raises(InputError):
        region_bounds("corner", 32, 16)
    with pytest.raises(InputError):
        region_bounds(((0, 40), (0, 1)), 32, 16)


def test_split_is_fixed_by_seed_and_disjoint():
    a = make_canvas_split(None, canvas=32, seed=1)
    b = make_canvas_split(None, canvas=32, seed=1)
    c = make_canvas_split(None, canvas=32, seed=2)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.positions, b.test.positions)
    assert not torch.equal(a.test.indices, c.test.indices)
    assert set(a.train.indices.tolist()).isdisjoint(a.test.indices.tolist())
    assert len(a.train) + len(a.test) == 1797
    # each canvas holds exactly its object at its position
    t = a.test
    assert torch.equal(t.images, place(t.objects, t.positions[:, 0], t.positions[:, 1], 32))


def test_labelled_npz_data_goes_on_the_canvas(tmp_path):
    rng = torch.Generator().manual_seed(0)
    images = (torch.rand(40, 24, 24, 3, generator=rng) * 255).to(torch.uint8).numpy()
    labels = (torch.arange(40) % 4).numpy()
    import numpy as np

    np.savez(tmp_path / "toy.npz", images=images, labels=labels)
    split = make_canvas_split(str(tmp_path / "toy.npz"), canvas=32, object_size=16, seed=0)
    assert split.num_classes == 4 and split.train.images.shape[1:] == (3, 32, 32)
    assert len(split.train) + len(split.test) == 40
    np.savez(tmp_path / "unlabelled.npz", images=images)
    with pytest.raises(InputError):
        make_canvas_split(str(tmp_path / "unlabelled.npz"))


# --------------------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("downsample", ["maxpool", "stride", "blur", "aps"])
@pytest.mark.parametrize("head", ["gap", "fc"])
def test_every_variant_builds_and_classifies(downsample, head):
    for canvas in (32, 48):
        net = SmallCNN(downsample, head, "circular", width=4, canvas=canvas, in_channels=3, num_classes=7).eval()
        assert net(torch.rand(2, 3, canvas, canvas)).shape == (2, 7)


def test_bad_switches_raise():
    with pytest.raises(InputError):
        SmallCNN(downsample="avgpool")
    with pytest.raises(InputError):
        SmallCNN(head="attention")
    with pytest.raises(InputError):
        SmallCNN(canvas=36)


def _random_net(downsample, head, seed=0):
    torch.manual_seed(seed)
    net = SmallCNN(downsample, head, "circular", width=4, canvas=32).double()
    for m in net.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@settings(max_examples=8, deadline=None)
@given(dy=st.integers(-40, 40), dx=st.integers(-40, 40), seed=st.integers(0, 3))
def test_aps_circular_gap_is_exactly_invariant_to_circular_shifts(dy, dx, seed):
    net = _random_net("aps", "gap", seed)
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a, b = net(x), net(circular_shift(x, dy, dx))
    assert torch.allclose(a, b, rtol=0, atol=1e-10 * float(a.abs().max()))


@pytest.mark.parametrize("downsample, head", [("maxpool", "gap"), ("aps", "fc")])
def test_negative_controls_are_not_invariant(downsample, head):
    net = _random_net(downsample, head)
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (net(x) - net(circular_shift(x, 1, 3))).abs().max()
    assert diff > 1e-4


# --------------------------------------------------------------------------------------------- experiments


@pytest.fixture(scope="module")
def architecture():
    from shiftlab.experiments.architecture import run_architecture

    return run_architecture(seeds=1, quick=True)


@pytest.mark.slow
def test_architecture_aps_circular_gap_has_consistency_exactly_one(architecture):
    v = architecture["variants"]
    aps = v["aps-gap-circular"]["runs"][0]
    assert aps["circular_consistency"]["value"] == 1.0
    assert aps["circular_consistency"]["n"] == architecture["data"]["n_test"]
    assert aps["circular_max_logit_difference"] <= 1e-9  # float64 evaluation
    assert aps["accuracy"]["value"] > 0.5  # it did learn: chance is 0.1
    # negative controls: without APS, or without global pooling, the logits move with a circular shift
    for control in ("maxpool-gap-circular", "aps-fc-circular"):
        assert v[control]["runs"][0]["circular_max_logit_difference"] > 1e-3


@pytest.mark.slow
def test_architecture_records_seeds_and_spread(architecture):
    assert architecture["seeds"] == [0] and architecture["quick"] is True
    for entry in architecture["variants"].values():
        assert [r["seed"] for r in entry["runs"]] == [0]
        s = entry["summary"]["accuracy"]
        assert s["mean"] == entry["runs"][0]["accuracy"]["value"] and s["std"] == 0.0
    json.dumps(architecture, allow_nan=False)


def _numbers(result):
    """The result without timings and machine details (what a seed must reproduce)."""
    if isinstance(result, dict):
        return {k: _numbers(v) for k, v in result.items()
                if "seconds" not in k and k not in ("environment", "eval_seconds")}
    if isinstance(result, list):
        return [_numbers(v) for v in result]
    return result


@pytest.mark.slow
def test_same_seed_gives_identical_numbers(architecture):
    from shiftlab.experiments.architecture import run_architecture

    again = run_architecture(seeds=1, quick=True, variants=("aps-gap-circular",))
    first = _numbers(architecture["variants"]["aps-gap-circular"])
    assert _numbers(again["variants"]["aps-gap-circular"]) == first


@pytest.mark.slow
def test_unseen_positions_fc_fails_far_from_training_but_aps_does_not():
    from shiftlab.experiments.positions import run_unseen_positions

    r = run_unseen_positions(seeds=1, quick=True)
    fc = r["variants"]["maxpool-fc-zeros"]["runs"][0]
    aps = r["variants"]["aps-gap-circular"]["runs"][0]
    assert fc["far"] < fc["inside"] - 0.15, fc
    assert abs(aps["far"] - aps["inside"]) <= 0.02, aps
    assert aps["far"] > fc["far"] + 0.3
    heat = torch.tensor(r["variants"]["maxpool-fc-zeros"]["heatmap_mean"])
    assert heat.shape == (len(r["grid"]), len(r["grid"]))


@pytest.mark.slow
def test_augmentation_buys_positions_that_the_data_lacked():
    from shiftlab.experiments.augmentation import run_augmentation

    r = run_augmentation(seeds=1, quick=True)
    base = r["variants"]["baseline"]["runs"][0]
    aug = r["variants"]["baseline + shift 8"]["runs"][0]
    aps = r["variants"]["aps + circular + global pooling"]["runs"][0]
    # trained on centred digits only: accuracy collapses when the digit moves
    assert base["accuracy_anywhere"] < base["accuracy"]["value"] - 0.2
    # shift augmentation recovers part of it; the invariant architecture does not need it
    assert aug["accuracy_anywhere"] > base["accuracy_anywhere"] + 0.1
    assert abs(aps["accuracy_anywhere"] - aps["accuracy"]["value"]) <= 0.02
    assert aps["circular_consistency"]["value"] == 1.0
    assert r["variants"]["baseline"]["macs"] > 0


@pytest.mark.slow
def test_rotation_cli_writes_results_and_rotation_needs_rotated_data(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "rotation", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "rotation" in printed and "90 deg" in printed
    assert (out / "rotation.png").stat().st_size > 1000
    r = json.loads((out / "rotation.json").read_text())
    angles = r["sweeps"]["angles"]
    none = r["variants"]["none"]["curves"]["angles"]["mean"]
    rot = r["variants"]["rotation"]["curves"]["angles"]["mean"]
    at90 = angles.index(90.0)
    assert none[0] > none[at90] + 0.3  # not rotation invariant without rotated data
    assert rot[at90] > none[at90] + 0.15  # rotated training data buys it
    assert max(rot) - min(rot) < max(none) - min(none)  # the curve flattens
    # an existing result is never overwritten without --force
    assert main(["experiment", "rotation", "--quick", "--out", str(out), "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_writes_json_and_figures_from_any_result(tmp_path, capsys, monkeypatch, architecture):
    import shiftlab.cli.experiment as cli

    monkeypatch.setattr(cli, "_runner", lambda name: lambda **kw: architecture)
    out = tmp_path / "exp"
    assert main(["experiment", "architecture", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "architecture.json").read_text())["experiment"] == "architecture"
    assert (out / "architecture.png").exists() and (out / "architecture_sweep.png").exists()
    assert "aps-gap-circular" in capsys.readouterr().out
    assert main(["experiment", "architecture", "--quick", "--out", str(out), "--force", "--no-progress"]) == 0


def test_cli_rejects_bad_seeds(tmp_path, capsys):
    assert main(["experiment", "architecture", "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert "seeds" in capsys.readouterr().err


@pytest.mark.parametrize("run", ["run_augmentation", "run_rotation"])
def test_exception_unknown_condition_is_a_one_line_input_error(run):
    from shiftlab.errors import InputError
    from shiftlab import experiments

    with pytest.raises(InputError, match="unknown conditions"):
        getattr(experiments, run)(quick=True, conditions=["no-such-condition"])
