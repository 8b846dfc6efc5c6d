"""The articles' claims measured on a real pretrained network and real photos: the report's audits.

Every number of ``shiftlab report`` comes from :func:`shiftlab.audit`, run as an :class:`~shiftlab.runs.AuditRun`
whose ``shiftlab audit ...`` command line reproduces it exactly. :func:`report_audits` lists them (a named
protocol each); :func:`run_report_experiments` runs them in named stages (:func:`plan_report`: the model, its
input size and the plan, checked before any work; :func:`convert_fixes`; the optional fine-tuning;
:func:`run_audits`; the results document) and collects their results, plus what only the report adds
(:mod:`shiftlab.runs.report_extras`): the per-photo predictions table (read from an audit's predictions), the
structural aliasing map (:func:`shiftlab.inspect`), the converted models' replacement counts and the float64
certificate of the APS model (:func:`shiftlab.certify`). Nothing here computes a metric of its own, plots or
writes files.

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
from dataclasses import asdict, dataclass, field, replace

import torch

from shiftlab.errors import InputError
from shiftlab.runs.audit import AuditRun, parse_fix
from shiftlab.runs.report_audit import ReportAudit
from shiftlab.runs.report_extras import (certify_circular, class_names_of, marks_from_findings, prediction_rows,
                                         probe_output, tracked_classes)

__all__ = ["Budget", "DEFAULT_BUDGET", "QUICK_BUDGET", "ReportAudit", "report_audits", "run_report_experiments",
           "plan_report", "ReportSetup", "convert_fixes", "run_audits", "FIX_TITLES"]

MARGIN = 32  # the random crops and the sweep run over 0..32 px
FIX_TITLES = {"blur": "--fix blur", "aps": "--fix aps", "aps:circular": "--fix aps:circular"}  # as typed


@dataclass(frozen=True)
class Budget:
    """How many views each audit uses (the report's run time is proportional to these)."""

    max_images: int | None = None  # None: every image of the data set
    sweep: int = 32  # diagonal offsets 0..sweep
    passes: int = 8  # random pairs per image for crop and circular consistency
    grid: int = 8  # worst case over a grid x grid window of 1-px shifts
    half_pixel: int = 2  # worst case over the half-pixel grid (i/2, j/2), 1 <= i, j <= half_pixel (Fourier shifts)
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
QUICK_BUDGET = Budget(max_images=2, passes=4, grid=3, half_pixel=1, rotations=(0.0, -90.0, -30.0, 30.0, 90.0, 180.0),
                      scales=(1.0, 0.5, 2.0), brightness=(1.0, 0.3, 2.0), fix_grid=2, certify_shifts=2,
                      certify_size=64)


def report_audits(model_spec: str, data_spec: str, input_size: int, budget: Budget = DEFAULT_BUDGET,
                  seed: int = 0, weights: str | None = None, image_size: int | None = None,
                  canvas: bool = True, finetuned: str | None = None, build: dict | None = None) -> list[ReportAudit]:
    """The report's audits, in the order they run (originals first, so fixes can reuse their predictions).

    ``finetuned``: the path of a fine-tuned fixed checkpoint, measured like the fixes (model ``"finetuned"``);
    ``build``: ``num_classes`` / ``in_chans`` the model is built with (timm's --num-classes / --in-chans).
    """
    base = AuditRun(model=model_spec, weights=weights, data=data_spec, seed=seed, limit=budget.max_images,
                    batch_size=budget.batch_size, image_size=image_size, **(build or {}))
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
        ReportAudit("subpixel", f"every half-pixel circular shift (i/2, j/2), 1 <= i, j <= {budget.half_pixel}",
                    "original", base.with_(transform=f"halfpixel:{budget.half_pixel}"), needs_predictions=True),
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


@dataclass(frozen=True)
class ReportSetup:
    """What the report measures, checked before any audit runs: the loaded model, its input size, the budget
    (without fixes for a model that is a fixed checkpoint already), the data and the plan of audits."""

    model: torch.nn.Module
    spec_text: str
    preprocessing: object
    input_size: tuple[int, int]
    explicit_size: int | None
    budget: Budget
    source: object
    plan: list[ReportAudit]
    settings: dict
    output: dict = field(default_factory=lambda: {"kind": "logits"})  # report_extras.probe_output


def run_report_experiments(model_spec="pretrained:efficientnet_lite0", data_spec=None, *, quick: bool = False,
                           seed: int = 0, progress: bool = False, device=None, budget: Budget | None = None,
                           weights: str | None = None, image_size: int | None = None, finetune_steps: int = 0,
                           finetune_fix: str = "aps", finetune_data=None, finetune_file: str = "finetuned.pt",
                           files: dict | None = None, build: dict | None = None) -> dict:
    """Run the report's audits on a model and a data set; return the JSON-serialisable results.

    ``model_spec`` is anything :func:`shiftlab.load_model` accepts (a module is measured as given; its
    commands then cannot be repeated from a shell); ``data_spec`` anything :func:`shiftlab.data.open_images`
    accepts (None: the bundled photos). The numbers depend only on the model, the data, the budget and
    ``seed``; timings are kept apart under ``"run"``.

    With ``finetune_steps`` > 0, ``finetune_fix`` is fine-tuned for that many steps on ``finetune_data`` (default:
    the report's images) and measured like the fixes; its fixed checkpoint (bytes) goes into ``files`` under the
    name of ``finetune_file``, the path its commands name (the CLI puts it in the report folder). ``build``:
    ``num_classes`` / ``in_chans`` to build a timm / torchvision model with (timm's --num-classes / --in-chans).
    """
    from shiftlab.fix.antialias import replacement_counts

    started = time.perf_counter()
    budget = budget or (QUICK_BUDGET if quick else DEFAULT_BUDGET)
    setup = plan_report(model_spec, "photos" if data_spec is None else str(data_spec), budget, quick=quick, seed=seed,
                        device=device, weights=weights, image_size=image_size, finetune_steps=finetune_steps,
                        finetune_fix=finetune_fix, finetune_file=finetune_file, build=build)
    timings: dict[str, float] = {}
    if setup.output["kind"] == "dense":  # a (B, K, H, W) map: the dense report (shiftlab.runs.dense_report)
        from shiftlab.runs.dense_report import dense_results

        results_by_key, audits = run_audits(setup.plan, {"original": setup.model}, device=device, progress=progress,
                                            timings=timings)
        return dense_results(setup, results_by_key, audits, started, timings)
    converted, replacements = convert_fixes(setup.model, setup.budget.fixes)
    finetuned = None
    if finetune_steps:
        finetuned = _finetune(setup.model, finetune_fix, finetune_steps,
                              setup.source if finetune_data is None else finetune_data, seed, device, progress,
                              setup.budget.batch_size, setup.budget.max_images if finetune_data is None else None)
        converted["finetuned"] = finetuned["model"]
        replacements["finetuned"] = replacement_counts(finetuned["replacements"])
        if files is not None:
            from shiftlab.fix.checkpoint import fixed_checkpoint_bytes

            files[str(finetune_file)] = fixed_checkpoint_bytes(finetuned["model"], finetune=finetuned["summary"])
        timings["finetune"] = finetuned["seconds"]
        finetuned.update(fix=finetune_fix, steps=finetune_steps, file=str(finetune_file),
                         same_data=finetune_data is None)
    results_by_key, audits = run_audits(setup.plan, converted, device=device, progress=progress, timings=timings)
    results = _results_document(setup, results_by_key, audits)
    profile = _layer_profile(setup, results_by_key["sweep.crop"])
    certificate = _certify_aps(setup, converted, timings)
    results["fixes"] = _fixes_entry(setup.budget, replacements, certificate, finetuned)
    results["layer_profile"] = profile
    results["run"] = {"seconds": round(time.perf_counter() - started, 1), "steps": timings,
                      "threads": torch.get_num_threads(),
                      "device": str(results_by_key["sweep.crop"].reproducibility["device"])}
    return results


def plan_report(model_spec, data_spec: str, budget: Budget, *, quick: bool = False, seed: int = 0, device=None,
                weights: str | None = None, image_size: int | None = None, finetune_steps: int = 0,
                finetune_fix: str = "aps", finetune_file: str = "finetuned.pt", build: dict | None = None) -> ReportSetup:
    """Open the data, load the model once, find its input size, check everything the report needs (a square
    input, a classifier or a dense model: :func:`~shiftlab.runs.report_extras.probe_output`, the fine-tuning
    options) and plan the audits, before any of them runs. A dense model gets the plan of
    :func:`shiftlab.runs.dense_report.dense_report_audits`."""
    from shiftlab.data.sources import open_images
    from shiftlab.fix.recipe import is_converted
    from shiftlab.measure.protocols import parse_protocol
    from shiftlab.models import preprocessing as get_preprocessing

    source = open_images(data_spec, limit=budget.max_images)
    if isinstance(model_spec, torch.nn.Module):
        model = model_spec.eval()
        spec_text = f"{type(model).__name__} (a Python module)"
    else:
        spec_text = str(model_spec)
        model, _ = AuditRun(model=spec_text, weights=weights, seed=seed, device=device, **(build or {})).load(device)
    pre = get_preprocessing(model)
    input_size = tuple(int(v) for v in (pre.input_size if image_size is None else (image_size, image_size)))
    if image_size is None and not pre.fixed_size:  # no declared size: the audit's rule (INPUT_SIZE_RULE)
        from shiftlab.measure.stride_probe import undeclared_size

        input_size = (undeclared_size(model, source)[0],) * 2
    if input_size[0] != input_size[1]:
        raise InputError(f"the report needs a square model input, got {input_size[0]}x{input_size[1]}")
    explicit_size = image_size if image_size is not None else (None if pre.fixed_size else input_size[0])
    output = probe_output(model, input_size, spec_text)
    settings = {"model": spec_text, "weights": weights, "data": data_spec, "quick": bool(quick), "seed": int(seed),
                "image_size": explicit_size, **(build or {}),
                "budget": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(budget).items()}}
    if output["kind"] == "dense":
        return _dense_setup(model, spec_text, pre, input_size, explicit_size, budget, source, settings, output,
                            finetune_steps=finetune_steps, weights=weights, seed=seed, build=build)
    canvas = parse_protocol(f"diagonal:{budget.sweep}:canvas").fits(input_size) is None
    if is_converted(model) and budget.fixes:
        budget = replace(budget, fixes=())  # a fixed checkpoint is measured as it is, not converted again
    if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int) or finetune_steps < 0:
        raise InputError(f"--finetune-steps must be an integer >= 0, got {finetune_steps!r}")
    if finetune_steps and is_converted(model):
        raise InputError("--finetune-steps fine-tunes a fix of the model; the model is a fixed checkpoint already "
                         "(use shiftlab finetune --model FILE)")
    if finetune_steps:
        parse_fix(finetune_fix)
    plan = report_audits(spec_text, data_spec, input_size[0], budget, seed, weights, explicit_size, canvas,
                         finetuned=finetune_file if finetune_steps else None, build=build)
    return ReportSetup(model, spec_text, pre, input_size, explicit_size, budget, source, plan, settings, output)


def _dense_setup(model, spec_text, pre, input_size, explicit_size, budget, source, settings, output, *,
                 finetune_steps, weights, seed, build=None) -> ReportSetup:
    """The setup of a dense model's report: its plan of audits, on the entry of a dict or tuple output the audit
    measures (the model wrapped as ``--output-key`` wraps it, so its layer names are the command's)."""
    from shiftlab.data.masks import MaskedImages
    from shiftlab.models.loading import SelectOutput
    from shiftlab.runs.dense_report import dense_crop_size, dense_report_audits

    if finetune_steps:
        raise InputError("--finetune-steps fine-tunes a classifier's fix; this model returns a "
                         f"{tuple([1, *output['shape']])} map (a dense report has no fine-tuning)")
    from shiftlab.measure.prepare import stage_layers

    layers = "stages" if stage_layers(model) else None  # a one-layer model has no stages to compare
    if output["output_key"] is not None:  # the stages of the wrapped model, by the names the wrapper gives them
        layers = ",".join(f"model.{name}" for name in stage_layers(model)) or None
        model = SelectOutput(model, output["output_key"]).eval()
    plan = dense_report_audits(spec_text, settings["data"], input_size[0], budget, seed, weights, explicit_size,
                               output_key=output["output_key"], masks=isinstance(source, MaskedImages),
                               crop_size=dense_crop_size(source, input_size[0]), layers=layers, build=build)
    return ReportSetup(model, spec_text, pre, input_size, explicit_size, budget, source, plan, settings, output)


def convert_fixes(model: torch.nn.Module, fixes) -> tuple[dict, dict]:
    """The models the audits measure (``"original"`` and one converted copy per fix, each made once) and the
    converted models' replacement counts."""
    from shiftlab.fix.antialias import antialias, replacement_counts

    converted: dict = {"original": model}
    replacements: dict = {}
    for fix in fixes:
        fixed, report = antialias(copy.deepcopy(model), **parse_fix(fix))
        fixed.shiftlab_source = {**(getattr(model, "shiftlab_source", None) or {}), "fix": fix}
        converted[fix] = fixed.eval()
        replacements[fix] = replacement_counts(report)
    return converted, replacements


def run_audits(plan: list[ReportAudit], converted: dict, *, device=None, progress: bool = False,
               timings: dict | None = None) -> tuple[dict, dict]:
    """Run each audit of the plan in order, on its model (``converted``); a fix's reference is its original's
    audit. Returns the results by key and each audit's entry of the report (title, model, command, result)."""
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
        audits[item.key] = {"title": item.title, "model": item.model, "command": run.command(),
                            "result": result.to_dict(), **item.extra}
        if timings is not None:
            timings[item.key] = round(time.perf_counter() - t0, 2)
    return results_by_key, audits


def _results_document(setup: ReportSetup, results_by_key: dict, audits: dict) -> dict:
    """The report's results: settings, model, data, warnings, audits, the per-photo predictions and class names."""
    from shiftlab._version import __version__

    first = results_by_key["sweep.crop"]
    classes = int(first.classes or 0)
    class_names = class_names_of(classes, setup.source)
    names = list(setup.source.names)
    predictions = prediction_rows(results_by_key["rotation"], names, class_names)
    warnings = []
    for entry in audits.values():
        for w in entry["result"]["warnings"]:
            if w not in warnings:
                warnings.append(w)
    audited = first.indices.tolist()
    model = setup.model
    return {
        "schema": "shiftlab-report/2",
        "shiftlab_version": __version__,
        "settings": setup.settings,
        "model": {"name": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters())),
                  "input_size": list(setup.input_size), "classes": classes,
                  "preprocessing": first.preprocessing},
        "data": {"n_images": len(audited), "indices": audited, "names": [names[i] for i in audited],
                 "skipped": [[p, r] for p, r in first.skipped], "labelled": sum(p["label"] >= 0 for p in predictions)},
        "warnings": warnings,
        "audits": audits,
        "predictions": predictions,
        "class_names": {str(c): class_names[c] for c in sorted(tracked_classes(results_by_key))},
    }


def _layer_profile(setup: ReportSetup, first) -> dict:
    """The profiled layers of the sweep, marked with the structural findings of :func:`shiftlab.inspect`."""
    from shiftlab.measure.inspect import inspect

    findings = inspect(setup.model, setup.input_size)
    stages = [n for n in first.layer_info]
    return {"layers": stages, "marks": marks_from_findings(findings, stages), "aliasing_map": findings.to_dict()}


def _certify_aps(setup: ReportSetup, converted: dict, timings: dict) -> dict | None:
    """The float64 certificate of the ``aps:circular`` model, with the command that repeats it (None without it)."""
    if "aps:circular" not in converted:
        return None
    budget = setup.budget
    size = setup.input_size if budget.certify_size is None else (budget.certify_size, budget.certify_size)
    t0 = time.perf_counter()
    certificate = certify_circular(converted["aps:circular"], setup.preprocessing, size, shifts=budget.certify_shifts)
    certificate["command"] = (f"shiftlab fix --model {setup.spec_text} --method aps --circular --certify {size[0]} "
                              f"{size[1]} --shifts {budget.certify_shifts} --out FILE")
    timings["certify"] = round(time.perf_counter() - t0, 2)
    return certificate


def _fixes_entry(budget: Budget, replacements: dict, certificate: dict | None, finetuned: dict | None) -> dict:
    """The report's ``fixes``: the measured models, their titles, replacement counts, certificate, fine-tuning."""
    titles = {"original": "original", **FIX_TITLES}
    if finetuned:
        titles["finetuned"] = f"{FIX_TITLES.get(finetuned['fix'], finetuned['fix'])}, fine-tuned " \
                              f"({finetuned['steps']} steps)"
    return {"models": ["original", *budget.fixes, *(["finetuned"] if finetuned else [])],
            "titles": titles, "replacements": replacements, "certify": certificate,
            "finetune": None if finetuned is None else {
                key: finetuned[key] for key in ("fix", "steps", "file", "data", "same_data", "views", "last",
                                                "seconds", "command")}}


def _finetune(model, fix: str, steps: int, data, seed: int, device, progress: bool, batch_size: int,
              limit: int | None) -> dict:
    """Fine-tune a converted copy of ``model`` (:func:`shiftlab.finetune`, default settings, 8 images a step)."""
    import shlex

    from shiftlab.fix.antialias import antialias
    from shiftlab.fix.finetune import finetune

    started = time.perf_counter()
    student, replacements = antialias(copy.deepcopy(model), **parse_fix(fix))
    batch = min(8, batch_size)
    result = finetune(model, data, student=student, steps=steps, batch_size=batch, seed=seed, device=device,
                      progress="fine-tuning" if progress else False)
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
