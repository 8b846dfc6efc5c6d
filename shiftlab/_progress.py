"""Progress on stderr, off unless asked for: a rich bar on a terminal, plain periodic lines otherwise (a log file,
a pipe, a batch job), which a log can read. Library code never prints. Private."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["Bar", "track", "PLAIN_EVERY_S"]

T = TypeVar("T")

#: seconds between two plain progress lines when stderr is not a terminal (and one line at the end)
PLAIN_EVERY_S = 10.0


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Lines:
    """Plain progress lines on stderr, ``DESCRIPTION: 120/960 (12%), 0:01:05 elapsed, ~0:07:30 left[, STATUS]``: at
    most one every ``every`` seconds (time.monotonic), and one at the end; no ANSI codes, no carriage returns."""

    def __init__(self, total: int | None, description: str, completed: int, every: float):
        from shiftlab.errors import printable

        self.total, self.description, self.every = total, printable(description), every
        self.completed = self.first = completed
        self.started = self.last = time.monotonic()
        self.status, self.shown = "", completed

    def advance(self, status: str | None) -> None:
        self.completed += 1
        self.status = status or ""
        if time.monotonic() - self.last >= self.every:
            self.show()

    def show(self) -> None:
        from shiftlab.errors import printable

        now = time.monotonic()
        elapsed = now - self.started
        text = f"{self.description}: {self.completed}"
        if self.total:
            text += f"/{self.total} ({100 * self.completed // self.total}%)"
        text += f", {_clock(elapsed)} elapsed"
        done = self.completed - self.first
        if self.total and done > 0 and self.completed < self.total:
            text += f", ~{_clock(elapsed / done * (self.total - self.completed))} left"
        if self.status:
            text += f", {self.status}"
        print(printable(text), file=sys.stderr, flush=True)
        self.last, self.shown = now, self.completed

    def close(self) -> None:
        if self.completed != self.shown:
            self.show()


class Bar:
    """A rich progress bar on stderr, or nothing unless ``enabled``; a context manager.

    It starts at ``completed`` of ``total`` (a resumed run), and with ``status=True`` shows a text after the bar
    that each :meth:`advance` replaces (e.g. the loss). The description is shown literally. When stderr is not a
    terminal, it prints plain lines instead (at most one every ``every`` seconds, and one at the end).
    """

    def __init__(self, total: int | None, description: str = "", completed: int = 0, enabled: bool = False,
                 status: bool = False, every: float = PLAIN_EVERY_S):
        self.total, self.description, self.completed = total, description, completed
        self.enabled, self.status, self.every = enabled, status, every
        self.progress = self.lines = None

    def __enter__(self) -> Bar:
        if not self.enabled:
            return self
        isatty = getattr(sys.stderr, "isatty", None)
        if not (isatty is not None and isatty()):  # a log file or a pipe: a bar would be cut to "0:00:..."
            self.lines = _Lines(self.total, self.description, self.completed, self.every)
            return self
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from shiftlab.errors import printable

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn()]
        if self.status:
            columns.append(TextColumn("{task.fields[status]}"))
        self.progress = Progress(*columns, console=Console(stderr=True), transient=False)
        self.progress.__enter__()
        fields = {"status": ""} if self.status else {}
        self.task = self.progress.add_task(escape(printable(self.description)), total=self.total,  # shown literally
                                           completed=self.completed, **fields)
        return self

    def advance(self, status: str | None = None) -> None:
        """One step done; with a status column, ``status`` replaces its text."""
        if self.lines is not None:
            self.lines.advance(status if self.status else None)
            return
        if self.progress is None:
            return
        if self.status:
            self.progress.update(self.task, advance=1, status=status or "")
        else:
            self.progress.advance(self.task)

    def __exit__(self, *exc) -> bool:
        if self.lines is not None:
            self.lines.close()
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False


def track(items: Iterable[T], description: str = "", total: int | None = None, enabled: bool = False) -> Iterator[T]:
    """Iterate over ``items``, showing a rich progress bar on stderr when ``enabled``."""
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Bar(total, description, enabled=True) as bar:
        for item in items:
            yield item
            bar.advance()
