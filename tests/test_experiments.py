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


# --------------------------------------------------------------------------------------------- protocols


def test_protocol_doctests():
    import doctest

    import shiftlab.experiments.protocols as module

    failures, attempted = doctest.testmod(module, verbose=False)
    assert failures == 0 and attempted > 0


@settings(max_examples=10, deadline=None)
@given(top=st.integers(0, 32), left=st.integers(0, 32), seed=st.integers(0, 3))
def test_placements_are_exactly_the_object_pasted_there(top, left, seed):
    from shiftlab.experiments.protocols import Placements

    objects = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(seed))
    protocol = Placements([(0, 0), (top, left)] if (top, left) != (0, 0) else [(0, 0)])
    made = protocol.make(place(objects, 0, 0, 48), torch.arange(3), seed=0)
    K = protocol.num_copies
    assert torch.equal(made.inputs[(K - 1) * 3:], place(objects, top, left, 48))
    assert made.shifts[:, K - 1].tolist() == [[top, left]] * 3  # content displacement, roll convention


def test_placements_refuse_to_carry_the_object_over_the_edge():
    from shiftlab.errors import ShiftlabError
    from shiftlab.experiments.protocols import Placements

    objects = torch.rand(2, 1, 16, 16) + 0.1
    with pytest.raises(ShapeError, match="over the canvas edge"):  # negative control: an object not at (0, 0)
        Placements([(0, 0), (8, 8)]).make(place(objects, 30, 0, 48), torch.arange(2), seed=0)
    with pytest.raises(ShapeError):
        Placements([(0, 0), (33, 0)]).make(place(objects, 0, 0, 48), torch.arange(2), seed=0)
    with pytest.raises(ShiftlabError):
        Placements([(-1, 0)])


@settings(max_examples=10, deadline=None)
@given(k=st.integers(1, 5), seed=st.integers(0, 3))
def test_centred_sweep_starts_with_the_image_and_moves_the_content_by_s(k, seed):
    import torch.nn.functional as F

    from shiftlab.experiments.protocols import CentredDiagonalSweep
    from shiftlab.measure.protocols import DiagonalSweep

    # content with a black margin of k, so that a shift by s <= k is the same as a roll
    x = F.pad(torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(seed)), (k, k, k, k))
    source = F.pad(x, (k, k, k, k))
    protocol = CentredDiagonalSweep(k)
    made = protocol.make(source, torch.arange(2), seed=0)
    views = made.inputs.reshape(protocol.num_copies, 2, *x.shape[1:])
    assert torch.equal(views[0], x)  # copy 0: the unshifted view, the reference of `agreement`
    for c, (dy, dx) in enumerate(protocol.parameters):
        assert torch.equal(views[c], circular_shift(x, dy, dx))
    assert sorted(protocol.parameters) == [(s, s) for s in range(-k, k + 1)]
    # negative control: the stock crop sweep's first copy (its reference) is a shifted view, not the image
    stock = DiagonalSweep(2 * k, "crop").make(source, torch.arange(2), seed=0).inputs[:2]
    assert not torch.equal(stock, x)


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


def _run_keeping_models(module, run, **kwargs):
    """Run an experiment and keep the networks it trains: (result, {variant: model}, split)."""
    from shiftlab.experiments._common import train_variant

    kept = {}

    def keep(variant, split, *args, **kw):
        model, record = train_variant(variant, split, *args, **kw)
        kept[variant], kept["split"] = model, split
        return model, record

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "train_variant", keep)
        result = getattr(module, run)(**kwargs)
    split = kept.pop("split")
    return result, kept, split


@pytest.fixture(scope="module")
def architecture_run():
    import shiftlab.experiments.architecture as A

    return _run_keeping_models(A, "run_architecture", seeds=1, quick=True)


@pytest.fixture(scope="module")
def architecture(architecture_run):
    return architecture_run[0]


@pytest.mark.slow
def test_architecture_aps_circular_gap_has_consistency_exactly_one(architecture):
    v = architecture["variants"]
    aps = v["aps-gap-circular"]["runs"][0]
    assert aps["circular_consistency"]["value"] == 1.0
    assert aps["circular_consistency"]["n"] == architecture["data"]["n_test"]
    # the audit's relative change of the float64 logits between the two rolled copies: rounding only
    change = aps["circular_logit_change"]
    assert change["value"] <= 1e-12 and change["pooled"] <= 1e-12 and change["n"] == architecture["data"]["n_test"]
    assert aps["accuracy"]["value"] > 0.5  # it did learn: chance is 0.1
    # negative controls: without APS, or without global pooling, the logits move with a circular shift
    for control in ("maxpool-gap-circular", "aps-fc-circular"):
        assert v[control]["runs"][0]["circular_logit_change"]["value"] > 1e-3


def _direct_audit(net, images, labels, protocol, metrics, **kwargs):
    """``shiftlab.audit`` called directly, with the experiments' batching (a float32 forward pass may round
    differently in another batch)."""
    from shiftlab import audit
    from shiftlab.experiments._common import audit_batch
    from shiftlab.measure.protocols import parse_protocol

    protocol = parse_protocol(protocol)
    return audit(net, (images, labels), transform=protocol, metrics=metrics, normalize=False,
                 batch_size=audit_batch(protocol.num_copies), **kwargs)


def _curve(metric):
    curve = metric.extra["curve"]
    return {tuple(p): (v, list(ci), n) for p, v, ci, n in zip(curve["parameters"], curve["value"], curve["ci"],
                                                             curve["n"])}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["maxpool-fc-zeros", "aps-gap-circular"])
def test_architecture_numbers_are_a_direct_audit_of_the_trained_model(architecture_run, variant):
    """Every number of a run equals shiftlab.audit on the same network and protocol: no second engine."""
    import copy

    import torch.nn.functional as F

    from shiftlab.experiments.protocols import CentredDiagonalSweep

    result, models, split = architecture_run
    run = result["variants"][variant]["runs"][0]
    k = result["parameters"]["max_shift"]
    x, y = split.test.images, split.test.labels
    net32, net64 = copy.deepcopy(models[variant]).float(), copy.deepcopy(models[variant]).double()
    circular = _direct_audit(net64, x, y, f"circular:{k}", ["consistency"], layers=["head"])
    assert run["circular_consistency"] == circular.metrics["consistency"].to_dict()
    assert run["circular_logit_change"] == circular.layers["head"]["pooled_invariance"].to_dict()
    crop = _direct_audit(net32, F.pad(x, (k, k + 1, k, k + 1)), y, f"crop:32:{2 * k + 1}", ["consistency"], seed=1)
    assert run["crop_consistency"] == crop.metrics["consistency"].to_dict()
    padded = F.pad(x, (k, k, k, k))
    steps = _direct_audit(net32, padded, y, f"diagonal:{2 * k}:crop", ["top1_change"])
    assert run["top1_change"] == steps.metrics["top1_change"].to_dict()
    sweep = _direct_audit(net32, padded, y, CentredDiagonalSweep(k), ["accuracy", "agreement"])
    accuracy, agreement = _curve(sweep.metrics["accuracy"]), _curve(sweep.metrics["agreement"])
    s = run["sweep"]
    assert {(d, d): (v, ci) for d, v, ci in zip(s["shift"], s["accuracy"], s["accuracy_ci"])} == \
        {p: (v, ci) for p, (v, ci, _) in accuracy.items()}
    assert {(d, d): (v, ci) for d, v, ci in zip(s["agreement_shift"], s["agreement"], s["agreement_ci"])} == \
        {p: (v, ci) for p, (v, ci, _) in agreement.items()}
    assert (0, 0) not in agreement and len(agreement) == 2 * k  # the reference is the unshifted view itself
    assert (run["accuracy"]["value"], run["accuracy"]["ci"], run["accuracy"]["n"]) == accuracy[(0, 0)]


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
    import copy

    import shiftlab.experiments.positions as P
    from shiftlab.experiments.protocols import Placements

    r, models, split = _run_keeping_models(P, "run_unseen_positions", seeds=1, quick=True)
    fc = r["variants"]["maxpool-fc-zeros"]["runs"][0]
    aps = r["variants"]["aps-gap-circular"]["runs"][0]
    assert fc["far"]["value"] < fc["inside"]["value"] - 0.15, fc
    assert abs(aps["far"]["value"] - aps["inside"]["value"]) <= 0.02, aps
    assert aps["far"]["value"] > fc["far"]["value"] + 0.3
    assert aps["spread"] == 0.0  # exactly invariant: one prediction per digit at every position
    heat = torch.tensor(r["variants"]["maxpool-fc-zeros"]["heatmap_mean"])
    assert heat.shape == (len(r["grid"]), len(r["grid"]))
    # the heatmap is the accuracy curve of one direct audit over the whole grid, cell by cell; the regions'
    # numbers are direct audits of their positions (no second engine)
    grid, net = r["grid"], copy.deepcopy(models["maxpool-fc-zeros"]).float()
    at_origin, labels = split.test.place_at(0, 0), split.test.labels
    whole = _curve(_direct_audit(net, at_origin, labels, Placements([(t, c) for t in grid for c in grid]),
                                 ["accuracy"]).metrics["accuracy"])
    assert fc["heatmap"] == [[whole[(t, c)][0] for c in grid] for t in grid]
    assert fc["heatmap_ci"] == [[whole[(t, c)][1] for c in grid] for t in grid]
    inside = [(t, c) for t in grid for c in grid if t <= 16 and c <= 16]
    direct = _direct_audit(net, at_origin, labels, Placements(inside), ["accuracy"]).metrics["accuracy"]
    assert fc["inside"] == {k: v for k, v in direct.to_dict().items() if k != "curve"}
    tested = _direct_audit(net, split.test.images, labels, Placements([(0, 0)]), ["accuracy"]).metrics["accuracy"]
    assert fc["test_accuracy"]["value"] == tested.value


@pytest.mark.slow
def test_augmentation_buys_positions_that_the_data_lacked():
    from shiftlab.experiments.augmentation import run_augmentation

    r = run_augmentation(seeds=1, quick=True)
    base = r["variants"]["baseline"]["runs"][0]
    aug = r["variants"]["baseline + shift 8"]["runs"][0]
    aps = r["variants"]["aps + circular + global pooling"]["runs"][0]
    # trained on centred digits only: accuracy collapses when the digit moves
    assert base["accuracy_anywhere"]["value"] < base["accuracy"]["value"] - 0.2
    # shift augmentation recovers part of it; the invariant architecture does not need it
    assert aug["accuracy_anywhere"]["value"] > base["accuracy_anywhere"]["value"] + 0.1
    assert abs(aps["accuracy_anywhere"]["value"] - aps["accuracy"]["value"]) <= 0.02
    assert aps["circular_consistency"]["value"] == 1.0
    assert base["accuracy_anywhere"]["protocol"] == "placements:0,0"  # the audit of the re-placed digits
    assert r["variants"]["baseline"]["macs"] > 0


@pytest.mark.slow
def test_rotation_cli_writes_results_and_rotation_needs_rotated_data(tmp_path, capsys, monkeypatch, rotation_quick):
    import shiftlab.cli.experiment as cli

    calls = []  # the CLI asks for exactly the quick run the session trained once (conftest.rotation_quick)
    monkeypatch.setattr(cli, "_runner", lambda name: lambda **kw: calls.append((name, kw)) or rotation_quick)
    out = tmp_path / "exp"
    assert main(["experiment", "rotation", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert calls == [("rotation", {"seeds": 1, "quick": True, "data": None, "progress": False})]
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
