"""The ``batchcraft`` logger: library modules log through ``logging.getLogger(__name__)`` and never
print; the command line configures one handler (``--quiet`` / ``-v``) with :func:`configure_logging`.
"""

from __future__ import annotations

import logging

from rich.console import Console

__all__ = ["LOGGER_NAME", "configure_logging", "console", "get_logger", "is_quiet"]

LOGGER_NAME = "batchcraft"

# log lines never wrap mid-sentence; text is printed as given (a "[name]" prefix or a path with
# brackets is not a style tag): the few styled lines ask for markup=True themselves
console = Console(stderr=True, soft_wrap=True, markup=False)


def get_logger(name: str = LOGGER_NAME) -> logging.Logger:
    """A logger under the ``batchcraft`` hierarchy (``name`` is usually ``__name__``)."""
    return logging.getLogger(name if name.startswith(LOGGER_NAME) else f"{LOGGER_NAME}.{name}")


def configure_logging(verbosity: int = 0) -> None:
    """Route ``batchcraft`` log records to stderr through the shared rich console.

    Args:
        verbosity: ``-1`` quiet (warnings and errors only, no progress), ``0`` normal (info),
            ``1`` or more verbose (debug).
    """
    from rich.logging import RichHandler

    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    root = logging.getLogger(LOGGER_NAME)
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = RichHandler(
        console=console, show_time=False, show_path=verbosity > 0, show_level=verbosity > 0,
        markup=False, highlighter=None,
    )  # fmt: skip
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def is_quiet() -> bool:
    """True when ``batchcraft`` info messages (and progress displays) are switched off."""
    return not logging.getLogger(LOGGER_NAME).isEnabledFor(logging.INFO) and bool(
        logging.getLogger(LOGGER_NAME).handlers
    )
