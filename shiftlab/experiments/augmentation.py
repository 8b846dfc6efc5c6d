"""Experiment "augmentation": does invariance come from the data or from the architecture?

Claim tested: invariance comes mainly from data and augmentation. Digits are placed near the centre of a
32x32 canvas (like MNIST), and the same classic network (max pooling, flatten + fully connected head, zero
padding) is trained without and with random shift augmentation, against the architectural fixes trained
without augmentation (global average pooling; BlurPool; APS with circular padding). Each is measured on
held-out centred digits (the cost: accuracy where the training data lives), on the same digits placed
anywhere on the canvas (what shift invariance buys), by circular and crop consistency and P(top-1 change),
and by its compute (multiply-accumulates per image, training time). Every number comes from
:func:`shiftlab.audit` (:func:`~shiftlab.experiments._common.shift_metrics`; accuracy anywhere: the audit's
accuracy on the re-placed digits, protocol :class:`~shiftlab.experiments.protocols.Placements` ``[(0, 0)]``).
"""

from __future__ import annotations

import torch

from shiftlab.experiments._common import (EVALUATION, Timer, check_conditions, environment, metric_dict,
                                          parse_variant, protocol_specs, run_audit, seed_list, shift_metrics, summarise,
                                          summarise_curves, train_variant)
from shiftlab.experiments.digits import draw_positions, make_canvas_split
from shiftlab.experiments.protocols import Placements
from shiftlab.experiments.train import ShiftAugment, TrainConfig, evaluation_copy

__all__ = ["CONDITIONS", "run_augmentation"]

# name -> (network variant, shift augmentation in pixels or 0)
CONDITIONS = {
    "baseline": ("maxpool-fc-zeros", 0),
    "baseline + shift 4": ("maxpool-fc-zeros", 4),
    "baseline + shift 8": ("maxpool-fc-zeros", 8),
    "global pooling": ("maxpool-gap-zeros", 0),
    "blurpool + global pooling": ("blur-gap-zeros", 0),
    "aps + circular + global pooling": ("aps-gap-circular", 0),
    "aps + circular + global pooling + shift 8": ("aps-gap-circular", 8),
}
QUICK_CONDITIONS = ("baseline", "baseline + shift 8", "aps + circular + global pooling")

FULL = {"canvas": 32, "object_size": 16, "region": "centre", "width": 16, "max_shift": 4, "train_limit": None,
        "test_limit": None, "train": TrainConfig(epochs=12, batch_size=64, lr=3e-3), "conditions": tuple(CONDITIONS)}
QUICK = {"canvas": 32, "object_size": 16, "region": "centre", "width": 8, "max_shift": 4, "train_limit": None,
         "test_limit": 200, "train": TrainConfig(epochs=4, batch_size=32, lr=1e-2), "conditions": QUICK_CONDITIONS}

#: the test canvases as they are (accuracy anywhere: the digits already placed anywhere)
AS_PLACED = Placements([(0, 0)])

METRICS = ["accuracy", "accuracy_anywhere", "circular_consistency", "crop_consistency", "top1_change"]


def run_augmentation(seeds: int = 3, quick: bool = False, data: str | None = None,
                     progress: bool = False, conditions=None, data_seed: int = 0) -> dict:
    """Shift augmentation against architectural fixes; returns a JSON-serialisable dict."""
    p = QUICK if quick else FULL
    conditions = check_conditions(conditions, p["conditions"], CONDITIONS)
    seeds_ = seed_list(seeds)
    with Timer() as total:
        split = make_canvas_split(data, canvas=p["canvas"], object_size=p["object_size"], train_region=p["region"],
                                  seed=data_seed, train_limit=p["train_limit"], test_limit=p["test_limit"])
        test = split.test
        anywhere = draw_positions("all", test.indices, p["canvas"], p["object_size"], data_seed + 104729)
        test_anywhere = test.place_at(anywhere[:, 0], anywhere[:, 1])
        results = {}
        for name in conditions:
            variant, shift = CONDITIONS[name]
            runs = []
            for seed in seeds_:
                augment = ShiftAugment(shift) if shift else None
                model, record = train_variant(variant, split, p["width"], p["train"], seed, augment=augment,
                                              progress=progress)
                with Timer() as t:
                    metrics = shift_metrics(model, test.images, test.labels, seed, p["max_shift"])
                    anywhere_audit = run_audit(evaluation_copy(model, torch.float32), test_anywhere, test.labels,
                                               AS_PLACED, ["accuracy"], seed=seed)
                    metrics["accuracy_anywhere"] = metric_dict(anywhere_audit.metrics["accuracy"])
                runs.append({"seed": seed, **metrics, "final_loss": record["losses"][-1],
                             "train_seconds": record["seconds"], "eval_seconds": t.seconds,
                             "macs": record["macs"], "parameters": record["parameters"]})
            results[name] = {
                "config": {**parse_variant(variant), "variant": variant, "shift_augmentation": shift},
                "runs": runs,
                "summary": summarise(runs, METRICS + ["train_seconds"]),
                "sweep_agreement": summarise_curves(runs, ("sweep", "agreement")),
                "sweep_shift": runs[0]["sweep"]["shift"],
                "sweep_agreement_shift": runs[0]["sweep"]["agreement_shift"],
                "macs": runs[0]["macs"],
            }
    return {
        "experiment": "augmentation",
        "claims": ["invariance comes mainly from data and augmentation"],
        "quick": quick,
        "seeds": seeds_,
        "data_seed": data_seed,
        "data": {**split.parameters, "test_anywhere": "the test digits again, at positions drawn from 'all'"},
        "parameters": {"width": p["width"], "max_shift": p["max_shift"], "train": p["train"].to_dict(),
                       "augmentation": "random shift +-k px per sample and epoch, black fill (crop of the padded "
                                       "canvas)",
                       "evaluation": EVALUATION,
                       "protocols": {**protocol_specs(p["canvas"], p["max_shift"]),
                                     "anywhere": {"spec": AS_PLACED.spec(), "metrics": ["accuracy"]}}},
        "metrics": METRICS,
        "variants": results,
        "environment": environment(),
        "run_seconds": total.seconds,
        "cpu_seconds": total.cpu_seconds,
    }
