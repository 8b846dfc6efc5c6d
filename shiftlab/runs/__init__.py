"""Runs: one command's work as data (its options, the checks before any work, the command line that repeats
it, and its execution), shared by the CLI, the report and the experiments.

- :mod:`~shiftlab.runs.audit`: :class:`AuditRun`, one ``shiftlab audit``.
- :mod:`~shiftlab.runs.finetune`: :class:`FinetuneRun`, one ``shiftlab finetune``.
- :mod:`~shiftlab.runs.report_plan`: the report's plan of audits and its runner
  (:func:`~shiftlab.runs.report_plan.run_report_experiments`); :mod:`~shiftlab.runs.report_extras`: what only
  the report adds to its audits (the predictions table, the aliasing marks, the certificate, thumbnails).

The CLI modules are argument parsers over these. Importing this package loads neither torch nor the engine.
"""

from __future__ import annotations

from shiftlab.runs.audit import AuditRun, parse_fix
from shiftlab.runs.finetune import FinetuneRun

__all__ = ["AuditRun", "FinetuneRun", "parse_fix"]
