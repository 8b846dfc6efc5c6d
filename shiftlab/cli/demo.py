"""``shiftlab demo``: the classic experiments of the source article, as figures and numbers.

    shiftlab demo pixel                      # bright pixels through max pooling: 5, 2, 1, 0 apart
    shiftlab demo edges --image photo.jpg    # edges of a photo, its shifted copy and its mirror
    shiftlab demo all --out figs --json numbers.json

Figures go to ``--out`` (default ``shiftlab-demo/``) as ``<demo>.png``; the numbers are printed and,
with ``--json``, written as ``{"<demo>": {...}, ...}``. Existing files are refused unless ``--force``.
"""

from __future__ import annotations

import argparse

HELP = "run the article's experiments (bright pixels, edges, pooling, tandem) and save figures and numbers."

DEMOS = ("pixel", "edges", "pooling", "tandem")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "The --json format is described in docs/demo-json.md."
    parser.add_argument("which", choices=(*DEMOS, "all"), help="which experiment to run")
    parser.add_argument("--out", default="shiftlab-demo", metavar="DIR",
                        help="folder for the PNG figures (default: shiftlab-demo/)")
    parser.add_argument("--image", metavar="PATH", default=None,
                        help="photo for edges/pooling/tandem, any PIL-readable file (default: scikit-image's camera)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--shift", nargs=2, type=int, metavar=("DY", "DX"), default=(17, 64),
                        help="circular shift of the translated copy, content down/right (default: 17 64)")
    parser.add_argument("--iterations", type=int, default=6, metavar="N",
                        help="max-pooling iterations for pooling/tandem (default: 6)")
    parser.add_argument("--force", action="store_true", help="overwrite existing figure and JSON files")


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _describe(name: str, result) -> list[str]:
    if name == "pixel":
        lines = [f"pixel: bright pixels at {[list(p) for p in result.pixels]} of two "
                 f"{result.size}x{result.size} zero images, max pooling {result.kernel_size}x{result.kernel_size}"]
        for t, shape in enumerate(result.shapes):
            a, b = (result.positions[i][t] for i in (0, -1))
            d = result.distances[t]
            lines.append(f"  iteration {t}: {shape[0]}x{shape[1]}  positions {_fmt(a and list(a))} and "
                         f"{_fmt(b and list(b))}  distance per axis {_fmt(d and list(d))}")
        return lines
    if name == "edges":
        r = result
        return [
            f"edges: vertical edges of {r.source} ({r.photo_shape[0]}x{r.photo_shape[1]}), "
            f"kernel {[[int(v) if float(v).is_integer() else v for v in row] for row in r.kernel]}",
            f"  translation by {tuple(r.shift)} (circular): max |E(shift x) - shift E(x)| = "
            f"{r.translation_interior_max_abs:.3g} on {r.translation_interior_pixels} interior pixels, "
            f"{r.translation_seam_max_abs:.3g} on {r.translation_seam_pixels} seam pixels (scale {r.scale:.3g})",
            f"  mirroring, raw response: max |R(mirror x) + mirror R(x)| = {r.mirror_raw_max_abs:.3g} (the sign flips)",
            f"  mirroring, magnitude:    max ||R(mirror x)| - mirror |R(x)|| = {r.mirror_magnitude_max_abs:.3g}",
            f"  mirroring, after ReLU:   max |relu R(mirror x) - mirror relu(-R(x))| = {r.mirror_relu_max_abs:.3g} "
            f"(the other edges are kept)",
            f"  naive 'same edges':      max |relu R(mirror x) - mirror relu R(x)| = "
            f"{r.mirror_relu_same_edges_max_abs:.3g}, correlation {_fmt(r.mirror_relu_same_edges_correlation)}",
        ]
    if name == "pooling":
        shapes = " -> ".join(f"{h}x{w}" for h, w in result.shapes)
        means = ", ".join(_fmt(m) for m in result.means)
        return [f"pooling: vertical edges of {result.source} max-pooled: {shapes}", f"  mean per map: {means}"]
    if name == "tandem":
        lines = [f"tandem: edges of {result.source}, its shift by {tuple(result.shift)} and its mirror, "
                 f"max-pooled {len(result.shapes) - 1} times"]
        for other, comparison in result.comparisons.items():
            lines.append(f"  {other} vs original:")
            for t, shape in enumerate(result.shapes):
                lines.append(
                    f"    iteration {t}: {shape[0]}x{shape[1]}  centroid distance "
                    f"{_fmt(comparison['centroid_distance_cells'][t])} cells "
                    f"({_fmt(comparison['centroid_distance_pixels'][t])} px)  "
                    f"correlation {_fmt(comparison['correlation'][t])}")
        return lines
    raise AssertionError(name)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shiftlab._io import check_output_path, save_figure, write_json
    from shiftlab.errors import InputError

    names = DEMOS if args.which == "all" else (args.which,)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a folder")
    if args.iterations < 0:
        raise InputError(f"--iterations must be non-negative, got {args.iterations}")
    if args.image is not None and set(names) & {"edges", "pooling", "tandem"}:
        from shiftlab.data.images import load_image

        load_image(args.image, mode="L")  # a missing or unreadable file fails here, before any output
    figure_paths = {name: out_dir / f"{name}.png" for name in names}
    # refuse before computing anything, so a refused run leaves nothing half-written
    for path in figure_paths.values():
        check_output_path(path, args.force, "--out", claim=True)
    if args.json is not None:
        check_output_path(args.json, args.force, "--json", claim=True)

    from shiftlab import classic
    from shiftlab.report import classic_plots

    image_arg = args.image
    results = {}
    for name in names:
        if name == "pixel":
            result = classic.pixel_experiment()
            fig = classic_plots.plot_pixel_experiment(result)
        elif name == "edges":
            result = classic.edge_experiment(image_arg, shift=args.shift)
            fig = classic_plots.plot_edge_experiment(result)
        elif name == "pooling":
            result = classic.pooling_experiment(image_arg, iterations=args.iterations)
            fig = classic_plots.plot_pooling_experiment(result)
        else:
            result = classic.tandem_experiment(image_arg, shift=args.shift, iterations=args.iterations)
            fig = classic_plots.plot_tandem_experiment(result)
        results[name] = (result, fig)
    # every experiment ran: now write (a bad option fails above without leaving half the outputs)
    for name, (result, fig) in results.items():
        save_figure(fig, figure_paths[name], force=args.force)
        print("\n".join(_describe(name, result)))
        print(f"  figure: {figure_paths[name]}")
    if args.json is not None:
        write_json(args.json, {name: result.to_dict() for name, (result, _) in results.items()}, force=args.force)
        print(f"numbers: {args.json}")
    return 0
