"""The articles' claims measured on a real pretrained network and real photos: the report's audits.

Every number of ``shiftlab report`` comes from :func:`shiftlab.audit`, run as an :class:`~shiftlab.runs.AuditRun`
whose ``shiftlab audit ...`` command line reproduces it exactly. :func:`report_audits` lists them (a named
protocol each); :func:`run_report_experiments` runs them and collects their results, plus what only the report
adds: the per-photo predictions table (read from an audit's predictions), the structural aliasing map
(:func:`shiftlab.inspect`), the converted models' replacement counts and the float64 certificate of the
APS model (:func:`shiftlab.certify`). Nothing here computes a metric of its own, plots or writes files.

The audits (S is the model's input size, 224 for the default network):

==========================  ==========================================  =========================================
key                         protocol                                    what it shows
==========================  ==========================================  =========================================
``sweep.crop``              ``diagonal:32:crop``, layers ``stages``     jaggedness (crop window moves 0..32 px),
                                                                        P(top-1 change), the layer profile
``sweep.canvas_black``      ``diagonal:32:canvas:black``                the same with the photo pasted whole
``sweep.canvas_inpaint``    ``diagonal:32:canvas:inpaint``              ... on an inpainted canvas
``consistency.crop``        ``crop:S:32:8``                             Zhang's crop consistency, accuracy
``consistency.circular``    ``circular:32:8``                           circular consistency
``worst_case``              ``grid:8:1:crop``                           worst case over an 8x8 grid, shift map
``layers.invariance``       ``diagonal:1:circular``, layers ``stages``  1-px change of the pooled features
``rotation`` / ``scale`` /  ``rotate:0,..``, ``scale:1,..``,            stability against rotation, zoom,
``brightness``              ``brightness:1,..``                         lighting
``FIX/consistency.crop``,   the same with ``--fix FIX`` (blur, aps,     the fixes without retraining, and their
``FIX/consistency.circular``  aps:circular), and ``diagonal:16:crop``,  agreement with the original on the same
``FIX/sweep16``, ...        ``grid:4:1:crop`` for every model           views
``finetuned/...``           the same on the fine-tuned model            the row 'after fine-tuning' (only with
                            (``--model FILE --reference SPEC``)         ``finetune_steps``)
==========================  ==========================================  =========================================

With ``finetune_steps`` > 0 one fix (``finetune_fix``) is also fine-tuned (:func:`shiftlab.finetune`, on views of
``finetune_data``, by default the report's own photos) and measured like the fixes; its model goes into
``files`` as a fixed checkpoint, for the report folder, where its commands find it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch

from shiftlab._progress import track
from shiftlab.errors import InputError

__all__ = ["Budget", "DEFAULT_BUDGET", "QUICK_BUDGET", "ReportAudit", "report_audits", "run_report_experiments",
           "marks_from_findings", "FIX_TITLES"]

MARGIN = 32  # the random crops and the sweep run over 0..32 px
FIX_TITLES = {"blur": "antialias(blur)", "aps": "antialias(aps)", "aps:circular": "antialias(aps, circular=True)"}


@dataclass(frozen=True)
class Budget:
    """How many views each audit uses (the report's run time is proportional to these)."""

    max_images: int | None = None  # None: every image of the data set
    sweep: int = 32  # diagonal offsets 0..sweep
    passes: int = 8  # random pairs per image for crop and circular consistency
    grid: int = 8  # worst case over a grid x grid window of 1-px shifts
    rotations: tuple[float, ...] = (0.0, -180.0, -150.0, -120.0, -90.0, -60.0, -30.0, 30.0, 60.0, 90.0, 120.0,
                                    150.0, 180.0)
    scales: tuple[float, ...] = (1.0, 0.5, 0.6, 0.7, 0.85, 1.2, 1.4, 1.7, 2.0)
    brightness: tuple[float, ...] = (1.0, 0.2, 0.35, 0.5, 0.7, 1.3, 1.6, 2.0)
    fixes: tuple[str, ...] = ("blur", "aps", "aps:circular")
    fix_sweep: int = 16  # the converted models' sweep runs over 0..16 px
    fix_grid: int = 4  # and their worst case over a 4x4 grid (the original is measured on the same)
    certify_shifts: int = 8  # circular shifts the APS certificate checks (always including (1, 1))
    certify_size: int | None = None  # input side of the certificate (None: the model's input size)
    batch_size: int = 32


DEFAULT_BUDGET = Budget()
QUICK_BUDGET = Budget(max_images=2, passes=4, grid=3, rotations=(0.0, -90.0, -30.0, 30.0, 90.0, 180.0),
                      scales=(1.0, 0.5, 2.0), brightness=(1.0, 0.3, 2.0), fix_grid=2, certify_shifts=2,
                      certify_size=64)


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


def report_audits(model_spec: str, data_spec: str, input_size: int, budget: Budget = DEFAULT_BUDGET,
                  seed: int = 0, weights: str | None = None, image_size: int | None = None,
                  canvas: bool = True, finetuned: str | None = None) -> list[ReportAudit]:
    """The report's audits, in the order they run (originals first, so fixes can reuse their predictions).

    ``finetuned``: the path of a fine-tuned fixed checkpoint, measured like the fixes (model ``"finetuned"``).
    """
    from shiftlab.runs import AuditRun

    base = AuditRun(model=model_spec, weights=weights, data=data_spec, seed=seed, limit=budget.max_images,
                    batch_size=budget.batch_size, image_size=image_size)
    S = int(input_size)

    def fmt(values):
        return ",".join(f"{v:g}" for v in values)

    out = [
        ReportAudit("sweep.crop", "the crop window moves diagonally, 1 px at a time", "original",
                    base.with_(transform=f"diagonal:{budget.sweep}:crop", layers="stages"), needs_predictions=True),
    ]
    if canvas:
        out += [ReportAudit("sweep.canvas_black", "the whole photo moves on a black canvas", "original",
                            base.with_(transform=f"diagonal:{budget.sweep}:canvas:black"), needs_predictions=True),
                ReportAudit("sweep.canvas_inpaint", "the whole photo moves on an inpainted canvas", "original",
                            base.with_(transform=f"diagonal:{budget.sweep}:canvas:inpaint"), needs_predictions=True)]
    out += [
        ReportAudit("consistency.crop", "two random crops (Zhang 2019)", "original",
                    base.with_(transform=f"crop:{S}:{MARGIN}:{budget.passes}"), needs_predictions=True),
        ReportAudit("consistency.circular", "two random circular shifts", "original",
                    base.with_(transform=f"circular:{MARGIN}:{budget.passes}"), needs_predictions=True),
        ReportAudit("worst_case", f"every shift of a {budget.grid}x{budget.grid} grid", "original",
                    base.with_(transform=f"grid:{budget.grid}:1:crop"), needs_predictions=True),
        ReportAudit("layers.invariance", "a 1-px circular shift, inside the network", "original",
                    base.with_(transform="diagonal:1:circular", layers="stages")),
        ReportAudit("rotation", "rotation about the centre", "original",
                    base.with_(transform=f"rotate:{fmt(budget.rotations)}"), needs_predictions=True,
                    extra={"unit": "angle (degrees)"}),
        ReportAudit("scale", "zoom about the centre", "original",
                    base.with_(transform=f"scale:{fmt(budget.scales)}"), needs_predictions=True,
                    extra={"unit": "zoom factor"}),
        ReportAudit("brightness", "brightness", "original",
                    base.with_(transform=f"brightness:{fmt(budget.brightness)}"), needs_predictions=True,
                    extra={"unit": "brightness factor"}),
    ]
    fix_protocols = {"consistency.crop": f"crop:{S}:{MARGIN}:{budget.passes}",
                     "consistency.circular": f"circular:{MARGIN}:{budget.passes}",
                     f"sweep{budget.fix_sweep}": f"diagonal:{budget.fix_sweep}:crop",
                     f"grid{budget.fix_grid}": f"grid:{budget.fix_grid}:1:crop"}
    for key, transform in fix_protocols.items():
        if not key.startswith("consistency"):
            out.append(ReportAudit(f"original/{key}", f"{transform}, for the comparison of the fixes", "original",
                                   base.with_(transform=transform), needs_predictions=True))
    for fix in budget.fixes:
        for key, transform in fix_protocols.items():
            reference = key if key.startswith("consistency") else f"original/{key}"
            out.append(ReportAudit(f"{fix}/{key}", f"{transform} on {FIX_TITLES.get(fix, fix)}", fix,
                                   base.with_(transform=transform, fix=fix), reference=reference))
    if finetuned is not None:
        from shiftlab.models.loading import is_registry_spec

        # a checkpoint alone never runs the code it names: a model from the user's file is named with its weights
        where = {"model": str(finetuned), "weights": None} if is_registry_spec(model_spec) else \
            {"model": model_spec, "weights": str(finetuned)}
        for key, transform in fix_protocols.items():
            reference = key if key.startswith("consistency") else f"original/{key}"
            out.append(ReportAudit(f"finetuned/{key}", f"{transform} on the fine-tuned model", "finetuned",
                                   base.with_(**where, reference=model_spec,
                                              transform=transform), reference=reference))
    return out


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


def _class_names(k: int, source) -> list[str]:
    if k == 1000:
        from shiftlab.models import imagenet_class_names

        return list(imagenet_class_names())
    names = list(getattr(source, "class_names", None) or [])
    return names if len(names) == k else [f"class {i}" for i in range(k)]


def _prediction_rows(result, names: list[str], class_names: list[str]) -> list[dict]:
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


def _check_classifier(model: torch.nn.Module, input_size: tuple, spec_text: str) -> None:
    """Refuse, before minutes of audits, a model whose output is not (B, classes) logits: the report's metrics
    (top-1 changes, agreement, accuracy) are a classifier's. One forward pass of one black image."""
    from shiftlab.models.loading import output_kind

    parameter = next(iter(model.parameters()), None)
    probe = torch.zeros(1, 3, *input_size, dtype=parameter.dtype if parameter is not None and
                        parameter.is_floating_point() else torch.float32,
                        device=parameter.device if parameter is not None else "cpu")
    try:
        with torch.inference_mode():
            output = model(probe)
        kind = output_kind(output)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model; its failure is the message
        raise InputError(f"--model {spec_text}: its forward pass fails on a (1, 3, {input_size[0]}, {input_size[1]}) "
                         f"input ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if kind != "logits":
        raise InputError(f"--model {spec_text}: the report needs a classifier with (B, classes) logits; this model "
                         f"returns a {tuple(output.shape)} map (audit dense outputs with shiftlab audit --metrics "
                         f"equivariance)")


def run_report_experiments(model_spec="pretrained:efficientnet_lite0", data_spec=None, *, quick: bool = False,
                           seed: int = 0, progress: bool = False, device=None, budget: Budget | None = None,
                           weights: str | None = None, image_size: int | None = None, finetune_steps: int = 0,
                           finetune_fix: str = "aps", finetune_data=None, finetune_file: str = "finetuned.pt",
                           files: dict | None = None) -> dict:
    """Run the report's audits on a model and a data set; return the JSON-serialisable results.

    ``model_spec`` is anything :func:`shiftlab.load_model` accepts (a module is measured as given; its
    commands then cannot be repeated from a shell); ``data_spec`` anything :func:`shiftlab.data.open_images`
    accepts (None: the bundled photos). The numbers depend only on the model, the data, the budget and
    ``seed``; timings are kept apart under ``"run"``.

    With ``finetune_steps`` > 0, ``finetune_fix`` is fine-tuned for that many steps on ``finetune_data`` (default:
    the report's images) and measured like the fixes; its fixed checkpoint (bytes) goes into ``files`` under the
    name of ``finetune_file``, the path its commands name (the CLI puts it in the report folder).
    """
    from shiftlab._version import __version__
    from shiftlab.data.sources import open_images
    from shiftlab.fix.antialias import antialias, replacement_counts
    from shiftlab.measure.inspect import inspect
    from shiftlab.measure.protocols import parse_protocol
    from shiftlab.models import preprocessing as get_preprocessing
    from shiftlab.runs import AuditRun

    started = time.perf_counter()
    budget = budget or (QUICK_BUDGET if quick else DEFAULT_BUDGET)
    data_spec = "photos" if data_spec is None else str(data_spec)
    timings: dict[str, float] = {}
    source = open_images(data_spec, limit=budget.max_images)

    # the model, once; converted copies, once each
    if isinstance(model_spec, torch.nn.Module):
        model = model_spec.eval()
        spec_text = f"{type(model).__name__} (a Python module)"
    else:
        spec_text = str(model_spec)
        model, _ = AuditRun(model=spec_text, weights=weights, seed=seed, device=device).load(device)
    pre = get_preprocessing(model)
    input_size = tuple(int(v) for v in (pre.input_size if image_size is None else (image_size, image_size)))
    if input_size[0] != input_size[1]:
        raise InputError(f"the report needs a square model input, got {input_size[0]}x{input_size[1]}")
    explicit_size = image_size if image_size is not None else (None if pre.fixed_size else input_size[0])
    _check_classifier(model, input_size, spec_text)
    canvas = parse_protocol(f"diagonal:{budget.sweep}:canvas").fits(input_size) is None
    from shiftlab.runs import parse_fix

    if getattr(model, "shiftlab_fix", None) is not None and budget.fixes:
        from dataclasses import replace

        budget = replace(budget, fixes=())  # a fixed checkpoint is measured as it is, not converted again
    if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int) or finetune_steps < 0:
        raise InputError(f"--finetune-steps must be an integer >= 0, got {finetune_steps!r}")
    if finetune_steps and getattr(model, "shiftlab_fix", None) is not None:
        raise InputError("--finetune-steps fine-tunes a fix of the model; the model is a fixed checkpoint already "
                         "(use shiftlab finetune --model FILE)")
    if finetune_steps:
        parse_fix(finetune_fix)
    plan = report_audits(spec_text, data_spec, input_size[0], budget, seed, weights, explicit_size, canvas,
                         finetuned=finetune_file if finetune_steps else None)
    converted: dict = {"original": model}
    replacements: dict = {}
    for fix in budget.fixes:
        fixed, report = antialias(copy.deepcopy(model), **parse_fix(fix))
        fixed.shiftlab_source = {**(getattr(model, "shiftlab_source", None) or {}), "fix": fix}
        converted[fix] = fixed.eval()
        replacements[fix] = replacement_counts(report)

    finetuned = None
    if finetune_steps:
        finetuned = _finetune(model, finetune_fix, finetune_steps, source if finetune_data is None else finetune_data,
                              seed, device, progress, budget.batch_size,
                              budget.max_images if finetune_data is None else None)
        converted["finetuned"] = finetuned["model"]
        replacements["finetuned"] = replacement_counts(finetuned["replacements"])
        if files is not None:
            from shiftlab.fix.checkpoint import fixed_checkpoint_bytes

            files[str(finetune_file)] = fixed_checkpoint_bytes(finetuned["model"], finetune=finetuned["summary"])
        timings["finetune"] = finetuned["seconds"]

    results_by_key: dict = {}
    audits: dict = {}
    total = len(plan)
    for number, item in enumerate(plan, 1):
        t0 = time.perf_counter()
        run = item.run.with_(predictions=item.needs_predictions, device=device)
        reference = results_by_key.get(item.reference) if item.reference else None
        label = f"[{number}/{total}] {item.key}: {run.transform}"
        result = run.execute(progress=label if progress else False, model=converted[item.model],
                             reference=reference)
        results_by_key[item.key] = result
        doc = result.to_dict()
        audits[item.key] = {"title": item.title, "model": item.model, "command": run.command(),
                            "result": doc, **item.extra}
        timings[item.key] = round(time.perf_counter() - t0, 2)

    first = results_by_key["sweep.crop"]
    classes = int(first.classes or 0)
    class_names = _class_names(classes, source)
    names = list(source.names)
    predictions = _prediction_rows(results_by_key["rotation"], names, class_names)

    findings = inspect(model, input_size)
    stages = [n for n in first.layer_info]
    profile = {"layers": stages, "marks": marks_from_findings(findings, stages), "aliasing_map": findings.to_dict()}

    certificate = None
    if "aps:circular" in converted:
        size = input_size if budget.certify_size is None else (budget.certify_size, budget.certify_size)
        t0 = time.perf_counter()
        certificate = certify_circular(converted["aps:circular"], pre, size, shifts=budget.certify_shifts)
        certificate["command"] = (f"shiftlab fix --model {spec_text} --method aps --circular --certify {size[0]} "
                                  f"{size[1]} --shifts {budget.certify_shifts} --out FILE")
        timings["certify"] = round(time.perf_counter() - t0, 2)

    warnings = []
    for entry in audits.values():
        for w in entry["result"]["warnings"]:
            if w not in warnings:
                warnings.append(w)
    audited = first.indices.tolist()
    results = {
        "schema": "shiftlab-report/2",
        "shiftlab_version": __version__,
        "settings": {"model": spec_text, "weights": weights, "data": data_spec, "quick": bool(quick), "seed": int(seed),
                     "image_size": explicit_size,
                     "budget": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(budget).items()}},
        "model": {"name": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters())),
                  "input_size": list(input_size), "classes": classes,
                  "preprocessing": first.preprocessing},
        "data": {"n_images": len(audited), "indices": audited, "names": [names[i] for i in audited],
                 "skipped": [[p, r] for p, r in first.skipped], "labelled": sum(p["label"] >= 0 for p in predictions)},
        "warnings": warnings,
        "audits": audits,
        "predictions": predictions,
        "class_names": {str(c): class_names[c] for c in sorted(_tracked_classes(results_by_key))},
        "fixes": {"models": ["original", *budget.fixes, *(["finetuned"] if finetuned else [])],
                  "titles": {"original": "original", **FIX_TITLES,
                             **({"finetuned": f"{FIX_TITLES.get(finetune_fix, finetune_fix)}, fine-tuned "
                                              f"({finetune_steps} steps)"} if finetuned else {})},
                  "replacements": replacements, "certify": certificate,
                  "finetune": None if finetuned is None else {
                      "fix": finetune_fix, "steps": finetune_steps, "file": str(finetune_file),
                      "data": finetuned["data"], "same_data": finetune_data is None,
                      "views": finetuned["views"], "last": finetuned["last"], "seconds": finetuned["seconds"],
                      "command": finetuned["command"]}},
        "layer_profile": profile,
    }
    results["run"] = {"seconds": round(time.perf_counter() - started, 1), "steps": timings,
                      "threads": torch.get_num_threads(), "device": str(first.reproducibility["device"])}
    return results


def _finetune(model, fix: str, steps: int, data, seed: int, device, progress: bool, batch_size: int,
              limit: int | None) -> dict:
    """Fine-tune a converted copy of ``model`` (:func:`shiftlab.finetune`, default settings, 8 images a step)."""
    from shiftlab.fix.antialias import antialias
    from shiftlab.fix.finetune import finetune
    from shiftlab.runs import parse_fix

    started = time.perf_counter()
    student, replacements = antialias(copy.deepcopy(model), **parse_fix(fix))
    batch = min(8, batch_size)
    result = finetune(model, data, student=student, steps=steps, batch_size=batch, seed=seed, device=device,
                      progress="fine-tuning" if progress else False)
    import shlex

    source = getattr(model, "shiftlab_source", None) or {}
    data_text = getattr(data, "description", None) or str(data)
    command = ["shiftlab", "finetune", "--model", source.get("spec") or "SPEC"]
    if source.get("weights"):
        command += ["--weights", str(source["weights"])]
    command += ["--fix", fix, "--data", data_text]
    if limit is not None:
        command += ["--limit", str(limit)]
    command += ["--steps", str(steps), "--batch-size", str(batch), "--seed", str(seed), "--out", "FILE"]
    return {"model": result.model, "replacements": replacements, "summary": result.summary(), "data": data_text,
            "views": result.log["views"],
            "last": result.log["final"], "seconds": round(time.perf_counter() - started, 2),
            "command": shlex.join(command)}


def _tracked_classes(results: dict) -> set[int]:
    out: set[int] = set()
    for r in results.values():
        preds = r.predictions()
        if preds is not None:
            out |= set(preds["tracked_class"])
            out |= {int(c) for row in preds["top5"] for c, _ in row}
            out |= {int(c) for row in preds["top1"] for c in row}
    return out


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
        small = torch.nn.functional.interpolate(crop, size=(96, 96), mode="bilinear", antialias=True,
                                                align_corners=False).clamp(0, 1)
        out[int(i)] = (small[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return out
