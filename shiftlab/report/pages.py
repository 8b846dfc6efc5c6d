"""Which page a saved report gets: a classifier's (:mod:`shiftlab.report.page`) or a dense model's
(:mod:`shiftlab.report.dense_page`, ``results["kind"] == "dense"``)."""

from __future__ import annotations

from collections.abc import Mapping

from shiftlab.report.dense_page import render_dense_html
from shiftlab.report.page import render_classifier_html

__all__ = ["render_html"]


def render_html(results: Mapping, figures: Mapping[str, str]) -> str:
    """The report page for saved ``results`` and ``figures`` (key -> path relative to the page); every string
    from ``results`` is escaped."""
    if results.get("kind") == "dense":
        return render_dense_html(results, figures)
    return render_classifier_html(results, figures)
