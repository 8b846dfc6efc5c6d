"""Measure: the field's metrics with intervals, the audit of any model, and the aliasing map.

Submodules are imported on use (``shiftlab.measure.audit``, ``.metrics``, ``.protocols``, ``.assertions``,
``.inspect``), so importing this package is cheap.
"""
