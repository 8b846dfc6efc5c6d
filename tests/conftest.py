"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def report_dir(tmp_path_factory):
    """A real ``shiftlab report --quick`` on the pretrained network and the bundled photos, made once per session."""
    from shiftlab.cli import main

    out = tmp_path_factory.mktemp("report") / "shiftlab-report"
    code = main(["report", "--quick", "--out", str(out), "--no-progress"])
    assert code == 0
    return out
