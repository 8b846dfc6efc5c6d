"""Fine-tuning converted models, measured: real digits (several seeds) and the pretrained EfficientNet-Lite0.

Digits (:func:`run_finetune_digits`). Teachers are ``SmallCNN`` networks trained here on scikit-learn's real
handwritten digits placed anywhere on a 32x32 black canvas (:mod:`shiftlab.experiments.digits`): one that
subsamples by max pooling, one by strided convolutions, both with batch norm and global average pooling. Each
is converted by :func:`shiftlab.antialias` (``blur`` with Zhang's placement, ``blur`` with the blur before the
strided layer, ``aps``, ``aps`` with circular padding; every stride converted, the stem too) and fine-tuned by
:func:`shiftlab.finetune` on the training digits, without their labels. Every number comes from
:func:`shiftlab.audit` on the held-out digits:

- ``crop`` audit, ``crop:32:8`` on the canvases padded with 4 black pixels: two 32x32 windows per digit, so
  the digit moves by -3..4 px on its black canvas and may leave it at the border (a camera pan): accuracy,
  consistency, and agreement with the teacher's top-1 on the same views (``reference=teacher``);
- ``circular`` audit, ``circular:16`` in float64: two random circular shifts of the canvas (the whole period):
  circular consistency, exactly 1 for an exactly invariant network;
- the float64 certificate (:func:`shiftlab.certify`) of the circular models: the largest relative change of
  the logits under every shift of one period.

EfficientNet-Lite0 (:func:`run_finetune_photos`): the pretrained network is the teacher; its converted copies
are fine-tuned on random crops of real photos that ship with scikit-image and matplotlib but are not among the
bundled photos, and measured on the 9 bundled photos, which the fine-tuning never saw.

Both return JSON-serialisable dicts with their settings and seeds; ``python -m shiftlab.experiments.finetune``
runs them (``docs/finetune.md``).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from shiftlab.errors import InputError

__all__ = ["TEACHERS", "DIGIT_FIXES", "run_finetune_digits", "run_finetune_photos", "photo_training_list",
           "digits_targets"]

TEACHERS = ("maxpool-gap-zeros", "stride-gap-zeros")
#: the conversions of the digits experiment: antialias arguments (every stride converted, the stem too)
DIGIT_FIXES = {
    "blur": {"method": "blur", "keep_stem": False},
    "blur:before": {"method": "blur", "placement": "before", "keep_stem": False},
    "aps": {"method": "aps"},
    "aps:circular": {"method": "aps", "circular": True},
}
PAD = 4  # black pixels around each held-out canvas for the crop audit (the digit moves by -3..4 px)
CROP = f"crop:32:{2 * PAD}"
CIRCULAR = "circular:16"
#: real photos on disk that are not among the bundled photos (the EfficientNet run trains on them);
#: motorcycle_right is left out: it is the other half of the bundled motorcycle_left's stereo pair
_SKIMAGE_TRAINING = ("brick.png", "grass.png", "gravel.png", "coins.png", "moon.png", "hubble_deep_field.jpg",
                     "retina.jpg", "clock_motion.png", "text.png", "page.png", "cell.png", "microaneurysms.png")


def _metrics(result, names) -> dict:
    return {name: result.metrics[name].to_dict() for name in names if name in result.metrics}


def evaluate_digits(model, teacher, images: torch.Tensor, labels: torch.Tensor, circular: bool,
                    batch_size: int = 256) -> dict:
    """The audits of one digits model on held-out canvases (see the module docstring)."""
    from shiftlab.fix.certify import certify
    from shiftlab.measure.audit import audit

    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    crop = audit(model, (padded, labels), transform=CROP, normalize=False, reference=teacher, batch_size=batch_size)
    exact = copy.deepcopy(model).double()
    circ = audit(exact, (images.double(), labels), transform=CIRCULAR, normalize=False, batch_size=batch_size)
    out = {"crop": _metrics(crop, ("accuracy", "consistency", "reference_agreement")),
           "circular": _metrics(circ, ("consistency", "accuracy"))}
    if circular:
        cert = certify(model, tuple(images.shape[-2:]), shifts="period", n_inputs=2)
        out["certificate"] = {"max_rel_deviation": cert.max_rel_deviation, "shifts": cert.shifts_checked,
                              "passed": bool(cert.passed), "dtype": str(cert.dtype)}
    return out


def run_finetune_digits(seeds: int = 3, steps: int = 300, teachers=TEACHERS, fixes=tuple(DIGIT_FIXES),
                        width: int = 16, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                        temperature: float = 2.0, consistency: float = 0.0, labels: float = 0.0,
                        batch_norm: str = "frozen", train_limit: int | None = None, test_limit: int | None = None,
                        progress: bool = False) -> dict:
    """Teachers trained on digits, converted, fine-tuned without labels, measured before and after.

    Returns ``{"kind", "parameters", "runs": [...], "summary": {...}}``: one run per (seed, teacher, fix) with
    the teacher's, the converted model's and the fine-tuned model's audits, the fine-tuning log's last entry,
    and the summary over seeds (mean, min, max of each figure and of the changes).
    """
    from shiftlab.experiments._common import Timer, environment, seed_list, train_variant
    from shiftlab.experiments.digits import make_canvas_split
    from shiftlab.experiments.train import TrainConfig
    from shiftlab.fix.antialias import antialias
    from shiftlab.fix.finetune import FinetuneConfig, finetune

    unknown = [f for f in fixes if f not in DIGIT_FIXES]
    if unknown:
        raise InputError(f"unknown fixes {unknown}; choose from {list(DIGIT_FIXES)}")
    config = FinetuneConfig(steps=steps, batch_size=batch_size, lr=lr, temperature=temperature,
                            consistency=consistency, labels=labels, views=CROP, batch_norm=batch_norm)
    runs = []
    with Timer() as total:
        for seed in seed_list(seeds):
            split = make_canvas_split(seed=seed, train_limit=train_limit, test_limit=test_limit)
            train_images = F.pad(split.train.images, (PAD, PAD, PAD, PAD))
            for variant in teachers:
                teacher, record = train_variant(variant, split, width, TrainConfig(epochs=epochs), seed,
                                                progress=progress)
                teacher_eval = evaluate_digits(teacher, teacher, split.test.images, split.test.labels, False)
                for fix in fixes:
                    kwargs = DIGIT_FIXES[fix]
                    student, _ = antialias(teacher, **kwargs)
                    circular = bool(kwargs.get("circular"))
                    before = evaluate_digits(student, teacher, split.test.images, split.test.labels, circular)
                    with Timer() as timer:
                        result = finetune(teacher, (train_images, split.train.labels), student=student,
                                          config=replace(config, seed=seed), normalize=False, log_every=50,
                                          progress=f"{variant} {fix} seed {seed}" if progress else False)
                    after = evaluate_digits(result.model, teacher, split.test.images, split.test.labels, circular)
                    runs.append({"seed": seed, "teacher": variant, "fix": fix, "antialias": kwargs,
                                 "teacher_training": {"epochs": epochs, "final_loss": record["losses"][-1]},
                                 "teacher_metrics": teacher_eval, "before": before, "after": after,
                                 "log": {"entries": result.log["entries"], "seconds": round(timer.seconds, 1)}})
    return {"kind": "shiftlab.finetune-digits", "parameters": {
        "seeds": seed_list(seeds), "teachers": list(teachers), "fixes": {f: DIGIT_FIXES[f] for f in fixes},
        "width": width, "teacher_epochs": epochs, "finetune": config.to_dict(), "train_limit": train_limit,
        "test_limit": test_limit, "crop_audit": f"{CROP} on the held-out canvases padded by {PAD} black pixels",
        "circular_audit": f"{CIRCULAR}, float64", "labels_used": labels > 0},
        "runs": runs, "summary": summarise_digits(runs), "environment": environment(),
        "run_seconds": round(total.seconds, 1)}


FIGURES = (("accuracy", "crop", "accuracy"), ("consistency", "crop", "consistency"),
           ("agreement", "crop", "reference_agreement"), ("circular_consistency", "circular", "consistency"))


def _figure(evaluation: dict, audit_key: str, metric: str) -> float | None:
    entry = (evaluation.get(audit_key) or {}).get(metric)
    return None if entry is None else float(entry["value"])


def digits_targets(run: dict) -> dict:
    """The issue's targets for one run: accuracy within 1 point of the teacher's (or above), consistency above
    the teacher's, and for a circular model exact circular invariance after fine-tuning."""
    teacher, after = run["teacher_metrics"], run["after"]
    out = {"accuracy_within_1_point": _figure(after, "crop", "accuracy") >= _figure(teacher, "crop", "accuracy") - 0.01,
           "consistency_above_teacher": _figure(after, "crop", "consistency") > _figure(teacher, "crop", "consistency")}
    if "certificate" in after:
        out["exactly_invariant"] = (_figure(after, "circular", "consistency") == 1.0
                                    and bool(after["certificate"]["passed"]))
    return out


def summarise_digits(runs: list[dict]) -> dict:
    """Per (teacher, fix): mean, min and max over seeds of each figure before and after, and of the teacher's."""
    groups: dict = {}
    for run in runs:
        groups.setdefault(f"{run['teacher']}/{run['fix']}", []).append(run)
    out = {}
    for key, members in groups.items():
        entry = {}
        for name, audit_key, metric in FIGURES:
            for stage in ("teacher_metrics", "before", "after"):
                values = [_figure(r[stage], audit_key, metric) for r in members]
                values = [v for v in values if v is not None]
                if values:
                    entry[f"{stage.replace('_metrics', '')}.{name}"] = {
                        "mean": sum(values) / len(values), "min": min(values), "max": max(values), "values": values}
        targets = [digits_targets(r) for r in members]
        entry["targets"] = {k: all(t.get(k, True) for t in targets) for k in targets[0]}
        certs = [r["after"]["certificate"]["max_rel_deviation"] for r in members if "certificate" in r["after"]]
        if certs:
            entry["after.max_rel_deviation"] = max(certs)
        out[key] = entry
    return out


# ------------------------------------------------------------------------------------------------ photos


def photo_training_list(folder) -> Path:
    """Write ``folder/train.txt`` listing the real photos on disk that are not bundled (scikit-image's other
    photographs and matplotlib's grace_hopper.jpg); return its path (a data spec for ``--data``)."""
    import importlib.util

    paths = []
    for package, sub, names in (("skimage", "data", _SKIMAGE_TRAINING),
                                ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",))):
        spec = importlib.util.find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for name in names:
                path = Path(root, sub, name)
                if path.is_file():
                    paths.append(path)
    if not paths:
        raise InputError("none of the training photos (scikit-image, matplotlib sample data) are installed")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "train.txt"
    listing.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    return listing


PHOTO_AUDITS = {"crop": "crop:224:32:8", "sweep": "diagonal:8"}


def run_finetune_photos(model_spec: str = "pretrained:efficientnet_lite0", fixes=("blur", "aps", "aps:circular"),
                        steps: int = 150, batch_size: int = 8, lr: float = 1e-4, train_data=None,
                        eval_data: str = "photos", folder=".", seed: int = 0, progress: bool = False) -> dict:
    """The pretrained network's fixes before and after fine-tuning on photos it is then not measured on.

    ``train_data`` (default: :func:`photo_training_list`) is fine-tuned on; ``eval_data`` (default the 9 bundled
    photos) is measured with ``crop:224:32:8`` (consistency, accuracy, agreement with the original) and
    ``diagonal:8`` (P(top-1 change)), every number from :func:`shiftlab.audit`, each with the ``shiftlab audit``
    command that repeats it (the fine-tuned models are saved in ``folder`` as fixed checkpoints).
    """
    from shiftlab.experiments._common import Timer, environment
    from shiftlab.fix.antialias import antialias
    from shiftlab.fix.finetune import FinetuneConfig, finetune
    from shiftlab.fix.recipe import parse_fix
    from shiftlab.models.fixed_checkpoint import load_any_model
    from shiftlab.runs import AuditRun

    teacher = load_any_model(model_spec)
    train_data = str(photo_training_list(folder) if train_data is None else train_data)
    config = FinetuneConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed)

    def evaluate(base, model, reference) -> dict:
        out = {}
        for key, transform in PHOTO_AUDITS.items():
            run = base.with_(transform=transform)
            result = run.execute(model=model, reference=reference)
            out[key] = {"command": run.command(), "metrics": {k: v.to_dict() for k, v in result.metrics.items()}}
        return out

    base = AuditRun(model=model_spec, data=eval_data, seed=seed)
    results = {"original": evaluate(base, teacher, None)}
    logs = {}
    with Timer() as total:
        for fix in fixes:
            student, _ = antialias(teacher, **parse_fix(fix))
            results[f"{fix}/before"] = evaluate(base.with_(fix=fix), student, teacher)
            with Timer() as timer:
                tuned = finetune(teacher, train_data, student=student, config=config, log_every=10,
                                 progress=f"{fix}" if progress else False)
            path = Path(folder) / f"{fix.replace(':', '_')}_finetuned.pt"
            tuned.save(path, force=True)
            results[f"{fix}/after"] = evaluate(base.with_(model=str(path), reference=model_spec), tuned.model,
                                               teacher)
            logs[fix] = {"entries": tuned.log["entries"], "seconds": round(timer.seconds, 1),
                         "images": tuned.log["images"], "views": tuned.log["views"], "file": str(path)}
    return {"kind": "shiftlab.finetune-photos", "parameters": {
        "model": model_spec, "train_data": train_data, "eval_data": eval_data, "fixes": list(fixes),
        "finetune": config.to_dict(), "audits": dict(PHOTO_AUDITS), "seed": seed},
        "results": results, "logs": logs, "environment": environment(), "run_seconds": round(total.seconds, 1)}


def main(argv=None) -> int:
    """``python -m shiftlab.experiments.finetune {digits,photos} --out FILE [...]``: the runs of docs/finetune.md."""
    import argparse

    from shiftlab._io import write_json

    parser = argparse.ArgumentParser(prog="python -m shiftlab.experiments.finetune", description=main.__doc__)
    parser.add_argument("which", choices=("digits", "photos"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-norm", default="frozen")
    parser.add_argument("--consistency", type=float, default=0.0)
    parser.add_argument("--fixes", default=None, help="comma-separated")
    parser.add_argument("--folder", default=".", help="photos: where the training list and the models go")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.which == "digits":
        fixes = tuple(args.fixes.split(",")) if args.fixes else tuple(DIGIT_FIXES)
        result = run_finetune_digits(seeds=args.seeds, steps=args.steps or 300, fixes=fixes,
                                     batch_norm=args.batch_norm, consistency=args.consistency, progress=args.progress)
    else:
        fixes = tuple(args.fixes.split(",")) if args.fixes else ("blur", "aps", "aps:circular")
        result = run_finetune_photos(steps=args.steps or 150, fixes=fixes, folder=args.folder, progress=args.progress)
    write_json(args.out, result, force=True)
    return 0


if __name__ == "__main__":
    from shiftlab._runtime import tune_allocator

    tune_allocator()
    raise SystemExit(main())

