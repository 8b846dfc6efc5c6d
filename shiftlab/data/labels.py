"""Checking the integer labels a data file stores: class indices in range, or a one-line refusal."""

from __future__ import annotations

import numpy as np

from shiftlab.errors import InputError, ShapeError

# the largest class index a label may hold (labels are int64)
_INT64_MAX = int(np.iinfo(np.int64).max)


def _integer_labels(labels, n: int, what: str, num_classes: int | None = None, unlabelled: bool = True) -> np.ndarray:
    """``labels`` as (n,) int64 class indices, every one in range, or a one-line error naming the first bad one.

    A label must lie in ``[0, num_classes)`` (``num_classes``: the number of class names, when known) and fit
    in an int64; ``-1`` marks an unlabelled image where ``unlabelled`` (a ``.npz``), and is refused elsewhere
    (CIFAR-10 labels every image). Out-of-range labels are refused, never wrapped, clipped or counted as misses.
    """
    if labels is None:
        return np.full(n, -1, np.int64)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ShapeError(f"{what} must be a 1-d array of {n} labels, got shape {labels.shape}")
    if labels.dtype == object:  # a list of Python ints (a pickled CIFAR batch): any size
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in labels):
            raise ShapeError(f"{what} must be integers")
    elif labels.size and not np.issubdtype(labels.dtype, np.integer):
        numeric = np.issubdtype(labels.dtype, np.floating) or labels.dtype == np.bool_
        if not numeric or not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ShapeError(f"{what} must be integers, got dtype {labels.dtype}")
    low = -1 if unlabelled else 0
    high = _INT64_MAX if num_classes is None else num_classes - 1
    values = labels.tolist()  # Python numbers: compared exactly, whatever the dtype (uint64, float, object)
    bad = next((i for i, v in enumerate(values) if not low <= v <= high), None)
    if bad is not None:
        v = values[bad]
        shown = f"{int(v)}" if abs(v) < 1e30 else f"{v:.3g}"
        allowed = (f"the {num_classes} classes are 0-{num_classes - 1}" if num_classes is not None
                   else f"a class index is 0-{_INT64_MAX}")
        extra = "; -1 marks an unlabelled image" if unlabelled else ""
        raise InputError(f"{what}: label {shown} (image {bad}) is out of range: {allowed}{extra}")
    return np.asarray(values, dtype=np.int64).reshape(n)
