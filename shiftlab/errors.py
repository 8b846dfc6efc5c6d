"""The one family of errors shiftlab raises for bad input, and the rule for which one.

Every error a user can cause by passing the wrong thing is a :class:`ShiftlabError`
(a ``ValueError``), with a one-line message that names the problem. The CLI turns
these into ``shiftlab: error: <message>`` and exit code 2, without a traceback.

The rule:

- a bad **argument value** (a count, size, stride, filter size, dtype, option name, shift list, file, spec,
  model) raises :class:`InputError`;
- a bad **tensor** (wrong rank, size, channel count or dtype of the data itself, NaN or Inf, outputs that
  do not match) raises :class:`ShapeError`.

Integer arguments are checked by one function, ``shiftlab._checks.check_int``. Some argument checks raised
:class:`ShapeError` before this rule was written; they now raise :class:`ArgumentShapeError`, which is an
:class:`InputError` (the rule) and still a :class:`ShapeError`, so that code catching the old class keeps
working (as ``numpy.AxisError`` is both a ``ValueError`` and an ``IndexError``).
"""

from __future__ import annotations

__all__ = ["ShiftlabError", "ShapeError", "InputError", "ArgumentShapeError", "printable"]


class ShiftlabError(ValueError):
    """Base class of every error caused by bad input to shiftlab."""


class ShapeError(ShiftlabError):
    """A tensor or array has the wrong rank, size, channel count or dtype."""


class InputError(ShiftlabError):
    """A bad argument value: a count, size, dtype or option out of range, or a file, model or data spec that is
    missing, unreadable or unknown."""


class ArgumentShapeError(InputError, ShapeError):
    """A bad argument value (an :class:`InputError`) whose check raised :class:`ShapeError` before the rule of
    this module; it is both, so ``except ShapeError`` written against older shiftlab still catches it."""


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
