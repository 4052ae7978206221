"""One error layer for the command line: expected failures print one line and exit 2.

Expected failures are bad option values (click's usage errors), and what the library raises for
bad input: ``ValueError`` / ``TypeError`` (including :class:`batchcraft.utils.io.CheckpointError`
and :class:`batchcraft.recipes.ResumeError`), missing files, folders given for files,
unwritable outputs and a missing optional package (:class:`batchcraft._capabilities.MissingExtraError`,
whose message names the extra to install). They print ``error: <message>`` on one line and exit with status 2; the
global ``--debug`` option shows the traceback instead. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from batchcraft._capabilities import MissingExtraError

__all__ = ["EXPECTED", "BatchcraftGroup", "describe", "fail", "one_line"]

EXPECTED: tuple[type[BaseException], ...] = (
    MissingExtraError,
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def _click_class(name: str) -> type[Exception]:
    """click's exception class ``name`` as typer uses it (typer >= 0.20 vendors its own click)."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name:
            return cls
    raise ImportError(f"typer's click has no {name}")


_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


def one_line(msg: object) -> str:
    """``msg`` as a single line (newlines folded, surrounding space stripped)."""
    return " ".join(str(msg).split())


_OS_WORDS = {
    FileNotFoundError: "{f} does not exist (no such file or folder)",
    FileExistsError: "{f} already exists (a file where a folder is expected?)",
    IsADirectoryError: "{f} is a folder; give a file path",
    NotADirectoryError: "{f} is not a folder (a file where a folder is expected)",
    PermissionError: "no permission to use {f}",
}


def describe(exc: BaseException) -> str:
    """The message of an expected failure, in words: an ``OSError`` raised by the system (it has a
    ``filename``, and a message like ``[Errno 21] Is a directory: 'x'``) says what the path is and
    what was expected; our own messages pass through unchanged."""
    if isinstance(exc, OSError) and exc.filename is not None:
        for cls, words in _OS_WORDS.items():
            if isinstance(exc, cls):
                return words.format(f=repr(str(exc.filename)))
    return str(exc) or type(exc).__name__


def _print_error(msg: str) -> None:
    from rich.markup import escape

    from batchcraft.utils.progress import console

    # escape: messages hold literal brackets ("pip install 'batchcraft[hf]'") that rich would eat
    console.print(
        f"[red]error:[/red] {escape(one_line(msg))}", highlight=False, markup=True, soft_wrap=True
    )


def fail(msg: str) -> None:
    """Print one error line and exit 2 (for checks made inside a command)."""
    _print_error(msg)
    raise typer.Exit(2)


class BatchcraftGroup(TyperGroup):
    """The root command group: runs the command and turns expected failures into one line."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        try:
            code = super().main(
                args=argv, prog_name=prog_name, complete_var=complete_var,
                standalone_mode=False, **extra,
            )  # fmt: skip
            code = code if isinstance(code, int) else 0
        except _UsageError as exc:
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "batchcraft"
            _print_error(f"{exc.format_message()} (see '{where} --help')")  # type: ignore[attr-defined]
            code = 2
        except _ClickException as exc:
            _print_error(exc.format_message())  # type: ignore[attr-defined]
            code = int(getattr(exc, "exit_code", 1))
        except typer.Abort:
            _print_error("aborted")
            code = 130
        except KeyboardInterrupt:
            _print_error("interrupted")
            code = 130
        except EXPECTED as exc:
            if debug:
                raise
            _print_error(describe(exc))
            code = 2
        if standalone_mode:
            sys.exit(code)
        return code
