"""Image files named by a folder (flat, or one subfolder per class) or by a text list of paths.

:class:`_Walk` holds the listing rules (links, second names of one file, special files); the openers
return an :class:`~shiftlab.data.source_types.ImageFiles` that decodes each file only when it is asked for.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from shiftlab.data.decoding import IMAGE_EXTENSIONS, _not_regular, is_image_file
from shiftlab.data.labels import _INT64_MAX
from shiftlab.data.source_types import ImageFiles
from shiftlab.errors import InputError


def _visible(name: str) -> bool:
    return not name.startswith(".")


class _Walk:
    """Listing one data folder without following a link back into it, and without counting a file twice.

    The rules (one place for the flat and the class-folder layouts):

    - a symbolic link (to a file or a folder) whose target is the data folder, lies inside it, or is one of its
      parents is not followed: what it points to is either listed under its own name already, or it is a
      cycle (``loop -> ..``) that would list the other classes' images again under this label. It is recorded
      in ``skipped`` with the reason;
    - a link to a file or folder outside the data folder is followed (a folder of links into a dataset store is
      a common layout); each folder is walked once (by ``(st_dev, st_ino)``), so links among outside folders
      cannot loop either;
    - a file is counted once, by ``(st_dev, st_ino)``: a second name of the same file (a hard link, two links
      to one outside file) is recorded in ``skipped`` as "the same file as ...", in sorted order, so the first
      name (and its class) counts;
    - only regular files are taken as images: a fifo, socket or device node with an image extension is recorded
      in ``skipped`` (never opened: opening a fifo blocks forever); files without an image extension are counted
      in ``ignored``.
    """

    def __init__(self, root: Path):
        self.root = root
        self.real = root.resolve()
        self.skipped: list = []
        self.ignored = 0
        self.folders: set = set()
        for folder in (self.real, *self.real.parents):  # a bind mount of a parent is a cycle too
            try:
                info = os.stat(folder)
            except OSError:
                continue
            self.folders.add((info.st_dev, info.st_ino))
        self.folders.discard(self._key(self.real))  # the root itself is walked (once)
        self.files: dict = {}

    @staticmethod
    def _key(path) -> tuple | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return (info.st_dev, info.st_ino)

    def entries(self, folder: Path) -> list[tuple[str, Path]] | None:
        """``(kind, path)`` of the visible entries of ``folder`` in name order, kind ``"dir"``, ``"image"`` or
        ``"other"``; ``None`` when the folder cannot be listed (recorded) or was walked already."""
        key = self._key(folder)
        if key is None or key in self.folders:
            if key is None:
                self.skipped.append((str(folder), "folder cannot be read"))
            elif folder != self.root:
                self.skipped.append((str(folder), "a folder listed already (a link cycle or a second link to it): "
                                                  "not listed again"))
            return None
        self.folders.add(key)
        try:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it if _visible(e.name))
        except OSError as exc:
            if folder == self.root:
                raise InputError(f"cannot list folder {folder} ({type(exc).__name__})") from None
            self.skipped.append((str(folder), f"folder cannot be read ({type(exc).__name__})"))
            return None
        out = []
        for name in names:
            kind = self.kind(folder / name)
            if kind is not None:
                out.append((kind, folder / name))
        return out

    def kind(self, path: Path) -> str | None:
        """What ``path`` is, from ``lstat``/``stat`` only (nothing is opened); ``None``: left out (recorded)."""
        image = is_image_file(path.name)
        try:
            info = os.lstat(path)
        except OSError as exc:
            self.skipped.append((str(path), f"cannot be read ({type(exc).__name__})"))
            return None
        if stat.S_ISLNK(info.st_mode):
            try:
                target = path.resolve(strict=True)
                info = os.stat(path)
            except (OSError, RuntimeError):  # RuntimeError: a link loop, in Python < 3.13
                if not image:
                    self.ignored += 1
                    return None
                self.skipped.append((str(path), "a broken link (its target does not exist)"))
                return None
            if target == self.real or self.real in target.parents or target in self.real.parents:
                if stat.S_ISDIR(info.st_mode) or image:
                    cycle = target == self.real or target in self.real.parents
                    where = "the data folder or a parent of it (a cycle)" if cycle else "inside the data folder"
                    self.skipped.append((str(path), f"a link to {where}: not followed, so no image is counted "
                                                    f"twice"))
                else:
                    self.ignored += 1
                return None
        if stat.S_ISDIR(info.st_mode):
            return "dir"
        if not image:
            self.ignored += 1
            return None
        if not stat.S_ISREG(info.st_mode):
            self.skipped.append((str(path), _not_regular(info.st_mode)))
            return None
        return "image"

    def images_under(self, folder: Path) -> list[Path]:
        """The image files under ``folder``, recursively, in sorted order of their path below it."""
        found: list[Path] = []
        stack = [folder]
        while stack:
            entries = self.entries(stack.pop())
            if entries is None:
                continue
            found += [p for kind, p in entries if kind == "image"]
            stack.extend(reversed([p for kind, p in entries if kind == "dir"]))
        found.sort(key=lambda p: p.relative_to(folder).parts)
        return found

    def once(self, path: Path) -> bool:
        """True the first time a file is seen (by device and inode); a second name is recorded in skipped."""
        key = self._key(path)
        if key is None:
            return True  # gone since it was listed: decoding will say so
        first = self.files.setdefault(key, path)
        if first is not path:
            self.skipped.append((str(path), f"the same file as {first}: counted once"))
            return False
        return True


def _open_folder(root: Path, limit: int | None) -> ImageFiles:
    """A folder of images, flat or one subfolder per class, listed by :class:`_Walk` (see there for links)."""
    walk = _Walk(root)
    entries = walk.entries(root) or []
    class_dirs = [p for kind, p in entries if kind == "dir"]
    loose = [p for kind, p in entries if kind == "image"]
    paths: list[Path] = []
    labels: list[int] = []
    if class_dirs:  # ImageFolder layout: one subfolder per class, labels by sorted folder name
        class_names = [d.name for d in class_dirs]
        for label, d in enumerate(class_dirs):
            files = [f for f in walk.images_under(d) if walk.once(f)]
            if not files and not any(s[0].startswith(str(d)) for s in walk.skipped):
                walk.skipped.append((str(d), "class folder holds no image files"))
            paths += files
            labels += [label] * len(files)
        for p in loose:
            walk.skipped.append((str(p), "not inside a class subfolder"))
    else:
        class_names = None
        paths = [p for p in loose if walk.once(p)]
        labels = [-1] * len(paths)
    skipped, ignored = walk.skipped, walk.ignored
    if limit is not None:
        paths, labels = paths[:limit], labels[:limit]
    if not paths:
        detail = f"; e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        what = f" ({ignored} files without an image extension)" if ignored else ""
        raise InputError(f"no image files in folder {root}{what}{detail}; image extensions: "
                         f"{', '.join(IMAGE_EXTENSIONS)}")
    return ImageFiles(paths, labels, root, class_names, None, skipped, ignored, str(root))


def _open_list(path: Path, limit: int | None) -> ImageFiles:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the image list {path} ({type(exc).__name__})") from None
    paths: list[Path] = []
    labels: list[int] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        label = -1
        if "\t" in line:
            name, _, tail = line.rpartition("\t")
            if not re.fullmatch(r"\s*-?\d+\s*", tail):
                raise InputError(f"{path}, line {number}: the label after the tab must be an integer, got {tail!r}")
            label = _list_label(tail.strip(), path, number)
        else:
            name = line.strip()
            head, _, tail = name.rpartition(" ")
            if head and re.fullmatch(r"-?\d+", tail) and not (path.parent / name).exists():
                name, label = head.rstrip(), _list_label(tail, path, number)
        file = Path(name.strip()).expanduser()
        paths.append(file if file.is_absolute() else path.parent / file)
        labels.append(label)
        if limit is not None and len(paths) >= limit:
            break
    if not paths:
        raise InputError(f"the image list {path} names no files")
    if not any(p.is_file() for p in paths[:64]):
        raise InputError(f"the image list {path} names no files that exist (the first: {paths[0]}); give one image "
                         f"path per line, relative to the list's folder")
    return ImageFiles(paths, labels, path.parent, None, None, [], 0, str(path))


def _list_label(text: str, path: Path, number: int) -> int:
    """The label on line ``number`` of a list file: a class index, 0 or more, that fits in an int64."""
    value = int(text)
    if value < 0:
        raise InputError(f"{path}, line {number}: label {value} is negative; a label is a class index, 0 or more "
                         f"(leave the label out for an unlabelled image)")
    if value > _INT64_MAX:
        raise InputError(f"{path}, line {number}: label {text[:30]}{'...' if len(text) > 30 else ''} is out of "
                         f"range (a class index, at most {_INT64_MAX})")
    return value
