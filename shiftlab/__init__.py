"""shiftlab: measure, see and fix how convolutional networks respond to translation.

The package is laid out as a pipeline; lower layers never import higher ones::

    classic, equivariance, transforms, data   how inputs move; the articles' experiments
    layers                                    BlurPool2d, APSPool2d (function/Module pairs)
    models                                    loading models by name, the pretrained network
    measure (and shiftlab.metrics)            metrics with intervals, audit, inspect
    fix                                       antialias, certify
    experiments                               small training experiments
    report                                    plots and the HTML report
    cli                                       the ``shiftlab`` command

Public names are imported lazily, so ``import shiftlab`` is cheap.
"""

from __future__ import annotations

import importlib

from shiftlab._version import __version__
from shiftlab.errors import InputError, ShapeError, ShiftlabError

# public name -> module that defines it
_EXPORTS = {
    # the articles' experiments
    "convolve": "shiftlab.classic",
    "max_pool": "shiftlab.classic",
    "pool_iterations": "shiftlab.classic",
    "sobel_kernel": "shiftlab.classic",
    # the definitions as executable checks
    "equivariance_error": "shiftlab.equivariance",
    "invariance_error": "shiftlab.equivariance",
    "assert_equivariant": "shiftlab.equivariance",
    "assert_invariant": "shiftlab.equivariance",
    # measure
    "audit": "shiftlab.measure.audit",
    "AuditResult": "shiftlab.measure.audit",
    "assert_shift_equivariant": "shiftlab.measure.assertions",
    "assert_shift_invariant": "shiftlab.measure.assertions",
    "inspect": "shiftlab.measure.inspect",
    # fix
    "antialias": "shiftlab.fix.antialias",
    "certify": "shiftlab.fix.certify",
    "assert_certified": "shiftlab.fix.certify",
    "save_fixed": "shiftlab.fix.checkpoint",
    "load_fixed": "shiftlab.fix.checkpoint",
    "finetune": "shiftlab.fix.finetune",
    # layers
    "BlurPool2d": "shiftlab.layers",
    "MaxBlurPool2d": "shiftlab.layers",
    "APSPool2d": "shiftlab.layers",
    "blur_pool2d": "shiftlab.layers",
    "aps_pool2d": "shiftlab.layers",
    # models
    "load_model": "shiftlab.fix.checkpoint",  # shiftlab.models.load_model, plus fixed checkpoints
    "imagenet_class_names": "shiftlab.models",
}

_SUBMODULES = ("classic", "equivariance", "transforms", "data", "layers", "models", "metrics", "measure", "fix",
               "experiments", "report")

__all__ = ["__version__", "ShiftlabError", "ShapeError", "InputError", *_EXPORTS, *_SUBMODULES]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"shiftlab.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'shiftlab' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
