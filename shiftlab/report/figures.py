"""The figures of a report: every matplotlib figure its saved results allow, drawn into a folder as PNG files,
with the photos' thumbnails. The figures are drawn from the results (:mod:`shiftlab.report.plots`,
:mod:`shiftlab.report.experiment_plots`, :mod:`shiftlab.report.dense_plots` for a dense model's report); nothing
is recomputed here.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["render_figures"]


def render_figures(results: Mapping, folder, force: bool = True, extra_figures: Mapping | None = None,
                   progress: bool = False, images: Mapping | None = None) -> dict[str, str]:
    """Draw every figure the results allow into ``folder``; return key -> path relative to the page.

    ``extra_figures`` (key -> matplotlib figure) are saved too: the classic demonstrations, whose maps are
    not part of the saved results, are drawn when they are computed. ``images`` (key -> uint8 (H, W, 3)
    array) are saved as PNG (the photos' thumbnails).
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from shiftlab._io import atomic_write_bytes, save_figure
    from shiftlab._progress import track
    from shiftlab.report import plots

    folder = Path(folder)
    audits = results.get("audits") or {}
    jobs = [(key, lambda fig=fig: fig) for key, fig in (extra_figures or {}).items()]
    if any((audits.get(k) or {}).get("result", {}).get("predictions") for k in plots.SWEEPS):
        jobs.append(("jaggedness", lambda: plots.plot_jaggedness(results)))
    if plots.shift_bars(results):
        jobs.append(("shift_metrics", lambda: plots.plot_shift_metrics(results)))
    if (audits.get("worst_case") or {}).get("result", {}).get("predictions"):
        jobs.append(("shift_map", lambda: plots.plot_shift_map(results)))
    if plots.layer_rows(results):
        jobs.append(("layer_profile", lambda: plots.plot_layer_profile(results)))
    if len(plots.fix_rows(results)) > 1:
        jobs.append(("fixes", lambda: plots.plot_fix_comparison(results)))
    if any(audits.get(k) for k in plots.INVARIANCES):
        jobs.append(("invariances", lambda: plots.plot_invariances(results)))
    if results.get("kind") == "dense":  # a dense model's report (shiftlab.runs.dense_report)
        from shiftlab.report import dense_plots

        if dense_plots.kept_maps(results, "dense.sweep"):
            jobs.append(("dense_maps", lambda: dense_plots.plot_dense_maps(results, images)))
        if any(n for _, _, n in dense_plots.dense_layer_rows(results)):
            jobs.append(("dense_layers", lambda: dense_plots.plot_dense_layers(results)))
    if results.get("training_experiments"):
        from shiftlab.report import experiment_plots

        for name, result in results["training_experiments"].items():
            try:
                experiment_plots.experiment_title(result)
            except (KeyError, TypeError, ValueError):
                continue  # shown as unreadable on the page
            jobs.append((f"experiment_{name}", lambda result=result: experiment_plots.experiment_figures(result)))

    figures: dict[str, str] = {}
    for key, draw in track(jobs, "figures", total=len(jobs), enabled=progress):
        drawn = draw()
        for suffix, fig in (drawn.items() if isinstance(drawn, dict) else [(None, drawn)]):
            file_name = _slug(key if suffix is None else f"{key}{suffix}")
            try:
                save_figure(fig, folder / f"{file_name}.png", force=force)
            finally:
                plt.close(fig)
            figures[key if suffix is None else f"{key}:{suffix}"] = f"{folder.name}/{file_name}.png"
    for key, array in (images or {}).items():
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        file_name = _slug(str(key).replace(":", "_"))
        atomic_write_bytes(folder / f"{file_name}.png", buffer.getvalue(), force=force)
        figures[str(key)] = f"{folder.name}/{file_name}.png"
    return figures


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(name))[:80] or "experiment"
