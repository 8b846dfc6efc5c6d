"""Shared pieces of the experiments: variants by name, shift metrics, summaries over seeds. Private."""

from __future__ import annotations

import math
import platform
import time

import torch
import torch.nn.functional as F

from shiftlab.errors import InputError
from shiftlab.experiments.nets import DOWNSAMPLING, HEADS, PADDINGS, SmallCNN, count_macs
from shiftlab.experiments.train import build_model, evaluation_copy, predict, train_model

__all__ = ["parse_variant", "train_variant", "shift_metrics", "summarise", "environment", "Timer", "seed_list"]


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


def shift_metrics(model, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, seed: int,
                  max_shift: int) -> dict:
    """Accuracy, circular and crop consistency, P(top-1 change) and a diagonal shift sweep.

    Circular consistency is computed in float64 (an exactness claim: APS's phase choice must not be decided
    by float32 rounding); everything else in float32.

    - circular consistency: two ``circular_shift`` copies per image, offsets uniform in [-max_shift, max_shift];
    - crop consistency: two windows of the image zero-padded by ``max_shift`` (a larger black canvas), offsets
      uniform in [0, 2 max_shift];
    - P(top-1 change): adjacent 1-pixel diagonal crop shifts (c, c) -> (c+1, c+1), c = 0..2 max_shift - 1;
    - sweep: per diagonal shift s = -max_shift..max_shift, accuracy and agreement with the unshifted top-1.

    Shape:
        images: (N, C, H, W); labels, indices: (N,).
    """
    from shiftlab.metrics import accuracy, consistency, top1_change
    from shiftlab.transforms import circular_shift, crop_shift, random_offsets

    net = evaluation_copy(model, torch.float32)
    exact = evaluation_copy(model, torch.float64)
    k = max_shift
    size = (images.shape[-2], images.shape[-1])
    clean = predict(model, images, evaluator=net)
    circ = random_offsets(seed, indices, -k, k, count=2)
    a = predict(model, circular_shift(images, circ[:, 0, 0], circ[:, 0, 1]), evaluator=exact)
    b = predict(model, circular_shift(images, circ[:, 1, 0], circ[:, 1, 1]), evaluator=exact)
    padded = F.pad(images, (k, k, k, k))
    crop = random_offsets(seed + 1, indices, 0, 2 * k, count=2)
    ca = predict(model, crop_shift(padded, crop[:, 0, 0], crop[:, 0, 1], size), evaluator=net)
    cb = predict(model, crop_shift(padded, crop[:, 1, 0], crop[:, 1, 1], size), evaluator=net)
    seq = torch.stack([predict(model, crop_shift(padded, o, o, size), evaluator=net) for o in range(2 * k + 1)], 1)
    # window offset o moves the content by k - o; list the sweep by content shift s = -k..k
    sweep_shift = list(range(-k, k + 1))
    frames = seq.flip(1)
    top = clean.argmax(1)
    return {
        "accuracy": accuracy(clean, labels).to_dict(),
        "circular_consistency": consistency(a, b).to_dict(),
        "circular_max_logit_difference": float((a - b).abs().max()),
        "crop_consistency": consistency(ca, cb).to_dict(),
        "top1_change": top1_change(seq).to_dict(),
        "sweep": {
            "shift": sweep_shift,
            "accuracy": [float((frames[:, t].argmax(1) == labels).double().mean()) for t in range(2 * k + 1)],
            "agreement": [float((frames[:, t].argmax(1) == top).double().mean()) for t in range(2 * k + 1)],
        },
    }


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
