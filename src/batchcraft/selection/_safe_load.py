"""Loading selection state without unpickling arbitrary objects.

Every file read back by :mod:`batchcraft.selection` (hard-batch checkpoints, the CoLM selector
state) goes through :func:`load_state`: ``torch.load(weights_only=True)`` admits tensors, numbers,
strings, ``None`` and plain containers only, so a crafted file cannot run code while it loads.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch

__all__ = ["load_state"]


def load_state(path: str | os.PathLike[str], *, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one-sentence errors.

    Args:
        path: the file.
        what: what the file should be (``"hard-batch checkpoint"``), for the error message.

    Raises:
        ValueError: the file holds other Python objects (refused unread) or is not a readable
            ``torch.save`` file (truncated, garbage).
    """
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is damaged
        raise ValueError(
            f"{path} is not a readable {what} (truncated, or not written by torch.save)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"refusing to load {path}: it is not a plain {what} (it holds Python objects other "
            "than tensors, numbers, strings and containers, which could run code when loaded)"
        ) from exc
    except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{path} is not a readable {what} (truncated, or not written by torch.save): {exc}"
        ) from exc
