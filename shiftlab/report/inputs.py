"""The report's inputs besides its audits: the articles' demonstrations (computed and drawn together, since
their maps are not part of the saved results) and the training experiments' saved results (``shiftlab experiment``
JSON files), each checked before any audit runs.
"""

from __future__ import annotations

__all__ = ["classic_demonstrations", "load_experiment_results"]


def classic_demonstrations(progress: bool = False) -> tuple[dict, dict]:
    """The articles' demonstrations (issue 2): their numbers, and their figures (key -> matplotlib figure)."""
    from shiftlab import classic
    from shiftlab._progress import track
    from shiftlab.report import classic_plots

    runs = {
        "pixel": (classic.pixel_experiment, classic_plots.plot_pixel_experiment),
        "edges": (classic.edge_experiment, classic_plots.plot_edge_experiment),
        "pooling": (classic.pooling_experiment, classic_plots.plot_pooling_experiment),
        "tandem": (classic.tandem_experiment, classic_plots.plot_tandem_experiment),
    }
    numbers, figures = {}, {}
    for name, (experiment, plot) in track(runs.items(), "the articles' demonstrations", total=len(runs),
                                          enabled=progress):
        result = experiment()
        numbers[name] = result.to_dict()
        figures[f"classic_{name}"] = plot(result)
    return numbers, figures


def _check_experiment_result(data: dict, path) -> None:
    """Refuse, before any work, an experiment result the report could not render (damaged or hand-edited)."""
    from shiftlab.errors import InputError
    from shiftlab.report import experiment_plots

    name = data["experiment"]
    where = f"--experiments: {path} (experiment {name!r})"
    if name not in experiment_plots.TITLES:
        raise InputError(f"{where}: unknown experiment; expected one of {', '.join(experiment_plots.TITLES)}")
    variants = data["variants"]
    if not isinstance(variants, dict) or not variants:
        raise InputError(f"{where}: 'variants' must map each variant's name to its results, "
                         f"got {type(variants).__name__}")
    bad = [str(k) for k, v in variants.items() if not isinstance(v, dict) or not isinstance(v.get("summary"), dict)]
    if bad:
        raise InputError(f"{where}: variant {bad[0]!r} has no 'summary' of results")
    try:  # the figures are cheap; drawing them now finds any other damage before minutes of audits
        figures = experiment_plots.experiment_figures(data)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is not what the report needs
        raise InputError(f"{where}: cannot be rendered ({type(exc).__name__}: {str(exc)[:120]}); write it again "
                         f"with shiftlab experiment {name}") from None
    import matplotlib.pyplot as plt

    for figure in figures.values():
        plt.close(figure)


def load_experiment_results(folder) -> dict:
    """The training-experiment results (``shiftlab experiment`` JSON files) in ``folder``: name -> result.

    Files that are not experiment results are left out; a folder with none raises InputError.
    """
    import json
    from pathlib import Path

    from shiftlab.errors import InputError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--experiments: {folder} is not a folder")
    found = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("experiment"), str) and "variants" in data:
            _check_experiment_result(data, path)
            found[path.stem] = data
    if not found:
        raise InputError(f"--experiments: no experiment results (JSON written by shiftlab experiment) in {folder}")
    return found
