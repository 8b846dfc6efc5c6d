"""Shared fixtures, and the ``--device`` option: ``pytest --device cuda`` runs the device-aware tests on CUDA."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", action="store", default="cpu",
                     help="where the device-aware tests run: cpu (default) or cuda (skipped when CUDA is absent)")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The ``torch.device`` of ``--device`` (default ``cpu``); tests asking for cuda are skipped without it."""
    name = request.config.getoption("--device")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise pytest.UsageError(f"--device must be a torch device such as cpu or cuda, got {name!r}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda asked for, but CUDA is not available")
    if chosen.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device must be cpu or cuda, got {name!r}")
    return chosen


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request) -> torch.dtype:
    """Both float dtypes, for tests whose tolerance depends on it (exactness is checked in float64)."""
    return request.param


@pytest.fixture(scope="session")
def report_dir(tmp_path_factory):
    """A real ``shiftlab report --quick`` on the pretrained network and the bundled photos, made once per session."""
    from shiftlab.cli import main

    out = tmp_path_factory.mktemp("report") / "shiftlab-report"
    code = main(["report", "--quick", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def rotation_quick():
    """The quick rotation experiment (``shiftlab experiment rotation --quick``: one seed), trained once per session
    and shared by the experiment's tests and its CLI test."""
    from shiftlab.experiments.rotation import run_rotation

    return run_rotation(seeds=1, quick=True)


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures a test made (and did not close) are closed after it, so that none piles up across the suite."""
    yield
    import sys

    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
