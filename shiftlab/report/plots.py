"""Figures for the pretrained-network experiments (``shiftlab.experiments.pretrained``).

Each function takes the saved result dict of one experiment (as in ``results.json``) and an optional
matplotlib ``ax`` (or axes), imports matplotlib inside (Agg backend), and returns the figure. Nothing
here computes a measurement.
"""

from __future__ import annotations

__all__ = [
    "plot_jaggedness",
    "plot_shift_metrics",
    "plot_shift_map",
    "plot_layer_profile",
    "plot_fix_comparison",
    "plot_invariances",
]

_PROTOCOL_TITLES = {"crop": "crop (window moves)", "canvas_black": "canvas, black fill",
                    "canvas_inpaint": "canvas, inpainted fill"}
_COLORS = ["#2458a6", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d5a97", "#30343f", "#e07a5f", "#3d405b",
           "#81b29a"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _new(plt, nrows=1, ncols=1, figsize=(9, 3.6), **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, **kw)
    return fig, axes


def _err(metric):
    v = metric["value"]
    lo, hi = metric["ci"]
    return v, max(v - lo, 0.0), max(hi - v, 0.0)


def plot_jaggedness(sweep: dict, names: list[str] | None = None, class_names: list[str] | None = None,
                    max_lines: int = 6, axes=None):
    """Probability of the tracked class against the diagonal shift, one panel per protocol.

    ``sweep`` is ``results["jaggedness"]``; ``names`` label the lines (photo names).
    """
    plt = _pyplot()
    protocols = list(sweep["protocols"])
    if axes is None:
        fig, grid = _new(plt, 1, len(protocols), figsize=(4.2 * len(protocols), 3.6), sharey=True)
        axes = list(grid[0])
    else:
        axes = list(axes)
        fig = axes[0].figure
    offsets = sweep["offsets"]
    for ax, protocol in zip(axes, protocols):
        prob = sweep["protocols"][protocol]["probability"]
        for i, line in enumerate(prob[:max_lines]):
            label = names[i] if names and i < len(names) else f"photo {i}"
            if class_names and i < len(class_names):
                label = f"{label}: {class_names[i]}"
            ax.plot(offsets, line, marker=".", markersize=3, linewidth=1.2, color=_COLORS[i % len(_COLORS)],
                    label=label)
        ax.set_title(_PROTOCOL_TITLES.get(protocol, protocol), fontsize=10)
        ax.set_xlabel("diagonal shift (pixels)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the class")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(handles)), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02 - 0.045 * ((len(handles) - 1) // 3)), frameon=False)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(handles) - 1) // 3), 1, 1))
    return fig


def plot_shift_metrics(consistency: dict, sweep: dict | None = None, ax=None):
    """Horizontal bars with 95% intervals: consistencies, 1 - P(top-1 change) per protocol, worst case."""
    plt = _pyplot()
    rows = [("crop consistency (two random crops)", consistency["crop_consistency"]),
            ("circular consistency (two random rolls)", consistency["circular_consistency"])]
    if sweep:
        for protocol, entry in sweep["protocols"].items():
            if entry.get("top1_change"):
                tc = entry["top1_change"]
                rows.append((f"top-1 kept over a 1-px step, {_PROTOCOL_TITLES.get(protocol, protocol)}",
                             {"value": 1 - tc["value"], "ci": [1 - tc["ci"][1], 1 - tc["ci"][0]], "n": tc["n"]}))
    g = consistency.get("grid")
    rows.append((f"top-1 kept over all {g}x{g} 1-px shifts (worst case)", consistency["worst_case"]))
    if ax is None:
        fig, grid = _new(plt, figsize=(9, 0.55 * len(rows) + 1.2))
        ax = grid[0][0]
    else:
        fig = ax.figure
    ys = list(range(len(rows)))[::-1]
    for y, (label, m) in zip(ys, rows):
        v, lo, hi = _err(m)
        ax.barh(y, v, color="#9db4d8", edgecolor="#2458a6")
        ax.errorbar(v, y, xerr=[[lo], [hi]], color="black", capsize=4, linewidth=1.2)
        ax.text(min(v + hi, 1.0) + 0.01, y, f"{100 * v:.1f}%  (n = {m['n']})", va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([r[0] for r in rows], fontsize=9)
    ax.set_xlim(0, 1.18)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xticklabels(["0%", "25%", "50%", "75%", "100%"])
    ax.set_xlabel("fraction of pairs / photos (95% interval)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_shift_map(consistency: dict, names: list[str] | None = None, max_images: int = 10):
    """Small multiples: the probability of each photo's class over the grid of crop offsets (dy, dx)."""
    plt = _pyplot()
    maps = consistency["grid_probability"][:max_images]
    n = len(maps)
    ncols = min(5, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = _new(plt, nrows, ncols, figsize=(2.3 * ncols + 0.8, 2.4 * nrows + 0.3))
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        image = ax.imshow(maps[i], vmin=0, vmax=1, cmap="viridis", origin="upper")
        ax.set_title(names[i] if names and i < len(names) else f"photo {i}", fontsize=9)
        g = len(maps[i])
        ax.set_xticks([0, g - 1])
        ax.set_yticks([0, g - 1])
        ax.set_xlabel("dx (pixels)", fontsize=8)
        ax.set_ylabel("dy (pixels)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, pad=0.02)
        bar.set_label("probability of the class")
    return fig


def plot_layer_profile(profile: dict, ax=None):
    """Per-layer 1-px invariance and grid-aligned equivariance errors against depth, subsampling marked."""
    plt = _pyplot()
    layers = profile["layers"]
    if ax is None:
        fig, grid = _new(plt, figsize=(10, 4.6))
        ax = grid[0][0]
    else:
        fig = ax.figure
    for key, label, color in (("one_pixel_invariance", "1-px shift: change of the averaged features", "#d1495b"),
                              ("aligned_error", "shift by the stride: equivariance error inside the border",
                               "#2458a6")):
        pts = [(l["depth"], l[key]) for l in layers if l.get(key)]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1]["value"] for p in pts], marker="o", markersize=4, color=color, label=label)
        ax.fill_between(xs, [p[1]["ci"][0] for p in pts], [p[1]["ci"][1] for p in pts], color=color, alpha=0.15,
                        linewidth=0)
    tops = [l[k]["value"] for l in layers for k in ("one_pixel_invariance", "aligned_error") if l.get(k)]
    his = [l[k]["ci"][1] for l in layers for k in ("one_pixel_invariance", "aligned_error") if l.get(k)]
    if tops:
        ax.set_ylim(0, max(min(max(his), 1.5 * max(tops)), 1e-3) * 1.05)
    seen = set()
    for l in layers:
        for mark in l.get("marks", []):
            if mark.startswith("stride"):
                style = dict(color="black", linestyle="--", linewidth=0.9, alpha=0.7)
                key, offset = "subsamples (" + mark + ")", 0.0
            elif mark == "'same' padding":
                style = dict(color="#777777", linestyle=":", linewidth=1.2)
                key, offset = "asymmetric 'same' padding", 0.15
            else:
                continue
            ax.axvline(l["depth"] + offset, label=None if key in seen else key, **style)
            seen.add(key)
    xs = [l["depth"] for l in layers]
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{l['name']} (/{l['stride']})" for l in layers], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("layer output, in data-flow order (cumulative stride)")
    ax.set_ylabel("relative error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_fix_comparison(fixes: dict, ax=None):
    """Grouped bars with 95% intervals: each metric for the original and the converted models."""
    plt = _pyplot()
    metrics = [("crop_consistency", "crop\nconsistency"), ("circular_consistency", "circular\nconsistency"),
               ("top1_change", "top-1 kept\nover a 1-px step"), ("worst_case", "stable over\nthe grid"),
               ("agreement", "same top-1 as\nthe original")]
    models = fixes["models"]
    if ax is None:
        fig, grid = _new(plt, figsize=(10, 4))
        ax = grid[0][0]
    else:
        fig = ax.figure
    width = 0.8 / max(len(models), 1)
    for j, row in enumerate(models):
        for i, (key, _) in enumerate(metrics):
            m = row.get(key)
            if not m:
                continue
            if key == "top1_change":
                m = {"value": 1 - m["value"], "ci": [1 - m["ci"][1], 1 - m["ci"][0]], "n": m["n"]}
            v, lo, hi = _err(m)
            x = i + (j - (len(models) - 1) / 2) * width
            ax.bar(x, v, width * 0.92, color=_COLORS[j % len(_COLORS)], label=row["name"] if i == 0 else None)
            ax.errorbar(x, v, yerr=[[lo], [hi]], color="black", capsize=3, linewidth=1)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([m[1] for m in metrics], fontsize=9)
    ax.set_ylim(0, 1.08)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0%", "25%", "50%", "75%", "100%"])
    ax.set_ylabel("fraction (95% interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", framealpha=0.9)
    fig.tight_layout()
    return fig


def plot_invariances(invariances: dict, axes=None):
    """Top-1 stability (top row) and the class's mean probability (bottom row) for each transformation."""
    plt = _pyplot()
    kinds = list(invariances)
    if axes is None:
        fig, axes = _new(plt, 2, len(kinds), figsize=(4 * len(kinds), 5.6), sharey="row")
    else:
        fig = axes[0][0].figure
    for col, kind in enumerate(kinds):
        entry = invariances[kind]
        xs = entry["values"]
        for row, key, ylabel in ((0, "stability", "photos keeping their top-1"),
                                 (1, "probability", "mean probability of the class")):
            ax = axes[row][col]
            v = [m["value"] for m in entry[key]]
            ax.plot(xs, v, marker="o", markersize=4, color="#2458a6")
            ax.fill_between(xs, [m["ci"][0] for m in entry[key]], [m["ci"][1] for m in entry[key]],
                            color="#2458a6", alpha=0.15, linewidth=0)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(ylabel)
            if row == 0:
                ax.set_title(kind, fontsize=10)
            if row == 1:
                ax.set_xlabel(entry.get("unit", ""))
            if kind == "scale":
                ax.set_xscale("log")
                ax.set_xticks(xs)
                ax.set_xticklabels([f"{x:g}" for x in xs], fontsize=7)
                ax.minorticks_off()
            if kind == "rotation" and len(xs) > 1 and max(xs) - min(xs) >= 180:
                ax.set_xticks([x for x in xs if x % 90 == 0])
    fig.tight_layout()
    return fig
