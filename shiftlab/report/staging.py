"""The staged report folder write (issue 17): a report owns its whole folder, is written into a staging folder
of its own and swapped in at the end, and replaces only an earlier report holding nothing but its own files
(its marker, :data:`MARKER`, lists them). Every refusal is a one-line InputError, checked before any work
(:func:`check_output_folder`) and once more at the swap.
"""

from __future__ import annotations

from collections.abc import Mapping

from shiftlab.report.figures import render_figures
from shiftlab.report.pages import render_html

__all__ = ["write_report", "check_output_folder", "is_report_folder", "foreign_entries", "MARKER", "SCHEMA_PREFIX"]

SCHEMA_PREFIX = "shiftlab-report/"
_STAGING_MARK = ".shiftlab-staging"
MARKER = ".shiftlab-report"
"""The file written inside every report: it lists every file the report wrote. A folder is replaced by the
next report only when it holds this marker and nothing it does not list (:func:`foreign_entries`)."""
_MAX_ENTRIES = 10_000


def _marker_listing(folder) -> set[str] | None:
    """The files (relative POSIX paths) a report's marker lists, or None where there is no readable marker."""
    import json
    from pathlib import Path

    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) and data.get("written by") == "shiftlab report" else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files) | {MARKER}


def _legacy_listed(rel: str) -> bool:
    """A file an older shiftlab report (without a marker) wrote: the page, the results, figures, models."""
    parts = rel.split("/")
    return (rel in ("index.html", "results.json") or (len(parts) == 2 and parts[0] == "figures"
            and parts[1].endswith(".png")) or (len(parts) == 1 and rel.startswith("finetuned-") and rel.endswith(".pt")))


def foreign_entries(folder, limit: int = 3) -> list[str]:
    """The entries of ``folder`` a shiftlab report did not write (up to ``limit``); [] for an empty folder or a
    report folder holding only its own files.

    A report's own files are those its marker (:data:`MARKER`) lists; a folder without a marker is a report of
    an older shiftlab only when its ``results.json`` names the report schema and it holds nothing but a report's
    files. Links and special files are always foreign; a huge folder is foreign as a whole.
    """
    import os
    from pathlib import Path

    folder = Path(folder)
    listed = _marker_listing(folder)
    legacy = listed is None and _has_report_schema(folder)
    found: list[str] = []
    seen = 0
    for root, dirs, names in os.walk(folder):
        base = Path(root).relative_to(folder).as_posix()
        for name in sorted(dirs):
            rel = name if base == "." else f"{base}/{name}"
            if os.path.islink(os.path.join(root, name)) or (listed is None and not legacy):
                found.append(rel + ("" if os.path.islink(os.path.join(root, name)) else "/"))
                dirs.remove(name)  # never walked into
            elif listed is not None and not any(f.startswith(rel + "/") for f in listed):
                found.append(rel + "/")
                dirs.remove(name)
            elif legacy and rel != "figures":
                found.append(rel + "/")
                dirs.remove(name)
        for name in sorted(names):
            rel = name if base == "." else f"{base}/{name}"
            seen += 1
            path = os.path.join(root, name)
            ours = (rel in listed) if listed is not None else (legacy and _legacy_listed(rel))
            if not ours or os.path.islink(path) or not os.path.isfile(path):
                found.append(rel)
        if len(found) >= limit or seen > _MAX_ENTRIES:
            break
    if seen > _MAX_ENTRIES and not found:
        found.append(f"more than {_MAX_ENTRIES} files")
    return found[:limit]


def _has_report_schema(path) -> bool:
    import json
    from pathlib import Path

    try:
        data = json.loads((Path(path) / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith(SCHEMA_PREFIX)


def is_report_folder(path) -> bool:
    """True if ``path`` is a folder holding a report written by shiftlab and nothing else (see
    :func:`foreign_entries`): the only kind of non-empty folder a report replaces."""
    import os

    return (os.path.isdir(path) and not os.path.islink(path)
            and (_marker_listing(path) is not None or _has_report_schema(path)) and not foreign_entries(path))


def write_report(results: Mapping, out_dir, force: bool = False, extra_figures: Mapping | None = None,
                 progress: bool = False, images: Mapping | None = None, files: Mapping[str, bytes] | None = None):
    """Write ``results.json``, the figures and ``index.html`` into ``out_dir``; return the page's path.

    ``files`` (plain file name -> bytes) are written into the folder too (the fine-tuned model).

    A report owns its whole folder: ``out_dir`` must be absent, empty, or an earlier shiftlab report holding
    nothing but its own files (its marker, :data:`MARKER`, lists them); anything else is refused (InputError),
    ``force`` included (kept for compatibility: it never lets a report replace files it did not write). The
    report is written into a staging folder of its own (``tempfile.mkdtemp`` next to ``out_dir``: concurrent
    runs never share one), removed if anything fails, and swapped in at the end, so an interrupted run leaves
    the previous report exactly as it was.
    """
    import os
    import shutil
    import socket
    import tempfile
    from pathlib import Path

    from shiftlab._io import atomic_write_bytes, atomic_write_text, check_free_space, write_json
    from shiftlab.errors import InputError

    out = check_output_folder(out_dir, force)
    names = [str(n) for n in (files or {})]
    if any(n != Path(n).name or n in ("", ".", "..", "results.json", "index.html", "figures", _STAGING_MARK, MARKER)
           or n.startswith(".") for n in names):
        raise InputError(f"report files must be plain file names, got {names}")
    check_free_space(out.parent, 8 << 20, "--out")
    _remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name[:48]}.staging-"))
    try:
        (staging / _STAGING_MARK).write_text(f"{os.getpid()} {socket.gethostname()}\n")
        figures = render_figures(results, staging / "figures", extra_figures=extra_figures, progress=progress,
                                 images=images)
        to_save = dict(results)
        to_save["figures"] = figures
        for name, data in (files or {}).items():
            atomic_write_bytes(staging / str(name), bytes(data), force=True)
        write_json(staging / "results.json", to_save, force=True)
        atomic_write_text(staging / "index.html", render_html(to_save, figures), force=True)
        written = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*")
                         if p.is_file() and p.name != _STAGING_MARK)
        write_json(staging / MARKER, {"written by": "shiftlab report", "files": written}, force=True)
        (staging / _STAGING_MARK).unlink()
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "index.html"


def _swap_in(staging, out) -> None:
    """Put the finished ``staging`` folder at ``out``; an earlier report there is moved aside, checked once more
    (nothing but its own files) and only then removed. Another run swapping at the same time is retried."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from shiftlab.errors import InputError

    for _ in range(20):
        previous = None
        if os.path.lexists(out):
            # (what it holds is checked once it is ours, below: another run may be swapping it right now)
            if os.path.islink(out) or not os.path.isdir(out):
                if not os.path.lexists(out):  # another run moved it aside between the two looks: try again
                    continue
                raise InputError(f"--out {out} changed during the run and now holds files shiftlab report did not "
                                 f"write; the report was not written: move them away and run again")
            previous = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name[:48]}.previous-"))
            try:
                os.rename(out, previous)  # onto an empty folder of our own: allowed, and atomic
            except OSError:  # another run moved it first
                os.rmdir(previous)
                continue
            if foreign_entries(previous):  # a file added since the check: give the folder back untouched
                os.rename(previous, out)
                raise InputError(f"--out {out} changed during the run and now holds files shiftlab report did not "
                                 f"write; the report was not written: move them away and run again")
        try:
            os.rename(staging, out)
        except OSError as exc:
            if os.path.lexists(out):  # another run put its report there meanwhile: replace that one in turn
                if previous is not None:
                    shutil.rmtree(previous, ignore_errors=True)
                continue
            if previous is not None:  # put the earlier report back as it was
                os.rename(previous, out)
            raise InputError(f"--out {out}: cannot put the report in place ({exc.strerror or exc}); the earlier "
                             f"report, if any, is unchanged") from None
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        return
    raise InputError(f"--out {out}: other runs kept replacing the folder; the report was not written")


def _remove_stale_staging(out) -> None:
    """Remove staging folders of ``out`` whose run died (kill -9) on this machine; never another's or a user's."""
    import os
    import shutil
    import socket

    for folder in out.parent.glob(f".{out.name[:48]}.staging-*"):
        try:
            pid, host = (folder / _STAGING_MARK).read_text().split()
        except (OSError, ValueError):
            continue
        if host != socket.gethostname() or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def _inputs_inside(out, inputs) -> str | None:
    """The first of ``inputs`` (flag, spec) that is ``out`` itself or lies inside it, shown as ``flag spec``."""
    import os
    from pathlib import Path

    target = os.path.realpath(out)
    for flag, spec in inputs or ():
        if spec is None:
            continue
        spec = str(spec)
        for candidate in (spec, spec.rsplit(":", 1)[0]):  # file.py:factory names file.py
            if not candidate or not os.path.exists(candidate):
                continue
            real = os.path.realpath(Path(candidate).expanduser())
            if real == target or real.startswith(target.rstrip(os.sep) + os.sep):
                return f"{flag} {spec}"
    return None


def check_output_folder(out_dir, force: bool = False, inputs=()):
    """The report folder as a Path, if a report may be written there; checked before any work.

    It may be: absent, empty, or an earlier shiftlab report holding nothing but its own files. Refused
    (InputError, one line, ``force`` or not): a folder holding anything else, the current folder or one above
    it, a folder that is or holds one of ``inputs`` (pairs of flag and spec, e.g. ``("--data", "photos/")``:
    a report replaces its whole folder), a file, and a parent that cannot be written. A link to a folder
    gives the folder it names.
    """
    import os
    from pathlib import Path

    from shiftlab._io import check_output_folder_path
    from shiftlab.errors import InputError

    out = Path(out_dir).expanduser() if out_dir is not None else out_dir
    check_output_folder_path(out, "--out")
    if out.is_symlink():
        out = Path(os.path.realpath(out))
    real = Path(os.path.realpath(out))
    here = Path(os.path.realpath(os.getcwd()))
    if real == here or real in here.parents:
        where = "the current folder" if real == here else "a folder above the current one"
        raise InputError(f"--out {out_dir} is {where}; a report replaces its whole folder, so give it a folder of "
                         f"its own, e.g. --out shiftlab-report")
    inside = _inputs_inside(real, inputs)
    if inside is not None:
        raise InputError(f"--out {out_dir} holds {inside}; a report replaces its whole folder, so write it "
                         f"elsewhere, e.g. --out shiftlab-report")
    if out.is_dir():
        foreign = foreign_entries(out)
        if foreign:
            raise InputError(f"--out {out} is not empty and holds files shiftlab report did not write "
                             f"({', '.join(foreign)}{', ...' if len(foreign) == 3 else ''}); a report replaces its "
                             f"whole folder and never a user's files, even with --force: choose a new or empty "
                             f"folder, or move those files away")
    check_output_folder_path(out.parent if str(out.parent) else Path("."), "--out")
    return out
