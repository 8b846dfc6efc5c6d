"""Safe output: atomic writes, and never destroying a user's file without being asked. Private.

The rules every writer follows (issue 17: nothing lost; every fault of an output found before the work):

- **Checked before any work** (:func:`check_output_path`, :func:`check_output_folder_path`): the name (empty;
  a component longer than the file system's ``NAME_MAX`` or a path longer than ``PATH_MAX``: ENAMETOOLONG),
  what is there (only a *regular file* is ever replaced, and only with ``force``; a folder, device node
  (``/dev/full``), fifo, socket, a link to one of those or a link to nothing is refused even with ``force``;
  a link to a regular file is followed, so the file it names is replaced and the link kept), the folder
  (writable: a temporary file is created there and removed) and its free space (under :data:`MIN_FREE_BYTES`,
  or the size the caller expects, the run is refused at once rather than after its work).
- **Claimed at the start** (:func:`claim_output`): a command takes an exclusive lock on every output path it
  will write, so that a second run writing the same file at the same time is refused at its start, with
  one line, instead of failing (or silently overwriting) at its end. The lock is ``fcntl.flock`` on a small
  file named after the output's absolute path, kept in a private per-user folder
  (``<tmp>/shiftlab-claims-<uid>``, mode 0700), never next to the user's files. The kernel drops the lock
  when the process ends, even on ``kill -9``, so a dead run never blocks the next one. Only rank 0 of a
  torchrun job (the process that writes) claims. :func:`release_claims` drops them; the CLI calls it when
  a command ends. Where ``fcntl`` does not exist (Windows) nothing is claimed.
- **Written atomically** (:func:`atomic_write_bytes`): into a temporary file in the same folder (its name
  shortened to fit ``NAME_MAX``), flushed and fsynced, then renamed over the target. A write that fails
  (no space left, ENOSPC; file too large, EFBIG; quota, EDQUOT; any other OSError) removes the temporary
  file, leaves the previous file exactly as it was, and raises a one-line :class:`InputError`.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

from shiftlab.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


MIN_FREE_BYTES = 1 << 20
"""Free space below which a write is refused up front (a full disk is found before the work, not after)."""

_NAME_MAX, _PATH_MAX = 255, 4096  # where the file system does not say (os.pathconf)
_KINDS = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "fifo (named pipe)"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"))


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def _nearest_folder(path: Path) -> Path:
    """The nearest existing folder at or above ``path`` (os.path functions: no error on overlong names)."""
    existing = os.path.abspath(path)
    while not os.path.isdir(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    return Path(existing)


def _pathconf(folder: Path, name: str, default: int) -> int:
    try:
        value = os.pathconf(folder, name)
    except (AttributeError, ValueError, OSError):
        return default
    return value if value and value > 0 else default


def _check_name(path: Path, flag: str) -> None:
    """Refuse, before any work, a name the file system cannot hold (ENAMETOOLONG), with one line."""
    folder = _nearest_folder(path)
    name_max, path_max = _pathconf(folder, "PC_NAME_MAX", _NAME_MAX), _pathconf(folder, "PC_PATH_MAX", _PATH_MAX)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise InputError(f"{flag}: the name {part[:24]}...{part[-12:]} is {size} bytes long, over the "
                             f"{name_max} this file system allows; choose a shorter name")
    size = len(os.fsencode(str(path)))
    if size >= path_max:
        raise InputError(f"{flag}: the path is {size} bytes long, over the {path_max - 1} this system allows; "
                         f"choose a shorter path")


def _existing_target(path: Path, flag: str, force: bool) -> Path:
    """What is at ``path`` may be replaced: nothing, or a regular file with ``force``; return the path to write.

    A link to a regular file is followed (the file it names is written, the link kept); anything else that is
    not a regular file (folder, device node, fifo, socket, a link to one, a dangling link) is refused even
    with ``force``: an atomic write would turn it into a regular file.
    """
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return path
    except OSError as exc:
        raise InputError(f"{flag}: cannot use {path} ({_os_reason(exc)})") from None
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise InputError(f"{flag} {path} is a link to nothing ({os.readlink(path)}); shiftlab replaces only "
                             f"regular files: remove the link or choose another name") from None
        except OSError as exc:
            raise InputError(f"{flag}: cannot use {path} ({_os_reason(exc)})") from None
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{flag} {path} is a folder (a link to one), not a file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{flag} {path} is a link to a {_kind(st.st_mode)}, not a regular file; shiftlab "
                             f"replaces only regular files, even with --force: choose a file name")
        path = Path(os.path.realpath(path))
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{flag} {path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{flag} {path} is a {_kind(st.st_mode)}, not a regular file; shiftlab replaces only "
                         f"regular files, even with --force: choose a file name")
    if not force:
        raise InputError(f"{flag} {path} exists; pass --force to overwrite it")
    return path


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse to overwrite an existing file unless ``force``, and anything but a regular file; return the path
    to write (a link to a regular file gives the file it names)."""
    path = Path(path)
    _check_name(path, str(path))
    try:
        return _existing_target(path, "the output", force)
    except InputError as exc:
        message = str(exc).replace("pass --force to", "pass --force (Python: force=True) to")
        raise InputError(message) from None


def check_output_path(path, force: bool = False, flag: str = "the output", *, claim: bool = False,
                      free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Check, before any work, that a file can be written at ``path``; return the path to write.

    Refuses (one-line InputError): an empty or overlong name; an existing folder, device node, fifo, socket
    or link to one (even with ``force``); an existing file without ``force``; a parent path that is a file;
    a folder that cannot be written (tested by creating and removing a temporary file in the nearest
    existing folder, so nothing is left behind) or that has less than ``free_bytes`` free. With ``claim``,
    the path is also claimed for this process (:func:`claim_output`): another run writing it is refused.
    """
    if path is None or not str(path).strip():
        raise InputError(f"{flag} is empty; give a file name")
    path = Path(path).expanduser()
    _check_name(path, flag)
    path = _existing_target(path, flag, force)
    _check_writable_folder(path.parent, flag, free_bytes)
    if claim:
        claim_output(path, flag)
    return path


def check_output_folder_path(path, flag: str = "the output folder", free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Check that a folder can be created or written at ``path`` (nothing is created)."""
    if path is None or not str(path).strip():
        raise InputError(f"{flag} is empty; give a folder name")
    path = Path(path).expanduser()
    _check_name(path, flag)
    try:
        is_folder, exists = path.is_dir(), os.path.lexists(path)
    except OSError as exc:
        raise InputError(f"{flag}: cannot use {path} ({_os_reason(exc)})") from None
    if exists and not is_folder:
        raise InputError(f"{flag} {path} is a file, not a folder")
    _check_writable_folder(path if exists else path.parent, flag, free_bytes)
    return path


def _check_writable_folder(folder: Path, flag: str, free_bytes: int = MIN_FREE_BYTES) -> None:
    existing = folder if str(folder) else Path(".")
    while not os.path.lexists(existing):
        if existing.parent == existing:
            break
        existing = existing.parent
    if os.path.lexists(existing) and not existing.is_dir():
        raise InputError(f"{flag}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".shiftlab-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{flag}: cannot write in {existing} ({_os_reason(exc)})") from None
    check_free_space(existing, free_bytes, flag)


def check_free_space(folder, need: int = MIN_FREE_BYTES, flag: str = "the output") -> None:
    """Refuse (InputError) a folder whose file system has less than ``need`` bytes free (cheap: one statvfs).

    File systems that report no size at all (``/proc``, some network mounts) are not judged.
    """
    import shutil

    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return
    if usage.total > 0 and usage.free < need:
        raise InputError(f"{flag}: only {usage.free / 1e6:.3g} MB free on the disk of {folder}, {need / 1e6:.3g} MB "
                         f"needed; free some space or write elsewhere")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync and a rename.

    A failed write (a full disk, ENOSPC; EFBIG; EDQUOT; ...) removes the temporary file, leaves any previous
    file untouched and raises a one-line InputError.
    """
    path = check_writable(path, force)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:48]}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            raise InputError(f"cannot write {path}: {_os_reason(exc)}"
                             + ("; free some space and run again" if full else "")
                             + ("; the previous file is unchanged" if os.path.lexists(path) else "")) from None
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


# ------------------------------------------------------------------------------------------------ claims

_CLAIMS: dict[str, tuple[int, str]] = {}  # absolute output path -> (locked fd, lock file)
_EXIT_HOOKS: list = []


def _claims_folder() -> Path | None:
    """The private folder of this user's claim locks (created 0700), or None where it cannot be trusted."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(tempfile.gettempdir()) / f"shiftlab-claims-{uid}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != uid):
        return None  # a link or someone else's folder: no claims rather than locks another user controls
    return folder


def claim_output(path, flag: str = "the output") -> None:
    """Claim ``path`` for this process until :func:`release_claims` (or the process ends); see the module notes.

    Raises InputError (one line) when another live process holds the claim. Claiming a path this process
    holds already does nothing. Ranks other than 0 of a torchrun job (``RANK``) do not write, and claim nothing.
    """
    import hashlib

    if os.environ.get("RANK", "0") not in ("", "0"):
        return
    try:
        import fcntl
    except ImportError:
        return
    key = os.path.realpath(os.path.abspath(os.fspath(path)))
    if key in _CLAIMS:
        return
    folder = _claims_folder()
    if folder is None:
        return
    lock = str(folder / (hashlib.sha256(os.fsencode(key)).hexdigest()[:40] + ".lock"))
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise InputError(f"{flag} {path} is being written by another shiftlab run"
                             + (f" ({owner})" if owner else "") + "; wait until it ends or choose another name") \
                from None
        try:  # its last holder may have removed the file after we opened it: hold the file that is there now
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
    if not _CLAIMS and release_claims not in _EXIT_HOOKS:
        import atexit

        atexit.register(release_claims)
        _EXIT_HOOKS.append(release_claims)
    _CLAIMS[key] = (fd, lock)


def release_claims() -> None:
    """Drop every claim this process holds (the CLI calls it when a command ends)."""
    for fd, lock in list(_CLAIMS.values()):
        try:
            os.unlink(lock)  # while still locked: a run that opened it meanwhile sees another file and retries
        except OSError:
            pass
        os.close(fd)
    _CLAIMS.clear()
