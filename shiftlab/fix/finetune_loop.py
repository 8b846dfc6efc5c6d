"""The training loop of :func:`shiftlab.finetune`: optimizer steps over the stream's micro-batches, the log
entries, the checkpoints, and the run's own random state.

A run set up by :func:`shiftlab.finetune` is one :class:`_Training` value; :func:`_train` runs its steps from
``start`` (0, or the step a checkpoint was written at) to ``config.steps``. The run's random state (dropout,
stochastic depth) is seeded per process, saved in every checkpoint and restored on resume; the caller's is left
as it was. Denormal floats are flushed to zero during the loop and the teacher is given back as it came, even
when the loop fails.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass

import torch
from torch import nn

from shiftlab._progress import Bar
from shiftlab.errors import InputError
from shiftlab.fix.distill import _Distiller, _loader, _mix, _reestimate, _set_batch_norm, _Stream
from shiftlab.fix.finetune_checkpoint import FinetuneCheckpoint, _rng_state, _set_rng_state


@dataclass
class _Models:
    """The teacher (eval mode, parameters frozen) and the student on the run's device ``dev``, and how the teacher
    came (its mode and its parameters' ``requires_grad``), to be given back so."""

    teacher: nn.Module
    student: nn.Module
    dev: torch.device
    teacher_was_training: bool
    teacher_grads: list[bool]

    def release(self) -> None:
        """The student in eval mode, the teacher as it came."""
        self.student.eval()
        self.teacher.train(self.teacher_was_training)
        for p, flag in zip(self.teacher.parameters(), self.teacher_grads):
            p.requires_grad_(flag)


@dataclass
class _Optimisation:
    """AdamW, its schedule (warm-up, cosine) and, with ``amp``, a gradient scaler."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None

    def step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.schedule.step()

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None}


@dataclass
class _Training:
    """A fine-tuning run ready to train: the models, the optimisation, the stream of views, the log and the
    checkpoint. ``window`` sums the micro-batches' statistics since the last log entry (loss, kl, consistency,
    labels, agreeing views, views, micro-batches); ``saved_rng`` is this rank's random state from a checkpoint."""

    models: _Models
    net: nn.Module  # the student, or its DistributedDataParallel wrapper
    optimisation: _Optimisation
    distil: _Distiller
    stream: _Stream
    sizing: object
    views: object
    config: object
    world: object
    dtype: torch.dtype
    workers: int
    log: dict
    window: torch.Tensor
    start: int
    store: FinetuneCheckpoint | None
    saved_rng: dict | None
    checkpoint_every: int
    log_every: int


def _train(run: _Training, progress: bool | str) -> None:
    """Train the student from ``run.start`` to the last step (then re-estimate batch norm, if asked)."""
    from shiftlab.layers import has_learned_subsampling

    lps_layers = has_learned_subsampling(run.models.student)["lps"]
    flush_supported = torch.set_flush_denormal(True)
    dev = run.models.dev
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            _seed(run)
            try:
                _set_batch_norm(run.models.student, run.config.batch_norm)
                _optimizer_steps(run, lps_layers, progress)
                if run.config.batch_norm == "reestimate":
                    _reestimate(run.models.student, run.stream, run.sizing, run.views, dev, run.dtype, run.config,
                                run.world)
            finally:
                if run.distil.shift_term is not None:
                    run.distil.shift_term.remove()
    finally:
        if flush_supported:
            torch.set_flush_denormal(False)
        run.models.release()


def _seed(run: _Training) -> None:
    """The run's own random state: seeded per process, or as the checkpoint saved it."""
    if run.saved_rng is None:
        torch.manual_seed(_mix(run.config.seed, run.world.rank, 1))
    else:
        _set_rng_state(run.saved_rng, run.models.dev)


def _optimizer_steps(run: _Training, lps_layers: bool, progress: bool | str) -> None:
    """The optimizer steps from ``run.start``: micro-batches, step, log entry, progress, checkpoint."""
    from shiftlab.layers import set_temperature
    from shiftlab.measure.checkpoint import injected_fault

    config, dev = run.config, run.models.dev
    data_loader = _loader(run.stream, run.sizing, run.start * config.accumulate, config.steps * config.accumulate,
                          run.world, config.batch_size, run.workers, dev.type == "cuda")
    batches = iter(data_loader)
    label = progress if isinstance(progress, str) else "fine-tuning"
    steps_seen = 0
    with Bar(config.steps, label, completed=run.start, enabled=bool(progress) and run.world.is_main,
             status=True) as bar:
        for step in range(run.start, config.steps):
            if lps_layers:
                set_temperature(run.models.student, config.lps_temperature_at(step))
            run.optimisation.optimizer.zero_grad(set_to_none=True)
            _micro_batches(run, batches)
            lr = run.optimisation.optimizer.param_groups[0]["lr"]
            run.optimisation.step()
            done = step + 1
            if done % run.log_every == 0 or done == config.steps:
                _log_entry(run, done, lr, config.lps_temperature_at(step) if lps_layers else None)
            entry = run.log["entries"][-1] if run.log["entries"] else None
            bar.advance("" if entry is None else f"loss {entry['loss']:.3f}  agreement {entry['agreement']:.1%}")
            if run.store is not None and (done % run.checkpoint_every == 0 or done == config.steps):
                _save(run, done)
            steps_seen += 1
            if injected_fault("kill-after-step") == steps_seen:
                os.kill(os.getpid(), signal.SIGKILL)


def _micro_batches(run: _Training, batches) -> None:
    """One optimizer step's ``accumulate`` micro-batches: their gradients, and their statistics in the window."""
    accumulate = run.config.accumulate
    dev = run.models.dev
    for micro in range(accumulate):
        loaded = next(batches)
        run.log["skipped_images"] += len(loaded.failures)
        for position, reason in loaded.failures:  # each unreadable file once, by name (every epoch reads it again)
            index, src = run.stream.index(position), run.stream.source
            run.log.setdefault("unreadable", {}).setdefault(src.path(index) if hasattr(src, "path") else
                                                            f"image {index}", reason)
        if loaded.images is None:
            if run.world.size > 1:  # the other processes would wait for this one's gradients forever
                raise InputError(f"no image of a batch could be read (e.g. {loaded.failures[0][1]})")
            continue
        images = loaded.images.to(dev, run.dtype, non_blocking=dev.type == "cuda")
        last = micro == accumulate - 1
        run.window += run.distil(images, torch.as_tensor(loaded.indices), loaded.labels, last)


def _log_entry(run: _Training, done: int, lr: float, lps_temperature: float | None) -> None:
    """A log entry: the window's mean losses and agreement over every process, then a new window."""
    totals = _all_reduce(run.window.cpu(), run.world)
    micro_batches = max(1.0, totals[6].item())
    run.log["entries"].append({
        "step": done, "lr": lr, "loss": totals[0].item() / micro_batches,
        "kl": totals[1].item() / micro_batches,
        "consistency": totals[2].item() / micro_batches, "labels": totals[3].item() / micro_batches,
        "agreement": totals[4].item() / max(1.0, totals[5].item()),
        **({"lps_temperature": lps_temperature} if lps_temperature is not None else {})})
    run.window.zero_()


def _all_reduce(values: torch.Tensor, world) -> torch.Tensor:
    if world.size <= 1:
        return values
    from shiftlab.measure.distributed import gather

    return torch.stack(gather(values)).sum(0)


def _save(run: _Training, step: int) -> None:
    """The run's state after ``step`` in its checkpoint (written by rank 0, with every rank's random state)."""
    from shiftlab.measure import distributed

    rngs = distributed.gather(_rng_state(run.models.dev))
    if run.world.is_main:
        run.store.save({"step": step, "student": run.models.student.state_dict(), **run.optimisation.state(),
                        "rng": rngs, "log": json.dumps(run.log), "window": run.window.cpu()})
    distributed.barrier()
