"""Checkpoints of a running audit, so that a killed run resumes where it stopped. Private.

Each process writes ``DIR/audit-rank{R}-of-{W}.pt``: the batches it has finished and the per-image
statistics they produced, nothing else. The file is written to a temporary name, flushed to disk and
renamed over the previous one, so a kill at any moment leaves either the old checkpoint or the new one,
never a mix; a temporary left by a kill is ignored and removed. The file holds only tensors, strings and
numbers and is read back with ``torch.load(..., weights_only=True)``.

A checkpoint is tied to its audit by a fingerprint of everything that decides the numbers (model weights,
data, protocol, seed, batch layout, metrics, layers, preprocessing, world size): resuming with anything
changed is refused, with a message that says what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import torch

from shiftlab.errors import InputError

__all__ = ["CheckpointStore", "fingerprint_model", "read_checkpoint_file", "write_checkpoint_file"]

FORMAT = "shiftlab.audit-checkpoint"
VERSION = 1


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
    return digest.hexdigest()


def _fault(kind: str) -> int | None:
    """Test hook: ``SHIFTLAB_FAULT=kind:N`` makes this process kill itself at the N-th such event."""
    spec = os.environ.get("SHIFTLAB_FAULT", "")
    name, _, count = spec.partition(":")
    if name != kind or not count.isdigit():
        return None
    return int(count)


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
        raise InputError(f"cannot read the checkpoint {path} ({type(exc).__name__}); delete it to start "
                         f"over") from None
    if not isinstance(saved, dict) or saved.get("format") != fmt:
        raise InputError(f"{path} is not a shiftlab {what} checkpoint")
    if saved.get("version") != version:
        raise InputError(f"{path} was written by another shiftlab version; delete it to start over")
    theirs = json.loads(saved["fingerprint"])
    if theirs != fingerprint:
        diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
        raise InputError(f"the checkpoint {path} belongs to another {what} (it differs in: {', '.join(diff)}); "
                         f"use {elsewhere} or delete it")
    return saved


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
    kill_at = _fault("kill-in-checkpoint")
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
    def load(self) -> dict | None:
        """The saved partial state, or ``None`` when there is no checkpoint yet."""
        saved = read_checkpoint_file(self.path, FORMAT, VERSION, self.fingerprint, "audit",
                                     "another --checkpoint folder")
        return None if saved is None else _decode(saved)

    # --------------------------------------------------------------------------------------- write
    def save(self, state: dict) -> None:
        """Write ``state`` atomically (temporary file, fsync, rename)."""
        self.writes += 1
        write_checkpoint_file(self.path, FORMAT, VERSION, self.fingerprint, _encode(state), self.writes)

    def after_batch(self) -> None:
        """Test hook: ``SHIFTLAB_FAULT=kill-after-batch:N`` kills the process after its N-th batch."""
        self.batches_seen += 1
        if _fault("kill-after-batch") == self.batches_seen:
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
    chunks: dict = {}
    for key, entry in saved["chunks"].items():
        items = []
        start = 0
        idx, vals = entry["idx"].numpy(), entry["vals"].numpy()
        for b, rows in zip(entry["batch"].tolist(), entry["rows"].tolist()):
            items.append((int(b), idx[start:start + rows].copy(), vals[start:start + rows].copy()))
            start += rows
        chunks[tuple(json.loads(key))] = items
    state = json.loads(saved["meta"])
    state["done"] = set(int(b) for b in saved["done"].tolist())
    state["chunks"] = chunks
    return state
