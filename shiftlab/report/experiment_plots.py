"""Figures for the training experiments (``shiftlab experiment``): architecture, unseen-positions,
augmentation, rotation, subsampling, subpixel.

Each function takes the saved result dict of one experiment (as written to ``NAME.json``) and an optional
matplotlib ``ax`` (or ``axes``), imports matplotlib inside (Agg backend) and returns the figure. Nothing here
recomputes a measurement. Whiskers and bands follow one rule (:mod:`shiftlab.report.whiskers`): +-1 standard
deviation over two seeds or more, the single run's 95% interval over images with one seed, and the figure says which.
Bars start at 0.
:func:`plot_experiment` draws the overview figure of any of them; :func:`experiment_figures` all of them.
"""

from __future__ import annotations

from shiftlab.report.plots import literal_text
from shiftlab.report.segmentation_plots import (SEGMENTATION_TITLE, plot_segmentation, plot_segmentation_maps,
                                                segmentation_caption)
from shiftlab.report.whiskers import band, seed_count, whisker, whisker_note

__all__ = [
    "plot_architecture",
    "plot_shift_sweep",
    "plot_position_heatmaps",
    "plot_augmentation",
    "plot_rotation",
    "plot_rotation_cost",
    "plot_subsampling",
    "plot_subpixel",
    "plot_transformer",
    "plot_experiment",
    "experiment_figures",
    "experiment_title",
    "experiment_caption",
]

_COLORS = ["#2458a6", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d5a97", "#30343f", "#e07a5f", "#3d405b",
           "#81b29a"]

TITLES = {
    "architecture": "Architecture: which designs keep the prediction under shifts",
    "unseen-positions": "Unseen positions: trained in one quadrant, tested everywhere",
    "augmentation": "Augmentation against architecture",
    "rotation": "Rotation: plain, p4 and harmonic CNNs, with and without augmentation (and scale, brightness)",
    "subsampling": "Subsampling: strided, max-pool, BlurPool, APS, LPS and TIPS beside the published CIFAR-10 table",
    "subpixel": "Sub-pixel shifts: worst-case accuracy of baseline, BlurPool, APS and alias-free networks",
    "segmentation": SEGMENTATION_TITLE,
    "transformer": "Vision transformer: baseline against polyphase tokenization",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _axes(plt, axes, n, figsize, **kw):
    if axes is None:
        fig, grid = plt.subplots(1, n, figsize=figsize, squeeze=False, **kw)
        return fig, list(grid[0])
    axes = list(axes) if isinstance(axes, (list, tuple)) else [axes]
    return axes[0].figure, axes


def _seeds_note(result: dict, spread: bool = True, what: str = "whiskers") -> str:
    """'3 seeds (quick); whiskers: +-1 s.d. over 3 seeds', or with one seed the run's 95% interval."""
    n = seed_count(result)
    quick = " (quick)" if result.get("quick") else ""
    return f"{n} seed{'s' if n != 1 else ''}{quick}; " + (whisker_note(n, what) if spread else "mean over seeds")


def _top(value: float, err) -> float:
    """The top of a bar's whisker (where its value label goes)."""
    return value + (err[1][0] if err is not None else 0.0)


@literal_text
def plot_architecture(result: dict, ax=None):
    """Grouped bars per variant: accuracy, circular consistency, crop consistency, 1 - P(top-1 change)."""
    plt = _pyplot()
    fig, (ax,) = _axes(plt, ax, 1, (10, 4))
    variants = list(result["variants"])
    metrics = [("accuracy", "accuracy", False), ("circular_consistency", "circular consistency", False),
               ("crop_consistency", "crop consistency", False), ("top1_change", "1 - P(top-1 change)", True)]
    width = 0.8 / len(metrics)
    seeds = seed_count(result)
    for m, (key, label, flip) in enumerate(metrics):
        for i, v in enumerate(variants):
            value, err = whisker(result["variants"][v], key, seeds, complement=flip)
            x = i + (m - (len(metrics) - 1) / 2) * width
            ax.bar(x, value, width, yerr=err, capsize=2 if err is not None else 0, label=label if i == 0 else None,
                   color=_COLORS[m])
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, rotation=20, ha="right")
    ax.set_ylim(0.0, 1.08)  # bars start at 0: their lengths compare
    ax.set_ylabel("fraction of test digits")
    ax.set_title(f"{TITLES['architecture']}\n({_seeds_note(result)})", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # outside: covers no bar
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _split_at_zero(shifts, *columns):
    """``(shifts, *columns)`` with a gap (nan) where the shifts jump over 0, so that no line is drawn across
    a shift that was not measured."""
    nan = float("nan")
    out = tuple([] for _ in range(1 + len(columns)))
    for k, point in enumerate(zip(shifts, *columns)):
        if k and shifts[k - 1] < 0 < point[0]:
            for column in out:
                column.append(nan)
        for column, value in zip(out, point):
            column.append(value)
    return out


@literal_text
def plot_shift_sweep(result: dict, ax=None):
    """Agreement with the unshifted top-1 against the diagonal shift (crop protocol), one line per variant.

    The audit measures agreement at the shifts s != 0 (``sweep_agreement_shift``; at s = 0 it is 1 by
    definition and not drawn); results written before that list existed hold one value per ``sweep_shift``.
    """
    plt = _pyplot()
    fig, (ax,) = _axes(plt, ax, 1, (6, 4))
    ax.axvline(0, color="#999999", lw=0.8, ls=":", label="_reference")
    seeds = seed_count(result)
    for i, (name, entry) in enumerate(result["variants"].items()):
        runs = entry.get("runs") or [{}]
        spread = band(entry["sweep_agreement"], (runs[0].get("sweep") or {}).get("agreement_ci"), seeds)
        mean = entry["sweep_agreement"]["mean"]
        low, high = spread if spread is not None else (mean, mean)
        shifts, mean, low, high = _split_at_zero(entry.get("sweep_agreement_shift", entry["sweep_shift"]), mean,
                                                 low, high)
        color = _COLORS[i % len(_COLORS)]
        ax.plot(shifts, mean, marker="o", ms=3, color=color, label=name)
        if spread is not None:
            ax.fill_between(shifts, low, high, color=color, alpha=0.15)
    ax.set_xlabel("diagonal shift (px; black enters at the border; dotted: the unshifted reference)")
    ax.set_ylabel("P(top-1 = unshifted top-1)")
    ax.set_title(f"Local or global invariance? ({_seeds_note(result, what='bands')})", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@literal_text
def plot_position_heatmaps(result: dict, axes=None):
    """Accuracy at each position of the canvas, one heatmap per variant (mean over seeds); the training
    region is outlined."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    variants = list(result["variants"])
    fig, axes = _axes(plt, axes, len(variants), (2.7 * len(variants) + 0.8, 3.3))
    grid = result["grid"]
    step = grid[1] - grid[0] if len(grid) > 1 else 1
    (y0, y1), (x0, x1) = result["data"]["train_positions"]
    image = None
    for ax, name in zip(axes, variants):
        entry = result["variants"][name]
        extent = (grid[0] - step / 2, grid[-1] + step / 2, grid[-1] + step / 2, grid[0] - step / 2)
        image = ax.imshow(entry["heatmap_mean"], vmin=0.0, vmax=1.0, cmap="viridis", extent=extent)
        ax.add_patch(Rectangle((x0 - step / 2, y0 - step / 2), x1 - x0 + step, y1 - y0 + step, fill=False,
                               edgecolor="white", lw=1.5, ls="--"))
        s = entry["summary"]
        ax.set_title(f"{name}\ninside {s['inside']['mean']:.2f}, far {s['far']['mean']:.2f}", fontsize=8)
        ax.set_xlabel("left (px)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("top (px)", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, fraction=0.02, pad=0.02, label="accuracy")
    fig.suptitle(f"{TITLES['unseen-positions']} (dashed: training positions; {_seeds_note(result, spread=False)})", fontsize=9)
    return fig


@literal_text
def plot_augmentation(result: dict, axes=None):
    """Left: accuracy on centred digits (what each choice costs) and anywhere on the canvas (what it buys).
    Right: consistency and stability under shifts."""
    plt = _pyplot()
    fig, axes = _axes(plt, axes, 2, (12, 4.2))
    names = list(result["variants"])
    panels = [
        [("accuracy", "accuracy, centred (as trained)"), ("accuracy_anywhere", "accuracy, anywhere on the canvas")],
        [("circular_consistency", "circular consistency"), ("crop_consistency", "crop consistency"),
         ("top1_change", "1 - P(top-1 change)")],
    ]
    seeds = seed_count(result)
    for ax, metrics, first_color in zip(axes, panels, (0, 2)):
        width = 0.8 / len(metrics)
        for m, (key, label) in enumerate(metrics):
            for i, n in enumerate(names):
                value, err = whisker(result["variants"][n], key, seeds, complement=key == "top1_change")
                x = i + (m - (len(metrics) - 1) / 2) * width
                ax.bar(x, value, width, yerr=err, capsize=2 if err is not None else 0,
                       label=label if i == 0 else None, color=_COLORS[m + first_color])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=7)
        ax.set_ylim(0.0, 1.05)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("fraction of test digits")
    fig.suptitle(f"{TITLES['augmentation']} ({_seeds_note(result)})", fontsize=9)
    fig.tight_layout()
    return fig


_NETWORK_COLORS = {"plain": "#2458a6", "p4": "#d1495b", "p4m": "#8d5a97", "harmonic": "#00798c"}
_PLAIN_AUGMENT_COLORS = {"scale": "#edae49", "brightness": "#66a182"}


def _rotation_style(name: str, entry: dict) -> dict:
    """Colour by network, dashed when trained with rotations; the plain network's other augmentations in
    their own colours."""
    network = entry["config"].get("network", "plain")
    augmentation = entry["config"].get("augmentation", "none")
    color = _PLAIN_AUGMENT_COLORS.get(name, _NETWORK_COLORS.get(network, "#30343f"))
    dashed = augmentation.startswith("rotation")
    label = f"{network}, trained with: {augmentation}" if "network" in entry["config"] else \
        f"trained with: {augmentation}"
    return {"color": color, "ls": "--" if dashed else "-", "label": label}


@literal_text
def plot_rotation(result: dict, axes=None):
    """Accuracy against rotation angle for every network and training condition, under both rotation
    protocols (the canvas resampled by ``rotate``; the digits rendered rotated), and against zoom and
    brightness factor (the conditions that measured them); mean over seeds, bands as
    :func:`shiftlab.report.whiskers.band` (+-1 s.d. over seeds, or one run's 95% interval).

    ``axes``: four axes (canvas rotation, rendered rotation, zoom, brightness); results without a rendered
    sweep leave the second empty.
    """
    plt = _pyplot()
    if axes is None:
        fig, grid = plt.subplots(2, 2, figsize=(13, 8.4), gridspec_kw={"height_ratios": [1.25, 1]})
        axes = list(grid.flatten())
    else:
        fig, axes = _axes(plt, axes, 4, None)
    sweeps = ["angles", "rendered", "scales", "brightness"]
    labels = {"angles": "rotation of the canvas (degrees, counter-clockwise; bilinear)",
              "rendered": "rotation of the digit, rendered from its source (degrees)",
              "scales": "zoom factor", "brightness": "brightness factor"}
    seeds = seed_count(result)
    for ax, sweep in zip(axes, sweeps):
        if sweep not in result["sweeps"]:
            ax.set_visible(False)
            continue
        xs = result["sweeps"][sweep]
        for name, entry in result["variants"].items():
            if sweep not in entry["curves"]:
                continue
            style = _rotation_style(name, entry)
            runs = entry.get("runs") or [{}]
            spread = band(entry["curves"][sweep], (runs[0].get("intervals") or {}).get(sweep), seeds)
            ax.plot(xs, entry["curves"][sweep]["mean"], marker="o", ms=2.5, lw=1.3, **style)
            if spread is not None:
                ax.fill_between(xs, *spread, color=style["color"], alpha=0.12)
        ax.set_xlabel(labels[sweep], fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_ylim(0.0, 1.02)
        ax.set_ylabel("test accuracy", fontsize=8)
        if sweep in ("angles", "rendered") and max(xs) - min(xs) >= 180:
            for quarter in range(0, 361, 90):
                ax.axvline(quarter, color="#999999", lw=0.6, ls=":")
            ax.set_xticks(list(range(0, 361, 45)))
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, ncol=4, loc="lower center", frameon=False)
    fig.suptitle(f"{TITLES['rotation']} ({_seeds_note(result, what='bands')}; dashed: trained with rotations)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    return fig


@literal_text
def plot_rotation_cost(result: dict, ax=None):
    """What rotation invariance costs: accuracy averaged over all angles against inference time per image,
    one point per condition (filled: canvas rotation; hollow: digits rendered rotated; whiskers as
    :func:`shiftlab.report.whiskers.whisker`), labelled with the parameter count."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, (ax,) = _axes(plt, ax, 1, (8, 4.8))
    seeds = seed_count(result)
    xs = []
    rows = [(name, entry) for name, entry in result["variants"].items()
            if {"mean_accuracy_over_angles", "inference_ms_per_image"} <= set(entry["summary"])]
    for name, entry in rows:
        s = entry["summary"]
        style = _rotation_style(name, entry)
        marker = "s" if style["ls"] == "--" else "o"
        x = s["inference_ms_per_image"]["mean"]
        y, err = whisker(entry, "mean_accuracy_over_angles", seeds)
        xs.append(x)
        ax.errorbar(x, y, yerr=err, marker=marker, color=style["color"], capsize=2, ms=6, ls="none")
        if "rendered_mean_accuracy_over_angles" in s:
            y2, err2 = whisker(entry, "rendered_mean_accuracy_over_angles", seeds)
            ax.errorbar(x, y2, yerr=err2, marker=marker, mfc="white", color=style["color"], capsize=2, ms=6,
                        ls="none")
            ax.plot([x, x], [y, y2], color=style["color"], lw=0.6, alpha=0.6)
    ax.set_xscale("log")
    if xs:
        ax.set_xlim(min(xs) / 1.5, max(xs) * 3.0)  # room for the labels right of the points
    ax.set_ylim(0.0, 1.02)
    ax.set_xticks([t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    placed = []  # label positions in points, to keep labels of nearby points apart
    to_points = ax.transData.transform
    for name, entry in rows:
        s = entry["summary"]
        x, y = s["inference_ms_per_image"]["mean"], s["mean_accuracy_over_angles"]["mean"]
        px, py = to_points((x, y)) * 72.0 / fig.dpi
        dy = 4.0
        while any(abs(px - qx) < 120 and abs(py + dy - qy) < 9 for qx, qy in placed):
            dy += 9.0
        placed.append((px, py + dy))
        params = entry.get("parameters")
        ax.annotate(f"{name}" + (f" ({params / 1000:.1f}k params)" if params else ""), (x, y), fontsize=7,
                    xytext=(6, dy), textcoords="offset points")
    ax.set_ylabel("accuracy, mean over all angles")
    ax.grid(alpha=0.3, which="both")
    ax.set_xlabel("inference time per image (ms, float32, batches of 500)")
    ax.set_title(f"The price of rotation invariance ({_seeds_note(result)})\nsquares: trained with rotations; "
                 "filled: canvas rotated; hollow: digits rendered rotated", fontsize=9)
    fig.tight_layout()
    return fig


@literal_text
def plot_subsampling(result: dict, axes=None):
    """One panel per metric (accuracy, crop consistency, circular consistency): a bar per variant (mean over
    seeds, whiskers as :func:`shiftlab.report.whiskers.whisker`, the mean written above), and beside it, as a
    hollow diamond, the published CIFAR-10 ResNet-18 value of the method it stands for (``result["published"]``,
    percent / 100). Bar axes start at 0."""
    plt = _pyplot()
    panels = [("accuracy", "accuracy"), ("crop_consistency", "crop (shift) consistency"),
              ("circular_consistency", "circular consistency")]
    fig, axes = _axes(plt, axes, len(panels), (13, 4.4))
    names = list(result["variants"])
    published = result.get("published") or {}
    table = published.get("methods", {})
    seeds = seed_count(result)
    for ax, (key, label) in zip(axes, panels):
        for i, name in enumerate(names):
            entry = result["variants"][name]
            mean, err = whisker(entry, key, seeds)
            ax.bar(i - 0.12, mean, 0.5, yerr=err, capsize=3 if err is not None else 0,
                   color=_COLORS[i % len(_COLORS)])
            ax.text(i - 0.12, _top(mean, err) + 0.01, f"{mean:.3f}", ha="center", va="bottom", fontsize=6.5)
            value = table.get(entry.get("published_method") or "", {}).get(key)
            if value is not None:
                ax.plot(i + 0.28, value / 100.0, marker="D", ms=6, mfc="white", mec="#30343f", mew=1.3, ls="none")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=7)
        ax.set_ylim(0.0, 1.1)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("fraction of test images")
    source = published.get("source", "")
    fig.suptitle(f"{TITLES['subsampling']} ({_seeds_note(result)})"
                 + (f"\nhollow diamonds: the published values, {source}" if source else ""), fontsize=8.5)
    fig.tight_layout()
    return fig


@literal_text
def plot_subpixel(result: dict, axes=None):
    """Accuracy and worst-case accuracy on each grid (integer, half-pixel, fractional, crop), a group of bars per
    network (mean over seeds, whiskers as :func:`shiftlab.report.whiskers.whisker`); hollow diamonds: the
    published ImageNet ConvNeXt-T values of the same network kind (``result["published"]``, percent / 100). Axes
    start at 0."""
    plt = _pyplot()
    keys = [("accuracy", "accuracy"), ("worst_case_integer", "integer grid"),
            ("worst_case_half_pixel", "half-pixel grid"), ("worst_case_fractional", "fractional grid"),
            ("worst_case_crop", "crop attack")]
    fig, axes = _axes(plt, axes, 1, (11, 4.6))
    ax = axes[0]
    names = list(result["variants"])
    table = (result.get("published") or {}).get("methods", {})
    seeds = seed_count(result)
    width = 0.8 / len(keys)
    for i, name in enumerate(names):
        entry = result["variants"][name]
        for j, (key, label) in enumerate(keys):
            mean, err = whisker(entry, key, seeds)
            x = i + (j - (len(keys) - 1) / 2) * width
            _published_bar(ax, x, mean, err, width, j, label if i == 0 else None, table.get(name, {}).get(key),
                           capsize=2, text=f"{mean:.2f}", text_y=_top(mean, err) + 0.01)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(0.0, 1.12)
    ax.set_ylabel("fraction of test images")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(keys), loc="upper center", bbox_to_anchor=(0.5, 1.0))
    source = (result.get("published") or {}).get("source", "")
    fig.suptitle(f"{TITLES['subpixel']} ({_seeds_note(result)})"
                 + (f"\nhollow diamonds: the published values, {source}" if source else ""), fontsize=8.5)
    fig.tight_layout()
    return fig


def _published_bar(ax, x, mean, err, width, colour, label, published, *, capsize, text, text_y) -> None:
    """One bar (colour index ``colour``) with its whisker and value, and the published value (percent) as a
    hollow diamond above it where there is one."""
    ax.bar(x, mean, width * 0.9, yerr=err, capsize=capsize if err is not None else 0,
           color=_COLORS[colour % len(_COLORS)], label=label)
    ax.text(x, text_y, text, ha="center", va="bottom", fontsize=6)
    if published is not None:
        ax.plot(x, published / 100.0, marker="D", ms=5, mfc="white", mec="#30343f", mew=1.2, ls="none")


@literal_text
def plot_transformer(result: dict, axes=None):
    """A small ViT, baseline against polyphase tokenization: a group of bars per metric (accuracy, circular and
    crop consistency, worst case on the integer grid and under the crop attack), one bar per network, from 0.
    Whiskers as :func:`shiftlab.report.whiskers.whisker` (+-1 s.d. over seeds, or the run's 95% interval);
    hollow diamonds: Ding et al.'s published ImageNet values of the same network kind (percent / 100)."""
    plt = _pyplot()
    keys = [("accuracy", "accuracy"), ("circular_consistency", "circular cons."), ("crop_consistency", "crop cons."),
            ("worst_case_integer", "worst, integer grid"), ("worst_case_crop", "worst, crop attack")]
    fig, axes = _axes(plt, axes, 1, (10, 4.4))
    ax = axes[0]
    names = list(result["variants"])
    table = (result.get("published") or {}).get("methods", {})
    seeds = seed_count(result)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        entry = result["variants"][name]
        for j, (key, _) in enumerate(keys):
            mean, err = whisker(entry, key, seeds)
            x = j + (i - (len(names) - 1) / 2) * width
            _published_bar(ax, x, mean, err, width, i, name if j == 0 else None, table.get(name, {}).get(key),
                           capsize=3, text=f"{mean:.3f}", text_y=mean + 0.01)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([label for _, label in keys], fontsize=8)
    ax.set_ylim(0.0, 1.12)
    ax.set_ylabel("fraction of test images")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(names), loc="upper center", bbox_to_anchor=(0.5, 1.0))
    source = (result.get("published") or {}).get("source", "")
    fig.suptitle(f"{TITLES['transformer']} ({_seeds_note(result)})"
                 + (f"\nhollow diamonds: the published values, {source}" if source else ""), fontsize=8.5)
    fig.tight_layout()
    return fig


_OVERVIEW = {"architecture": plot_architecture, "unseen-positions": plot_position_heatmaps,
             "augmentation": plot_augmentation, "rotation": plot_rotation, "subsampling": plot_subsampling,
             "subpixel": plot_subpixel, "segmentation": plot_segmentation, "transformer": plot_transformer}


def _name(result) -> str:
    if not isinstance(result, dict) or result.get("experiment") not in _OVERVIEW:
        from shiftlab.errors import InputError

        got = result.get("experiment") if isinstance(result, dict) else type(result).__name__
        raise InputError(f"not a shiftlab experiment result (experiment={got!r}); expected one of {list(_OVERVIEW)}")
    return result["experiment"]


def plot_experiment(result: dict):
    """The overview figure of any experiment result (dispatch on ``result["experiment"]``)."""
    return _OVERVIEW[_name(result)](result)


def experiment_figures(result: dict) -> dict:
    """All figures of one experiment result: ``{suffix: figure}``, the overview under ``""``."""
    name = _name(result)
    figures = {"": plot_experiment(result)}
    if name == "architecture":
        figures["_sweep"] = plot_shift_sweep(result)
    if name == "rotation" and any("inference_ms_per_image" in e["summary"] for e in result["variants"].values()):
        figures["_cost"] = plot_rotation_cost(result)
    if name == "segmentation":
        figures["_maps"] = plot_segmentation_maps(result)
    return figures


def experiment_title(result: dict) -> str:
    return TITLES[_name(result)]


def experiment_caption(result: dict) -> str:
    """One plain-text sentence of the headline numbers (mean over seeds)."""
    name = _name(result)
    v = result["variants"]
    n = len(result.get("seeds", []))

    def m(entry, key):
        return entry["summary"][key]["mean"]

    if name == "architecture":
        parts = [f"{k}: accuracy {m(e, 'accuracy'):.3f}, circular consistency {m(e, 'circular_consistency'):.3f}"
                 for k, e in v.items()]
    elif name == "unseen-positions":
        parts = [f"{k}: inside {m(e, 'inside'):.3f}, far {m(e, 'far'):.3f}" for k, e in v.items()]
    elif name == "augmentation":
        parts = [f"{k}: centred {m(e, 'accuracy'):.3f}, anywhere {m(e, 'accuracy_anywhere'):.3f}" for k, e in v.items()]
    elif name == "subsampling":
        parts = [f"{k}: accuracy {m(e, 'accuracy'):.3f}, crop consistency {m(e, 'crop_consistency'):.3f}, "
                 f"circular consistency {m(e, 'circular_consistency'):.3f}" for k, e in v.items()]
        if result.get("statement"):
            parts.append(result["statement"])
    elif name == "segmentation":
        parts = segmentation_caption(result)
    elif name == "transformer":
        parts = [f"{k}: accuracy {m(e, 'accuracy'):.3f}, circular consistency {m(e, 'circular_consistency'):.3f}, "
                 f"crop consistency {m(e, 'crop_consistency'):.3f}, "
                 f"worst case integer {m(e, 'worst_case_integer'):.3f}, crop {m(e, 'worst_case_crop'):.3f}"
                 for k, e in v.items()]
        if result.get("statement"):
            parts.append(result["statement"])
    elif name == "subpixel":
        parts = [f"{k}: accuracy {m(e, 'accuracy'):.3f}, worst case integer {m(e, 'worst_case_integer'):.3f}, "
                 f"half-pixel {m(e, 'worst_case_half_pixel'):.3f}, fractional {m(e, 'worst_case_fractional'):.3f}, "
                 f"crop {m(e, 'worst_case_crop'):.3f}" for k, e in v.items()]
        if result.get("statement"):
            parts.append(result["statement"])
    else:
        angles = result["sweeps"]["angles"]
        shown = [a for a in angles if a in (0.0, 45.0, 90.0, 180.0)] or angles
        parts = []
        for k, e in v.items():
            curve = dict(zip(angles, e["curves"]["angles"]["mean"]))
            text = f"{k}: " + ", ".join(f"{a:g} deg {curve[a]:.3f}" for a in shown)
            if "mean_accuracy_over_angles" in e["summary"]:
                text += f", mean over all angles {m(e, 'mean_accuracy_over_angles'):.3f}"
            parts.append(text)
    return f"Mean over {n} seed(s){' (quick run)' if result.get('quick') else ''}. " + "; ".join(parts) + "."
