"""Bounded reads of dataset files from a zip archive or a folder.

Dataset loaders read whole member files into memory; :func:`read_member` refuses any member whose
uncompressed size exceeds a cap (``MAX_MEMBER_BYTES`` by default), so a crafted archive (a "zip
bomb", or a header that understates the size) cannot exhaust memory.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

__all__ = ["MAX_MEMBER_BYTES", "read_file", "read_member"]

MAX_MEMBER_BYTES = (
    2 * 1024**3
)  # 2 GiB: far above every bundled dataset file (DBLP node.dat: 128 MB)


def _check_cap(max_bytes: int) -> None:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_member_bytes must be a positive int of bytes, got {max_bytes!r}")


def _too_big(where: str, size: int, max_bytes: int) -> ValueError:
    return ValueError(
        f"{where} is {size:,} bytes uncompressed, over the {max_bytes:,}-byte cap on files read "
        "into memory; pass a larger max_member_bytes if the file is genuine"
    )


def read_member(archive: zipfile.ZipFile, name: str, *, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of member ``name`` of an open zip, at most ``max_bytes`` of them.

    Raises:
        KeyError: when the member is absent.
        ValueError: when its declared or actual uncompressed size exceeds ``max_bytes``.
    """
    _check_cap(max_bytes)
    info = archive.getinfo(name)
    where = f"{archive.filename}:{name}"
    if info.file_size > max_bytes:
        raise _too_big(where, info.file_size, max_bytes)
    with archive.open(info) as f:
        data = f.read(max_bytes + 1)  # never more than the cap, whatever the header says
    if len(data) > max_bytes:
        raise _too_big(where, len(data), max_bytes)
    return data


def read_file(path: str | Path, *, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of a plain file, refusing files over ``max_bytes`` (same rule as zip members)."""
    _check_cap(max_bytes)
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise _too_big(str(p), size, max_bytes)
    return p.read_bytes()
