"""Experiments that test the articles' claims by training small networks on CPU.

- :mod:`~shiftlab.experiments.digits`: scikit-learn's real handwritten digits placed on a canvas.
- :mod:`~shiftlab.experiments.nets`: ``SmallCNN``, a small CNN family with downsampling/head/padding switches.
- :mod:`~shiftlab.experiments.train`: deterministic CPU training, augmentations, float64/float32 evaluation.
- :mod:`~shiftlab.experiments.protocols`: the experiments' own audit protocols (a diagonal sweep around the
  unshifted view, placements of an object on a canvas); every number comes from ``shiftlab.audit``.
- ``run_architecture``, ``run_unseen_positions``, ``run_augmentation``, ``run_rotation``, ``run_subsampling``,
  ``run_subpixel``, ``run_segmentation``, ``run_transformer``: the eight experiments (``shiftlab experiment NAME``);
  each returns a JSON-serialisable dict that records its seeds. ``parse_variant`` checks a variant name of ``--variants`` before any work.

Names are imported lazily, so importing this package does not load scikit-learn or the layers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "run_architecture": "shiftlab.experiments.architecture",
    "run_unseen_positions": "shiftlab.experiments.positions",
    "run_augmentation": "shiftlab.experiments.augmentation",
    "run_rotation": "shiftlab.experiments.rotation",
    "run_subsampling": "shiftlab.experiments.subsampling",
    "run_subpixel": "shiftlab.experiments.subpixel",
    "run_segmentation": "shiftlab.experiments.segmentation",
    "run_transformer": "shiftlab.experiments.transformer",
    "SmallCNN": "shiftlab.experiments.nets",
    "make_canvas_split": "shiftlab.experiments.digits",
    "parse_variant": "shiftlab.experiments._common",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shiftlab.experiments' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
