"""The one family of errors shiftlab raises for bad input.

Every error a user can cause by passing the wrong thing is a :class:`ShiftlabError`
(a ``ValueError``), with a one-line message that names the problem. The CLI turns
these into ``shiftlab: error: <message>`` and exit code 2, without a traceback.
"""

from __future__ import annotations

__all__ = ["ShiftlabError", "ShapeError", "InputError"]


class ShiftlabError(ValueError):
    """Base class of every error caused by bad input to shiftlab."""


class ShapeError(ShiftlabError):
    """A tensor or array has the wrong rank, size, channel count or dtype."""


class InputError(ShiftlabError):
    """A file, model name, data spec or option is missing, unreadable or unknown."""
