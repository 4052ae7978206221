"""Lazy matplotlib access with a non-interactive backend (the ``plot`` extra)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """Return ``matplotlib.pyplot`` configured for headless PNG output."""
    from batchcraft._capabilities import require

    mpl = require("matplotlib", "plots in reports")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt
