"""The audit's engine stage: which copies go through the model together, the forward passes, and the run over
the loader's batches (with its checkpoint, its share of a torchrun launch and its progress bar).

Only per-image rows leave a batch (:mod:`shiftlab.measure.rows`); no image or feature map outlives it. The
batches of a run are numbered; under torchrun each process takes the batches ``b % world_size == rank``, and
the states of all processes are gathered at the end.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from shiftlab._checks import check_finite
from shiftlab._progress import track
from shiftlab._runtime import HeapTrimmer
from shiftlab.errors import InputError, ShapeError, ShiftlabError
from shiftlab.measure import loader
from shiftlab.measure import metrics as M
from shiftlab.measure.dense import DenseRows
from shiftlab.measure.prepare import Prepared
from shiftlab.measure.protocols import Protocol
from shiftlab.measure.result import AuditResult
from shiftlab.measure.rows import RowCollector, classification_rows
from shiftlab.measure.tokens import token_layouts
from shiftlab.measure.statistics import combine_states, empty_state, reduce_rows

__all__ = ["Engine", "run", "forward_groups", "group_pairs", "reference_lookup"]


def forward_groups(protocol: Protocol, batch_size: int, need_pairs: bool) -> tuple[int, list[list[int]]]:
    """Images per batch and the copy groups of each forward pass (every compared pair inside one group)."""
    K = protocol.num_copies
    if K <= batch_size:
        return max(1, batch_size // K), [list(range(K))]
    if not need_pairs:
        return 1, [list(range(s, min(K, s + batch_size))) for s in range(0, K, batch_size)]
    if batch_size < 2:
        raise InputError(f"{protocol.spec()!r} with layer errors compares two copies of an image in one forward "
                         f"pass; the batch size (model inputs per forward pass) must be at least 2")
    pairs = protocol.layer_pairs
    refs = {i for i, _ in pairs}
    if len(refs) == 1:  # a star: the reference copy goes with every group
        ref = next(iter(refs))
        others = [k for k in range(K) if k != ref]
        step = batch_size - 1
        return 1, [[ref, *others[s:s + step]] for s in range(0, len(others), step)]
    per = max(1, batch_size // 2)  # disjoint pairs: whole pairs per group
    groups = [sorted({c for p in pairs[s:s + per] for c in p}) for s in range(0, len(pairs), per)]
    covered = {c for g in groups for c in g}
    groups += [[k] for k in range(K) if k not in covered]
    return 1, groups


def group_pairs(protocol: Protocol, groups: list[list[int]]) -> list[list[tuple[int, int, int]]]:
    """For each group, the protocol pairs it compares, as (pair number, position of i, position of j)."""
    assigned: set[int] = set()
    out = []
    for group in groups:
        pos = {c: n for n, c in enumerate(group)}
        mine = []
        for p, (i, j) in enumerate(protocol.layer_pairs):
            if p not in assigned and i in pos and j in pos:
                mine.append((p, pos[i], pos[j]))
                assigned.add(p)
        out.append(mine)
    return out


def reference_lookup(result: AuditResult) -> tuple[np.ndarray, np.ndarray]:
    """The image indices and per-copy top-1 classes of an earlier audit made with ``predictions=True``."""
    idx, top1 = reduce_rows(result.series[("record", "top1")], result.protocol["copies"])
    return idx, top1.astype(np.int64)


class Engine:
    """The forward passes of an audit: the plan of which inputs go together, and each batch through the model."""

    #: at most this many images in one batch when copies of several images are packed together
    MAX_IMAGES_PER_BATCH = 64

    def __init__(self, prepared: Prepared, collector: RowCollector | None = None):
        self.runner, self.protocol = prepared.runner, prepared.protocol
        self.device, self.dtype, self.norm_fn = prepared.runner.device, prepared.runner.dtype, prepared.runner.norm_fn
        self.seed, self.batch_size = prepared.options.seed, prepared.options.batch_size
        self.record = bool(prepared.options.predictions)
        self.output_kind, self.classes, self.wanted = prepared.output.kind, prepared.output.classes, prepared.metrics
        self.label_table = None if prepared.label_table is None else torch.as_tensor(prepared.label_table,
                                                                                    dtype=torch.int64)
        self.item_labels = prepared.item_labels
        earlier = prepared.models.reference_result
        self.reference_lookup = None if earlier is None else reference_lookup(earlier)
        self.ctx = collector
        self.source = prepared.images.source
        self.dense = DenseRows.from_prepared(prepared)  # massc, miou and maps of a dense output (None: none)

    def plan(self, pairs: bool) -> int:
        """Decide how inputs are grouped into forward passes; return the images per batch.

        With pairs to compare inside a pass (layer errors, dense outputs), the copies of an image go through
        the model together (split into groups that each hold whole pairs when K > batch size). Otherwise the
        copies of several images are packed densely: ``batch_size / gcd(batch_size, K)`` images per batch make a
        whole number of full passes.
        """
        K = self.protocol.num_copies
        if pairs:
            self.mode = "groups"
            per_batch, self.groups = forward_groups(self.protocol, self.batch_size, True)
            self.pairs_by_group = group_pairs(self.protocol, self.groups)
            return per_batch
        self.mode = "packed"
        per_batch = self.batch_size // math.gcd(self.batch_size, K)
        return max(1, min(per_batch, max(1, self.MAX_IMAGES_PER_BATCH)))

    def run_batch(self, number: int, loaded) -> None:
        """One loaded batch of images: its copies through the model, its rows into the collector."""
        idx = loaded.indices
        images = loaded.images.to(self.device, non_blocking=self.device.type == "cuda").to(self.dtype)
        check_finite(images, f"images (batch starting at index {int(idx[0])})")
        if self.norm_fn is not None:
            low, high = float(images.min()), float(images.max())
            if low < -1e-6 or high > 1 + 1e-6:
                raise ShapeError(f"images must be in pixel space [0, 1] (got values in [{low:.3g}, {high:.3g}]); "
                                 f"shiftlab normalises with the model's preprocessing (Python: pass normalize=False for images "
                                 f"normalised already)")
        index_tensor = torch.as_tensor(idx)
        if self.mode == "groups":
            logits, ref_top1 = self._grouped(number, idx, images, index_tensor, loaded.masks)
        else:
            logits, ref_top1 = self._packed(idx, images, index_tensor)
        if self.output_kind == "dense":
            return
        B = len(idx)
        if self.label_table is not None:
            labels = self.label_table[index_tensor]
        elif self.item_labels:
            labels = torch.where(loaded.labels < self.classes, loaded.labels, torch.full_like(loaded.labels, -1))
        else:
            labels = torch.full((B,), -1, dtype=torch.int64)
        if self.reference_lookup is not None:
            ref_idx, ref_vals = self.reference_lookup
            pos = np.searchsorted(ref_idx, idx)
            if (pos >= len(ref_idx)).any() or (ref_idx[np.minimum(pos, len(ref_idx) - 1)] != idx).any():
                raise InputError("the reference audit does not cover every image of this one")
            ref_top1 = torch.from_numpy(ref_vals[pos])
        self.ctx.batch, self.ctx.indices = number, idx
        classification_rows(self.ctx, self.protocol, logits, labels, self.wanted, ref_top1, self.record)

    def _check_out(self, out: torch.Tensor, expected: int, idx) -> torch.Tensor:
        if out.shape[0] != expected:
            raise ShiftlabError(f"the model returned {out.shape[0]} outputs for a batch of {expected} inputs")
        want = 2 if self.output_kind == "logits" else 4
        if out.ndim != want:
            raise ShiftlabError(f"the model output changed rank from {want} to {out.ndim}")
        if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
            raise ShiftlabError(f"the model output contains NaN or Inf (or is not floating point), in the batch "
                                f"starting at image {int(idx[0])}")
        return out

    def _packed(self, idx, images, index_tensor):
        """Copy-major inputs of all images, cut into passes of ``batch_size``."""
        K, B, bs = self.protocol.num_copies, len(idx), self.batch_size
        total = K * B
        logits = None
        ref = torch.full((total,), -1, dtype=torch.int64) if self.runner.reference_model is not None else None
        for s in range(0, total, bs):
            e = min(total, s + bs)
            k0, k1 = s // B, (e - 1) // B
            made = self.protocol.make(images, index_tensor, self.seed, copies=list(range(k0, k1 + 1)))
            x = made.inputs[s - k0 * B:e - k0 * B]
            del made
            out = self._check_out(self.runner.model_output(x), e - s, idx)
            if logits is None:
                logits = torch.empty((total, out.shape[1]), dtype=torch.float32, device=out.device)
            logits[s:e] = out.float()
            if ref is not None:
                ref[s:e] = M.top1(self.runner.reference_output(x)).cpu()
        logits = logits.reshape(K, B, -1).transpose(0, 1)
        return logits, None if ref is None else ref.reshape(K, B).transpose(0, 1)

    def _grouped(self, number, idx, images, index_tensor, masks=None):
        """The copies of each image in groups that hold whole pairs; hooks compare inside each group."""
        K, B = self.protocol.num_copies, len(idx)
        logits_full: list = [None] * K
        ref_top1 = torch.full((B, K), -1, dtype=torch.int64) if self.runner.reference_model is not None else None
        for copies, pairs in zip(self.groups, self.pairs_by_group):
            made = self.protocol.make(images, index_tensor, self.seed, copies=copies)
            x, shifts = made.inputs, made.shifts
            del made
            self.ctx.start(number, idx, copies, pairs, tuple(x.shape[-2:]), shifts)
            try:
                out = self._check_out(self.runner.model_output(x), len(copies) * B, idx)
            finally:
                self.ctx.active = False
            if self.output_kind == "dense":
                self.ctx.start(number, idx, copies, pairs, tuple(x.shape[-2:]), shifts)
                self.ctx.features(("metric",), "(output)", out)
                self.ctx.active = False
                if self.dense is not None:
                    self.dense.add(self.ctx, number, idx, index_tensor, copies, pairs, out, shifts, masks,
                                   x.shape[-2:])
                continue
            out = out.reshape(len(copies), B, -1)
            for pos, k in enumerate(copies):
                if logits_full[k] is None:
                    logits_full[k] = out[pos].float()
            if self.runner.reference_model is not None:
                ref = self.runner.reference_output(x).reshape(len(copies), B, -1)
                for pos, k in enumerate(copies):
                    ref_top1[:, k] = M.top1(ref[pos]).cpu()
        if self.output_kind == "dense":
            return None, None
        return torch.stack(logits_full, 1), ref_top1


def run(prepared: Prepared, world, *, checkpoint=None, progress: bool | str = False) -> tuple[dict, int]:
    """The engine stage of :func:`shiftlab.audit`: every batch of this process (resumed from ``checkpoint``
    where it holds this run), then the states of all processes as one; also the loader's worker count."""
    from shiftlab.measure import distributed

    engine = Engine(prepared)
    per_batch = engine.plan(bool(prepared.layers) or prepared.output.kind == "dense")
    batches = loader.batch_plan(prepared.images.indices, per_batch)
    mine = [b for b in range(len(batches)) if b % world.size == world.rank]
    workers = prepared.options.workers
    if workers is None:
        workers = loader.default_workers(prepared.images.source, len(mine))
    state, store = resume(prepared, per_batch, batches, mine, world, checkpoint)
    todo = [b for b in mine if b not in state["done"]]
    engine.ctx = RowCollector(state["chunks"], state["layer_info"], prepared.protocol, prepared.margin,
                              token_layouts(prepared.models.model, prepared.layers))
    data_loader = loader.make_loader(prepared.images.source, prepared.sizing, [(b, batches[b]) for b in todo],
                                     workers, prepared.runner.device.type == "cuda")
    label = progress if isinstance(progress, str) else "auditing"
    with prepared.runner.session(), hooked(prepared.layers, engine.ctx), torch.inference_mode():
        run_batches(engine, state, track(data_loader, label, total=len(todo), enabled=bool(progress)), store,
                    prepared.options.checkpoint_every, len(prepared.images.indices))
    state = combine_states(distributed.gather(state))
    if prepared.output.kind == "dense":
        state["layer_info"].pop("(output)", None)
    return state, workers


def resume(prepared: Prepared, per_batch: int, batches: list, mine: list, world, checkpoint):
    """This process's state to start from (a checkpoint's, when it holds this very run) and the store to save
    it in (None without ``checkpoint``)."""
    if checkpoint is None:
        return empty_state(), None
    from shiftlab.measure.checkpoint import CheckpointStore, audit_fingerprint

    store = CheckpointStore(checkpoint, world.rank, world.size, audit_fingerprint(prepared, per_batch, world))
    store.check_folder()
    saved = store.load(batches, mine, ("guard", "top1") if prepared.output.kind == "logits" else None)
    return (empty_state() if saved is None else saved), store


@contextmanager
def hooked(layers: dict, collector: RowCollector):
    """Forward hooks on the chosen layers that hand their outputs to ``collector``; removed on leaving."""
    handles = [m.register_forward_hook(collector.hook(name)) for name, m in layers.items()]
    try:
        yield
    finally:
        collector.active = False
        for h in handles:
            h.remove()


def run_batches(engine: Engine, state: dict, loaded_batches, store, checkpoint_every: int, n_images: int) -> None:
    """Each loaded batch through the engine; unreadable files and upscaled images counted per batch; the state
    saved every ``checkpoint_every`` batches and at the end."""
    since_save = 0
    trimmer = HeapTrimmer(n_images)
    for loaded in loaded_batches:
        b = loaded.number
        state["failures"][b] = [(int(i), source_path(engine.source, i), r) for i, r in loaded.failures]
        state["upscaled"][b] = int(loaded.upscaled)
        if loaded.images is not None:
            engine.run_batch(b, loaded)
        state["done"].add(b)
        trimmer.step()
        since_save += 1
        if store is not None:
            if since_save >= checkpoint_every:
                store.save({**state, "chunks": engine.ctx.series()})
                since_save = 0
            store.after_batch()
    state["chunks"] = engine.ctx.series()
    if store is not None and since_save:
        store.save(state)


def source_path(src, i) -> str:
    """How image ``i`` of ``src`` is named in the list of skipped images."""
    from shiftlab.data.sources import ImageSource

    return src.path(i) if isinstance(src, ImageSource) else f"item {i}"
