"""Option checks shared by the command groups (each raises ``typer.BadParameter``: one line, exit 2)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

__all__ = ["finite", "output_file", "positive", "probability", "unit_fraction"]


def finite(value: float | None) -> float | None:
    """A finite float (NaN and inf rejected)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def positive(value: float | None) -> float | None:
    """A finite float > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number > 0, got {value}")
    return value


def probability(value: float | None) -> float | None:
    """A float in the open interval (0, 1)."""
    if value is not None and not (0.0 < value < 1.0):
        raise typer.BadParameter(f"must lie strictly between 0 and 1, got {value}")
    return value


def unit_fraction(value: float | None) -> float | None:
    """A float in the half-open interval (0, 1]."""
    if value is not None and not (0.0 < value <= 1.0):
        raise typer.BadParameter(f"must lie in (0, 1], got {value}")
    return value


def output_file(value: Path | None) -> Path | None:
    """A file path to write: not a folder, and its parent not a file."""
    if value is None:
        return None
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a folder; give a file name")
    parent = value.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise typer.BadParameter(f"{parent} is a file, so {value} cannot be created")
    return value
