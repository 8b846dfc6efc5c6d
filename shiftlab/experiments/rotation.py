"""Experiment "rotation": accuracy against rotation angle, scale and brightness, with and without augmentation.

Claim tested: CNNs are not rotation invariant unless the data has rotations (and likewise for scale and
lighting). One network (max pooling, global average pooling, zero padding) is trained on digits near the
centre of a 32x32 canvas under four conditions: no augmentation, random rotations (uniform in +-180
degrees), random zoom (x0.5..x1.5) and random brightness (x0.25..x2). Every trained network is then
measured on the held-out digits rotated about the canvas centre by 0..180 degrees, zoomed by 0.5..1.5 and
brightened by 0.1..3.

Note that 6 and 9 are each other's 180-degree rotation, so even a perfectly rotation-invariant classifier
must confuse them at large angles: the ceiling under full rotation augmentation is below 100%.
"""

from __future__ import annotations

import torch

from shiftlab.experiments._common import (Timer, check_conditions, environment, seed_list, summarise, summarise_curves,
                                          train_variant)
from shiftlab.experiments.digits import make_canvas_split
from shiftlab.experiments.train import (BrightnessAugment, RotationAugment, ScaleAugment, TrainConfig,
                                        evaluation_copy, predict)

__all__ = ["CONDITIONS", "run_rotation"]

VARIANT = "maxpool-gap-zeros"

CONDITIONS = {
    "none": None,
    "rotation": RotationAugment(180.0),
    "scale": ScaleAugment(0.5, 1.5),
    "brightness": BrightnessAugment(0.25, 2.0),
}

FULL = {"canvas": 32, "object_size": 16, "region": "centre", "width": 16, "train_limit": None, "test_limit": None,
        "train": TrainConfig(epochs=12, batch_size=64, lr=3e-3), "conditions": tuple(CONDITIONS),
        "angles": [float(a) for a in range(0, 181, 15)],
        "scales": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
        "brightness": [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]}
QUICK = {"canvas": 32, "object_size": 16, "region": "centre", "width": 8, "train_limit": None, "test_limit": 200,
         "train": TrainConfig(epochs=4, batch_size=32, lr=1e-2), "conditions": ("none", "rotation"),
         "angles": [0.0, 45.0, 90.0, 135.0, 180.0], "scales": [0.5, 1.0, 1.5], "brightness": [0.25, 1.0, 2.0]}

SWEEPS = ("angles", "scales", "brightness")


def _sweep(model, images, labels, transform, values) -> list[float]:
    net = evaluation_copy(model, torch.float32)
    out = []
    for v in values:
        logits = predict(model, transform(images, v), evaluator=net)
        out.append(float((logits.argmax(1) == labels).double().mean()))
    return out


def run_rotation(seeds: int = 3, quick: bool = False, data: str | None = None,
                 progress: bool = False, conditions=None, data_seed: int = 0) -> dict:
    """Accuracy against rotation, scale and brightness for each training condition; JSON-serialisable dict."""
    from shiftlab.transforms import adjust_brightness, rotate, zoom

    p = QUICK if quick else FULL
    conditions = check_conditions(conditions, p["conditions"], CONDITIONS)
    seeds_ = seed_list(seeds)
    transforms = {"angles": rotate, "scales": zoom, "brightness": adjust_brightness}
    with Timer() as total:
        split = make_canvas_split(data, canvas=p["canvas"], object_size=p["object_size"], train_region=p["region"],
                                  seed=data_seed, train_limit=p["train_limit"], test_limit=p["test_limit"])
        test = split.test
        results = {}
        for name in conditions:
            augment = CONDITIONS[name]
            runs = []
            for seed in seeds_:
                model, record = train_variant(VARIANT, split, p["width"], p["train"], seed, augment=augment,
                                              progress=progress)
                with Timer() as t:
                    curves = {s: _sweep(model, test.images, test.labels, transforms[s], p[s]) for s in SWEEPS}
                at = {f"accuracy_at_{int(a)}_deg": curves["angles"][i] for i, a in enumerate(p["angles"])}
                runs.append({"seed": seed, **curves, "accuracy": curves["angles"][0], **at,
                             "final_loss": record["losses"][-1], "train_seconds": record["seconds"],
                             "eval_seconds": t.seconds})
            results[name] = {
                "config": {"variant": VARIANT, "augmentation": augment.describe() if augment else "none"},
                "runs": runs,
                "summary": summarise(runs, ["accuracy", *[f"accuracy_at_{int(a)}_deg" for a in p["angles"]]]),
                "curves": {s: summarise_curves(runs, (s,)) for s in SWEEPS},
            }
    return {
        "experiment": "rotation",
        "claims": ["CNNs are not rotation invariant unless the data has rotations",
                   "likewise for scale and brightness"],
        "quick": quick,
        "seeds": seeds_,
        "data_seed": data_seed,
        "data": split.parameters,
        "parameters": {"variant": VARIANT, "width": p["width"], "train": p["train"].to_dict(),
                       "rotation": "shiftlab.transforms.rotate about the canvas centre (bilinear; exact at "
                                   "multiples of 90)",
                       "scale": "shiftlab.transforms.zoom about the centre", "brightness":
                       "shiftlab.transforms.adjust_brightness (multiply, clamp to [0, 1])"},
        "sweeps": {s: p[s] for s in SWEEPS},
        "variants": results,
        "environment": environment(),
        "run_seconds": total.seconds,
        "cpu_seconds": total.cpu_seconds,
    }
