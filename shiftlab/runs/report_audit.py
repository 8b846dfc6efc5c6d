"""One audit of the report: a named :class:`~shiftlab.runs.audit.AuditRun` and what it shows; the unit of the
classifier report's plan (:mod:`shiftlab.runs.report_plan`) and of the dense report's
(:mod:`shiftlab.runs.dense_report`)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ReportAudit"]


@dataclass(frozen=True)
class ReportAudit:
    """One audit of the report: its key, what it shows, which model it measures, and the run itself."""

    key: str
    title: str
    model: str  # "original" or a --fix spec
    run: object  # an AuditRun
    reference: str | None = None  # key of the original's audit whose predictions are the reference
    needs_predictions: bool = False
    extra: dict = field(default_factory=dict)
