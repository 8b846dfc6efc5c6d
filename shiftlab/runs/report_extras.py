"""What only the report adds to its audits, each computed from an audit's result or the model, never a metric of
its own: the per-photo predictions table, the class names, the structural aliasing marks of the profiled layers,
the float64 certificate of the APS model, the probe that tells a classifier from a dense model (and refuses
anything else), and the photos' thumbnails.

:mod:`shiftlab.runs.report_plan` calls these while it runs the report's audits; nothing here plots or writes files.
"""

from __future__ import annotations

import torch

from shiftlab._progress import track
from shiftlab.errors import InputError

__all__ = ["marks_from_findings", "certify_circular", "class_names_of", "prediction_rows", "tracked_classes",
           "check_classifier", "probe_output", "thumbnails"]


def marks_from_findings(findings, names: list[str]) -> dict[str, list[str]]:
    """Map inspect's findings onto the profiled layers that contain them.

    Marks: ``"stride N"`` (subsampling without a low-pass filter), ``"'same' padding"`` (asymmetric 'same'
    padding, which moves the sampling grid) and ``"zero padding"``.
    """
    subsampling = ("strided-conv", "max-pool", "avg-pool", "other-subsampling")
    marks: dict[str, list[str]] = {}
    for finding in findings or []:
        if finding.kind in subsampling:
            label = f"stride {max(finding.stride)}"
        elif finding.kind == "same-padding-asymmetric":
            label = "'same' padding"
        elif finding.kind == "zero-padding":
            label = "zero padding"
        else:
            continue
        owner = next((n for n in names if finding.name == n or finding.name.startswith(n + ".")), None)
        if owner is not None and label not in marks.setdefault(owner, []):
            marks[owner].append(label)
    return marks


def certify_circular(model: torch.nn.Module, preprocessing, input_size, shifts: int = 8) -> dict:
    """Certify the model's invariance to circular shifts (:func:`shiftlab.fix.certify`, float64), through the
    model's normalisation, on one random input of ``input_size``."""
    from shiftlab.fix.certify import certify

    normalized = torch.nn.Sequential(_Normalize(preprocessing), model)
    return certify(normalized.eval(), tuple(input_size), shifts=shifts, n_inputs=1).to_dict()


class _Normalize(torch.nn.Module):
    def __init__(self, preprocessing):
        super().__init__()
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


def class_names_of(k: int, source) -> list[str]:
    """Names of a model's ``k`` classes: ImageNet's for 1000, the data's where they are ``k``, else ``class i``."""
    if k == 1000:
        from shiftlab.models import imagenet_class_names

        return list(imagenet_class_names())
    names = list(getattr(source, "class_names", None) or [])
    return names if len(names) == k else [f"class {i}" for i in range(k)]


def prediction_rows(result, names: list[str], class_names: list[str]) -> list[dict]:
    """The per-photo table: copy 0 of an audit recorded with predictions (the unrotated centre crop)."""
    preds = result.predictions()
    rows = []
    for i, index in enumerate(preds["index"]):
        top5 = preds["top5"][i]
        label = preds["label"][i]
        top1 = int(top5[0][0])
        rows.append({"index": int(index), "image": names[int(index)], "top1": top1, "top1_name": class_names[top1],
                     "probability": float(top5[0][1]), "label": int(label),
                     "label_name": class_names[label] if 0 <= label < len(class_names) else None,
                     "top5": [[int(c), class_names[int(c)], float(p)] for c, p in top5]})
    return rows


def tracked_classes(results: dict) -> set[int]:
    """Every class the audits' recorded predictions name (tracked, top-5 or top-1), for the page's class names."""
    out: set[int] = set()
    for r in results.values():
        preds = r.predictions()
        if preds is not None:
            out |= set(preds["tracked_class"])
            out |= {int(c) for row in preds["top5"] for c, _ in row}
            out |= {int(c) for row in preds["top1"] for c in row}
    return out


def probe_output(model: torch.nn.Module, input_size: tuple, spec_text: str) -> dict:
    """What the model returns, found before minutes of audits by one forward pass of one black image with the
    channels its first convolution takes: ``kind`` (``"logits"`` for (B, classes), ``"dense"`` for a
    (B, K, H, W) map), ``classes`` (K), ``shape`` (the output without the batch), ``output_key`` (the entry the
    report measures where the model returns a dict or tuple: ``"out"`` for torchvision's segmentation models, the
    audit's ``output_key``) and ``keys`` (the dict's keys, else None). Anything else raises InputError."""
    from collections.abc import Mapping

    from shiftlab.measure.inputs import first_conv_channels
    from shiftlab.models.loading import output_kind, select_output

    parameter = next(iter(model.parameters()), None)
    channels = first_conv_channels(model) or 3
    probe = torch.zeros(1, channels, *input_size, dtype=parameter.dtype if parameter is not None and
                        parameter.is_floating_point() else torch.float32,
                        device=parameter.device if parameter is not None else "cpu")
    try:
        with torch.inference_mode():
            raw = model(probe)
        output = select_output(raw)
        kind = output_kind(output)
    except InputError as exc:
        raise InputError(f"--model {spec_text}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's model; its failure is the message
        raise InputError(f"--model {spec_text}: its forward pass fails on a (1, {channels}, {input_size[0]}, "
                         f"{input_size[1]}) input ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    keys = [str(k) for k in raw.keys()] if isinstance(raw, Mapping) else None
    key = None
    if keys is not None:
        key = next(k for k in raw if raw[k] is output)
    elif isinstance(raw, (tuple, list)):
        key = next(i for i, v in enumerate(raw) if v is output)
    return {"kind": kind, "classes": int(output.shape[1]), "shape": [int(v) for v in output.shape[1:]],
            "output_key": key, "keys": keys}


def check_classifier(model: torch.nn.Module, input_size: tuple, spec_text: str) -> None:
    """Refuse, before minutes of audits, a model whose output is not (B, classes) logits, where a classifier's
    metrics (top-1 changes, agreement, accuracy) are wanted (:func:`probe_output`)."""
    found = probe_output(model, input_size, spec_text)
    if found["kind"] != "logits":
        raise InputError(f"--model {spec_text}: this needs a classifier with (B, classes) logits; this model "
                         f"returns a {tuple([1, *found['shape']])} map (audit dense outputs with shiftlab audit "
                         f"--metrics equivariance,massc)")


def thumbnails(data_spec, indices, size: tuple[int, int], interpolation: str = "bilinear",
               limit: int | None = None) -> dict[int, "object"]:
    """Small pictures of the model's centre crop of each image (uint8 (h, w, 3) arrays), for the report's table."""
    import numpy as np

    from shiftlab.data.images import resize_and_crop
    from shiftlab.data.sources import open_images

    source = open_images(data_spec, limit=limit)
    out = {}
    for i in track(indices, "thumbnails", total=len(indices), enabled=False):
        try:
            image = source.load(int(i))
        except InputError:
            continue
        crop = resize_and_crop(image[None].float(), size, resize_size=max(size), interpolation=interpolation)
        crop = crop.expand(-1, 3, -1, -1) if crop.shape[1] == 1 else crop[:, :3]  # grey images as RGB
        small = torch.nn.functional.interpolate(crop, size=(96, 96), mode="bilinear", antialias=True,
                                                align_corners=False).clamp(0, 1)
        out[int(i)] = (small[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return out
