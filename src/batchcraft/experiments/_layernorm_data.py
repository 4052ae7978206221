"""Data for the ``layernorm`` experiment: images read row by row as sequences, and stdlib text.

Sequential Fashion-MNIST (28 rows of 28 pixels) is used when the Debian package
``dataset-fashion-mnist`` is installed (or ``$BATCHCRAFT_FASHION_MNIST`` points at its IDX
files); otherwise scikit-learn's bundled ``load_digits`` (8 rows of 8 pixels). The character LM
reads bytes of CPython standard-library sources (``$BATCHCRAFT_TEXT`` names another text file).
Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct
import sysconfig
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["digits_sequences", "fashion_mnist_dir", "image_sequences", "stdlib_text"]

_FMNIST_DIRS = (
    "/usr/share/dataset-fashion-mnist",
    "/usr/share/fashion-mnist",
    "/usr/share/datasets/fashion-mnist",
    "/usr/share/dataset-fashion-mnist/data/fashion",
)


def fashion_mnist_dir() -> Path | None:
    """Folder holding ``train-images-idx3-ubyte[.gz]``, or ``None``."""
    cands = [os.environ.get("BATCHCRAFT_FASHION_MNIST", ""), *_FMNIST_DIRS]
    for c in cands:
        if c and Path(c).is_dir():
            hits = sorted(Path(c).rglob("train-images-idx3-ubyte*"))
            if hits:
                return hits[0].parent
    return None


def _read_idx(path: Path) -> Tensor:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:  # type: ignore[operator]
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).view(*dims)


def _idx(folder: Path, stem: str) -> Tensor:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return _read_idx(folder / name)
    raise FileNotFoundError(f"{stem}[.gz] not found in {folder}")


def digits_sequences() -> tuple[Tensor, Tensor]:
    """scikit-learn digits as sequences: ``x: [1797, T=8, I=8]`` in [0, 1], ``y: [1797]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0
    return x, torch.tensor(d.target, dtype=torch.int64)


def image_sequences(
    n_train: int, n_test: int, g: torch.Generator
) -> tuple[str, Tensor, Tensor, Tensor, Tensor]:
    """``(name, x_train [N, T, I], y_train, x_test, y_test)``: Fashion-MNIST if installed, else digits."""
    folder = fashion_mnist_dir()
    if folder is not None:
        xtr = _idx(folder, "train-images-idx3-ubyte").float() / 255.0
        ytr = _idx(folder, "train-labels-idx1-ubyte").long()
        xte = _idx(folder, "t10k-images-idx3-ubyte").float() / 255.0
        yte = _idx(folder, "t10k-labels-idx1-ubyte").long()
        i = torch.randperm(len(xtr), generator=g)[:n_train]
        j = torch.randperm(len(xte), generator=g)[:n_test]
        return "sequential Fashion-MNIST (28x28)", xtr[i], ytr[i], xte[j], yte[j]
    x, y = digits_sequences()
    perm = torch.randperm(len(x), generator=g)
    n_test = min(n_test, len(x) // 4)
    te, tr = perm[:n_test], perm[n_test:][:n_train]
    return (
        "sequential sklearn digits (8x8; Fashion-MNIST not installed)",
        x[tr],
        y[tr],
        x[te],
        y[te],
    )


def stdlib_text(max_bytes: int) -> tuple[str, Tensor]:
    """``(name, bytes [N] int64 < 128)`` from ``$BATCHCRAFT_TEXT`` or CPython stdlib sources."""
    env = os.environ.get("BATCHCRAFT_TEXT")
    if env and Path(env).is_file():
        raw = Path(env).read_bytes()[:max_bytes]
        name = Path(env).name
    else:
        lib = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(
            p for p in lib.glob("*.py") if p.stat().st_size > 20_000 and not p.name.startswith("_")
        )
        buf = bytearray()
        for p in files:
            buf += p.read_bytes()
            if len(buf) >= max_bytes:
                break
        raw, name = bytes(buf[:max_bytes]), f"CPython stdlib sources ({lib})"
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long().clamp_max(127)
    return name, t
