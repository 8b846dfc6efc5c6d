"""`shiftlab demo`: figures, numbers, JSON, and refusing to destroy files or to print tracebacks."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from shiftlab.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_photo(tmp_path):
    from PIL import Image

    rgb = np.zeros((72, 96, 3), dtype=np.uint8)
    rgb[20:50, 30:60] = (200, 180, 40)  # a bright object
    rgb += (np.random.default_rng(0).random((72, 96, 3)) * 30).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pixel_demo_writes_a_figure_and_the_numbers(tmp_path, capsys):
    out, numbers = tmp_path / "figs", tmp_path / "numbers.json"
    assert main(["demo", "pixel", "--out", str(out), "--json", str(numbers)]) == 0
    assert _is_png(out / "pixel.png")
    data = json.loads(numbers.read_text())["pixel"]
    assert data["positions"][0][2] == [0, 0] and data["positions"][1][2] == [1, 1]
    assert data["distances"] == [[5, 5], [2, 2], [1, 1], [0, 0]]
    printed = capsys.readouterr().out
    assert "iteration 2: 2x2  positions [0, 0] and [1, 1]" in printed


def test_all_demos_on_a_given_photo(tmp_path, small_photo, capsys):
    out, numbers = tmp_path / "figs", tmp_path / "numbers.json"
    code = main(["demo", "all", "--out", str(out), "--json", str(numbers), "--image", str(small_photo),
                 "--shift", "5", "12", "--iterations", "2"])
    assert code == 0
    for name in ("pixel", "edges", "pooling", "tandem"):
        assert _is_png(out / f"{name}.png")
    data = json.loads(numbers.read_text())
    assert set(data) == {"pixel", "edges", "pooling", "tandem"}
    assert data["edges"]["source"] == str(small_photo) and data["edges"]["shift"] == [5, 12]
    assert data["edges"]["translation_interior_max_abs"] == 0.0
    assert data["edges"]["mirror_raw_max_abs"] <= 1e-12 * data["edges"]["scale"]
    assert data["pooling"]["shapes"] == [[70, 94], [35, 47], [17, 23]]
    assert len(data["tandem"]["comparisons"]["translated"]["correlation"]) == 3
    assert "mirroring, raw response" in capsys.readouterr().out


def test_existing_files_are_refused_without_force(tmp_path, capsys):
    out = tmp_path / "figs"
    out.mkdir()
    (out / "pixel.png").write_bytes(b"my own figure")
    numbers = tmp_path / "numbers.json"
    numbers.write_text("keep me")
    assert main(["demo", "pixel", "--out", str(out)]) == 2
    assert (out / "pixel.png").read_bytes() == b"my own figure"
    err = capsys.readouterr().err.strip()
    assert err.startswith("shiftlab: error:") and "--force" in err and len(err.splitlines()) == 1
    # a JSON path that exists is refused before anything is written
    assert main(["demo", "pixel", "--out", str(tmp_path / "fresh"), "--json", str(numbers)]) == 2
    assert numbers.read_text() == "keep me" and not (tmp_path / "fresh" / "pixel.png").exists()
    # --force overwrites
    assert main(["demo", "pixel", "--out", str(out), "--json", str(numbers), "--force"]) == 0
    assert _is_png(out / "pixel.png") and "pixel" in json.loads(numbers.read_text())


@pytest.mark.parametrize("kind", ["missing", "not_an_image", "directory"])
def test_bad_image_gives_one_line_and_exit_code_2(tmp_path, capsys, kind):
    if kind == "missing":
        path = tmp_path / "nope.jpg"
    elif kind == "not_an_image":
        path = tmp_path / "text.png"
        path.write_text("this is not a PNG")
    else:
        path = tmp_path
    out = tmp_path / "figs"
    assert main(["demo", "edges", "--image", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("shiftlab: error:") and len(captured.err.strip().splitlines()) == 1
    assert "Traceback" not in captured.err
    assert not out.exists()  # nothing written


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    assert main(["demo", "pixel", "--out", str(target)]) == 2
    assert target.read_text() == "x"


def test_plotting_happens_only_when_called():
    # no matplotlib import at module top level in the plotting module or the command
    for rel in ("shiftlab/report/classic_plots.py", "shiftlab/cli/demo.py", "shiftlab/classic.py"):
        tree = ast.parse((ROOT / rel).read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.startswith("matplotlib") for n in names), (rel, names)
    demo = ast.parse((ROOT / "shiftlab/cli/demo.py").read_text())
    top = {a.name.split(".")[0] for n in demo.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in demo.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top <= {"__future__", "argparse"}, top


def test_plot_functions_return_figures_and_draw_on_given_axes():
    from matplotlib.figure import Figure

    from shiftlab.classic import pixel_experiment, pool_iterations
    from shiftlab.report.classic_plots import plot_pixel_experiment, plot_pool_iterations

    maps = pool_iterations(np.random.default_rng(0).random((16, 12)), 2)
    fig = plot_pool_iterations(maps)
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["(16, 12)", "(8, 6)", "(4, 3)"]
    own = Figure()
    axes = own.subplots(2, 4)
    assert plot_pixel_experiment(pixel_experiment(), axes=axes) is own
    assert axes[1, 2].get_title().startswith("(2, 2)  at [1, 1]")


def test_an_impossible_option_writes_nothing(tmp_path, small_photo, capsys):
    out = tmp_path / "figs"
    # a 72x96 photo cannot be pooled 7 times; the pixel and edge demos before it are not written either
    assert main(["demo", "all", "--out", str(out), "--image", str(small_photo), "--iterations", "7"]) == 2
    assert "poolings" in capsys.readouterr().err
    assert not out.exists()
