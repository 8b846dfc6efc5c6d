"""Progress bars on stderr (rich), off unless asked for. Library code never prints. Private."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Bar:
    """A rich progress bar on stderr, or nothing unless ``enabled``; a context manager.

    It starts at ``completed`` of ``total`` (a resumed run), and with ``status=True`` shows a text after the bar
    that each :meth:`advance` replaces (e.g. the loss). The description is shown literally.
    """

    def __init__(self, total: int | None, description: str = "", completed: int = 0, enabled: bool = False,
                 status: bool = False):
        self.total, self.description, self.completed = total, description, completed
        self.enabled, self.status = enabled, status
        self.progress = None

    def __enter__(self) -> Bar:
        if not self.enabled:
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
        if self.progress is None:
            return
        if self.status:
            self.progress.update(self.task, advance=1, status=status or "")
        else:
            self.progress.advance(self.task)

    def __exit__(self, *exc) -> bool:
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
