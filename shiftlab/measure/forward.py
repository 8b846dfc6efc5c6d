"""How an audit calls its models: normalisation, memory format, mixed precision, one output selected, and the
probe that looks at what a model gives before any work.

A :class:`ModelRunner` is shared by the stages of an audit: :mod:`shiftlab.measure.prepare` probes the
model's output with it, :mod:`shiftlab.measure.engine` runs every batch through it. Inside
:meth:`ModelRunner.session` the models are in eval mode (and channels-last when chosen); on leaving it they
get back their training flag and memory format, even after an error.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from shiftlab.errors import InputError, ShiftlabError
from shiftlab.measure.protocols import Protocol
from shiftlab.models import select_output

__all__ = ["ModelRunner", "Probe", "first_copy", "call_model", "relative_difference", "check_reference_output"]


@dataclass(frozen=True)
class Probe:
    """What one forward pass of copy 0 of one image showed: ``kind`` ("logits" for (B, K), "dense" for
    (B, K, H, W)), the number of classes (channels of a dense map), and the relative change of each model's
    output between two passes of the same input (``nondeterminism``: "model", "reference")."""

    kind: str
    classes: int
    nondeterminism: dict


class ModelRunner:
    """The forward passes of a model (and a reference model) on un-normalised inputs in pixel space."""

    def __init__(self, model: torch.nn.Module, reference_model: torch.nn.Module | None, *, device: torch.device,
                 dtype: torch.dtype, norm_fn, output_key, amp: bool, channels_last: bool):
        self.model, self.reference_model = model, reference_model
        self.device, self.dtype, self.norm_fn, self.output_key = device, dtype, norm_fn, output_key
        self.amp, self.channels_last = amp, channels_last

    def models(self) -> list[torch.nn.Module]:
        return [m for m in (self.model, self.reference_model) if m is not None]

    @contextmanager
    def session(self):
        """Eval mode (and channels-last) for the models while inside; their own state restored after."""
        training = [m.training for m in self.models()]
        try:
            for m in self.models():
                m.eval()
                if self.channels_last:
                    m.to(memory_format=torch.channels_last)
            yield self
        finally:
            for m, flag in zip(self.models(), training):
                if self.channels_last:
                    m.to(memory_format=torch.contiguous_format)
                m.train(flag)

    def forward(self, model: torch.nn.Module, x: torch.Tensor, output_key=None) -> torch.Tensor:
        """``model`` on the inputs ``x`` (B, C, H, W) in pixel space: normalised, in the chosen memory format."""
        if self.norm_fn is not None:
            x = self.norm_fn(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return call_model(model, x, output_key, self.amp, self.device)

    def model_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(self.model, x, self.output_key)

    def reference_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(self.reference_model, x)

    def probe(self, first_copy: torch.Tensor) -> Probe:
        """One input (1, C, H, W), before any work: the output's kind and class count; the clean input goes
        through twice, so that a model whose output changes (dropout left on, noise in forward) is flagged."""
        with torch.inference_mode():
            out = self.model_output(first_copy)
            nondeterminism = {"model": relative_difference(out, self.model_output(first_copy))}
            ref = None
            if self.reference_model is not None:
                ref = self.reference_output(first_copy)
                nondeterminism["reference"] = relative_difference(ref, self.reference_output(first_copy))
        if not out.is_floating_point():
            raise ShiftlabError(f"the model output is {out.dtype}, not floating point")
        if out.ndim == 2:
            kind = "logits"
        elif out.ndim == 4:
            kind = "dense"
        else:
            raise ShiftlabError(f"the model output has shape {tuple(out.shape)}; the metrics need logits (B, K) or a "
                                f"dense map (B, K, H, W)")
        if ref is not None:
            check_reference_output(ref, kind, int(out.shape[1]))
        return Probe(kind, int(out.shape[1]), nondeterminism)


def first_copy(protocol: Protocol, image: torch.Tensor, runner: ModelRunner, seed: int) -> torch.Tensor:
    """Copy 0 of ``image`` (C, H, W) under ``protocol``, as a batch of one on the runner's device and dtype."""
    images = image[None].to(runner.device, runner.dtype)
    with torch.inference_mode():
        return protocol.make(images, torch.zeros(1, dtype=torch.long), seed, copies=[0]).inputs


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| in float64 (0 for equal outputs, inf when they differ in shape or finiteness)."""
    if a.shape != b.shape:
        return math.inf
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return 0.0 if bool(torch.equal(a.nan_to_num(), b.nan_to_num())) else math.inf
    scale = float(a.abs().max()) if a.numel() else 0.0
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def check_reference_output(ref: torch.Tensor, kind: str, classes: int) -> None:
    """A reference model must give class scores in the model's label space (as many classes); else one line."""
    if kind == "dense":
        raise InputError("the model outputs a dense map (B, K, H, W); reference_agreement compares top-1 classes, "
                         "so a reference (CLI: --reference, --fix) needs a classifier: drop the reference")
    if not isinstance(ref, torch.Tensor) or not ref.is_floating_point():
        raise InputError(f"the reference model's output is {getattr(ref, 'dtype', type(ref).__name__)}, not "
                         f"floating-point class scores")
    if ref.ndim == 4:
        raise InputError(f"the reference model outputs a dense map {tuple(ref.shape)}; reference_agreement compares "
                         f"top-1 classes, so the reference must give class scores (B, K)")
    if ref.ndim != 2:
        raise InputError(f"the reference model's output has shape {tuple(ref.shape)}; it must give class scores "
                         f"(B, K)")
    if int(ref.shape[1]) != classes:
        raise InputError(f"the reference model gives {int(ref.shape[1])} classes and the model {classes}: their "
                         f"top-1 classes are not in one label space, so agreement would mean nothing; use a "
                         f"reference with the model's classes")


def call_model(model, x, output_key, amp: bool, dev) -> torch.Tensor:
    """``model(x)`` with one output selected; a failing forward pass becomes one line naming the input's shape."""
    try:
        if amp:
            with torch.autocast(device_type=dev.type, dtype=amp if isinstance(amp, torch.dtype) else torch.float16):
                out = select_output(model(x), output_key)
        else:
            out = select_output(model(x), output_key)
    except ShiftlabError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError, NotImplementedError) as exc:
        text = str(exc).strip().splitlines()
        raise ShiftlabError(f"the model's forward pass failed on an input of shape {tuple(x.shape)}: "
                            f"{type(exc).__name__}: {text[0][:200] if text else ''}") from None
    return out
