"""The report of a dense model (segmentation, image-to-image: a (B, K, H, W) output): its plan of audits and its
results document.

A model whose probe pass (:func:`shiftlab.runs.report_extras.probe_output`) returns a map gets these audits
instead of the classifier's (:func:`shiftlab.runs.report_plan.report_audits`); every number is still a
:func:`shiftlab.audit` result with the ``shiftlab audit`` command that reproduces it (S is the model's input size,
M = min(32, max(2, S // 4)) the shift range):

=================  ==============================================  ============================================
key                protocol, metrics                               what it shows
=================  ==============================================  ============================================
``dense.sweep``    ``diagonal:G:circular``, ``equivariance``,      the map under 1-px diagonal rolls 0..G (G the
                   ``massc`` (+ ``miou`` with masks), layers       budget's grid); the maps figure (copy 0 is the
                   ``stages``, ``--maps N``                        unshifted view, the first pair a (1, 1) roll),
                                                                   the equivariance of each stage
``dense.circular`` ``circular:M:P``, ``equivariance``, ``massc``,  two random circular shifts: every pixel is
                   ``--maps N``                                    compared (mASSC, circular)
``dense.crop``     ``crop:S:M:P``, ``massc``, ``--maps N``         two random crops: only the overlap is compared
                                                                   (mASSC, crop)
=================  ==============================================  ============================================

A model that returns a dict (torchvision's segmentation models: ``{"out": ..., "aux": ...}``) or a tuple is
measured on the entry the audit picks (``"out"``); the commands name it (``--output-key out``) and the results
say so (``model.output``). Nothing here computes a metric, plots or writes files.
"""

from __future__ import annotations

import time

import torch

from shiftlab.runs.audit import AuditRun
from shiftlab.runs.report_audit import ReportAudit

__all__ = ["DENSE_KIND", "DENSE_MAPS", "dense_shift_range", "dense_report_audits", "dense_crop_size", "class_names_for",
           "dense_results"]

#: the value of a dense report's top-level ``kind``
DENSE_KIND = "dense"
#: images whose maps the report keeps (the quick report: at most its number of images)
DENSE_MAPS = 4


def dense_shift_range(input_size: int) -> int:
    """M, the largest shift of the random pairs: 32 px as for classifiers, at most a quarter of a small input."""
    return min(32, max(2, int(input_size) // 4))


def dense_report_audits(model_spec: str, data_spec: str, input_size: int, budget, seed: int = 0,
                        weights: str | None = None, image_size: int | None = None, output_key=None,
                        masks: bool = False, crop_size: int | None = None, layers: str | None = "stages",
                        build: dict | None = None) -> list:
    """The dense report's audits, in the order they run (:class:`~shiftlab.runs.report_plan.ReportAudit`).

    ``masks``: the data has per-pixel classes (adds ``miou``); ``crop_size``: the side of the crops (default S;
    smaller for images held in memory that are not resized; under 8 px leaves the crop audit out); ``layers``: the
    sweep's ``--layers`` (``stages``; the wrapped model's stages by name where a dict or tuple output is wrapped);
    ``build``: ``num_classes`` / ``in_chans`` the model is built with (timm's --num-classes / --in-chans).
    """

    maps = DENSE_MAPS if budget.max_images is None else max(1, min(DENSE_MAPS, budget.max_images))
    base = AuditRun(model=model_spec, weights=weights, data=data_spec, seed=seed, limit=budget.max_images,
                    batch_size=budget.batch_size, image_size=image_size, **(build or {}),
                    output_key=None if output_key is None else str(output_key), maps=maps)
    S, M = int(input_size), dense_shift_range(input_size)
    extra = ("miou",) if masks else ()
    out = [
        ReportAudit("dense.sweep", "the photo rolls diagonally, 1 px at a time", "original",
                    base.with_(transform=f"diagonal:{budget.grid}:circular", layers=layers,
                               metrics=("equivariance", "massc", *extra))),
        ReportAudit("dense.circular", "two random circular shifts (every pixel compared)", "original",
                    base.with_(transform=f"circular:{M}:{budget.passes}", metrics=("equivariance", "massc"))),
    ]
    size = S if crop_size is None else int(crop_size)
    if size >= 8:
        out.append(ReportAudit("dense.crop", "two random crops (only their overlap compared)", "original",
                               base.with_(transform=f"crop:{size}:{M}:{budget.passes}", metrics=("massc",))))
    return out


def dense_crop_size(source, input_size: int) -> int:
    """The crops' side: S, except for images held in memory (not resized: an npz, ``digit-masks``) smaller than
    S + M, whose crops are their own side less M."""
    from shiftlab.data.masks import TensorMasks
    from shiftlab.data.sources import TensorImages

    S, M = int(input_size), dense_shift_range(input_size)
    if isinstance(source, (TensorImages, TensorMasks)) and getattr(source, "uniform", False) and len(source):
        side = min(int(v) for v in source.load(0).shape[-2:])
        if side < S + M:
            return side - M
    return S


def class_names_for(classes: int, source) -> list[str]:
    """The names of the map's K classes: the data's where it has K, else ``class i``."""
    names = list(getattr(source, "class_names", None) or [])
    return [str(n) for n in names] if len(names) == classes else [f"class {i}" for i in range(classes)]


def dense_results(setup, results_by_key: dict, audits: dict, started: float, timings: dict) -> dict:
    """The dense report's results document (docs/report-json.md, "Dense reports")."""
    from shiftlab._version import __version__
    from shiftlab.data.masks import MaskedImages

    first = results_by_key["dense.sweep"]
    source = setup.source
    names = list(source.names)
    audited = first.indices.tolist()
    output = dict(setup.output)
    warnings: list[str] = []
    for entry in audits.values():
        for w in entry["result"]["warnings"]:
            if w not in warnings:
                warnings.append(w)
    masked = isinstance(source, MaskedImages)
    model = getattr(setup.model, "model", setup.model) if output.get("output_key") is not None else setup.model
    classes = int(output["classes"])
    return {
        "schema": "shiftlab-report/2",
        "kind": DENSE_KIND,
        "shiftlab_version": __version__,
        "settings": setup.settings,
        "model": {"name": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters())),
                  "input_size": list(setup.input_size), "classes": classes, "output": output,
                  "preprocessing": first.preprocessing},
        "data": {"n_images": len(audited), "indices": audited, "names": [names[i] for i in audited],
                 "skipped": [[p, r] for p, r in first.skipped], "masks": masked,
                 "ignore_index": int(source.ignore_index) if masked else None},
        "warnings": warnings,
        "audits": audits,
        "class_names": {str(c): n for c, n in enumerate(class_names_for(classes, source))},
        "run": {"seconds": round(time.perf_counter() - started, 1), "steps": timings,
                "threads": torch.get_num_threads(), "device": str(first.reproducibility["device"])},
    }
