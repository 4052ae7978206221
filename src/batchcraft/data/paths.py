"""Where optional real data lives: ``--data-dir``, ``$BATCHCRAFT_DATA``, or a folder beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "data_dir_candidates", "find_data_dir"]

DATA_ENV = "BATCHCRAFT_DATA"


def data_dir_candidates(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for real data, in order.

    An ``explicit`` folder (a ``--data-dir`` option) is the only candidate; otherwise
    ``$BATCHCRAFT_DATA`` when set is the only one (a user who names a folder must never get data
    from another); otherwise ``../shared/data`` next to the current folder and next to the source
    checkout.
    """
    if explicit:
        return [Path(explicit)]
    env = os.environ.get(DATA_ENV)
    if env:
        return [Path(env)]
    return [
        Path.cwd().parent / "shared" / "data",
        Path(__file__).resolve().parents[3].parent / "shared" / "data",
    ]


def find_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The first existing folder of :func:`data_dir_candidates`, or ``None``.

    An ``explicit`` folder that does not exist raises ``FileNotFoundError`` (a typo in
    ``--data-dir`` must not silently fall back to another folder). Without real data, callers use
    their synthetic default.
    """
    if explicit and not Path(explicit).is_dir():
        raise FileNotFoundError(f"data folder {str(explicit)!r} does not exist (from --data-dir)")
    for c in data_dir_candidates(explicit):
        if c.is_dir():
            return c
    return None
