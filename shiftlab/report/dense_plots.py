"""The figures of a dense model's report, drawn from its saved results (the audits' ``maps``, their per-layer
errors); nothing is recomputed. matplotlib is imported inside each function, which returns the figure.
"""

from __future__ import annotations

from collections.abc import Mapping

from shiftlab.report.plots import literal_text

__all__ = ["kept_maps", "plot_dense_maps", "dense_layer_rows", "plot_dense_layers", "DISAGREEMENT_COLOURS"]

#: the disagreement map's colours: not compared (-1), agrees (0), differs (1)
DISAGREEMENT_COLOURS = ("#bdbdbd", "#ffffff", "#c62828")

_MAP_COLUMNS = (("dense.sweep", "after a (1, 1) roll"), ("dense.circular", "random circular shifts"),
                ("dense.crop", "random crops (overlap)"))


def kept_maps(results: Mapping, key: str) -> Mapping | None:
    """The ``maps`` block of audit ``key``'s result (``{"pair", "shape", "images"}``), or None."""
    result = ((results.get("audits") or {}).get(key) or {}).get("result") or {}
    maps = result.get("maps")
    return maps if maps and maps.get("images") else None


def _class_colours(k: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if k > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(k)]


@literal_text
def plot_dense_maps(results: Mapping, images: Mapping | None = None):
    """One row per kept image: the input (its thumbnail, where there is one), copy 0's prediction (a colour per
    class; the legend names only the classes shown) and the disagreement maps of each audit's first compared pair
    (red: the moved-back top-1 differs, white: agrees, grey: not compared)."""
    import numpy as np
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    sweep = kept_maps(results, "dense.sweep")
    columns = [(key, title, kept_maps(results, key)) for key, title in _MAP_COLUMNS]
    columns = [c for c in columns if c[2] is not None]
    rows = sweep["images"]
    k = int((results.get("model") or {}).get("classes") or 1)
    names = results.get("class_names") or {}
    colours = _class_colours(k)
    thumbs = images or {}
    ncols = 2 + len(columns)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.3 * ncols, 2.3 * len(rows) + 0.9), squeeze=False)
    shown: set[int] = set()
    by_index = {key: {int(im["index"]): im for im in kept["images"]} for key, _, kept in columns}
    for r, entry in enumerate(rows):
        index = int(entry["index"])
        thumb = thumbs.get(f"thumb:{index}")
        ax = axes[r][0]
        if thumb is not None:
            ax.imshow(np.asarray(thumb))
        else:
            ax.text(0.5, 0.5, "no thumbnail", ha="center", va="center", fontsize=8)
        prediction = np.asarray(entry["prediction"], dtype=np.int64)
        shown |= set(np.unique(prediction).tolist())
        axes[r][1].imshow(prediction, cmap=ListedColormap(colours), vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
        for c, (key, _, _) in enumerate(columns):
            found = by_index[key].get(index)
            if found is not None:
                axes[r][2 + c].imshow(np.asarray(found["disagreement"]), cmap=ListedColormap(DISAGREEMENT_COLOURS),
                                      vmin=-1.5, vmax=1.5, interpolation="nearest")
        names_row = (results.get("data") or {}).get("names") or []
        position = ((results.get("data") or {}).get("indices") or []).index(index) \
            if index in ((results.get("data") or {}).get("indices") or []) else None
        axes[r][0].set_ylabel(str(names_row[position])[:24] if position is not None else f"image {index}",
                              fontsize=8)
    titles = ["input", "prediction (copy 0)"] + [f"disagreement,\n{title}" for _, title, _ in columns]
    for c, title in enumerate(titles):
        axes[0][c].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=colours[c], label=str(names.get(str(c), f"class {c}"))[:20]) for c in sorted(shown)]
    handles += [Patch(facecolor=col, edgecolor="#888888", label=label)
                for col, label in zip(DISAGREEMENT_COLOURS, ("not compared", "agrees", "differs"))]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.45 / (2.3 * len(rows) + 0.9), 1, 1))
    return fig


def dense_layer_rows(results: Mapping) -> list[tuple[str, float | None, int]]:
    """(layer, mean equivariance error, compared pairs) of each stage hooked by the ``dense.sweep`` audit."""
    result = ((results.get("audits") or {}).get("dense.sweep") or {}).get("result") or {}
    rows = []
    for name, entry in (result.get("layers") or {}).items():
        eq = entry.get("equivariance") or {}
        rows.append((str(name), eq.get("value"), int(eq.get("n") or 0)))
    return rows


@literal_text
def plot_dense_layers(results: Mapping):
    """The relative equivariance error of each stage (a (1, 1) roll and the other diagonal rolls), with its
    interval; stages with no compared pair (a stride the shifts do not divide) are left blank."""
    from matplotlib import pyplot as plt

    result = ((results.get("audits") or {}).get("dense.sweep") or {}).get("result") or {}
    layers = result.get("layers") or {}
    names, values, lows, highs = [], [], [], []
    for name, entry in layers.items():
        eq = entry.get("equivariance") or {}
        names.append(str(name)[:28])
        value = eq.get("value") if eq.get("n") else None
        lo, hi = (eq.get("ci") or [None, None]) if value is not None else (None, None)
        values.append(float("nan") if value is None else value)
        lows.append(0.0 if lo is None else max(0.0, value - lo))
        highs.append(0.0 if hi is None else max(0.0, hi - value))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2), 3.4))
    ax.errorbar(range(len(names)), values, yerr=[lows, highs], marker="o", capsize=3, color="#2458a6")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("relative equivariance error")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
