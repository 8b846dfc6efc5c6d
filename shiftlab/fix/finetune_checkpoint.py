"""The checkpoint of a fine-tuning run: its file, the state restored from it, and every rank's random state.

:class:`FinetuneCheckpoint` writes the run's state (student, optimizer, schedule, scaler, step, every rank's
random state, the log so far) atomically from rank 0 and reads it on every rank, refusing a checkpoint of
another run with what differs (:mod:`shiftlab.measure.checkpoint`). :func:`_restore` checks a saved state before
loading it, so that a damaged checkpoint is refused with one line and leaves the student as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shiftlab.errors import InputError

__all__ = ["FinetuneCheckpoint", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

CHECKPOINT_FORMAT = "shiftlab.finetune-checkpoint"
CHECKPOINT_VERSION = 2  # 2: the fingerprint holds the conversion, the teacher's spec and the data's content


class FinetuneCheckpoint:
    """The run's checkpoint file: written by rank 0, atomically; read by every rank."""

    def __init__(self, path, fingerprint: dict):
        self.path = Path(path).expanduser()
        self.fingerprint = fingerprint
        self.writes = 0

    def check(self, resume: bool) -> None:
        from shiftlab._io import check_output_path

        if self.path.is_dir():
            raise InputError(f"--checkpoint {self.path} is a folder; name a file")
        if self.path.is_file() and not resume:
            from shiftlab.measure.checkpoint import WEIGHTS_HINT, looks_like_weights

            try:
                weights = looks_like_weights(torch.load(self.path, map_location="cpu", weights_only=True))
            except Exception:  # noqa: BLE001 - not weights; the line below says what to do
                weights = False
            if weights:
                raise InputError(f"--checkpoint {self.path} is where this run saves its state{WEIGHTS_HINT}")
        if self.path.exists() and not resume:
            raise InputError(f"--checkpoint {self.path} exists: pass --resume to continue from it, or delete it to "
                             f"start over")
        check_output_path(self.path, True, "--checkpoint")

    def load(self) -> dict | None:
        from shiftlab.measure.checkpoint import read_checkpoint_file

        return read_checkpoint_file(self.path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, self.fingerprint,
                                    "fine-tuning run", "another --checkpoint")

    def save(self, state: dict) -> None:
        from shiftlab.measure.checkpoint import write_checkpoint_file

        self.writes += 1
        write_checkpoint_file(self.path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, self.fingerprint, state, self.writes)


def _recipe_text(recipe, short: bool) -> str | None:
    """A conversion (a spec, or a dict of :func:`shiftlab.antialias` arguments) as its short name or in full."""
    if recipe is None or isinstance(recipe, str):
        return recipe
    if short and isinstance(recipe, dict):
        from shiftlab.fix.checkpoint import recipe_spec

        return recipe_spec(recipe)
    try:
        return json.dumps(recipe, sort_keys=True, default=repr)
    except TypeError:
        return repr(recipe)


def _check_saved(bad, saved: dict, student, steps: int, world_size: int) -> dict:
    """Refuse a saved state whose keys are missing or of the wrong type, before anything is loaded from it; its log."""
    weights, step, window, rng = saved["student"], saved["step"], saved["window"], saved["rng"]
    log = json.loads(saved["log"])
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise bad("its student weights are not a state dict")
    own = student.state_dict()
    if set(weights) != set(own) or any(tuple(weights[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise bad("its student weights do not fit the student")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= steps:
        raise bad(f"its step {step!r} is not in [0, {steps}]")
    if not isinstance(window, torch.Tensor) or tuple(window.shape) != (7,):
        raise bad("its running statistics are malformed")
    if not isinstance(rng, list) or len(rng) != world_size or not all(
            isinstance(r, dict) and isinstance(r.get("cpu"), torch.Tensor) and r["cpu"].dtype == torch.uint8
            and r["cpu"].shape == torch.get_rng_state().shape for r in rng):
        raise bad("its random states are malformed")
    if not isinstance(log, dict) or not isinstance(log.get("entries"), list) or not isinstance(
            log.get("skipped_images"), int):
        raise bad("its log is malformed")
    if not isinstance(saved["optimizer"], dict) or not isinstance(saved["schedule"], dict):
        raise bad("its optimizer state is malformed")
    return log


def _load_state(saved: dict, student, optimizer, schedule, scaler) -> None:
    """Load a checked state into the run; the student's weights are put back if any part does not load."""
    backup = {k: v.detach().clone() for k, v in student.state_dict().items()}
    try:
        student.load_state_dict(saved["student"], strict=True)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
    except Exception:
        student.load_state_dict(backup, strict=True)
        raise


def _restore(path, saved: dict, student, optimizer, schedule, scaler, steps: int, world_size: int,
             dev) -> tuple[int, dict, torch.Tensor]:
    """Load a checkpoint's state into the run (student, optimizer, schedule, scaler): ``(step, log, window)``.

    The state is checked first, so a damaged checkpoint (truncated, edited, keys missing or of the wrong type) is
    refused with one line and leaves the student as it was."""
    from shiftlab.measure.checkpoint import damaged

    def bad(detail: str):
        return damaged(path, detail, "another --checkpoint")

    try:
        log = _check_saved(bad, saved, student, steps, world_size)
        _load_state(saved, student, optimizer, schedule, scaler)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise bad(f"its state is incomplete or malformed ({type(exc).__name__})") from None
    step, window = saved["step"], saved["window"]
    log["resumed_at"] = [*(log.get("resumed_at") or []), step]
    return step, log, window.to(dev)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
