"""Moved: the report's plan of audits and its runner are :mod:`shiftlab.runs.report_plan`, what only the report
adds to its audits is :mod:`shiftlab.runs.report_extras`. This module keeps their names importable from here."""

from __future__ import annotations

from shiftlab.runs.report_extras import certify_circular, marks_from_findings, thumbnails
from shiftlab.runs.report_plan import (DEFAULT_BUDGET, FIX_TITLES, MARGIN, QUICK_BUDGET, Budget, ReportAudit,
                                       report_audits, run_report_experiments)

__all__ = ["Budget", "DEFAULT_BUDGET", "QUICK_BUDGET", "ReportAudit", "report_audits", "run_report_experiments",
           "marks_from_findings", "FIX_TITLES", "MARGIN", "certify_circular", "thumbnails"]
