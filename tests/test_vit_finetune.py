"""``shiftlab finetune --fix aps`` on a vision transformer (issue 22): a tiny timm ViT saved as a model file is
converted (polyphase tokenization, circular position encoding) and distilled back towards the original.

Held-out views (other images than the training ones, each rolled circularly) judge the result: the fine-tuned
model agrees with the original more often than the converted model did before fine-tuning, and it is still
exactly invariant to circular shifts (float64 certificate), with the original as the negative control.
"""

from __future__ import annotations

import pytest
import torch
from _subprocesses import write_class_images

import shiftlab
from shiftlab.cli import main

NET = '''
import torch
from timm.models.vision_transformer import VisionTransformer


def make():
    torch.manual_seed(0)
    net = VisionTransformer(img_size=32, patch_size=8, in_chans=3, num_classes=3, embed_dim=32, depth=1,
                            num_heads=2, mlp_ratio=2.0)
    with torch.no_grad():  # weights that carry the signal (predictions that vary), a position embedding that matters
        for name, t in net.named_parameters():
            if t.ndim > 1 and name != "pos_embed":
                t.normal_(0.0, t[0].numel() ** -0.5)
        net.pos_embed.normal_(0.0, 1.0)
    net.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    return net
'''

VIEWS = "circular:4"  # two circular shifts of each held-out image, offsets in [-4, 3]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The teacher, the converted student before fine-tuning, the fine-tuned student (from its file), and the
    held-out images."""
    root = tmp_path_factory.mktemp("vit_finetune")
    (root / "net.py").write_text(NET)
    write_class_images(root / "train", 8, seed=0)
    write_class_images(root / "held_out", 6, seed=1)
    spec, out = f"{root / 'net.py'}:make", root / "vit_aps.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["finetune", "--model", spec, "--fix", "aps", "--data", str(root / "train"), "--steps", "40",
                     "--batch-size", "8", "--lr", "3e-3", "--threads", "1", "--workers", "0", "--out", str(out),
                     "--no-progress", "--force"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    teacher = shiftlab.load_model(spec)
    before, _ = shiftlab.antialias(teacher, method="aps")
    after = shiftlab.load_model(spec, weights=out)
    return {"teacher": teacher, "before": before, "after": after, "held_out": str(root / "held_out")}


def _agreement(student, tuned) -> float:
    result = shiftlab.audit(student, tuned["held_out"], transform=VIEWS, metrics=["reference_agreement"],
                            reference=tuned["teacher"], seed=0)
    return result.metrics["reference_agreement"].value


@pytest.mark.slow
def test_feature_finetuned_vit_agrees_more_on_held_out_views(tuned):
    """Distillation gives the predictions back: agreement with the original on held-out views rises (the
    conversion removed a position embedding drawn large, so it starts low)."""
    before, after = _agreement(tuned["before"], tuned), _agreement(tuned["after"], tuned)
    assert after > before, (before, after)
    assert tuned["after"].shiftlab_fix["method"] == "aps"


@pytest.mark.slow
def test_feature_finetuned_vit_is_still_exactly_invariant(tuned):
    """Fine-tuning changes the weights, not the construction: the float64 certificate passes for every shift of
    the period (the patch size) and larger rolls; the original model fails it."""
    after = tuned["after"]
    assert not torch.equal(after.patch_embed.position.weight, torch.zeros_like(after.patch_embed.position.weight))
    certificate = shiftlab.certify(after, (32, 32), shifts="period", dtype=torch.float64)
    assert certificate.passed and certificate.max_rel_deviation < 1e-10
    assert shiftlab.certify(after, (32, 32), shifts=[(9, 17), (21, 3)], n_inputs=1).passed
    original = shiftlab.certify(tuned["teacher"], (32, 32), shifts=[(1, 0), (3, 5)], n_inputs=1)
    assert not original.passed and original.max_rel_deviation > 1e-4
