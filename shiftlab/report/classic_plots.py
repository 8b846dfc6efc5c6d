"""Figures for the classic experiments (:mod:`shiftlab.classic`).

Each function takes a computed result, draws it on new axes (or on the ``axes`` given) and returns the
matplotlib figure. matplotlib is imported inside the functions; figures are built without pyplot, so
nothing here touches the global backend or leaks figures.
"""

from __future__ import annotations

import numpy as np

from shiftlab.report.plots import literal_text

__all__ = [
    "plot_pool_iterations",
    "plot_pixel_experiment",
    "plot_edge_experiment",
    "plot_pooling_experiment",
    "plot_tandem_experiment",
]


def _new_figure(rows: int, cols: int, panel: float = 2.0, squeeze: bool = False):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(panel * cols, 3.0), panel * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=squeeze)
    return fig, axes


def _show(ax, image, title: str, cmap: str = "viridis", vmin=None, vmax=None) -> None:
    ax.imshow(np.asarray(image), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


@literal_text
def plot_pool_iterations(maps, axes=None, title: str | None = None, cmap: str = "viridis"):
    """One panel per pooling iteration, each titled with its shape (as in the article).

    Args:
        maps: the list returned by :func:`shiftlab.classic.pool_iterations` (2-D maps).
        axes: optional sequence of ``len(maps)`` axes to draw on.
    """
    maps = [np.asarray(m) for m in maps]
    if axes is None:
        fig, grid = _new_figure(1, len(maps))
        axes = list(grid[0])
    else:
        axes = list(np.ravel(axes))
        if len(axes) < len(maps):
            raise ValueError(f"need {len(maps)} axes, got {len(axes)}")
        fig = axes[0].figure
    for ax, m in zip(axes, maps):
        _show(ax, m, str(tuple(m.shape)), cmap=cmap)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


@literal_text
def plot_pixel_experiment(result, axes=None):
    """Both bright-pixel images through their poolings: one row per image, one panel per iteration.

    Args:
        result: a :class:`shiftlab.classic.PixelExperiment`.
        axes: optional (2, iterations + 1) array of axes.
    """
    n_images, n_maps = len(result.maps), len(result.maps[0])
    if axes is None:
        fig, axes = _new_figure(n_images, n_maps, panel=1.6)
    else:
        axes = np.asarray(axes).reshape(n_images, n_maps)
        fig = axes[0, 0].figure
    for i, maps in enumerate(result.maps):
        for t, m in enumerate(maps):
            pos = result.positions[i][t]
            where = "dropped" if pos is None else f"at {list(pos)}"
            _show(axes[i, t], m, f"{tuple(m.shape)}  {where}", vmin=0.0, vmax=1.0)
    dist = ", ".join("-" if d is None else str(max(d)) for d in result.distances)
    fig.suptitle(f"bright pixels at {[list(p) for p in result.pixels]}; distance per axis: {dist}", fontsize=10)
    return fig


@literal_text
def plot_edge_experiment(result, axes=None):
    """Edge maps side by side: photo and vertical edges of the original, translated and mirrored copies.

    The last column shows |E(shifted) - shift(E)|: zero except on the wrap-around seam.

    Args:
        result: a :class:`shiftlab.classic.EdgeExperiment`.
        axes: optional (2, 4) array of axes.
    """
    if axes is None:
        fig, axes = _new_figure(2, 4, panel=2.6)
    else:
        axes = np.asarray(axes).reshape(2, 4)
        fig = axes[0, 0].figure
    dy, dx = result.shift
    vmax = max(float(result.edges.max()), 1e-12)
    _show(axes[0, 0], result.photo, "original", cmap="gray")
    _show(axes[0, 1], result.translated, f"shifted by ({dy}, {dx})", cmap="gray")
    _show(axes[0, 2], result.mirrored, "mirrored", cmap="gray")
    _show(axes[0, 3], np.abs(result.raw), "|raw response|", cmap="magma")
    _show(axes[1, 0], result.edges, "edges", vmin=0.0, vmax=vmax)
    _show(axes[1, 1], result.edges_translated, "edges of shifted", vmin=0.0, vmax=vmax)
    _show(axes[1, 2], result.edges_mirrored, "edges of mirrored", vmin=0.0, vmax=vmax)
    difference = np.abs(result.edges_translated - np.roll(result.edges, result.shift, axis=(0, 1)))
    _show(axes[1, 3], difference,
          f"|E(shift x) - shift(E x)|\ninterior max {result.translation_interior_max_abs:.1e}", cmap="magma")
    fig.suptitle(f"vertical edges (ReLU) of {result.source}; mirroring flips the sign: "
                 f"max |R(mirror x) + mirror R(x)| = {result.mirror_raw_max_abs:.1e}", fontsize=10)
    return fig


@literal_text
def plot_pooling_experiment(result, axes=None):
    """The edge map of a photo through its max poolings, one panel per iteration titled with its shape.

    Args:
        result: a :class:`shiftlab.classic.PoolingExperiment`.
        axes: optional sequence of ``len(result.maps)`` axes.
    """
    return plot_pool_iterations(result.maps, axes=axes, title=f"vertical edges of {result.source}, max-pooled")


@literal_text
def plot_tandem_experiment(result, axes=None):
    """Three rows of pooled edge maps (original, translated, other side) and the convergence numbers.

    Args:
        result: a :class:`shiftlab.classic.TandemExperiment`.
        axes: optional (4, iterations + 1) array of axes: three rows of maps, then the distance and
            correlation plots on the first two axes of the last row.
    """
    names = ("original", "translated", "other_side")
    n_maps = len(result.shapes)
    if axes is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(max(1.7 * n_maps, 6.0), 1.7 * len(names) + 2.8), layout="constrained")
        gs = fig.add_gridspec(len(names) + 1, n_maps, height_ratios=[1.0] * len(names) + [1.6])
        map_axes = np.array([[fig.add_subplot(gs[r, t]) for t in range(n_maps)] for r in range(len(names))])
        half = (n_maps + 1) // 2
        ax_cells, ax_corr = fig.add_subplot(gs[-1, :half]), fig.add_subplot(gs[-1, half:])
    else:
        axes = np.asarray(axes).reshape(len(names) + 1, n_maps)
        fig = axes[0, 0].figure
        map_axes = axes[:-1]
        ax_cells, ax_corr = axes[-1, 0], axes[-1, 1]
        for ax in axes[-1, 2:]:
            ax.set_axis_off()
    for row, name in enumerate(names):
        for t, m in enumerate(result.maps[name]):
            _show(map_axes[row, t], m, f"{name}\n{tuple(m.shape)}" if t == 0 else str(tuple(m.shape)))
    steps = np.arange(n_maps)
    for name, comparison in result.comparisons.items():
        cells = [np.nan if v is None else v for v in comparison["centroid_distance_cells"]]
        corr = [np.nan if v is None else v for v in comparison["correlation"]]
        ax_cells.plot(steps, cells, marker="o", label=name)
        ax_corr.plot(steps, corr, marker="o", label=name)
    ax_cells.set_yscale("log")
    ax_cells.set_xlabel("pooling iterations", fontsize=8)
    ax_cells.set_ylabel("centroid distance (cells)", fontsize=8)
    ax_corr.set_xlabel("pooling iterations", fontsize=8)
    ax_corr.set_ylabel("correlation with original", fontsize=8)
    for ax in (ax_cells, ax_corr):
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(f"edges of {result.source}: shifted by {tuple(result.shift)} and mirrored, max-pooled together",
                 fontsize=10)
    return fig
