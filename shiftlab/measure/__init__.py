"""Measure: the field's metrics with intervals, the audit of any model, and the aliasing map."""
