"""One ``shiftlab report`` as data: its options, the checks before any work, and the report it writes.

:class:`ReportJob` runs the report's audits (:func:`shiftlab.runs.report_plan.run_report_experiments`), adds the
articles' demonstrations and the training experiments (:mod:`shiftlab.report.inputs`) and the photos' thumbnails,
and writes the folder (:func:`shiftlab.report.staging.write_report`). The CLI parses its flags into one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shiftlab.errors import InputError

__all__ = ["ReportJob", "DEFAULT_MODEL", "DEFAULT_OUT"]

DEFAULT_MODEL = "pretrained:efficientnet_lite0"
DEFAULT_OUT = "shiftlab-report"


@dataclass(frozen=True)
class CheckedReport:
    """What :meth:`ReportJob.check` found: the report folder (claimed) and the training experiments' results."""

    out: Path
    training: dict | None


@dataclass(frozen=True)
class ReportJob:
    """The options of one report (CLI flags, without the dashes); defaults are the CLI's defaults."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    num_classes: int | None = None  # timm's --num-classes / --in-chans: how a timm / torchvision --model is built
    in_chans: int | None = None
    data: str | None = None
    image_size: int | None = None
    out: str = DEFAULT_OUT
    quick: bool = False
    seed: int = 0
    experiments: str | None = None
    device: str | None = None
    force: bool = False
    finetune_steps: int = 0
    finetune_fix: str = "aps"
    finetune_data: str | None = None

    def build(self) -> dict:
        """--num-classes / --in-chans as keyword arguments of the model loader (only those given)."""
        from shiftlab.models.loading import given_build_options

        return given_build_options(self)

    @property
    def finetune_name(self) -> str:
        """The fine-tuned model's file name in the report folder."""
        return f"finetuned-{self.finetune_fix.replace(':', '-')}.pt"

    def check(self) -> CheckedReport:
        """Refuse, before spending minutes, a folder a report may not replace, bad options and unreadable inputs;
        claim the folder (a second report into it at the same time is refused now, not later)."""
        from shiftlab._io import claim_output
        from shiftlab.report.inputs import load_experiment_results
        from shiftlab.report.staging import check_output_folder

        inputs = [("--data", self.data), ("--model", self.model), ("--weights", self.weights),
                  ("--experiments", self.experiments), ("--finetune-data", self.finetune_data)]
        out = check_output_folder(self.out, force=self.force, inputs=inputs)
        claim_output(out, "--out")
        from shiftlab.models.loading import check_build_options

        check_build_options(self.model, self.num_classes, self.in_chans)
        from shiftlab.runs.audit import check_device

        check_device(self.device)
        if self.finetune_steps and self.build():
            flag = "--num-classes" if self.num_classes is not None else "--in-chans"
            raise InputError(f"--finetune-steps with {flag}: the report fine-tunes only models built as they are; "
                             f"fine-tune with shiftlab finetune --model {self.model} {flag} ... and report on its file")
        if self.image_size is not None:
            from shiftlab.models.preprocessing import check_input_size

            check_input_size(self.image_size, "--image-size")
        training = load_experiment_results(self.experiments) if self.experiments is not None else None
        if self.finetune_steps < 0:
            raise InputError(f"--finetune-steps must be 0 or more, got {self.finetune_steps}")
        from shiftlab.runs import parse_fix

        try:  # checked even without --finetune-steps: a typo is a typo
            parse_fix(self.finetune_fix)
        except InputError as exc:
            raise InputError(f"--finetune-fix: {exc}") from None
        if self.finetune_steps:
            if self.finetune_data is not None:
                from shiftlab.data.sources import open_images

                open_images(self.finetune_data)
        return CheckedReport(out, training)

    def measure(self, checked: CheckedReport, progress: bool = False, files: dict | None = None) -> dict:
        """The report's audits (every process of a torchrun job takes part); the fine-tuned model into ``files``."""
        from shiftlab.runs.report_plan import run_report_experiments

        return run_report_experiments(self.model, self.data, quick=self.quick, seed=self.seed, progress=progress,
                                      device=self.device, weights=self.weights, image_size=self.image_size,
                                      finetune_steps=self.finetune_steps, finetune_fix=self.finetune_fix,
                                      finetune_data=self.finetune_data,
                                      finetune_file=str(checked.out / self.finetune_name), files=files,
                                      build=self.build())

    def write(self, checked: CheckedReport, results: dict, progress: bool = False, files: dict | None = None) -> Path:
        """Add the demonstrations, the training experiments and the thumbnails; write the folder; return the page."""
        from shiftlab.report.inputs import classic_demonstrations
        from shiftlab.report.staging import write_report
        from shiftlab.runs.report_extras import thumbnails

        results["classic"], classic_figures = classic_demonstrations(progress)
        if checked.training:
            results["training_experiments"] = checked.training
        size = tuple(results["model"]["input_size"])
        pre = results["model"].get("preprocessing") or {}
        thumbs = thumbnails(results["settings"]["data"], results["data"]["indices"], size,
                            pre.get("interpolation", "bilinear"), limit=results["settings"]["budget"].get("max_images"))
        return write_report(results, checked.out, force=True, extra_figures=classic_figures, progress=progress,
                            images={f"thumb:{i}": a for i, a in thumbs.items()},
                            files={Path(name).name: data for name, data in (files or {}).items()})
