"""Experiment "unseen-positions": do CNNs recognise objects at positions they never saw in training?

Claim tested: CNNs fail to recognise objects at untrained locations. Each variant is trained on digits
placed only in the top-left quadrant of a 48x48 canvas (tops and lefts in [0, 16]), then the held-out digits
are placed at every position of a grid over the whole canvas (tops and lefts 0, 4, .., 32) and the accuracy
at each position gives a heatmap per variant. "inside" is the mean accuracy over grid positions within the
training region, "far" over positions whose top and left are both at least 24 (the opposite corner;
the digit then shares no pixel with any training position).

Every number comes from :func:`shiftlab.audit`. A digit at (top, left) on a black canvas is exactly the
``torch.roll`` of the same digit at (0, 0), so the audit's
:class:`~shiftlab.experiments.protocols.Placements` protocols take the test digits placed at (0, 0) and roll
them to the grid positions: the ``inside`` protocol (the positions in the training region) and the ``outside``
one (all others) give one accuracy per position (the heatmap, a point of the audit's accuracy curve each) and,
with the ``far`` protocol, the accuracy over each group of positions with its image-level 95% interval. A
network that is exactly invariant to circular shifts (APS + circular padding + global pooling) gives the same
prediction at every position: its heatmap is flat up to float32 rounding.
"""

from __future__ import annotations

import torch

from shiftlab.experiments._common import (Timer, environment, metric_dict, parse_variant, run_audit, seed_list,
                                          summarise, train_variant)
from shiftlab.experiments.digits import make_canvas_split, region_bounds
from shiftlab.experiments.protocols import Placements
from shiftlab.experiments.train import TrainConfig, evaluation_copy

__all__ = ["VARIANTS", "position_heatmap", "region_protocols", "run_unseen_positions"]

VARIANTS = ("maxpool-fc-zeros", "maxpool-gap-zeros", "stride-gap-zeros", "blur-gap-zeros", "aps-gap-circular")
QUICK_VARIANTS = ("maxpool-fc-zeros", "maxpool-gap-zeros", "aps-gap-circular")

FULL = {"canvas": 48, "object_size": 16, "region": "quadrant", "width": 16, "step": 4, "train_limit": None,
        "test_limit": None, "train": TrainConfig(epochs=12, batch_size=64, lr=3e-3), "variants": VARIANTS}
QUICK = {"canvas": 48, "object_size": 16, "region": "quadrant", "width": 8, "step": 8, "train_limit": None,
         "test_limit": 150, "train": TrainConfig(epochs=4, batch_size=32, lr=1e-2), "variants": QUICK_VARIANTS}

METRICS = ["inside", "far", "outside", "test_accuracy"]

#: the test canvases as they are (test accuracy: the digits at their test positions, in the training region)
AS_PLACED = Placements([(0, 0)])


def region_protocols(grid: list[int], inside: torch.Tensor, far: torch.Tensor) -> dict:
    """The placement protocols of the heatmap: ``inside`` and ``outside`` (the grid positions in the training
    region and all others: together the whole grid, each once) and ``far`` (the opposite corner)."""
    cells = [(top, left) for top in grid for left in grid]
    flat_inside, flat_far = inside.reshape(-1).tolist(), far.reshape(-1).tolist()
    return {"inside": Placements([c for c, keep in zip(cells, flat_inside) if keep]),
            "outside": Placements([c for c, keep in zip(cells, flat_inside) if not keep]),
            "far": Placements([c for c, keep in zip(cells, flat_far) if keep])}


def position_heatmap(model, split, grid: list[int], inside: torch.Tensor, far: torch.Tensor,
                     seed: int = 0) -> dict:
    """Accuracy of ``model`` on all test objects placed at each (top, left) in ``grid`` x ``grid``, from
    :func:`shiftlab.audit`: the test objects are placed at (0, 0) and the audit's
    :class:`~shiftlab.experiments.protocols.Placements` protocols move them to every grid position (the
    ``inside`` and ``outside`` protocols, see :func:`region_protocols`); each cell is a point of the audit's
    accuracy curve, and ``inside``, ``outside`` and ``far`` are the audits' accuracies over those positions
    (image-level 95% intervals). ``inside`` and ``far`` are (len(grid), len(grid)) boolean masks.

    Returns ``{"heatmap": rows = top, columns = left, "heatmap_ci": [low, high] per cell, "inside",
    "outside", "far": metric dicts}``.
    """
    net = evaluation_copy(model, torch.float32)
    test = split.test
    at_origin = test.place_at(0, 0)
    out, cells = {}, {}
    for name, protocol in region_protocols(grid, inside, far).items():
        accuracy = run_audit(net, at_origin, test.labels, protocol, ["accuracy"], seed=seed).metrics["accuracy"]
        curve = accuracy.extra["curve"]
        out[name] = metric_dict(accuracy)
        if name != "far":
            for pos, value, ci in zip(curve["parameters"], curve["value"], curve["ci"]):
                cells[tuple(pos)] = (value, list(ci))
    out["heatmap"] = [[cells[(top, left)][0] for left in grid] for top in grid]
    out["heatmap_ci"] = [[cells[(top, left)][1] for left in grid] for top in grid]
    return out


def run_unseen_positions(seeds: int = 3, quick: bool = False, data: str | None = None,
                         progress: bool = False, variants=None, data_seed: int = 0) -> dict:
    """Train each variant on one quadrant; accuracy heatmap over the whole canvas. JSON-serialisable dict."""
    p = QUICK if quick else FULL
    variants = tuple(variants or p["variants"])
    for v in variants:
        parse_variant(v)
    seeds_ = seed_list(seeds)
    with Timer() as total:
        split = make_canvas_split(data, canvas=p["canvas"], object_size=p["object_size"], train_region=p["region"],
                                  seed=data_seed, train_limit=p["train_limit"], test_limit=p["test_limit"])
        span = p["canvas"] - p["object_size"]
        grid = list(range(0, span + 1, p["step"]))
        (y0, y1), (x0, x1) = region_bounds(p["region"], p["canvas"], p["object_size"])
        far_from = y1 + (span - y1 + 1) // 2
        g = torch.tensor(grid)
        inside = ((g >= y0) & (g <= y1))[:, None] & ((g >= x0) & (g <= x1))[None, :]
        far = (g >= far_from)[:, None] & (g >= far_from)[None, :]
        results = {}
        for variant in variants:
            runs = []
            for seed in seeds_:
                model, record = train_variant(variant, split, p["width"], p["train"], seed, progress=progress)
                with Timer() as t:
                    measured = position_heatmap(model, split, grid, inside, far, seed=seed)
                    test_audit = run_audit(evaluation_copy(model, torch.float32), split.test.images,
                                           split.test.labels, AS_PLACED, ["accuracy"], seed=seed)
                values = [v for row in measured["heatmap"] for v in row]
                runs.append({
                    "seed": seed,
                    **measured,
                    "spread": max(values) - min(values),
                    "test_accuracy": metric_dict(test_audit.metrics["accuracy"]),
                    "final_loss": record["losses"][-1], "train_seconds": record["seconds"],
                    "eval_seconds": t.seconds,
                })
            mean_heat = torch.tensor([r["heatmap"] for r in runs], dtype=torch.float64).mean(0)
            results[variant] = {"config": parse_variant(variant), "runs": runs,
                                "summary": summarise(runs, METRICS + ["spread"]),
                                "heatmap_mean": mean_heat.tolist()}
    return {
        "experiment": "unseen-positions",
        "claims": ["CNNs fail to recognise objects at positions they never saw in training"],
        "quick": quick,
        "seeds": seeds_,
        "data_seed": data_seed,
        "data": split.parameters,
        "parameters": {"width": p["width"], "train": p["train"].to_dict(), "grid": grid,
                       "inside": "grid positions inside the training region",
                       "far": f"grid positions with top and left >= {far_from}",
                       "evaluation": "every number from shiftlab.audit(..., normalize=False) on a float32 copy of "
                                     "the trained model, image-level 95% intervals: the test digits placed at (0, "
                                     "0) and moved to each grid position by a Placements protocol (a torch.roll, "
                                     "exactly digits.place there)",
                       "protocols": {name: {"spec": pr.spec(), "metrics": ["accuracy"]} for name, pr in
                                     {**region_protocols(grid, inside, far), "test": AS_PLACED}.items()}},
        "grid": grid,
        "far_from": far_from,
        "metrics": METRICS,
        "variants": results,
        "environment": environment(),
        "run_seconds": total.seconds,
        "cpu_seconds": total.cpu_seconds,
    }
