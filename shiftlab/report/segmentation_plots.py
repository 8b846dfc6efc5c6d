"""Figures of the segmentation experiment (``shiftlab experiment segmentation``), from its saved result.

:func:`plot_segmentation`: mIoU and mASSC (1-pixel, circular, crop) per network, bars from 0; the whiskers are
+-1 standard deviation over seeds when there are several seeds, else the run's own image-level 95% interval (one
seed has no spread). :func:`plot_segmentation_maps`: per network, the test image, its mask, the prediction and the
per-pixel disagreement under a 1-pixel diagonal circular shift, as kept by ``shiftlab.audit(..., maps=N)``.
Nothing here recomputes a measurement; matplotlib is imported inside.
"""

from __future__ import annotations

from shiftlab.report.plots import literal_text
from shiftlab.report.whiskers import whisker, whisker_note

__all__ = ["SEGMENTATION_TITLE", "plot_segmentation", "plot_segmentation_maps", "segmentation_caption"]

SEGMENTATION_TITLE = "Segmentation: does a U-Net's output map move with its input? Baseline, BlurPool, APS-U, LPU"

_PANELS = [("miou", "mIoU (unshifted)"), ("massc_1px", "mASSC, 1-px circular shift"),
           ("massc_circular", "mASSC, circular shifts"), ("massc_crop", "mASSC, crop shifts")]
_COLORS = ["#2458a6", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d5a97"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


@literal_text
def plot_segmentation(result: dict, axes=None):
    """One panel per metric (mIoU, mASSC 1 px, circular, crop), a bar per network; axes from 0. Whiskers:
    +-1 s.d. over seeds with several seeds, else the single run's image-level 95% interval."""
    plt = _pyplot()
    if axes is None:
        fig, grid = plt.subplots(1, len(_PANELS), figsize=(13, 4.2), squeeze=False)
        axes = list(grid[0])
    else:
        axes = list(axes) if isinstance(axes, (list, tuple)) else [axes]
        fig = axes[0].figure
    names = list(result["variants"])
    n = len(result.get("seeds", []))
    for ax, (key, label) in zip(axes, _PANELS):
        for i, name in enumerate(names):
            mean, err = whisker(result["variants"][name], key, n)
            ax.bar(i, mean, 0.6, yerr=err, capsize=3 if err is not None else 0, color=_COLORS[i % len(_COLORS)])
            ax.text(i, min(mean, 1.0) + 0.03, f"{mean:.3f}", ha="center", va="bottom", fontsize=6.5)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0.0, 1.12)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("fraction (pixels)")
    spread = whisker_note(n)
    flagged = [k for k, e in result["variants"].items() if any(r.get("warnings") for r in e["runs"])]
    warning = f"\nWARNING, see the JSON's warnings: {', '.join(flagged)}" if flagged else ""
    fig.suptitle(f"{SEGMENTATION_TITLE}\n{n} seed{'s' if n != 1 else ''}"
                 f"{' (quick)' if result.get('quick') else ''}; {spread}{warning}", fontsize=8.5)
    fig.tight_layout()
    return fig


@literal_text
def plot_segmentation_maps(result: dict, image: int = 0):
    """Per network (rows): the test image, its mask, the prediction (seed 0) and where the prediction changes
    under a 1-pixel diagonal circular shift (red: the top-1 differs; from the audit's kept maps)."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    names = [k for k, e in result["variants"].items() if e.get("maps")]
    if not names:
        from shiftlab.errors import InputError

        raise InputError("the segmentation result keeps no maps (run with maps)")
    fig, grid = plt.subplots(len(names), 4, figsize=(8.4, 2.2 * len(names)), squeeze=False)
    classes = result.get("data", {}).get("num_classes", 11)
    disagree = ListedColormap(["#eeeeee", "#ffffff", "#d1495b"])  # -1 not compared, 0 agrees, 1 differs
    for row, name in zip(grid, names):
        maps = result["variants"][name]["maps"]
        k = min(image, len(maps["index"]) - 1)
        changed = sum(v == 1 for line in maps["disagreement"][k] for v in line)
        panels = [(maps["image"][k], "gray", 0, 1, "input"), (maps["mask"][k], "tab20", 0, classes, "mask"),
                  (maps["prediction"][k], "tab20", 0, classes, "prediction"),
                  (maps["disagreement"][k], disagree, -1, 1, f"changed under 1-px shift: {changed} px")]
        for ax, (data, cmap, lo, hi, title) in zip(row, panels):
            ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7.5)
        row[0].set_ylabel(name, fontsize=9)
    fig.suptitle(f"Test image {maps['index'][k]}: prediction of seed 0 and its change under a (1, 1) circular shift",
                 fontsize=8.5)
    fig.tight_layout()
    return fig


def segmentation_caption(result: dict) -> list[str]:
    """The caption's parts: the mean over seeds of each metric per network, then the published statement."""
    parts = []
    for name, entry in result["variants"].items():
        s = entry["summary"]
        parts.append(f"{name}: mIoU {s['miou']['mean']:.3f}, mASSC 1 px {s['massc_1px']['mean']:.3f}, circular "
                     f"{s['massc_circular']['mean']:.3f}, crop {s['massc_crop']['mean']:.3f}")
    if result.get("statement"):
        parts.append(result["statement"])
    return parts
