"""The one family of errors shiftlab raises for bad input.

Every error a user can cause by passing the wrong thing is a :class:`ShiftlabError`
(a ``ValueError``), with a one-line message that names the problem. The CLI turns
these into ``shiftlab: error: <message>`` and exit code 2, without a traceback.
"""

from __future__ import annotations

__all__ = ["ShiftlabError", "ShapeError", "InputError", "printable"]


class ShiftlabError(ValueError):
    """Base class of every error caused by bad input to shiftlab."""


class ShapeError(ShiftlabError):
    """A tensor or array has the wrong rank, size, channel count or dtype."""


class InputError(ShiftlabError):
    """A file, model name, data spec or option is missing, unreadable or unknown."""


def printable(text) -> str:
    """``text`` safe to show on a terminal: every character that is not printable is escaped as ``repr`` does.

    File names come from outside: ``\\x1b[31m`` would recolour the terminal, ``\\r`` would overwrite the
    line, ``\\n`` would forge another one. Control characters (C0, DEL, C1), format characters (bidi
    overrides), line and paragraph separators and unusual spaces come out as ``\\x1b``, ``\\r``, ``\\n``,
    ``\\u202e``; the bytes of a file name that is not valid UTF-8 (Python's surrogate escapes) as ``\\xff``.
    Backslashes and every printable character, any script, are kept as they are. Every place that shows an
    outside name (the CLI's error line, the audit table, skipped files, progress labels) goes through here.

    >>> printable("cat\\x1b[31m.png\\r")
    'cat\\\\x1b[31m.png\\\\r'
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # an undecodable byte of a file name (os.fsdecode's surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)
