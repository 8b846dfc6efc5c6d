"""Experiment "unseen-positions": do CNNs recognise objects at positions they never saw in training?

Claim tested: CNNs fail to recognise objects at untrained locations. Each variant is trained on digits
placed only in the top-left quadrant of a 48x48 canvas (tops and lefts in [0, 16]), then the held-out digits
are placed at every position of a grid over the whole canvas (tops and lefts 0, 4, .., 32) and the accuracy
at each position gives a heatmap per variant. "inside" is the mean accuracy over grid positions within the
training region, "far" over positions whose top and left are both at least 24 (the opposite corner;
the digit then shares no pixel with any training position).

A digit at (top, left) on a black canvas is exactly the ``torch.roll`` of the same digit at (0, 0), so a
network that is exactly invariant to circular shifts (APS + circular padding + global pooling) gives the
same prediction at every position: its heatmap is flat up to float32 rounding.
"""

from __future__ import annotations

import torch

from shiftlab.experiments._common import Timer, environment, parse_variant, seed_list, summarise, train_variant
from shiftlab.experiments.digits import make_canvas_split, region_bounds
from shiftlab.experiments.train import TrainConfig, evaluation_copy, predict

__all__ = ["VARIANTS", "position_heatmap", "run_unseen_positions"]

VARIANTS = ("maxpool-fc-zeros", "maxpool-gap-zeros", "stride-gap-zeros", "blur-gap-zeros", "aps-gap-circular")
QUICK_VARIANTS = ("maxpool-fc-zeros", "maxpool-gap-zeros", "aps-gap-circular")

FULL = {"canvas": 48, "object_size": 16, "region": "quadrant", "width": 16, "step": 4, "train_limit": None,
        "test_limit": None, "train": TrainConfig(epochs=12, batch_size=64, lr=3e-3), "variants": VARIANTS}
QUICK = {"canvas": 48, "object_size": 16, "region": "quadrant", "width": 8, "step": 8, "train_limit": None,
         "test_limit": 150, "train": TrainConfig(epochs=4, batch_size=32, lr=1e-2), "variants": QUICK_VARIANTS}

METRICS = ["inside", "far", "outside", "test_accuracy"]


def position_heatmap(model, split, grid: list[int]) -> torch.Tensor:
    """Accuracy of ``model`` on all test objects placed at each (top, left) in ``grid`` x ``grid``.

    Shape:
        Output: (len(grid), len(grid)) float64, rows = top, columns = left.
    """
    net = evaluation_copy(model, torch.float32)
    test = split.test
    heat = torch.empty(len(grid), len(grid), dtype=torch.float64)
    for i, top in enumerate(grid):
        for j, left in enumerate(grid):
            logits = predict(model, test.place_at(top, left), evaluator=net)
            heat[i, j] = (logits.argmax(1) == test.labels).double().mean()
    return heat


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
                    heat = position_heatmap(model, split, grid)
                    test_logits = predict(model, split.test.images, dtype=torch.float32)
                runs.append({
                    "seed": seed,
                    "heatmap": heat.tolist(),
                    "inside": float(heat[inside].mean()),
                    "far": float(heat[far].mean()),
                    "outside": float(heat[~inside].mean()),
                    "spread": float(heat.max() - heat.min()),
                    "test_accuracy": float((test_logits.argmax(1) == split.test.labels).double().mean()),
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
                       "evaluation": "float32"},
        "grid": grid,
        "far_from": far_from,
        "metrics": METRICS,
        "variants": results,
        "environment": environment(),
        "run_seconds": total.seconds,
        "cpu_seconds": total.cpu_seconds,
    }
