"""Experiment "subsampling": learned polyphase subsampling (LPS, TIPS) beside BlurPool and APS.

The same :class:`~shiftlab.experiments.nets.SmallCNN` (global average pooling head, circular padding) is built
with each way of subsampling by 2 listed in ``VARIANTS``: a stride-2 convolution and max pooling (the
baselines), BlurPool (Zhang 2019: max at stride 1, blur, subsample), APS (Chaman & Dokmanic 2021), LPS
(Rojas-Gomez et al. 2022) and TIPS (Saha & Gokhale 2025). Each is trained on digits placed anywhere on a 32x32
canvas, once per seed, and measured on the held-out digits by :func:`shiftlab.audit`
(:func:`~shiftlab.experiments._common.shift_metrics`, image-level 95% intervals per run): accuracy, crop
consistency (the published "shift consistency": black enters at the border), circular consistency and
P(top-1 change).

Beside them, the result holds the CIFAR-10 ResNet-18 table published with TIPS (:data:`PUBLISHED`) and a
computed statement of which of its orderings hold on the digits (:func:`published_orderings`): for every
pair of published methods and every metric, whether the digits means are in the published order, and
whether the difference is beyond the seeds' spread (every seed of one above every seed of the other).

APS and LPS with circular padding and global pooling are exactly invariant to circular integer shifts by
construction; TIPS is not: its invariance is learned, and measured here like any other network's.
"""

from __future__ import annotations

import itertools

from shiftlab.errors import InputError
from shiftlab.experiments._common import (EVALUATION, Timer, environment, parse_variant, protocol_specs, seed_list,
                                          shift_metrics, summarise, train_variant)
from shiftlab.experiments.digits import make_canvas_split
from shiftlab.experiments.train import LPS_TEMPERATURE, TIPS_ALPHA, TrainConfig

__all__ = ["VARIANTS", "PUBLISHED", "METHOD_OF", "run_subsampling", "published_orderings"]

VARIANTS = (
    "stride-gap-circular",
    "maxpool-gap-circular",
    "blur-gap-circular",
    "aps-gap-circular",
    "lps-gap-circular",
    "tips-gap-circular",
)

FULL = {"canvas": 32, "object_size": 16, "region": "all", "width": 16, "max_shift": 4, "train_limit": None,
        "test_limit": None, "train": TrainConfig(epochs=12, batch_size=64, lr=3e-3), "variants": VARIANTS}
QUICK = {"canvas": 24, "object_size": 16, "region": "all", "width": 8, "max_shift": 4, "train_limit": None,
         "test_limit": 120, "train": TrainConfig(epochs=2, batch_size=32, lr=1e-2), "variants": VARIANTS}

METRICS = ["accuracy", "crop_consistency", "circular_consistency", "top1_change"]

#: the CIFAR-10 ResNet-18 table published with TIPS, in percent; metric keys are this experiment's names
PUBLISHED = {
    "source": "Saha & Gokhale, Improving Shift Invariance in Convolutional Neural Networks with Translation "
              "Invariant Polyphase Sampling (TIPS), WACV 2025: CIFAR-10, ResNet-18",
    "data": "CIFAR-10",
    "model": "ResNet-18",
    "unit": "percent",
    "metric_names": {"accuracy": "accuracy", "crop_consistency": "shift consistency",
                     "circular_consistency": "circular consistency"},
    "methods": {
        "baseline": {"accuracy": 91.57, "crop_consistency": 87.41, "circular_consistency": 89.92},
        "blurpool": {"accuracy": 93.29, "crop_consistency": 90.54, "circular_consistency": 97.83},
        "aps": {"accuracy": 94.07, "crop_consistency": 92.74, "circular_consistency": 100.0},
        "lps": {"accuracy": 94.45, "crop_consistency": 93.61, "circular_consistency": 100.0},
        "tips": {"accuracy": 98.12, "crop_consistency": 98.67, "circular_consistency": 100.0},
    },
}

#: the published method each way of subsampling stands for (ResNet-18's baseline subsamples by strided
#: convolutions and one max pooling: both baselines stand for it)
METHOD_OF = {"stride": "baseline", "maxpool": "baseline", "blur": "blurpool", "aps": "aps", "lps": "lps",
             "tips": "tips"}


def _exact_by_construction(config: dict) -> bool:
    return config["downsample"] in ("aps", "lps") and config["head"] == "gap" and config["padding"] == "circular"


def _check_variants(variants) -> tuple[str, ...]:
    if isinstance(variants, str):
        variants = (variants,)
    variants = tuple(variants)
    if not variants:
        raise InputError("variants must name at least one variant")
    if len(set(variants)) != len(variants):
        raise InputError(f"variants are listed twice: {sorted({v for v in variants if variants.count(v) > 1})}")
    for v in variants:
        if not isinstance(v, str):
            raise InputError(f"variant names must be strings, got {v!r}")
        parse_variant(v)
    return variants


def _verdict(relation: str, difference: float, separated: bool | None) -> str:
    spread = {None: ", one seed: no spread", True: ", beyond the seeds' spread",
              False: ", within the seeds' spread"}[separated]
    if relation == "=":
        return "holds (equal on digits)" if difference == 0 else f"does not hold (unequal on digits{spread})"
    if difference == 0:
        return "does not hold (equal on digits)"
    return f"{'holds' if difference > 0 else 'reversed'}{spread}"


def published_orderings(variants: dict, seeds: int) -> dict:
    """Which orderings of :data:`PUBLISHED` hold on the digits.

    ``variants``: the result's ``variants`` (name -> entry with ``config`` and ``summary``). For each metric of
    the published table and each pair of published methods (A published at least as high as B), and each
    pair of digits variants standing for them (:data:`METHOD_OF`): the published relation (``>`` or ``=``),
    the digits means and their difference A - B, whether it has the published sign (``=``: exactly equal),
    and whether it is beyond the seeds' spread (every seed's value of one above every seed's value of the
    other; None with one seed). Returns ``{"orderings": [...], "counts": {...}, "rankings": {...}}``; the
    counts: orderings, how many agree, how many agree beyond the spread, how many fail beyond it.
    """
    table = PUBLISHED["methods"]
    by_method: dict[str, list[str]] = {}
    for name, entry in variants.items():
        method = METHOD_OF.get(entry["config"]["downsample"])
        if method is not None:
            by_method.setdefault(method, []).append(name)
    orderings, rankings = [], {}
    for metric in PUBLISHED["metric_names"]:
        methods = [m for m in table if m in by_method]
        rankings[metric] = {
            "published": sorted(table, key=lambda m: -table[m][metric]),
            "digits": sorted(variants, key=lambda v: -variants[v]["summary"][metric]["mean"]),
        }
        for a, b in itertools.combinations(methods, 2):
            if table[a][metric] < table[b][metric]:
                a, b = b, a
            relation = "=" if table[a][metric] == table[b][metric] else ">"
            for va, vb in itertools.product(by_method[a], by_method[b]):
                sa, sb = variants[va]["summary"][metric], variants[vb]["summary"][metric]
                difference = sa["mean"] - sb["mean"]
                if seeds < 2:
                    separated = None
                elif relation == "=":
                    separated = sa["min"] > sb["max"] or sb["min"] > sa["max"]
                else:
                    separated = sa["min"] > sb["max"] if difference > 0 else sb["min"] > sa["max"]
                agrees = difference == 0 if relation == "=" else difference > 0
                orderings.append({
                    "metric": metric, "published_metric": PUBLISHED["metric_names"][metric],
                    "higher": a, "lower": b, "relation": relation,
                    "published": [table[a][metric], table[b][metric]],
                    "variants": [va, vb], "means": [sa["mean"], sb["mean"]], "std": [sa["std"], sb["std"]],
                    "difference": difference, "agrees": agrees, "beyond_seed_spread": separated,
                    "verdict": _verdict(relation, difference, separated),
                })
    counts = {"orderings": len(orderings), "agree": sum(o["agrees"] for o in orderings),
              "agree_beyond_spread": sum(bool(o["agrees"] and o["beyond_seed_spread"]) for o in orderings),
              "fail_beyond_spread": sum(bool(not o["agrees"] and o["beyond_seed_spread"]) for o in orderings)}
    return {"orderings": orderings, "counts": counts, "rankings": rankings}


def _statement(orderings: dict) -> str:
    c = orderings["counts"]
    return (f"published orderings (CIFAR-10 ResNet-18) on digits: {c['agree']} of {c['orderings']} hold "
            f"({c['agree_beyond_spread']} beyond the seeds' spread), {c['orderings'] - c['agree']} do not "
            f"({c['fail_beyond_spread']} beyond the seeds' spread)")


def run_subsampling(seeds: int = 3, quick: bool = False, data: str | None = None, progress: bool = False,
                    variants=None, data_seed: int = 0) -> dict:
    """Train each way of subsampling once per seed, measure it, and set it beside the published table.

    ``data``: None for the bundled digits, or a labelled data set spec for ``shiftlab.data.load_dataset`` (a
    CIFAR-10 python folder, a folder of class subfolders, an .npz). ``variants``: names
    ``DOWNSAMPLE-HEAD-PADDING`` (default :data:`VARIANTS`). Returns a JSON-serialisable dict.
    """
    p = QUICK if quick else FULL
    seeds_ = seed_list(seeds)
    variants = _check_variants(p["variants"] if variants is None else variants)
    with Timer() as total:
        split = make_canvas_split(data, canvas=p["canvas"], object_size=p["object_size"], train_region=p["region"],
                                  seed=data_seed, train_limit=p["train_limit"], test_limit=p["test_limit"])
        test = split.test
        results = {}
        for variant in variants:
            config = parse_variant(variant)
            runs = []
            for seed in seeds_:
                # (train_model draws LPS's Gumbel noise from the seed: repeatable)
                model, record = train_variant(variant, split, p["width"], p["train"], seed, progress=progress)
                with Timer() as t:
                    metrics = shift_metrics(model, test.images, test.labels, seed, p["max_shift"])
                metrics.pop("sweep")
                runs.append({"seed": seed, **metrics, "final_loss": record["losses"][-1],
                             "train_seconds": record["seconds"], "eval_seconds": t.seconds,
                             "macs": record["macs"], "parameters": record["parameters"],
                             **{k: record[k] for k in ("lps_temperature", "tips_alpha") if k in record}})
            results[variant] = {
                "config": config,
                "published_method": METHOD_OF.get(config["downsample"]),
                "exact_by_construction": _exact_by_construction(config),
                "runs": runs,
                "summary": summarise(runs, METRICS),
                "circular_logit_change": summarise(runs, ["circular_logit_change"])["circular_logit_change"],
                "macs": runs[0]["macs"],
                "parameters": runs[0]["parameters"],
            }
        orderings = published_orderings(results, len(seeds_))
    return {
        "experiment": "subsampling",
        "claims": ["learned polyphase subsampling (LPS, TIPS) is more shift-consistent than BlurPool and APS, "
                   "which are more consistent than strided or max-pooled subsampling, at no cost in accuracy "
                   "(TIPS's CIFAR-10 ResNet-18 table)",
                   "APS and LPS with circular padding and global pooling are exactly invariant to circular "
                   "shifts; TIPS's invariance is learned, not guaranteed"],
        "quick": quick,
        "seeds": seeds_,
        "data_seed": data_seed,
        "data": split.parameters,
        "parameters": {"width": p["width"], "max_shift": p["max_shift"], "train": p["train"].to_dict(),
                       "lps_temperature": LPS_TEMPERATURE, "tips_alpha": TIPS_ALPHA,
                       "evaluation": EVALUATION,
                       "protocols": {k: v for k, v in protocol_specs(p["canvas"], p["max_shift"]).items()
                                     if k != "sweep"}},
        "metrics": METRICS,
        "variants": results,
        "published": PUBLISHED,
        "published_comparison": orderings,
        "statement": _statement(orderings),
        "environment": environment(),
        "run_seconds": total.seconds,
        "cpu_seconds": total.cpu_seconds,
    }
