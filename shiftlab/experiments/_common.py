"""Shared pieces of the experiments: variants by name, the shift metrics (each from one shiftlab.audit), summaries
over seeds. Private."""

from __future__ import annotations

import math
import platform
import time

import torch
import torch.nn.functional as F

from shiftlab.errors import InputError
from shiftlab.experiments.nets import DOWNSAMPLING, HEADS, PADDINGS, SmallCNN, count_macs
from shiftlab.experiments.train import build_model, evaluation_copy, train_model

__all__ = ["parse_variant", "train_variant", "shift_metrics", "shift_protocols", "protocol_specs", "run_audit",
           "audit_batch", "curve_point", "metric_dict", "summarise", "environment", "Timer", "seed_list",
           "seeded_runs", "published_and_environment", "check_variant_names"]


def parse_variant(name: str) -> dict:
    """``"aps-gap-circular"`` -> {"downsample": "aps", "head": "gap", "padding": "circular"}."""
    parts = name.split("-")
    if len(parts) != 3 or parts[0] not in DOWNSAMPLING or parts[1] not in HEADS or parts[2] not in PADDINGS:
        raise InputError(f"variant {name!r} must read DOWNSAMPLE-HEAD-PADDING with DOWNSAMPLE in {DOWNSAMPLING}, "
                         f"HEAD in {HEADS}, PADDING in {PADDINGS}")
    return {"downsample": parts[0], "head": parts[1], "padding": parts[2]}


def check_conditions(conditions, default, known) -> tuple[str, ...]:
    """The training conditions to run (``default`` when none are given); unknown names raise InputError."""
    conditions = tuple(conditions or default)
    unknown = [c for c in conditions if c not in known]
    if unknown:
        raise InputError(f"unknown conditions {unknown}; choose from {list(known)}")
    return conditions


def seed_list(seeds: int) -> list[int]:
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"seeds must be a positive integer, got {seeds!r}")
    return list(range(seeds))


def train_variant(variant: str, split, width: int, config, seed: int, augment=None, progress: bool = False):
    """Build ``variant`` with ``seed``, train it on ``split.train``; returns (model, training record)."""
    images = split.train.images
    spec = parse_variant(variant)

    def factory():
        return SmallCNN(**spec, width=width, in_channels=images.shape[1], num_classes=split.num_classes,
                        canvas=images.shape[-1])

    model = build_model(factory, seed)
    record = train_model(model, images, split.train.labels, config, seed, augment=augment, progress=progress,
                         description=f"{variant} seed {seed}")
    record["macs"] = count_macs(model, tuple(images[:1].shape))
    record["parameters"] = sum(p.numel() for p in model.parameters())
    return model, record


AUDIT_INPUTS = 400  # about this many model inputs per forward pass of an audit


def audit_batch(copies: int) -> int:
    """The audit batch size (inputs per forward pass) for a protocol of ``copies`` copies: whole images."""
    return copies * max(1, AUDIT_INPUTS // copies)


def run_audit(net, images: torch.Tensor, labels: torch.Tensor, protocol, metrics, seed: int = 0, layers=None):
    """``shiftlab.audit`` of ``net`` on in-memory images in pixel space, without normalisation: the one call
    every experiment number goes through (see :func:`shift_metrics`)."""
    from shiftlab import audit
    from shiftlab.measure.protocols import parse_protocol

    protocol = parse_protocol(protocol)
    return audit(net, (images, labels), transform=protocol, metrics=list(metrics), normalize=False, seed=seed,
                 layers=layers, batch_size=audit_batch(protocol.num_copies))


def metric_dict(value) -> dict:
    """An audit metric (:class:`~shiftlab.metrics.MetricValue`) as a dict, its per-copy curve left out."""
    out = value.to_dict()
    out.pop("curve", None)
    return out


def curve_point(metric: dict, parameter) -> dict:
    """One point of an audit curve (``metric["curve"]``) as a metric dict: value, ci, n."""
    curve = metric["curve"]
    i = [tuple(p) if isinstance(p, list) else p for p in curve["parameters"]].index(parameter)
    return {"value": curve["value"][i], "ci": list(curve["ci"][i]), "n": curve["n"][i],
            "protocol": metric.get("protocol"), "parameter": list(parameter) if isinstance(parameter, tuple)
            else parameter}


def shift_protocols(size: int, max_shift: int) -> dict:
    """The protocols of :func:`shift_metrics` for square inputs of ``size``: name -> (protocol, padding of
    the input as (left, right, top, bottom) black pixels, metrics)."""
    from shiftlab.experiments.protocols import CentredDiagonalSweep

    k = max_shift
    return {
        "circular": (f"circular:{k}", (0, 0, 0, 0), ("consistency",)),
        "crop": (f"crop:{size}:{2 * k + 1}", (k, k + 1, k, k + 1), ("consistency",)),
        "steps": (f"diagonal:{2 * k}:crop", (k, k, k, k), ("top1_change",)),
        "sweep": (CentredDiagonalSweep(k), (k, k, k, k), ("accuracy", "agreement")),
    }


EVALUATION = ("every number from shiftlab.audit(..., normalize=False), image-level 95% intervals: circular "
              "consistency on a float64 copy of the trained model, everything else on a float32 copy")


def protocol_specs(size: int, max_shift: int) -> dict:
    """What :func:`shift_metrics` measures with, for the result file: name -> spec, input padding, metrics."""
    out = {}
    for name, (protocol, pad, metrics) in shift_protocols(size, max_shift).items():
        spec = protocol if isinstance(protocol, str) else protocol.spec()
        out[name] = {"spec": spec, "padding_left_right_top_bottom": list(pad), "metrics": list(metrics)}
    return out


def shift_metrics(model, images: torch.Tensor, labels: torch.Tensor, seed: int, max_shift: int) -> dict:
    """Accuracy, circular and crop consistency, P(top-1 change) and a diagonal shift sweep, each from one
    :func:`shiftlab.audit` (image-level 95% intervals), with k = ``max_shift``:

    - circular consistency: ``circular:k`` (two ``torch.roll`` copies per image, offsets uniform in [-k, k-1]),
      on a float64 copy of the model (an exactness claim: APS's phase choice must not be decided by float32
      rounding), with the relative change of the logits between the two copies (the audit's pooled
      invariance error of the ``head``, whose output is the logits);
    - crop consistency: ``crop:S:2k+1`` on the image padded by k black pixels at the top and left and k + 1 at
      the bottom and right (a larger black canvas): two S x S windows at offsets uniform in [0, 2k], i.e. the
      content moved by -k..k (the last padded row and column are never inside a window); seed ``seed + 1``;
    - P(top-1 change): ``diagonal:2k:crop`` on the image padded by k: adjacent 1-pixel diagonal window shifts
      (c, c) -> (c+1, c+1), c = 0..2k-1;
    - sweep: :class:`~shiftlab.experiments.protocols.CentredDiagonalSweep` on the image padded by k: the
      accuracy at each diagonal content shift s = -k..k, and the agreement with the unshifted top-1 at each
      s != 0; ``accuracy`` is the sweep's point s = 0, the image itself.

    Everything but circular consistency runs on a float32 copy.

    Shape:
        images: (N, C, S, S); labels: (N,).
    """
    net = evaluation_copy(model, torch.float32)
    exact = evaluation_copy(model, torch.float64)
    if images.shape[-1] != images.shape[-2]:
        raise InputError(f"shift_metrics needs square images, got {tuple(images.shape[-2:])}")
    found = {}
    for name, (protocol, pad, metrics) in shift_protocols(images.shape[-1], max_shift).items():
        source = F.pad(images, pad) if any(pad) else images
        found[name] = run_audit(exact if name == "circular" else net, source, labels, protocol, metrics,
                                seed=seed + 1 if name == "crop" else seed,
                                layers=["head"] if name == "circular" else None)
    sweep = found["sweep"].metrics
    accuracy, agreement = sweep["accuracy"].to_dict(), sweep["agreement"].to_dict()
    acc_shift, acc_value, acc_ci, acc_n = _by_diagonal_shift(accuracy["curve"])
    agr_shift, agr_value, agr_ci, _ = _by_diagonal_shift(agreement["curve"])
    return {
        "accuracy": curve_point(accuracy, (0, 0)),
        "circular_consistency": found["circular"].metrics["consistency"].to_dict(),
        "circular_logit_change": found["circular"].layers["head"]["pooled_invariance"].to_dict(),
        "crop_consistency": found["crop"].metrics["consistency"].to_dict(),
        "top1_change": found["steps"].metrics["top1_change"].to_dict(),
        "sweep": {"protocol": found["sweep"].protocol["spec"], "shift": acc_shift, "accuracy": acc_value,
                  "accuracy_ci": acc_ci, "n": acc_n,
                  "agreement_shift": agr_shift, "agreement": agr_value, "agreement_ci": agr_ci},
    }


def _by_diagonal_shift(curve: dict) -> tuple[list, list, list, list]:
    """An audit curve over diagonal shifts (s, s), in the order of s: (shifts, values, intervals, counts)."""
    points = sorted(zip(curve["parameters"], curve["value"], curve["ci"], curve["n"]), key=lambda q: q[0][0])
    return ([q[0][0] for q in points], [q[1] for q in points], [list(q[2]) for q in points],
            [q[3] for q in points])


def _stats(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "values": values}


def _value(entry):
    return entry["value"] if isinstance(entry, dict) else entry


def summarise(runs: list[dict], keys: list[str]) -> dict:
    """Mean, sample standard deviation, min, max and the values over seeds of each metric in ``keys``."""
    return {key: _stats([float(_value(run[key])) for run in runs]) for key in keys}


def summarise_curves(runs: list[dict], path: tuple[str, ...]) -> dict:
    """Mean and standard deviation over seeds, pointwise, of a list-valued entry at ``path`` in each run."""
    curves = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        curves.append([float(v) for v in value])
    t = torch.tensor(curves, dtype=torch.float64)
    std = t.std(0, unbiased=True) if len(curves) > 1 else torch.zeros(t.shape[1], dtype=torch.float64)
    return {"mean": t.mean(0).tolist(), "std": std.tolist()}


def environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.machine()}


class Timer:
    """Wall-clock ``seconds`` and process CPU time ``cpu_seconds`` (all threads) of a block."""

    def __enter__(self):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start
        return False


def seeded_runs(seeds: list[int], train, measure) -> tuple[list[dict], object]:
    """One run per seed: ``model, record = train(seed)``, then ``measure(model, seed)`` (timed). Each run holds the
    seed, the measured metrics, the final training loss, the train and evaluation seconds and the parameter count.
    Returns the runs and the last model (for what all seeds share, such as its guarantee)."""
    runs, model = [], None
    for seed in seeds:
        model, record = train(seed)
        with Timer() as t:
            metrics = measure(model, seed)
        runs.append({"seed": seed, **metrics, "final_loss": record["losses"][-1],
                     "train_seconds": record["seconds"], "eval_seconds": t.seconds,
                     "parameters": sum(x.numel() for x in model.parameters())})
    return runs, model


def published_and_environment(published: dict, conclusions: list[dict], total: Timer) -> dict:
    """The closing keys of an experiment's result that is set beside a published table: the table, the
    conclusions checked on the digits and their one-line statement, the environment and the run's times."""
    return {"published": published, "published_conclusions": conclusions,
            "statement": "; ".join(f"{c['claim']}: {c['verdict']}" for c in conclusions),
            "environment": environment(), "run_seconds": total.seconds, "cpu_seconds": total.cpu_seconds}


def check_variant_names(variants, known) -> tuple[str, ...]:
    """``variants`` (None for all of ``known``, one name, or several) as a tuple, each of ``known`` once; else an
    InputError naming the choices."""
    variants = tuple(known) if variants is None else ((variants,) if isinstance(variants, str) else tuple(variants))
    unknown = [v for v in variants if v not in known]
    if not variants or unknown or len(set(variants)) != len(variants):
        raise InputError(f"variants must name some of {', '.join(known)} once each, got {list(variants)!r}")
    return variants

