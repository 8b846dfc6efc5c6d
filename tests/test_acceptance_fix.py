"""Acceptance for issue 4: APS + circular padding makes five real architectures exactly invariant to circular
shifts, and BlurPool (both placements, issue 13) measurably raises their circular and crop consistency.

All models have random weights (nothing is downloaded) and run in eval mode. The unconverted models' figures
are recorded with ``record_property`` (visible in ``--junitxml`` reports) and printed (``-s``);
``benchmarks/record_certify.py`` prints the same comparison over every shift of one period.
"""

import pytest
import torch
import torch.nn.functional as F

from shiftlab.fix.certify import certify
from shiftlab.measure.metrics import consistency
from shiftlab.models import load_model
from shiftlab.transforms import circular_shift, crop_shift

antialias = pytest.importorskip("shiftlab.fix.antialias").antialias

MODELS = ["torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v2", "timm:resnet18",
          "timm:tf_efficientnet_lite0"]
SIZE = 64  # a multiple of the total stride (32) of all five
# (1, 1) is the hardest shift (odd on both axes); two more drawn from one period of 32 with a fixed seed
N_SHIFTS = 3

_cache = {}


def _model(spec):
    if spec not in _cache:
        torch.manual_seed(0)
        _cache[spec] = load_model(spec)
    return _cache[spec]


@pytest.mark.slow
@pytest.mark.parametrize("spec", MODELS)
def test_acceptance_aps_circular_is_exactly_invariant_and_the_original_is_not(spec, record_property):
    model = _model(spec)
    converted, report = antialias(model, method="aps", circular=True)
    assert report, "nothing was converted"
    exact64 = certify(converted, SIZE, shifts=N_SHIFTS, dtype=torch.float64, n_inputs=1)
    exact32 = certify(converted, SIZE, shifts=N_SHIFTS, dtype=torch.float32, n_inputs=1)
    original = certify(model, SIZE, shifts=N_SHIFTS, dtype=torch.float32, n_inputs=1)
    assert exact64.total_stride == (32, 32)
    for name, value in [("aps_float64_rel_dev", exact64.max_rel_deviation),
                        ("aps_float32_rel_dev", exact32.max_rel_deviation),
                        ("unconverted_float32_rel_dev", original.max_rel_deviation)]:
        record_property(name, value)
    print(f"\n{spec}: APS+circular rel. deviation {exact64.max_rel_deviation:.2e} (float64), "
          f"{exact32.max_rel_deviation:.2e} (float32); unconverted {original.max_rel_deviation:.2e} "
          f"(worst shift {original.worst_shift})")
    assert exact64.max_rel_deviation <= 1e-10
    assert exact32.max_rel_deviation <= 1e-5
    # the negative control: the same network before conversion moves by orders of magnitude more
    assert original.max_rel_deviation > 1e-3
    assert original.max_rel_deviation > 100 * exact32.max_rel_deviation


# ---- BlurPool raises consistency ---------------------------------------------------------------------------
#
# A random-weight network's logits are a large input-independent vector plus a small input-dependent part, so
# its raw top-1 is nearly constant (torchvision resnet18 predicts one class for every random image) and raw
# consistency is ~1 whatever the layers do. We therefore (1) centre each model's logits by their mean over the
# evaluated images, which is the same network with its classifier bias re-fitted (still a classifier, the same
# rule for baseline and blurred model), and (2) give the images random contrast (gain exp(0.5 z), z normal),
# so the image-dependent part of the logits is comparable to the part that shifts change. Consistency then
# sits inside (0, 1) for all five models (baseline 0.05-0.85) and the gain from anti-aliasing is visible: we
# require blur > baseline for each model, for circular and crop shifts, with 96 images and fixed seeds, and
# (the continuous view of the same effect) a smaller median relative logit change between the two crops.

N_IMAGES = 96
CROP_MARGIN = 32  # crops at offsets 0..32 of a (64 + 32)-pixel image, as antialiased-cnns' -es protocol


def _images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, size // 8, size // 8, generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.3 * torch.randn(n, 3, size, size, generator=g)
    return x * torch.exp(0.5 * torch.randn(n, 1, 1, 1, generator=g))


def _consistencies(net, pairs):
    with torch.inference_mode():
        logits = {k: net(v) for k, v in pairs.items()}
    centre = torch.cat(list(logits.values())).mean(0)
    a, b, rolled = (logits[k] - centre for k in ("crop_a", "crop_b", "rolled"))
    change = ((a - b).norm(dim=1) / a.norm(dim=1)).median().item()
    return consistency(a, b), consistency(a, rolled), change


_baseline = {}


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["after", "before"])
@pytest.mark.parametrize("spec", MODELS)
def test_acceptance_blur_raises_circular_and_crop_consistency(spec, placement, record_property):
    """Both placements: Zhang's (conv at stride 1, blur after the activation) and blur-first (Composer's)."""
    model = _model(spec)
    blurred, report = antialias(model, method="blur", placement=placement)
    assert report
    g = torch.Generator().manual_seed(1)
    big = _images(N_IMAGES, SIZE + CROP_MARGIN, seed=0)
    offsets = torch.randint(0, CROP_MARGIN + 1, (2, N_IMAGES, 2), generator=g)
    crop_a = crop_shift(big, offsets[0, :, 0], offsets[0, :, 1], SIZE)
    crop_b = crop_shift(big, offsets[1, :, 0], offsets[1, :, 1], SIZE)
    # circular: crop_a against crop_a rolled by a shift drawn uniformly from -32..31 in each axis
    roll = torch.randint(-32, 32, (N_IMAGES, 2), generator=g)
    rolled = circular_shift(crop_a, roll[:, 0], roll[:, 1])
    pairs = {"crop_a": crop_a, "crop_b": crop_b, "rolled": rolled}

    if spec not in _baseline:
        _baseline[spec] = _consistencies(model, pairs)
    base_crop, base_circular, base_change = _baseline[spec]
    blur_crop, blur_circular, blur_change = _consistencies(blurred, pairs)
    for name, value in [("baseline_crop", base_crop), ("blur_crop", blur_crop),
                        ("baseline_circular", base_circular), ("blur_circular", blur_circular)]:
        record_property(f"consistency_{name}", value.value)
    record_property("relative_logit_change_crop", [base_change, blur_change])
    print(f"\n{spec} (blur {placement}): consistency crop {base_crop.value:.3f} -> {blur_crop.value:.3f}, "
          f"circular {base_circular.value:.3f} -> {blur_circular.value:.3f} (n = {N_IMAGES}); "
          f"median relative logit change between crops {base_change:.3f} -> {blur_change:.3f}")
    assert blur_crop.value > base_crop.value
    assert blur_circular.value > base_circular.value
    assert blur_change < base_change


@pytest.mark.slow
def test_acceptance_blur_before_with_filter_size_one_is_the_baseline():
    """Negative control for the test above: blur-first without a blur (filter 1) gains nothing."""
    model = _model("torchvision:resnet18")
    unblurred, _ = antialias(model, method="blur", placement="before", filter_size=1)
    x = _images(16, SIZE, seed=2)
    with torch.inference_mode():
        assert torch.equal(unblurred(x), model(x))
