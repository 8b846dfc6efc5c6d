"""Safe output: atomic writes, and never destroying a user's file without being asked. Private."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from shiftlab.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse to overwrite an existing file unless ``force``; return the path."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass --force (force=True) to overwrite it")
    if path.exists() and path.is_dir():
        raise InputError(f"{path} is a directory, not a file")
    return path


def check_output_path(path, force: bool = False, flag: str = "the output") -> Path:
    """Check, before any work, that a file can be written at ``path``; return it as a Path.

    Refuses: an empty name, an existing folder, an existing file without ``force``, a parent path that is a
    file, and a folder that cannot be written (tested by creating and removing a temporary file in the
    nearest existing folder, so nothing is left behind).
    """
    if path is None or not str(path).strip():
        raise InputError(f"{flag} is empty; give a file name")
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder, not a file")
    if path.exists() and not force:
        raise InputError(f"{flag} {path} exists; pass --force to overwrite it")
    _check_writable_folder(path.parent, flag)
    return path


def check_output_folder_path(path, flag: str = "the output folder") -> Path:
    """Check that a folder can be created or written at ``path`` (nothing is created)."""
    if path is None or not str(path).strip():
        raise InputError(f"{flag} is empty; give a folder name")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder")
    _check_writable_folder(path if path.exists() else path.parent, flag)
    return path


def _check_writable_folder(folder: Path, flag: str) -> None:
    existing = folder if str(folder) else Path(".")
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{flag}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".shiftlab-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{flag}: cannot write in {existing} ({exc.strerror or type(exc).__name__})") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), force=force)


def write_json(path: str | os.PathLike, obj, force: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n", force=force)


def save_figure(fig, path: str | os.PathLike, force: bool = False, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically as PNG."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue(), force=force)
