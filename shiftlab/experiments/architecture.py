"""Experiment "architecture": which design choices make a CNN's prediction stable under shifts.

Claims tested: pooling gives only local invariance; stride-2 convolutions are used instead of pooling
where equivariance matters; global pooling at the end gives classification invariance.

Every variant of :class:`~shiftlab.experiments.nets.SmallCNN` listed in ``VARIANTS`` is trained on digits
placed anywhere on a 32x32 canvas, once per seed, and measured on the held-out digits: accuracy, circular
consistency, crop consistency, P(top-1 change) along a diagonal 1-pixel sweep, and agreement with the
unshifted prediction as a function of the shift. Every number is what :func:`shiftlab.audit` returns for one
protocol (:func:`~shiftlab.experiments._common.shift_metrics`), with image-level 95% intervals per run; mean
and spread over seeds are reported per variant.
"""

from __future__ import annotations

from shiftlab.experiments._common import (EVALUATION, Timer, environment, parse_variant, protocol_specs, seed_list,
                                          shift_metrics, summarise, summarise_curves, train_variant)
from shiftlab.experiments.digits import make_canvas_split
from shiftlab.experiments.train import TrainConfig

__all__ = ["VARIANTS", "run_architecture"]

VARIANTS = (
    "maxpool-fc-zeros",
    "maxpool-gap-zeros",
    "stride-gap-zeros",
    "blur-gap-zeros",
    "maxpool-gap-circular",
    "aps-fc-circular",
    "aps-gap-circular",
)

# quick mode: the exact variant, its two negative controls (no APS; no global pooling) and the classic net
QUICK_VARIANTS = ("maxpool-fc-zeros", "maxpool-gap-circular", "aps-fc-circular", "aps-gap-circular")

FULL = {"canvas": 32, "object_size": 16, "region": "all", "width": 16, "max_shift": 4, "train_limit": None,
        "test_limit": None, "train": TrainConfig(epochs=12, batch_size=64, lr=3e-3), "variants": VARIANTS}
QUICK = {"canvas": 32, "object_size": 16, "region": "all", "width": 8, "max_shift": 4, "train_limit": None,
         "test_limit": 200, "train": TrainConfig(epochs=4, batch_size=32, lr=1e-2), "variants": QUICK_VARIANTS}

METRICS = ["accuracy", "circular_consistency", "crop_consistency", "top1_change"]


def run_architecture(seeds: int = 3, quick: bool = False, data: str | None = None,
                     progress: bool = False, variants=None, data_seed: int = 0) -> dict:
    """Train each variant once per seed and measure its shift stability; returns a JSON-serialisable dict.

    ``data``: None for the bundled digits, or a labelled data set spec for ``shiftlab.data.load_dataset``.
    """
    p = QUICK if quick else FULL
    seeds_ = seed_list(seeds)
    variants = tuple(variants or p["variants"])
    for v in variants:
        parse_variant(v)
    with Timer() as total:
        split = make_canvas_split(data, canvas=p["canvas"], object_size=p["object_size"], train_region=p["region"],
                                  seed=data_seed, train_limit=p["train_limit"], test_limit=p["test_limit"])
        test = split.test
        results = {}
        for variant in variants:
            runs = []
            for seed in seeds_:
                model, record = train_variant(variant, split, p["width"], p["train"], seed, progress=progress)
                with Timer() as t:
                    metrics = shift_metrics(model, test.images, test.labels, seed, p["max_shift"])
                runs.append({"seed": seed, **metrics, "final_loss": record["losses"][-1],
                             "train_seconds": record["seconds"], "eval_seconds": t.seconds,
                             "macs": record["macs"], "parameters": record["parameters"]})
            results[variant] = {
                "config": parse_variant(variant),
                "runs": runs,
                "summary": summarise(runs, METRICS),
                "sweep_agreement": summarise_curves(runs, ("sweep", "agreement")),
                "sweep_accuracy": summarise_curves(runs, ("sweep", "accuracy")),
                "sweep_shift": runs[0]["sweep"]["shift"],
                "sweep_agreement_shift": runs[0]["sweep"]["agreement_shift"],
            }
    return {
        "experiment": "architecture",
        "claims": ["pooling gives only local invariance",
                   "stride-2 convolutions are used instead of pooling where equivariance matters",
                   "global pooling at the end gives classification invariance"],
        "quick": quick,
        "seeds": seeds_,
        "data_seed": data_seed,
        "data": split.parameters,
        "parameters": {"width": p["width"], "max_shift": p["max_shift"], "train": p["train"].to_dict(),
                       "evaluation": EVALUATION,
                       "protocols": protocol_specs(p["canvas"], p["max_shift"])},
        "metrics": METRICS,
        "variants": results,
        "environment": environment(),
        "run_seconds": total.seconds,
        "cpu_seconds": total.cpu_seconds,
    }
