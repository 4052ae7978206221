"""Progress display for long jobs: a rich progress bar on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from batchcraft.utils.log import console, is_quiet

T = TypeVar("T")

__all__ = ["console", "interactive", "progress_bar", "track"]


def interactive() -> bool:
    """True on a terminal outside CI; progress bars are drawn only then."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


class _Task:
    """Handle returned by :func:`progress_bar`; ``advance()`` and ``update(**fields)``."""

    def __init__(
        self,
        progress: Progress | None,
        task_id: int | None,
        total: int | None,
        desc: str,
        *,
        silent: bool = False,
    ):
        self._progress, self._id, self.total, self.desc = progress, task_id, total, desc
        self._silent = silent
        self.completed = 0
        self._last_log = time.monotonic()
        self._t0 = time.monotonic()

    def advance(self, n: int = 1, **fields: object) -> None:
        self.completed += n
        if self._progress is not None and self._id is not None:
            self._progress.update(self._id, advance=n)  # type: ignore[arg-type]
            if fields:
                self._progress.update(self._id, description=self._describe(fields))  # type: ignore[arg-type]
        elif self._silent:
            return
        elif time.monotonic() - self._last_log > 10 or self.completed == self.total:
            self._last_log = time.monotonic()
            total = f"/{self.total}" if self.total else ""
            extra = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            el = time.monotonic() - self._t0
            console.print(
                f"[{self.desc}] {self.completed}{total} ({el:.0f}s) {extra}", highlight=False
            )

    def _describe(self, fields: dict[str, object]) -> str:
        return self.desc + " " + " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[_Task]:
    """Context manager yielding a task with ``advance(n=1, **fields)``.

    Draws a rich bar with a time estimate on a terminal; in CI or when piped, prints a line at
    most every 10 seconds so logs stay short.
    """
    if is_quiet():  # --quiet: no bar and no progress lines
        yield _Task(None, None, total, description, silent=True)
        return
    if not interactive():
        yield _Task(None, None, total, description)
        return
    prog = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with prog:
        tid = prog.add_task(description, total=total)
        yield _Task(prog, tid, total, description)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress display."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, description) as task:
        for item in items:
            yield item
            task.advance()
