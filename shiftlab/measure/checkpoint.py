"""Checkpoints of a running audit, so that a killed run resumes where it stopped. Private.

Each process writes ``DIR/audit-rank{R}-of-{W}.pt``: the batches it has finished and the per-image
statistics they produced, nothing else. The file is written to a temporary name, flushed to disk and
renamed over the previous one, so a kill at any moment leaves either the old checkpoint or the new one,
never a mix; a temporary left by a kill is ignored and removed. The file holds only tensors, strings and
numbers and is read back with ``torch.load(..., weights_only=True)``.

A checkpoint is tied to its audit by a fingerprint of everything that decides the numbers (the model's
weights and layers and the output it selects, the reference model's, the data's identity: names, file sizes
and modification times or the bytes of arrays in memory, and labels; protocol, seed, batch layout, metrics,
layers, preprocessing, world size): resuming with anything changed is refused, with a message that names the
option and both values (:func:`difference`). A damaged checkpoint (truncated, edited, keys missing or of the
wrong type, statistics that do not cover the batches it records as done) is refused with one line naming the
file (:func:`damaged`): a resumed run never merges two runs or reports a metric over part of the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import torch

from shiftlab.errors import InputError

__all__ = ["WEIGHTS_HINT", "looks_like_weights", "CheckpointStore", "audit_fingerprint", "damaged", "injected_fault",
           "data_identity", "difference", "fingerprint_model", "read_checkpoint_file", "write_checkpoint_file"]

FORMAT = "shiftlab.audit-checkpoint"
VERSION = 2  # 2: the fingerprint holds the data's content, the reference's and the output key's identity

#: fingerprint keys in user terms, in the order a difference is reported (the first one leads the message);
#: keys of nested dicts are looked up whole ("config.labels"), then by their last part ("preprocessing.mean")
LABELS = {
    "model_spec": "--model", "fix": "--fix", "teacher_spec": "--teacher", "reference": "--reference",
    "output_key": "--output-key", "data": "--data", "protocol": "--transform", "views": "--views",
    "metrics": "--metrics", "seed": "--seed", "config.labels": "--label-weight", "steps": "--steps", "lr": "--lr",
    "batch_size": "--batch-size", "accumulate": "--accumulate", "weight_decay": "--weight-decay",
    "warmup": "--warmup", "temperature": "--temperature", "kl": "--kl", "consistency": "--consistency",
    "batch_norm": "--batch-norm", "bn_batches": "--bn-batches", "margin": "--margin", "layers": "--layers",
    "input": "--image-size", "input_size": "--image-size", "mean": "--mean", "std": "--std",
    "interpolation": "--interpolation", "crop_pct": "--crop-pct", "class_map": "--class-map",
    "predictions": "--predictions", "amp": "--amp", "images": "number of images",
    "names": "image names (or their order)",
    "content": "image content (files replaced, changed or touched since the checkpoint was written)",
    "labels": "labels", "model": "model weights or layers", "student": "student weights or layers",
    "teacher": "teacher weights or layers", "reference_weights": "reference model weights or layers",
    "reference_output_key": "reference model output key", "fix_recipe": "conversion settings (--fix)",
    "world_size": "number of processes", "resize": "resizing (--no-resize)",
    "normalize": "normalisation", "per_batch": "batch layout", "dtype": "model dtype",
    "channels_last": "memory format", "preprocessing": "preprocessing", "config": "settings",
}


def fingerprint_model(model: torch.nn.Module) -> str:
    """sha256 over the model's state (names, shapes, dtypes and values of every parameter and buffer)."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(str((tuple(t.shape), str(t.dtype))).encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest.update(type(model).__name__.encode())
    # the layers themselves: a conversion that adds no weights (APS, or a blur filter kept out of the state) and
    # which output a wrapper selects (its key) are part of what the model computes
    for name, module in model.named_modules():
        kind = type(module)
        try:
            extra = module.extra_repr()
        except Exception:  # noqa: BLE001 - a module whose description fails is known by its type alone
            extra = ""
        digest.update(f"{name}\0{kind.__module__}.{kind.__qualname__}\0{_ADDRESS.sub('', extra)}\0".encode())
    return digest.hexdigest()


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def data_identity(src, indices) -> dict:
    """What identifies the audited data without decoding it: digests of the selected images' names (in order),
    of their content (each file's size and modification time; the bytes of arrays and tensors in memory) and of
    the labels. A file replaced, edited or touched between a kill and the resume changes ``content``."""
    names, content, labels = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    indices = [int(i) for i in indices]
    listed = getattr(src, "names", None)
    names.update(str(len(indices)).encode() + b"\0")
    if listed is not None:
        for i in indices:
            names.update(str(listed[i]).encode() + b"\0")
    paths, array, images = getattr(src, "paths", None), getattr(src, "array", None), getattr(src, "images", None)
    if paths is not None:
        for i in indices:
            try:
                st = os.stat(paths[i])
                content.update(f"{paths[i]}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            except OSError as exc:
                content.update(f"{paths[i]}\0{type(exc).__name__}\0".encode())
    elif isinstance(array, np.ndarray):
        content.update(str((array.shape, str(array.dtype))).encode())
        content.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    elif isinstance(images, torch.Tensor):
        content.update(str((tuple(images.shape), str(images.dtype))).encode())
        content.update(_tensor_bytes(images))
    elif isinstance(images, list):
        for i in indices:
            content.update(str((tuple(images[i].shape), str(images[i].dtype))).encode())
            content.update(_tensor_bytes(images[i]))
    else:
        content.update(f"{type(src).__module__}.{type(src).__qualname__}\0{len(src)}".encode())
    table = getattr(src, "labels", None)
    if isinstance(table, torch.Tensor):
        labels.update(_tensor_bytes(table[torch.as_tensor(indices, dtype=torch.long)]))
    labels.update(json.dumps(getattr(src, "class_names", None)).encode())
    return {"names": names.hexdigest(), "content": content.hexdigest(), "labels": labels.hexdigest()}



def audit_fingerprint(prepared, per_batch: int, world) -> dict:
    """Everything that decides an audit's numbers, for its checkpoint: resuming with any of it changed would
    merge two different runs into one number. The model and the reference are known by their weights and layers
    (and the output their wrapper selects), the data by its names, content (file sizes and modification times;
    the bytes of arrays in memory) and labels; the options by their values. ``prepared``: the audit's
    :class:`~shiftlab.measure.prepare.Prepared` value; ``per_batch``: images per batch."""
    from shiftlab.measure.result import AuditResult
    from shiftlab.measure.statistics import reduce_rows
    from shiftlab.models.loading import SelectOutput

    models, images, options = prepared.models, prepared.images, prepared.options
    model, reference, reference_model = models.model, models.reference, models.reference_model
    src, indices, normalize, sizes = images.source, images.indices, prepared.normalize, prepared.sizes
    prep, class_map = images.preprocessing, options.class_map

    def key_of(m, given):
        if given is not None:
            return repr(given)
        return repr(m.key) if isinstance(m, SelectOutput) else None

    def describe(m):
        info = getattr(m, "shiftlab_source", None)
        if isinstance(info, dict) and info.get("spec"):
            return str(info["spec"]) + (f" (fix {info['fix']})" if info.get("fix") else "")
        return type(m).__name__

    if isinstance(reference, AuditResult):
        import hashlib

        idx, top1 = reduce_rows(reference.series[("record", "top1")], reference.protocol["copies"])
        digest = hashlib.sha256(idx.astype(np.int64).tobytes() + top1.astype(np.float64).tobytes())
        ref = {"reference": f"an earlier audit of {reference.model}", "reference_weights": digest.hexdigest()}
    elif reference_model is not None:
        ref = {"reference": reference if isinstance(reference, str) else describe(reference_model),
               "reference_weights": fingerprint_model(reference_model),
               "reference_output_key": key_of(reference_model, None)}
    else:
        ref = {"reference": None}
    if normalize is True or normalize is False:
        norm = "model" if normalize else "none"
    else:
        kind = getattr(normalize, "__qualname__", type(normalize).__qualname__)
        norm = f"{getattr(normalize, '__module__', '')}.{kind}"
    return {
        "model": fingerprint_model(model), "model_spec": models.description,
        "output_key": key_of(model, models.output_key_arg), **ref, "data": images.description,
        "images": int(len(src)), **data_identity(src, indices), "protocol": prepared.protocol.spec(),
        "seed": options.seed, "batch_size": options.batch_size, "per_batch": int(per_batch),
        "metrics": list(prepared.metrics), "layers": sorted(prepared.layers), "margin": prepared.margin,
        "preprocessing": prep.to_dict(), "input": list(sizes.model_in), "resize": sizes.resize, "normalize": norm,
        "class_map": None if class_map is None else {str(k): v for k, v in class_map.items()},
        "predictions": bool(options.predictions), "world_size": int(world.size), "dtype": str(models.dtype),
        "channels_last": bool(prepared.runner.channels_last), "amp": bool(options.amp),
        **({"maps": int(options.maps)} if getattr(options, "maps", 0) else {})}


def injected_fault(kind: str) -> int | None:
    """Test hook: ``SHIFTLAB_FAULT=kind:N`` makes this process kill itself at the N-th such event."""
    spec = os.environ.get("SHIFTLAB_FAULT", "")
    name, _, count = spec.partition(":")
    if name != kind or not count.isdigit():
        return None
    return int(count)


#: what a --checkpoint that holds model weights is told (timm's --checkpoint is a weights file)
WEIGHTS_HINT = " (it holds model weights: timm's --checkpoint FILE is --weights FILE here)"


def looks_like_weights(saved) -> bool:
    """Whether a loaded file is model weights (a state_dict of tensors, or one under "state_dict" / "model"), not a
    run's checkpoint: a timm user's --checkpoint."""
    if not isinstance(saved, dict) or "format" in saved:
        return False
    inner = saved.get("state_dict", saved.get("model", saved))
    return isinstance(inner, dict) and bool(inner) and all(isinstance(v, torch.Tensor) for v in inner.values())


def read_checkpoint_file(path: Path, fmt: str, version: int, fingerprint: dict, what: str, elsewhere: str) -> dict | None:
    """Read a checkpoint written by :func:`write_checkpoint_file`, or ``None`` when there is none yet.

    Temporaries left by a kill are removed first. A file that is unreadable, of another ``fmt`` or ``version``,
    or whose fingerprint differs from ``fingerprint`` (another run) is refused with a one-line InputError;
    ``what`` names the kind of checkpoint ("audit"), ``elsewhere`` the way out ("another --checkpoint folder").
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise damaged(path, f"it does not load ({type(exc).__name__})", elsewhere) from None
    if not isinstance(saved, dict) or saved.get("format") != fmt:
        hint = WEIGHTS_HINT if looks_like_weights(saved) else ""
        raise InputError(f"{path} is not a shiftlab {what} checkpoint{hint}; use {elsewhere} or delete it")
    if saved.get("version") != version:
        raise InputError(f"{path} was written by another shiftlab version; delete it to start over")
    try:
        theirs = json.loads(saved["fingerprint"])
    except (KeyError, TypeError, ValueError):
        theirs = None
    if not isinstance(theirs, dict):
        raise damaged(path, "its fingerprint is missing or unreadable", elsewhere)
    fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))  # as it reads back (tuples as lists)
    if theirs != fingerprint:
        raise InputError(f"the checkpoint {path} belongs to another {what}: {difference(theirs, fingerprint)}; "
                         f"use {elsewhere} or delete it")
    return saved


def damaged(path, detail: str, elsewhere: str) -> InputError:
    """The one-line error for a checkpoint that cannot be trusted (truncated, edited, inconsistent)."""
    return InputError(f"the checkpoint {path} is damaged: {detail}; delete it or use {elsewhere}")


def _flatten(doc: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict) and value and key != "class_map":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _label(key: str) -> tuple[str, int]:
    order = list(LABELS)
    for candidate in (key, key.rsplit(".", 1)[-1], key.split(".", 1)[0]):
        if candidate in LABELS:
            return LABELS[candidate], order.index(candidate)
    return key, len(order)


def _show(value) -> str | None:
    if value is None:
        return "(none)"
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        value = ",".join(str(v) for v in value)
    if isinstance(value, (str, int, float, bool)) and len(str(value)) <= 80 and not (
            isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
        text = str(value)
        return "".join(c if c.isprintable() else "?" for c in text) or "''"
    return None


def difference(theirs: dict, ours: dict) -> str:
    """What differs between a checkpoint's fingerprint and this run's, in the options' terms:
    ``it was made with --reference A; this run has --reference B (it also differs in: the model's weights)``."""
    a, b = _flatten(theirs), _flatten(ours)
    missing = object()
    keys = [k for k in set(a) | set(b) if a.get(k, missing) != b.get(k, missing)]
    keys.sort(key=lambda k: (_label(k)[1], k))
    labels = list(dict.fromkeys(_label(k)[0] for k in keys))
    first = keys[0]
    label = labels[0]
    then, now = _show(a.get(first)), _show(b.get(first))
    if label.startswith("--") and then is not None and now is not None:
        head = f"it was made with {label} {then}; this run has {label} {now}"
    else:
        head = f"it was made with other {label}"
    return head + (f" (it also differs in: {', '.join(labels[1:])})" if labels[1:] else "")


def write_checkpoint_file(path: Path, fmt: str, version: int, fingerprint: dict, state: dict, writes: int) -> None:
    """Write ``state`` with its format, version and fingerprint atomically (temporary file, fsync, rename).

    ``writes`` counts this process's checkpoint writes, for the test hook
    ``SHIFTLAB_FAULT=kill-in-checkpoint:N`` (die half-way through the N-th write).
    """
    import io

    buffer = io.BytesIO()
    torch.save({"format": fmt, "version": version, "fingerprint": json.dumps(fingerprint, sort_keys=True), **state},
               buffer)
    data = buffer.getvalue()
    kill_at = injected_fault("kill-in-checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        if kill_at == writes:
            f.write(data[:len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


ELSEWHERE = "another --checkpoint folder"


class CheckpointStore:
    """One rank's checkpoint file in ``folder``."""

    def __init__(self, folder, rank: int, world_size: int, fingerprint: dict):
        self.folder = Path(folder).expanduser()
        self.rank, self.world_size = int(rank), int(world_size)
        self.fingerprint = fingerprint
        self.path = self.folder / f"audit-rank{self.rank}-of-{self.world_size}.pt"
        self.writes = 0
        self.batches_seen = 0

    # --------------------------------------------------------------------------------------- checks
    def check_folder(self) -> None:
        """The folder exists or can be made, and a file can be written in it (before any work)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"--checkpoint {self.folder} is a file, not a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InputError(f"--checkpoint {self.folder} cannot be written ({type(exc).__name__})") from None
        others = [p.name for p in self.folder.glob("audit-rank*-of-*.pt")
                  if not p.name.endswith(f"-of-{self.world_size}.pt")]
        if others:
            raise InputError(f"--checkpoint {self.folder} holds checkpoints of a run with another number of processes "
                             f"({others[0]}); resume with that many processes, or use another folder")

    # --------------------------------------------------------------------------------------- read
    def load(self, batches: list | None = None, mine: list | None = None, complete: tuple | None = None) -> dict | None:
        """The saved partial state, or ``None`` when there is no checkpoint yet.

        With ``batches`` (the dataset indices of every batch) and ``mine`` (this process's batch numbers) the
        state is checked against them: only this process's batches are done, every row of every series
        belongs to an image of a done batch, and the series ``complete`` (when given) has rows for every image
        of every done batch that was read. A state that fails (edited, or from a damaged file) is refused: a
        resumed run never reports a metric over part of the images while its header counts them all.
        """
        saved = read_checkpoint_file(self.path, FORMAT, VERSION, self.fingerprint, "audit", ELSEWHERE)
        if saved is None:
            return None
        try:
            state = _decode(saved)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            raise damaged(self.path, f"its statistics are incomplete or malformed ({type(exc).__name__})",
                          ELSEWHERE) from None
        if batches is not None:
            problem = _inconsistency(state, batches, mine, complete)
            if problem:
                raise damaged(self.path, problem, ELSEWHERE)
        return state

    # --------------------------------------------------------------------------------------- write
    def save(self, state: dict) -> None:
        """Write ``state`` atomically (temporary file, fsync, rename)."""
        self.writes += 1
        write_checkpoint_file(self.path, FORMAT, VERSION, self.fingerprint, _encode(state), self.writes)

    def after_batch(self) -> None:
        """Test hook: ``SHIFTLAB_FAULT=kill-after-batch:N`` kills the process after its N-th batch."""
        self.batches_seen += 1
        if injected_fault("kill-after-batch") == self.batches_seen:
            os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------- (de)serialising


def _encode(state: dict) -> dict:
    chunks = {}
    for key, items in state["chunks"].items():
        if not items:
            continue
        width = items[0][2].shape[1]
        chunks[json.dumps(list(key))] = {
            "batch": torch.tensor([b for b, _, _ in items], dtype=torch.int64),
            "rows": torch.tensor([len(i) for _, i, _ in items], dtype=torch.int64),
            "idx": torch.from_numpy(np.concatenate([i for _, i, _ in items]).astype(np.int64)),
            "vals": torch.from_numpy(np.concatenate([v for _, _, v in items]).astype(np.float64).reshape(-1, width)),
        }
    return {"done": torch.tensor(sorted(state["done"]), dtype=torch.int64), "chunks": chunks,
            "meta": json.dumps({k: v for k, v in state.items() if k not in ("done", "chunks")})}


def _decode(saved: dict) -> dict:
    """The state :func:`_encode` wrote; raises KeyError/TypeError/ValueError for anything else."""
    chunks: dict = {}
    if not isinstance(saved["chunks"], dict):
        raise TypeError("chunks")
    for key, entry in saved["chunks"].items():
        items = []
        start = 0
        parts = [entry[name] for name in ("batch", "rows", "idx", "vals")]
        if not all(isinstance(t, torch.Tensor) for t in parts):
            raise TypeError("chunk")
        batch, rows_t, idx_t, vals_t = parts
        if (batch.ndim != 1 or rows_t.shape != batch.shape or idx_t.ndim != 1 or vals_t.ndim != 2
                or vals_t.shape[0] != idx_t.shape[0] or int(rows_t.sum()) != idx_t.shape[0]
                or bool((rows_t < 0).any()) or idx_t.is_floating_point() or batch.is_floating_point()):
            raise ValueError("chunk shapes")
        idx, vals = idx_t.numpy(), vals_t.numpy()
        for b, rows in zip(batch.tolist(), rows_t.tolist()):
            items.append((int(b), idx[start:start + rows].copy(), vals[start:start + rows].copy()))
            start += rows
        name = json.loads(key)
        if not isinstance(name, list) or not all(isinstance(p, str) for p in name):
            raise TypeError("chunk key")
        chunks[tuple(name)] = items
    state = json.loads(saved["meta"])
    if not isinstance(state, dict):
        raise TypeError("meta")
    for name in ("failures", "upscaled", "layer_info"):
        if not isinstance(state[name], dict):
            raise TypeError(name)
    state["failures"] = {int(k): [(int(i), str(p), str(r)) for i, p, r in v] for k, v in state["failures"].items()}
    state["upscaled"] = {int(k): int(v) for k, v in state["upscaled"].items()}
    done = saved["done"]
    if not isinstance(done, torch.Tensor) or done.ndim != 1 or done.is_floating_point():
        raise TypeError("done")
    state["done"] = set(int(b) for b in done.tolist())
    state["chunks"] = chunks
    return state


def _inconsistency(state: dict, batches: list, mine: list | None, complete: tuple | None) -> str | None:
    """Why a decoded state cannot be the partial statistics of this audit (``None`` when it can)."""
    done = state["done"]
    allowed = set(range(len(batches)) if mine is None else mine)
    if not done <= allowed:
        return f"it records batch {min(done - allowed)} as done, which is not one of this process's batches"
    for b, upscaled in state["upscaled"].items():
        if b not in done or upscaled < 0:
            return "its counts of enlarged images do not match the batches it records as done"
    failed = set()
    for b, items in state["failures"].items():
        if b not in done:
            return "its skipped images do not match the batches it records as done"
        failed |= {i for i, _, _ in items}
    expected = set()
    for b in done:
        expected |= {int(i) for i in batches[b]}
    if not failed <= expected:
        return "its skipped images are not images of the batches it records as done"
    expected -= failed
    for key, items in state["chunks"].items():
        seen = set()
        for _, idx, _ in items:
            seen |= set(idx.tolist())
        if not seen <= expected:
            return f"its {'/'.join(key)} statistics hold images of batches it does not record as done"
        if complete is not None and tuple(key) == tuple(complete) and seen != expected:
            return (f"its statistics cover {len(seen)} of the {len(expected)} images of the batches it records "
                    f"as done")
    if complete is not None and expected and tuple(complete) not in state["chunks"]:
        return f"its statistics cover 0 of the {len(expected)} images of the batches it records as done"
    return None
