"""Figures of the report, drawn from its saved results (``results.json``: a collection of audit results).

Each function takes the results dict (and an optional matplotlib ``ax`` or axes), imports matplotlib inside
(Agg backend), and returns the figure. Nothing here computes a measurement: values, intervals and counts are
read from the audits' metrics; curves of single photos from the audits' recorded predictions. Every string
that came from outside (photo and class names) is drawn literally (no mathtext).
"""

from __future__ import annotations

__all__ = [
    "plot_jaggedness",
    "plot_shift_metrics",
    "plot_shift_map",
    "plot_layer_profile",
    "plot_fix_comparison",
    "plot_invariances",
    "SWEEPS",
    "photo_style",
    "jaggedness_entries",
    "sweep_steps",
    "grid_size",
    "fix_columns",
]

SWEEPS = {"sweep.crop": "crop (window moves)", "sweep.canvas_black": "canvas, black fill",
          "sweep.canvas_inpaint": "canvas, inpainted fill"}
_COLORS = ["#2458a6", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d5a97", "#30343f", "#e07a5f", "#3d405b",
           "#81b29a"]
FLIP_COLOR = "#b3261e"
# one colour per photo, the same in every panel: matplotlib's tab10 without its red (the red crosses mark flips),
# nine hues far apart; a tenth photo and beyond repeat them with another line style
PHOTO_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_PHOTO_STYLES = ["-", "--", ":"]


def photo_style(i: int) -> dict:
    """The line colour and style of the ``i``-th photo, the same in every figure and panel."""
    return {"color": PHOTO_COLORS[i % len(PHOTO_COLORS)],
            "linestyle": _PHOTO_STYLES[(i // len(PHOTO_COLORS)) % len(_PHOTO_STYLES)]}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _new(plt, nrows=1, ncols=1, figsize=(9, 3.6), **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, **kw)
    return fig, axes


def _text_kw() -> dict:
    return {"usetex": False, "parse_math": False}


def literal_text(plot):
    """Draw every string of ``plot``'s figure literally: no mathtext, no TeX.

    Names come from outside (photo and class names, experiment and variant names, layer names): ``$x^{2}_a$``
    must read as typed, never be typeset (nor fail to parse). The figure is built with ``text.parse_math`` and
    ``text.usetex`` off, and afterwards every text of the figure (tick labels included, created first) is set
    the same way: both settings are kept by each text, so the figure stays literal wherever it is saved.
    """
    import functools

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        import matplotlib
        from matplotlib.text import Text

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            fig = plot(*args, **kwargs)
            for ax in fig.get_axes():
                ax.get_xticklabels(which="both")
                ax.get_yticklabels(which="both")
            for text in fig.findobj(Text):
                text.set_usetex(False)
                text.set_parse_math(False)
        return fig

    return wrapper


def metric(results: dict, key: str, name: str) -> dict | None:
    """The metric ``name`` of audit ``key`` (``{"value", "ci", "n", "images", ...}``), or None."""
    audit = (results.get("audits") or {}).get(key)
    if not audit:
        return None
    return (audit["result"].get("metrics") or {}).get(name)


def _predictions(results: dict, key: str) -> dict | None:
    audit = (results.get("audits") or {}).get(key)
    return None if not audit else audit["result"].get("predictions")


def _interval(m: dict) -> tuple[float | None, float | None]:
    """The metric's interval, or (None, None) where it is undefined (an interval over images needs two)."""
    ci = m.get("ci") or (None, None)
    lo, hi = ci
    return (None, None) if lo is None or hi is None else (float(lo), float(hi))


def _err(m):
    """(value, error below, error above) for an error bar: no bar where the interval is undefined."""
    v = m["value"]
    lo, hi = _interval(m)
    if lo is None:
        return v, 0.0, 0.0
    return v, max(v - lo, 0.0), max(hi - v, 0.0)


def _complement(m: dict) -> dict:
    lo, hi = _interval(m)
    return {**m, "value": 1 - m["value"], "ci": [None, None] if lo is None else [1 - hi, 1 - lo]}


def _interval_note(m: dict) -> str:
    return "" if _interval(m)[0] is not None else "; no interval: one photo"


def _names(results: dict, preds: dict) -> list[str]:
    names = (results.get("data") or {}).get("names") or []
    indices = (results.get("data") or {}).get("indices") or []
    by_index = dict(zip(indices, names))
    return [by_index.get(i, f"image {i}") for i in preds["index"]]


def _class_name(results: dict, c: int) -> str:
    return (results.get("class_names") or {}).get(str(c), f"class {c}")


def jaggedness_entries(results: dict) -> list[tuple[int, str]]:
    """The legend of :func:`plot_jaggedness`: one (image index, text) per photo, in the audits' image order.

    A photo's tracked class is named once: the label's class where the photo has one (the same in every panel);
    otherwise each sweep tracks the top-1 of its own first view, which may differ between panels, and the entry
    says so (naming the class where all panels agree)."""
    keys = [k for k in SWEEPS if _predictions(results, k)]
    tracked: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for key in keys:
        preds = _predictions(results, key)
        for index, name, c in zip(preds["index"], _names(results, preds), preds["tracked_class"]):
            names[index] = name
            tracked.setdefault(index, []).append(int(c))
    labelled = {int(p["index"]) for p in results.get("predictions") or [] if p.get("label_name") is not None}
    out = []
    for index, classes in tracked.items():
        if len(set(classes)) == 1:
            how = "label" if index in labelled else "top-1 of the first view"
            out.append((index, f"{names[index]}: {_class_name(results, classes[0])} ({how})"))
        else:
            out.append((index, f"{names[index]}: top-1 of each panel's first view"))
    return out


@literal_text
def plot_jaggedness(results: dict, axes=None):
    """The tracked class's probability against the diagonal shift, one panel per sweep, one line per photo
    (one colour per photo across panels, one legend entry per photo naming its tracked class); red crosses mark
    the steps where the top-1 class changed (said in the figure's note, not in the legend)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    keys = [k for k in SWEEPS if _predictions(results, k)]
    if axes is None:
        fig, grid = _new(plt, 1, len(keys), figsize=(4.2 * len(keys), 3.8), sharey=True)
        axes = list(grid[0])
    else:
        axes = list(axes)
        fig = axes[0].figure
    entries = jaggedness_entries(results)
    order = {index: i for i, (index, _) in enumerate(entries)}
    for ax, key in zip(axes, keys):
        preds = _predictions(results, key)
        offsets = list(range(results["audits"][key]["result"]["protocol"]["n"] + 1))
        for index, probs, top1 in zip(preds["index"], preds["tracked_probability"], preds["top1"]):
            ax.plot(offsets, probs, marker=".", markersize=3, linewidth=1.1, **photo_style(order[index]))
            flips = [k for k in range(1, len(top1)) if top1[k] != top1[k - 1]]
            if flips:
                ax.scatter(flips, [probs[k] for k in flips], marker="x", s=22, color=FLIP_COLOR, zorder=3,
                           linewidths=1.2)
        ax.set_title(SWEEPS[key], fontsize=10)
        ax.set_xlabel("diagonal shift (pixels)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the tracked class")
    handles = [Line2D([], [], marker=".", markersize=6, linewidth=1.6, **photo_style(i)) for i in range(len(entries))]
    if handles:
        rows = (len(handles) + 2) // 3
        leg = fig.legend(handles, [text for _, text in entries], loc="lower center", ncol=min(3, len(handles)),
                         fontsize=8, bbox_to_anchor=(0.5, 0.0), frameon=False)
        for text in leg.get_texts():
            text.set_parse_math(False)
        fig.text(0.99, 0.99, "red x: the top-1 class changed at this step", ha="right", va="top", fontsize=8,
                 color=FLIP_COLOR, **_text_kw())
        fig.tight_layout(rect=(0, 0.05 + 0.045 * rows, 1, 0.95))
    return fig


def sweep_steps(results: dict, key: str) -> int | None:
    """The number of 1-px steps of the diagonal sweep audit ``key`` (``diagonal:N``: N), or None."""
    audit = (results.get("audits") or {}).get(key) or {}
    n = ((audit.get("result") or {}).get("protocol") or {}).get("n")
    return None if n is None else int(n)


def grid_size(results: dict, key: str) -> int | None:
    """The side of the grid of 1-px shifts of the worst-case audit ``key`` (``grid:G``: G), or None."""
    return sweep_steps(results, key)


def shift_bars(results: dict) -> list[tuple[str, dict, str]]:
    """The bars of :func:`plot_shift_metrics`: (label, metric, audit key), in page order."""
    rows = []
    for key, label in (("consistency.crop", "crop consistency (two random crops)"),
                       ("consistency.circular", "circular consistency (two random rolls)")):
        m = metric(results, key, "consistency")
        if m:
            rows.append((label, m, key))
    for key, title in SWEEPS.items():
        m = metric(results, key, "top1_change")
        if m:
            rows.append((f"top-1 kept per 1-px step over a {sweep_steps(results, key)}-step diagonal sweep, {title}",
                         _complement(m), key))
    m = metric(results, "worst_case", "worst_case_stability")
    if m:
        g = results["audits"]["worst_case"]["result"]["protocol"]["n"]
        rows.append((f"photos keeping their top-1 over a {g}x{g} grid of 1-px shifts", m, "worst_case"))
    m = metric(results, "subpixel", "worst_case_stability")
    if m:
        rows.append(("photos keeping their top-1 over every half-pixel shift", m, "subpixel"))
    return rows


@literal_text
def plot_shift_metrics(results: dict, ax=None):
    """Horizontal bars with 95% image-level intervals: consistencies, 1 - P(top-1 change), the worst case."""
    plt = _pyplot()
    rows = shift_bars(results)
    if ax is None:
        fig, grid = _new(plt, figsize=(9, 0.55 * len(rows) + 1.2))
        ax = grid[0][0]
    else:
        fig = ax.figure
    ys = list(range(len(rows)))[::-1]
    for y, (label, m, _) in zip(ys, rows):
        v, lo, hi = _err(m)
        flagged = bool(m.get("flag"))
        ax.barh(y, v, color="#d0d0d0" if flagged else "#9db4d8", edgecolor="#777777" if flagged else "#2458a6")
        ax.errorbar(v, y, xerr=[[lo], [hi]], color="black", capsize=4, linewidth=1.2)
        ax.text(min(v + hi, 1.0) + 0.01, y, f"{100 * v:.1f}%  (n = {m['n']}, {m.get('images', '?')} photos"
                + f"{_interval_note(m)})" + ("  not meaningful" if flagged else ""), va="center", fontsize=8, **_text_kw())
    ax.set_yticks(ys)
    ax.set_yticklabels([r[0] for r in rows], fontsize=9)
    ax.set_xlim(0, 1.3)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xticklabels(["0%", "25%", "50%", "75%", "100%"])
    ax.set_xlabel("fraction of pairs / steps / photos (95% interval over photos)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


@literal_text
def plot_shift_map(results: dict, max_images: int = 10):
    """Small multiples: the tracked class's probability over the grid of crop offsets (dy, dx); cells where the
    top-1 differs from the unshifted crop's are crossed."""
    import math

    plt = _pyplot()
    preds = _predictions(results, "worst_case")
    g = results["audits"]["worst_case"]["result"]["protocol"]["n"]
    names = _names(results, preds)
    n = min(len(preds["index"]), max_images)
    ncols = min(5, n)
    nrows = math.ceil(n / ncols)
    fig, axes = _new(plt, nrows, ncols, figsize=(2.3 * ncols + 0.8, 2.4 * nrows + 0.3))
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        probs = [preds["tracked_probability"][i][r * g:(r + 1) * g] for r in range(g)]
        image = ax.imshow(probs, vmin=0, vmax=1, cmap="viridis", origin="upper")
        top1 = preds["top1"][i]
        for k, c in enumerate(top1):
            if c != top1[0]:
                ax.plot(k % g, k // g, marker="x", color="white", markersize=5, markeredgewidth=1.2)
        ax.set_title(names[i], fontsize=9, **_text_kw())
        ax.set_xticks([0, g - 1])
        ax.set_yticks([0, g - 1])
        ax.set_xlabel("dx (pixels)", fontsize=8)
        ax.set_ylabel("dy (pixels)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, pad=0.02)
        bar.set_label("probability of the tracked class")
    return fig


def layer_rows(results: dict) -> list[dict]:
    """Per profiled layer: name, stride, the equivariance error (sweep.crop) and the 1-px pooled invariance
    error (layers.invariance), as metric dicts, and the marks from the aliasing map."""
    profile = results.get("layer_profile") or {}
    sweep = ((results.get("audits") or {}).get("sweep.crop") or {}).get("result", {}).get("layers", {})
    inv = ((results.get("audits") or {}).get("layers.invariance") or {}).get("result", {}).get("layers", {})
    rows = []
    for depth, name in enumerate(profile.get("layers", [])):
        entry = sweep.get(name) or {}
        stride = entry.get("stride") or (inv.get(name) or {}).get("stride")
        rows.append({"name": name, "depth": depth, "stride": None if stride is None else max(stride),
                     "equivariance": entry.get("equivariance"),
                     "invariance": (inv.get(name) or {}).get("pooled_invariance"),
                     "marks": (profile.get("marks") or {}).get(name, [])})
    return rows


@literal_text
def plot_layer_profile(results: dict, ax=None):
    """Per-layer 1-px invariance and equivariance errors against depth, subsampling marked."""
    plt = _pyplot()
    rows = layer_rows(results)
    if ax is None:
        fig, grid = _new(plt, figsize=(10, 4.6))
        ax = grid[0][0]
    else:
        fig = ax.figure
    for key, label, color in (("invariance", "1-px circular shift: change of the averaged features", "#d1495b"),
                              ("equivariance", "crop moved by a multiple of the stride: equivariance error",
                               "#2458a6")):
        pts = [(r["depth"], r[key]) for r in rows if r.get(key) and r[key].get("value") is not None]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1]["value"] for p in pts], marker="o", markersize=4, color=color, label=label)
        ax.fill_between(xs, [p[1]["ci"][0] if p[1]["ci"][0] is not None else p[1]["value"] for p in pts],
                        [p[1]["ci"][1] if p[1]["ci"][1] is not None else p[1]["value"] for p in pts],
                        color=color, alpha=0.15, linewidth=0)
    seen = set()
    for r in rows:
        for mark in r.get("marks", []):
            if mark.startswith("stride"):
                style = dict(color="black", linestyle="--", linewidth=0.9, alpha=0.7)
                key, offset = "subsamples (" + mark + ")", 0.0
            elif mark == "'same' padding":
                style = dict(color="#777777", linestyle=":", linewidth=1.2)
                key, offset = "asymmetric 'same' padding", 0.15
            else:
                continue
            ax.axvline(r["depth"] + offset, label=None if key in seen else key, **style)
            seen.add(key)
    ax.set_xticks([r["depth"] for r in rows])
    ax.set_xticklabels([f"{r['name']} (/{r['stride']})" for r in rows], rotation=60, ha="right", fontsize=7)
    for t in ax.get_xticklabels():
        t.set_parse_math(False)
    ax.set_xlabel("layer output, in data-flow order (cumulative stride)")
    ax.set_ylabel("relative error")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def fix_rows(results: dict) -> list[dict]:
    """One row per model (the original, then each fix): the metrics of the fix comparison, with audit keys."""
    fx = results.get("fixes") or {}
    budget = (results.get("settings") or {}).get("budget") or {}
    sweep, grid = f"sweep{budget.get('fix_sweep', 16)}", f"grid{budget.get('fix_grid', 4)}"
    rows = []
    for model in fx.get("models", []):
        prefix = "" if model == "original" else f"{model}/"
        sweep_key = f"original/{sweep}" if model == "original" else f"{model}/{sweep}"
        grid_key = f"original/{grid}" if model == "original" else f"{model}/{grid}"
        crop_key, circ_key = f"{prefix}consistency.crop", f"{prefix}consistency.circular"
        tc = metric(results, sweep_key, "top1_change")
        rows.append({
            "model": model, "name": (fx.get("titles") or {}).get(model, model),
            "replacements": (fx.get("replacements") or {}).get(model),
            "crop_consistency": (metric(results, crop_key, "consistency"), crop_key),
            "circular_consistency": (metric(results, circ_key, "consistency"), circ_key),
            "top1_kept": (None if tc is None else _complement(tc), sweep_key),
            "worst_case": (metric(results, grid_key, "worst_case_stability"), grid_key),
            "agreement": (metric(results, crop_key, "reference_agreement"), crop_key),
            "accuracy": (metric(results, crop_key, "accuracy"), crop_key),
        })
    return rows


FIX_COLUMNS = (("crop_consistency", "crop\nconsistency"), ("circular_consistency", "circular\nconsistency"),
               ("top1_kept", "top-1 kept over a\n{sweep}-step diagonal sweep"),
               ("worst_case", "stable over a {grid}x{grid}\ngrid of 1-px shifts"),
               ("agreement", "same top-1 as\nthe original"))


def fix_columns(results: dict) -> list[tuple[str, str]]:
    """The columns of the fix comparison (key, label), each label naming its sweep or grid as measured."""
    budget = (results.get("settings") or {}).get("budget") or {}
    sweep, grid = budget.get("fix_sweep", 16), budget.get("fix_grid", 4)
    return [(key, label.format(sweep=sweep, grid=grid)) for key, label in FIX_COLUMNS]


@literal_text
def plot_fix_comparison(results: dict, ax=None):
    """Grouped bars with 95% intervals: each metric for the original and the converted models."""
    plt = _pyplot()
    rows = fix_rows(results)
    if ax is None:
        fig, grid = _new(plt, figsize=(10, 4))
        ax = grid[0][0]
    else:
        fig = ax.figure
    width = 0.8 / max(len(rows), 1)
    columns = fix_columns(results)
    for j, row in enumerate(rows):
        for i, (key, _) in enumerate(columns):
            m = row[key][0]
            if not m or m.get("value") is None:
                continue
            v, lo, hi = _err(m)
            x = i + (j - (len(rows) - 1) / 2) * width
            ax.bar(x, v, width * 0.92, color=_COLORS[j % len(_COLORS)], label=row["name"] if i == 0 else None)
            ax.errorbar(x, v, yerr=[[lo], [hi]], color="black", capsize=3, linewidth=1)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([m[1] for m in columns], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0%", "25%", "50%", "75%", "100%"])
    ax.set_ylabel("fraction (95% interval over photos)")
    ax.grid(axis="y", alpha=0.3)
    # outside the axes, right of them: a legend inside would cover bars
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


INVARIANCES = {"rotation": "rotation", "scale": "scale", "brightness": "brightness"}


@literal_text
def plot_invariances(results: dict, axes=None):
    """Top row: the fraction of photos keeping their top-1 (agreement with the reference value, 95% interval).
    Bottom row: the tracked class's probability, one line per photo."""
    plt = _pyplot()
    kinds = [k for k in INVARIANCES if (results.get("audits") or {}).get(k)]
    if axes is None:
        fig, axes = _new(plt, 2, len(kinds), figsize=(4 * len(kinds), 5.8), sharey="row")
    else:
        fig = axes[0][0].figure
    for col, kind in enumerate(kinds):
        audit = results["audits"][kind]
        proto = audit["result"]["protocol"]
        values = proto.get("angles") or proto.get("factors")
        ref = values[0]
        curve = (metric(results, kind, "agreement") or {}).get("curve") or {}
        pts = sorted([(ref, 1.0, 1.0, 1.0)] + [(p, v, v if c[0] is None else c[0], v if c[1] is None else c[1])
                                                for p, v, c in
                                                zip(curve.get("parameters", []), curve.get("value", []),
                                                    curve.get("ci", []))])
        ax = axes[0][col]
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], marker="o", markersize=4, color="#2458a6")
        ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color="#2458a6", alpha=0.15, linewidth=0)
        ax.set_title(INVARIANCES[kind], fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if col == 0:
            ax.set_ylabel("photos keeping their top-1")
        preds = audit["result"].get("predictions")
        ax2 = axes[1][col]
        if preds:
            order = sorted(range(len(values)), key=lambda i: values[i])
            for i, probs in enumerate(preds["tracked_probability"]):
                ax2.plot([values[k] for k in order], [probs[k] for k in order], linewidth=1, alpha=0.8,
                         **photo_style(i))
        ax2.set_ylim(-0.02, 1.02)
        ax2.grid(alpha=0.3)
        ax2.set_xlabel(audit.get("unit", ""))
        if col == 0:
            ax2.set_ylabel("probability of the tracked class")
        for a in (ax, ax2):
            if kind == "scale":
                a.set_xscale("log")
                a.set_xticks(sorted(values))
                a.set_xticklabels([f"{x:g}" for x in sorted(values)], fontsize=7)
                a.minorticks_off()
            if kind == "rotation" and max(values) - min(values) >= 180:
                a.set_xticks([x for x in sorted(values) if x % 90 == 0])
    fig.tight_layout()
    return fig
