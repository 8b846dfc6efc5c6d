"""The report's public names in one place: the page (:mod:`shiftlab.report.page`: saved results and figure files
in, one self-contained HTML page out), its figures (:mod:`shiftlab.report.figures`) and the staged, marker-checked
folder write (:mod:`shiftlab.report.staging`)."""

from __future__ import annotations

from shiftlab.report.figures import render_figures
from shiftlab.report.page import GENERATOR, _training, format_metric, format_percent, headline_metrics
from shiftlab.report.pages import render_html
from shiftlab.report.staging import MARKER, SCHEMA_PREFIX, check_output_folder, foreign_entries, is_report_folder, \
    write_report

__all__ = ["GENERATOR", "render_html", "render_figures", "write_report", "check_output_folder", "is_report_folder",
           "headline_metrics", "format_percent", "format_metric", "MARKER", "SCHEMA_PREFIX", "foreign_entries"]
