"""shiftlab.audit: analytic truths, hand-computed values, exact sharding, layer hooks, bad input."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import shiftlab
import shiftlab.metrics as SM
from shiftlab import transforms as T
from shiftlab.errors import InputError, ShapeError, ShiftlabError
from shiftlab.measure.audit import AuditResult, audit, merge
from shiftlab.measure.protocols import (CircularShiftPair, CropShiftPair, DiagonalSweep, ImageNetPSequence, ShiftGrid,
                                        parse_protocol)

TOL64 = 1e-10


def invariant_net(dtype=torch.float64, classes=10, seed=0):
    """Circular padding, stride 1, global average pooling: exactly invariant to circular shifts."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular"), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, classes)).to(dtype)


class ColumnClassifier(nn.Module):
    """Class = (column of the brightest pixel) // 4: depends on position in a way one can compute by hand."""

    def __init__(self, classes=4):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        flat = x.sum(1).flatten(1)
        col = flat.argmax(1) % x.shape[-1]
        return 10.0 * nn.functional.one_hot((col // 4) % self.classes, self.classes).to(x.dtype)


def dots(cols, size=16, row=5):
    """Black images with one white pixel at (row, col)."""
    x = torch.zeros(len(cols), 3, size, size, dtype=torch.float64)
    x[torch.arange(len(cols)), :, row, torch.as_tensor(cols)] = 1.0
    return x


# ------------------------------------------------------------------------------------------- analytic truths

def test_exactly_invariant_model_scores_perfectly(device):
    x = torch.rand(6, 3, 16, 16, dtype=torch.float64)
    model = invariant_net()
    r = audit(model, x, transform="circular:8", normalize=False, layers=["0", "2", "4"], device=device)
    assert r.metrics["consistency"].value == 1.0
    for name in ("0", "2"):
        eq = r.layers[name]["equivariance"]
        assert eq.n == 6 and eq.value <= TOL64 and eq.extra["unrepresentable"] == 0
    assert r.layers["4"]["pooled_invariance"].value <= TOL64
    d = audit(model, x, transform="diagonal:4:circular", normalize=False,
              metrics=["top1_change", "mean_abs_change", "top5_distance", "worst_case_stability"], device=device)
    assert d.metrics["top1_change"].value == 0.0 and d.metrics["top1_change"].n == 6 * 4
    assert d.metrics["mean_abs_change"].value <= TOL64
    assert d.metrics["top5_distance"].value == 0.0
    assert d.metrics["worst_case_stability"].value == 1.0


def test_zero_padded_model_is_a_negative_control(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    r = audit(model, torch.rand(4, 3, 16, 16, dtype=torch.float64), transform="circular:8", normalize=False,
              layers=["0"], device=device)
    assert r.layers["0"]["equivariance"].value > 1e-3


def test_position_dependent_model_matches_hand_computation():
    cols = [0, 1, 2, 3, 5, 7]
    x = dots(cols)
    labels = torch.tensor([c // 4 for c in cols])
    r = audit(ColumnClassifier(), (x, labels), transform="diagonal:8:circular", normalize=False,
              metrics=["top1_change", "worst_case_stability", "accuracy"])
    # step o -> o + 1 moves the dot from column c + o to c + o + 1: the class changes when c + o + 1 is a multiple of 4
    changes = sum((c + o) // 4 != (c + o + 1) // 4 for c in cols for o in range(8))
    assert r.metrics["top1_change"].value == changes / (8 * len(cols))
    assert r.metrics["worst_case_stability"].value == 0.0
    correct = sum((c + o) // 4 == c // 4 for c in cols for o in range(9))
    acc = r.metrics["accuracy"]
    assert acc.value == correct / (9 * len(cols))
    assert acc.extra["curve"]["value"][0] == 1.0  # offset 0: every label is right
    assert acc.extra["curve"]["parameters"][3] == [3, 3]

    c = audit(ColumnClassifier(), x, transform="circular:6", normalize=False, seed=7)
    off = T.random_offsets(7, list(range(len(cols))), -6, 5, count=2)
    same = sum(((col + int(o[0, 1])) % 16) // 4 == ((col + int(o[1, 1])) % 16) // 4 for col, o in zip(cols, off))
    assert c.metrics["consistency"].value == same / len(cols)

    g = audit(ColumnClassifier(), x, transform="grid:3", normalize=False, metrics=["worst_case_stability"])
    stable = sum(c % 4 <= 1 for c in cols)  # columns c, c+1, c+2 share one class iff c % 4 <= 1
    assert g.metrics["worst_case_stability"].value == stable / len(cols)


def test_audit_equals_the_pure_metric_functions():
    x = torch.rand(5, 3, 20, 20)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    protocol = DiagonalSweep(4, mode="crop")
    r = audit(model, x, transform=protocol, normalize=False, batch_size=100, channels_last=False)
    with torch.inference_mode():
        copies = protocol.make(x, torch.arange(5), 0)
        logits = model(copies.inputs).view(5, 5, -1).transpose(0, 1)
    assert r.metrics["top1_change"].value == SM.top1_change(logits).value
    assert r.metrics["top1_change"].ci == SM.top1_change(logits).ci
    assert r.metrics["mean_abs_change"].value == SM.mean_abs_change(logits).value


# ------------------------------------------------------------------------------------------- protocols

@pytest.mark.parametrize("protocol", [CircularShiftPair(5, passes=2), CropShiftPair(12, 6), DiagonalSweep(3, "crop"),
                                      DiagonalSweep(3, "circular"), DiagonalSweep(2, "canvas", object_size=8),
                                      ImageNetPSequence(2), ShiftGrid(3, 2, "crop")], ids=repr)
def test_protocol_shift_bookkeeping_is_exact_at_the_input(protocol):
    # an identity first layer sees the copies themselves: each copy must be the reference moved by the reported shift
    x = torch.rand(4, 3, 18, 18, dtype=torch.float64)
    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.LazyLinear(3)).double()
    r = audit(model, x, transform=protocol, normalize=False, layers=["0"], margin=0)
    eq = r.layers["0"]["equivariance"]
    assert eq.n > 0 and eq.value == 0.0


def test_protocol_bookkeeping_negative_control():
    class WrongSign(DiagonalSweep):
        def make(self, images, indices, seed, copies=None):
            c = super().make(images, indices, seed, copies)
            return type(c)(c.inputs, -c.shifts, c.num_copies)

    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.LazyLinear(3)).double()
    r = audit(model, x, transform=WrongSign(3, "circular"), normalize=False, layers=["0"])
    assert r.layers["0"]["equivariance"].value > 0.1


def test_parse_protocol_specs():
    assert parse_protocol("circular:32") == CircularShiftPair(32)
    assert parse_protocol("crop:224:32") == CropShiftPair(224, 32)
    assert parse_protocol("diagonal:8:canvas") == DiagonalSweep(8, "canvas")
    assert parse_protocol("sequence:20").num_copies == 41
    assert parse_protocol("grid:4:2").num_copies == 16
    assert parse_protocol("rotate:0,15,30").parameters == [0.0, 15.0, 30.0]
    for bad in ("wobble:3", "crop:a:b", "diagonal:8:sideways", "circular:0", "rotate:5", ""):
        with pytest.raises(InputError):
            parse_protocol(bad)


# ------------------------------------------------------------------------------------------- sharding and layers

def test_sharded_equals_unsharded_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    x = torch.rand(12, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, -1] * 2)
    kw = dict(transform="circular:4", normalize=False, batch_size=8, layers="all", metrics=["consistency", "accuracy"])
    full = audit(model, (x, labels), **kw)
    shards = [audit(model, (x, labels), indices=range(8, 12), **kw),
              audit(model, (x, labels), indices=range(0, 8), **kw)]
    merged = merge(shards)
    assert merged.metrics == full.metrics
    assert merged.layers == full.layers
    assert merged == full and merged.to_dict() == full.to_dict()
    seq_kw = dict(transform="diagonal:3:circular", normalize=False)
    cols = [0, 3, 6, 9, 2, 5, 1]
    whole = audit(ColumnClassifier(), dots(cols), **seq_kw)
    parts = audit(ColumnClassifier(), dots(cols), indices=[0, 4, 5], **seq_kw).merge(
        audit(ColumnClassifier(), dots(cols), indices=[1, 2, 3, 6], **seq_kw))
    assert parts.metrics == whole.metrics
    with pytest.raises(ShiftlabError, match="overlap"):
        shards[0].merge(shards[0])


def test_stride_two_layer_even_exact_odd_not_representable(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular"),
                          nn.Upsample(scale_factor=2, mode="nearest"), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    even = audit(model, x, transform="grid:2:2", normalize=False, layers="all", device=device)
    assert even.layer_info["0"]["stride"] == [2, 2] and even.layer_info["1"]["stride"] == [1, 1]
    for name in ("0", "1"):
        assert even.layers[name]["equivariance"].n == 4 * 3
        assert even.layers[name]["equivariance"].value <= TOL64
    odd = audit(model, x, transform="diagonal:1:circular", normalize=False, layers="all", device=device)
    assert odd.layers["0"]["equivariance"].n == 0 and odd.layers["0"]["equivariance"].extra["unrepresentable"] == 4
    assert odd.layers["1"]["equivariance"].value > 1e-3  # the stride-1 view of a stride-2 layer: aliasing


def test_layer_statistics_do_not_grow_with_feature_size():
    model = invariant_net(torch.float32)
    sizes = []
    for side in (16, 48):
        r = audit(model, torch.rand(5, 3, side, side), transform="circular:4", normalize=False, layers="all")
        sizes.append(sum(v.nbytes + i.nbytes for chunks in r.series.values() for _, i, v in chunks))
        assert all(not m._forward_hooks for m in model.modules())
    assert sizes[0] == sizes[1]


def test_layers_by_type_and_repeated_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular")
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(self.relu(x))).mean(dim=(-2, -1))

    r = audit(Twice().double(), torch.rand(3, 3, 8, 8, dtype=torch.float64), transform="circular:3",
              normalize=False, layers=nn.ReLU)
    assert set(r.layers) == {"relu", "relu#1"}
    assert all(v["equivariance"].value <= TOL64 for v in r.layers.values())


# ------------------------------------------------------------------------------------------- outputs

def test_dense_output_gets_equivariance_and_refuses_top1_metrics():
    torch.manual_seed(0)
    seg = nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular").double()
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64)
    r = audit(seg, x, transform="circular:4", normalize=False)
    assert r.output == "dense" and r.metrics["equivariance"].value <= TOL64 and r.metrics["equivariance"].n == 3
    with pytest.raises(ShiftlabError, match="dense"):
        audit(seg, x, transform="circular:4", normalize=False, metrics=["consistency"])
    with pytest.raises(ShiftlabError, match="shift or rotation protocol"):
        audit(seg, x, transform="scale:1,2", normalize=False)
    # a circular stride-1 conv is not rotation equivariant (its kernel is not symmetric): measured, not refused
    rot = audit(seg, x, transform="rotate:0,90", normalize=False)
    assert rot.metrics["equivariance"].n == 3 and rot.metrics["equivariance"].value > 0.05
    crop = audit(seg, x, transform="diagonal:2:crop", normalize=False, margin=1)  # inside the padding's reach
    assert crop.metrics["equivariance"].n == 3 * 2 and crop.metrics["equivariance"].value <= TOL64


def test_tuple_and_dict_outputs_use_a_key():
    class Two(nn.Module):
        def forward(self, x):
            m = x.mean(dim=(-2, -1))
            return {"logits": m, "aux": x[..., 0, :]}

    x = torch.rand(4, 3, 8, 8)
    assert audit(Two(), x, normalize=False).output == "logits"
    with pytest.raises(ShiftlabError, match="output"):
        audit(Two(), x, normalize=False, output_key="aux")  # (B, 3, 8): neither logits nor a map


# ------------------------------------------------------------------------------------------- bad input

def test_bad_inputs_get_clear_errors():
    model = invariant_net(torch.float32)
    with pytest.raises(ShapeError, match="channels"):
        audit(model, torch.rand(2, 1, 16, 16), normalize=False)
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):
        audit(model, torch.rand(3, 16, 16), normalize=False)
    nan = torch.rand(2, 3, 16, 16)
    nan[1, 0, 0, 0] = float("inf")
    with pytest.raises(ShapeError, match="NaN or Inf"):
        audit(model, nan, normalize=False)
    with pytest.raises(ShapeError, match="needs at least"):
        audit(model, torch.rand(2, 3, 16, 16), transform="crop:224:32", normalize=False)
    with pytest.raises(InputError, match="no images"):
        audit(model, torch.rand(0, 3, 16, 16), normalize=False)
    with pytest.raises(ShapeError, match=r"pixel space"):
        audit(model, torch.randn(2, 3, 16, 16) * 3)
    with pytest.raises(ShiftlabError, match="unknown metric"):
        audit(model, torch.rand(2, 3, 16, 16), metrics=["sharpness"], normalize=False)
    with pytest.raises(ShiftlabError, match="not defined"):
        audit(model, torch.rand(2, 3, 16, 16), metrics=["top1_change"], normalize=False)
    with pytest.raises(ShiftlabError, match="labels"):
        audit(model, torch.rand(2, 3, 16, 16), metrics=["accuracy"], normalize=False)
    with pytest.raises(InputError, match="no layer named"):
        audit(model, torch.rand(2, 3, 16, 16), layers=["nope"], normalize=False)
    with pytest.raises(ShiftlabError, match="NaN"):
        audit(nn.Sequential(nn.Flatten(), nn.LazyLinear(3), nn.Threshold(10.0, float("nan"))),
              torch.rand(2, 3, 8, 8), normalize=False)


def test_mixed_sizes_are_resized_and_json_is_valid(tmp_path):
    images = [torch.rand(3, 40, 60), torch.rand(3, 50, 50), torch.rand(3, 64, 48)]
    model = invariant_net(torch.float32)
    r = audit(model, images, transform="crop:24:8", image_size=24)
    assert r.n == 3 and r.protocol["spec"] == "crop:24:8"
    doc = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert doc["schema_version"] == 2 and doc["skipped"]["count"] == 0
    assert set(doc["metrics"]["consistency"]) >= {"value", "ci", "n", "protocol"}
    assert isinstance(shiftlab.audit, type(audit)) and shiftlab.AuditResult is AuditResult


@settings(max_examples=10, deadline=None)
@given(cut=st.lists(st.integers(1, 10), min_size=1, max_size=3, unique=True), seed=st.integers(0, 50),
       batch=st.integers(2, 9))
def test_any_sharding_merges_to_the_unsplit_result(cut, seed, batch):
    cols = [(7 * i) % 12 for i in range(11)]
    x, labels = dots(cols), torch.tensor([c // 4 for c in cols])
    kw = dict(transform="circular:5", normalize=False, seed=seed, batch_size=batch)
    full = audit(ColumnClassifier(), (x, labels), **kw)
    bounds = [0, *sorted(cut), 11]
    parts = [audit(ColumnClassifier(), (x, labels), indices=range(a, b), **kw) for a, b in zip(bounds, bounds[1:])]
    assert merge(parts[::-1]) == full
