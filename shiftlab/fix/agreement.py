"""Did fine-tuning bring the predictions back? The student's agreement with the teacher before and after.

:class:`_AgreementCheck` measures the student's top-1 agreement with the teacher, both in eval mode, on the first
view of the first ``AGREEMENT_IMAGES`` readable training images; :func:`shiftlab.finetune` measures it before the
first step and after the last, and :func:`_agreement_warning` says so when it did not rise (a log warning, which
the CLI prints). The numbers that judge a result come from :func:`shiftlab.audit`, not from this check.
"""

from __future__ import annotations

import torch

from shiftlab.fix.distill import _forward

__all__ = ["AGREEMENT_IMAGES", "AGREEMENT_RISE"]

#: images (the first readable ones) on which the student's agreement with the teacher is measured before and after
AGREEMENT_IMAGES = 64
#: agreement must rise by at least this much (unless already this close to 1) or the run says it did not rise
AGREEMENT_RISE = 0.01


class _AgreementCheck:
    """The student's top-1 agreement with the teacher, both in eval mode, on the first view of the first
    ``AGREEMENT_IMAGES`` readable training images: measured before the first step and after the last, so that
    a run whose agreement does not rise says so (a log warning, and the CLI prints it)."""

    def __init__(self, src, sizing, views, dev, dtype, teacher_dtype):
        from shiftlab.measure.loader import PreparedImages

        prepared = PreparedImages(src, sizing)
        images, positions = [], []
        for i in range(len(src)):
            if len(images) == AGREEMENT_IMAGES:
                break
            _, image, _, failure, _ = prepared[i]
            if failure is None:
                images.append(image)
                positions.append(i)
        self.images = torch.stack(images) if images else None
        self.positions = torch.as_tensor(positions, dtype=torch.long)
        self.views, self.dev, self.dtype, self.teacher_dtype = views, dev, dtype, teacher_dtype

    def __call__(self, teacher, student) -> float | None:
        if self.images is None:
            return None
        was = student.training
        student.eval()
        agree = total = 0
        try:
            with torch.no_grad():
                for k in range(0, len(self.images), 16):
                    x = self.views(self.images[k:k + 16].to(self.dev, self.dtype), self.positions[k:k + 16])
                    t = _forward(teacher, x.to(self.teacher_dtype)).argmax(1)
                    s = _forward(student, x).argmax(1)
                    agree += int((t == s).sum())
                    total += int(t.numel())
        finally:
            student.train(was)
        return agree / max(1, total)


def _agreement_warning(check: dict) -> str | None:
    """The log's warning when the agreement did not rise by ``AGREEMENT_RISE`` (None when it did)."""
    before, after = check.get("before"), check.get("after")
    if before is None or after is None or after >= min(1.0, before + AGREEMENT_RISE):
        return None
    return (f"agreement with the teacher did not rise: {before:.1%} before fine-tuning, {after:.1%} after "
            f"({check['images']} training images, eval mode); try more --steps, another --lr (it was "
            f"{check['lr']:g}), or --views that show the images as the model was trained on them (these: "
            f"{check['views']})")
