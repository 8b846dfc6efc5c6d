"""Dense outputs through the audit: mASSC (circular and crop overlap rule), mIoU, masks that move with their
images, ignore pixels, disagreement maps, shards, and the refusals made before any work."""

import numpy as np
import pytest
import torch

import shiftlab
from shiftlab.data.masks import TensorMasks
from shiftlab.errors import InputError
from shiftlab.measure.dense import DenseRows, iou_counts, segmentation_agreement
from shiftlab.measure.protocols import parse_protocol

H = 12


class BiasedThreshold(torch.nn.Module):
    """Per-pixel two-class scores: class 1 where x + bias > 0.5; the fixed bias map breaks equivariance."""

    def __init__(self, h=H, w=H):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("bias", 0.3 * (torch.rand(h, w, generator=g, dtype=torch.float64) - 0.5))

    def forward(self, x):
        s = x[:, :1] + self.bias[: x.shape[-2], : x.shape[-1]] - 0.5
        return torch.cat([-s, s], 1)


class Threshold(torch.nn.Module):
    """Class 1 exactly where the image exceeds 0.5: predicts a thresholded mask exactly (shift equivariant)."""

    def forward(self, x):
        return torch.cat([0.5 - x[:, :1], x[:, :1] - 0.5], 1)


def images(n=4, seed=0):
    return torch.rand(n, 1, H, H, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def source(x, spec):
    """The images cut to the protocol's source size as the audit cuts them (a centre crop)."""
    if spec.startswith("crop:"):
        side = sum(int(v) for v in spec.split(":")[1:3])
        top = (x.shape[-1] - side) // 2
        return x[..., top:top + side, top:top + side]
    return x


def hand_massc(model, x, spec, seed=0, keep=None):
    """Agreeing and compared pixels per image by loops over pixels, from the protocol's own copies."""
    protocol = parse_protocol(spec)
    x = source(x, spec)
    made = protocol.make(x, torch.arange(len(x)), seed)
    B = len(x)
    views = made.inputs.reshape(protocol.num_copies, B, *made.inputs.shape[1:])
    agree, compared = [0] * B, [0] * B
    for i, j in protocol.layer_pairs:
        with torch.no_grad():
            pi, pj = model(views[i]).argmax(1), model(views[j]).argmax(1)
        h, w = pi.shape[-2:]
        for b in range(B):
            dy, dx = (made.shifts[b, j] - made.shifts[b, i]).tolist()
            for y in range(h):
                for xx in range(w):
                    qy, qx = y + dy, xx + dx
                    if protocol.circular:
                        qy, qx = qy % h, qx % w
                    elif not (0 <= qy < h and 0 <= qx < w):
                        continue
                    if keep is not None and not keep[i][b, y, xx]:
                        continue
                    compared[b] += 1
                    agree[b] += int(pi[b, y, xx] == pj[b, qy, qx])
    return agree, compared


@pytest.mark.parametrize("spec", ["circular:3", "crop:8:3", "diagonal:3:crop"])
def test_massc_equals_hand_computation(spec):
    x = images()
    model = BiasedThreshold().double()
    r = shiftlab.audit(model, x, transform=spec, normalize=False)
    assert r.metric_names == ("equivariance", "massc")  # the default of a dense output
    agree, compared = hand_massc(model, x, spec)
    mv = r.metrics["massc"]
    assert mv.n == sum(compared) and mv.extra["images"] == 4
    assert mv.value == pytest.approx(sum(agree) / sum(compared), abs=1e-15)
    assert mv.value < 1  # the bias map is not equivariant: a negative control for the counting
    if spec.startswith("circular"):
        assert mv.n == 4 * H * H  # circular: every pixel of every pair is compared
    else:
        assert mv.n < 4 * 8 * 8 * len(parse_protocol(spec).layer_pairs)  # only the overlap


def test_crop_overlap_rule_counts_only_the_common_region():
    x = images()
    r = shiftlab.audit(BiasedThreshold().double(), x, transform="crop:8:3", normalize=False)
    made = parse_protocol("crop:8:3").make(x[:, :, :11, :11], torch.arange(4), 0)
    d = (made.shifts[:, 1] - made.shifts[:, 0]).abs()
    assert r.metrics["massc"].n == int(((8 - d[:, 0]) * (8 - d[:, 1])).sum())


def test_segmentation_agreement_on_a_toy_map():
    a = torch.tensor([[[0, 1, 2], [3, 4, 5]]])
    b = torch.tensor([[[9, 0, 1], [9, 3, 4]]])  # a moved right by one, new column unknown
    agree, compared, m = segmentation_agreement(a, b, torch.tensor([0]), torch.tensor([1]), circular=False)
    assert (agree.item(), compared.item()) == (4, 4)
    assert m.tolist() == [[[0, 0, -1], [0, 0, -1]]]
    agree, compared, m = segmentation_agreement(a, b, torch.tensor([0]), torch.tensor([1]), circular=True)
    assert (agree.item(), compared.item()) == (4, 6) and m[0, :, 2].tolist() == [1, 1]


def test_ignore_pixels_are_left_out():
    x = images()
    masks = (x[:, 0] > 0.5).long()
    ignored = masks.clone()
    ignored[:, 2:5, 3:7] = 255  # 12 ignore pixels per image
    model = BiasedThreshold().double()
    plain = shiftlab.audit(model, TensorMasks(x, masks, 2), transform="circular:3", normalize=False)
    holes = shiftlab.audit(model, TensorMasks(x, ignored, 2), transform="circular:3", normalize=False)
    assert holes.metric_names == ("equivariance", "massc", "miou")
    assert plain.metrics["massc"].n - holes.metrics["massc"].n == 4 * 12
    assert plain.metrics["miou"].extra["pixels"] - holes.metrics["miou"].extra["pixels"] == 4 * 12
    protocol = parse_protocol("circular:3")
    keep = protocol.make(ignored[:, None].double(), torch.arange(4), 0).inputs[:, 0].reshape(2, 4, H, H) != 255
    agree, compared = hand_massc(model, x, "circular:3", keep=keep)
    assert holes.metrics["massc"].n == sum(compared)
    assert holes.metrics["massc"].value == pytest.approx(sum(agree) / sum(compared), abs=1e-15)


def test_miou_equals_hand_computation():
    # three classes; the images are the one-hot predictions, so an identity model predicts them
    pred = torch.tensor([[[0, 0, 1], [0, 1, 1], [0, 0, 0]],
                         [[1, 1, 1], [0, 0, 0], [0, 0, 0]]])
    mask = torch.tensor([[[0, 1, 1], [0, 1, 1], [0, 0, 255]],
                         [[1, 1, 0], [0, 0, 0], [1, 0, 0]]])
    x = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).double()  # class 3: in no prediction or mask
    data = TensorMasks(x, mask, num_classes=4)
    r = shiftlab.audit(torch.nn.Identity(), data, transform="circular:1", normalize=False, metrics=["miou"])
    # class 0: image 0 I=4 (ignore pixel out) U=5; image 1 I=5 U=7; class 1: image 0 I=3 U=4, image 1 I=2 U=4
    # class 2 and 3 absent from both: left out
    expected = (9 / 12 + 5 / 8) / 2
    mv = r.metrics["miou"]
    assert mv.value == pytest.approx(expected, abs=1e-15)
    assert (mv.extra["classes"], mv.extra["images"], mv.extra["pixels"], mv.n) == (2, 2, 17, 17)
    assert 0 <= mv.ci[0] <= mv.value <= mv.ci[1] <= 1
    inter, union, pixels = iou_counts(pred, mask, 4, 255)
    assert inter.tolist() == [[4, 3, 0, 0], [5, 2, 0, 0]] and union.tolist() == [[5, 4, 0, 0], [7, 4, 0, 0]]
    assert pixels.tolist() == [8, 9]


@pytest.mark.parametrize("spec", ["circular:3", "crop:8:3", "diagonal:3:crop", "grid:2:1:crop"])
def test_masks_move_with_their_images(spec):
    x = images()
    masks = (x[:, 0] > 0.5).long()
    protocol = parse_protocol(spec)
    rows = DenseRows(protocol, ("massc", "miou"), TensorMasks(x, masks, 2), 0, 0, np.arange(4))
    src = source(x, spec)
    srcm = source(masks, spec)
    K = protocol.num_copies
    made = protocol.make(src, torch.arange(4), 0).inputs
    views = made.reshape(K, 4, *made.shape[1:])[:, :, 0]
    moved = rows.mask_copies(srcm, torch.arange(4), list(range(K)), torch.device("cpu"))
    assert moved.shape == views.shape and torch.equal(moved, (views > 0.5).long())  # every copy has its mask
    r = shiftlab.audit(Threshold(), TensorMasks(x, masks, 2), transform=spec, normalize=False)
    assert r.metrics["miou"].value == 1.0
    if spec.startswith("circular"):
        assert r.metrics["massc"].value == 1.0


def test_equivariant_model_scores_one_and_strided_below():
    x = images(6)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular").double()
    exact = shiftlab.audit(conv, x, transform="circular:3", normalize=False)
    assert exact.metrics["massc"].value == 1.0 and exact.metrics["massc"].n == 6 * H * H
    strided = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, stride=2, padding=1, padding_mode="circular"),
                                  torch.nn.Upsample(scale_factor=2)).double()
    strided[0].load_state_dict({"weight": conv.weight, "bias": conv.bias})
    worse = shiftlab.audit(strided, x, transform="circular:3", normalize=False)
    assert worse.metrics["massc"].value < 1


def test_half_size_output_compared_at_its_stride():
    x = images(6)
    model = torch.nn.Conv2d(1, 3, 3, stride=2, padding=1, padding_mode="circular").double()
    r = shiftlab.audit(model, x, transform="circular:3", normalize=False)
    made = parse_protocol("circular:3").make(x, torch.arange(6), 0)
    d = made.shifts[:, 1] - made.shifts[:, 0]
    even = ((d % 2) == 0).all(1)
    mv = r.metrics["massc"]
    assert mv.extra["unrepresentable"] == int((~even).sum()) and mv.extra["pairs"] == int(even.sum())
    assert mv.n == int(even.sum()) * (H // 2) ** 2
    assert even.any() and (~even).any()  # both kinds of pair occur in this draw
    assert mv.value == 1.0  # a stride-2 circular conv is exactly equivariant for even shifts


def test_maps_shape_and_content():
    x = images()
    model = BiasedThreshold().double()
    r = shiftlab.audit(model, x, transform="circular:3", normalize=False, maps=2)
    kept = r.dense_maps()
    assert kept["index"].tolist() == [0, 1] and kept["shape"] == (H, H) and kept["pair"] == (0, 1)
    assert kept["disagreement"].shape == (2, H, H) and kept["prediction"].shape == (2, H, H)
    made = parse_protocol("circular:3").make(x[:2], torch.arange(2), 0)
    v = made.inputs.reshape(2, 2, 1, H, H)
    p0, p1 = model(v[0]).argmax(1), model(v[1]).argmax(1)
    d = made.shifts[:, 1] - made.shifts[:, 0]
    for b in range(2):
        back = torch.roll(p1[b], (-int(d[b, 0]), -int(d[b, 1])), (0, 1))
        assert np.array_equal(kept["disagreement"][b], (p0[b] != back).numpy().astype(np.int8))
        assert np.array_equal(kept["prediction"][b], p0[b].numpy())
    doc = r.to_dict()
    assert len(doc["maps"]["images"]) == 2 and np.array(doc["maps"]["images"][0]["disagreement"]).shape == (H, H)
    assert "maps" not in shiftlab.audit(model, x, transform="circular:3", normalize=False).to_dict()


def test_shards_merge_to_the_unsplit_result():
    x = images(6)
    masks = (x[:, 0] > 0.45).long()
    masks[:, 0, :3] = 255
    data = TensorMasks(x, masks, 2)
    kw = dict(transform="crop:8:3", normalize=False, maps=3, batch_size=4)
    model = BiasedThreshold().double()
    whole = shiftlab.audit(model, data, **kw)
    parts = shiftlab.audit(model, data, indices=[0, 1, 2, 3], **kw).merge(
        shiftlab.audit(model, data, indices=[4, 5], **kw))
    assert whole == parts and whole.to_dict()["metrics"]["miou"] == parts.to_dict()["metrics"]["miou"]
    assert parts.dense_maps()["index"].tolist() == [0, 1, 2]


class Exploding(torch.nn.Module):
    def __init__(self, dense=True):
        super().__init__()
        self.dense = dense
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.repeat(1, 2, 1, 1) if self.dense else x.mean((2, 3)).repeat(1, 2)


def test_refusals_before_work():
    x = images()
    model = Exploding()
    with pytest.raises(InputError, match="miou needs per-pixel masks"):
        shiftlab.audit(model, x, transform="circular:3", normalize=False, metrics=["miou"])
    with pytest.raises(InputError, match="fractions of a pixel"):
        shiftlab.audit(model, x, transform="subpixel:2", normalize=False, metrics=["massc"])
    with pytest.raises(InputError, match="maps must be an integer <= 16"):
        shiftlab.audit(model, x, transform="circular:3", normalize=False, maps=17)
    assert model.calls == 0  # the arguments alone decided: the model never ran
    with pytest.raises(InputError, match="dense output"):
        shiftlab.audit(Exploding(dense=False), x, transform="circular:3", normalize=False, metrics=["massc"])
    data = TensorMasks(x, (x[:, 0] > 0.5).long(), 2)
    with pytest.raises(InputError, match="dense output"):
        shiftlab.audit(Exploding(dense=False), data, transform="circular:3", normalize=False)
    with pytest.raises(InputError, match="masks have 3 classes"):
        shiftlab.audit(Exploding(), TensorMasks(x, (x[:, 0] > 0.5).long(), 3), transform="circular:3",
                       normalize=False)
    # a fractional grid with a dense output: massc is left out of the defaults, with why
    r = shiftlab.audit(Threshold(), x, transform="subpixel:2", normalize=False)
    assert r.metric_names == ("equivariance",) and "fractions" in r.omitted["massc"]


def test_cli_lists_every_metric():
    import argparse

    from shiftlab.cli import audit as cli_audit
    from shiftlab.measure.result import METRIC_NAMES

    parser = argparse.ArgumentParser()
    cli_audit.add_arguments(parser)
    help_text = parser.format_help()
    assert {"massc", "miou"} <= set(METRIC_NAMES) and all(name in help_text for name in METRIC_NAMES)


def test_checkpoint_resume_keeps_dense_rows(tmp_path):
    x = images()
    data = TensorMasks(x, (x[:, 0] > 0.5).long(), 2)
    kw = dict(transform="circular:3", normalize=False, maps=2, batch_size=4)
    first = shiftlab.audit(BiasedThreshold().double(), data, checkpoint=tmp_path, checkpoint_every=1, **kw)
    again = shiftlab.audit(BiasedThreshold().double(), data, checkpoint=tmp_path, **kw)  # every batch resumed
    assert first == again and again.dense_maps()["index"].tolist() == [0, 1]


def test_doctests():
    import doctest

    import shiftlab.measure.dense as dense

    failures, attempted = doctest.testmod(dense, verbose=False)
    assert attempted >= 2 and failures == 0
