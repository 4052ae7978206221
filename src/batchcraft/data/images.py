"""Small image classification sets for the hard-batch experiments, all local (nothing downloads).

* Fashion-MNIST from the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``, or ``$BATCHCRAFT_FASHION_MNIST``): 60000 + 10000
  grey 28x28 images, 10 classes. :func:`read_idx` parses the IDX format (gzip or plain).
* scikit-learn's ``load_digits`` (1797 grey 8x8 images, bundled with the package): the fallback.
* A seeded 10-class Gaussian mixture where each class has a rare "hard" sub-cluster near another
  class, with an optional label-noise variant.

Every loader returns an :class:`ImageSplit`: ``x: [N, 1, H, W]`` float32 in [0, 1] (or ``[N, F]``
for the mixture), ``y: [N]`` int64.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "FASHION_MNIST_APT_PACKAGE",
    "ImageSplit",
    "fashion_mnist_candidates",
    "find_fashion_mnist",
    "hard_mixture",
    "load_digits_split",
    "load_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_APT_PACKAGE = "dataset-fashion-mnist"
_FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)
_IDX_DTYPES = {
    0x08: (torch.uint8, "B", 1),
    0x09: (torch.int8, "b", 1),
    0x0B: (torch.int16, ">h", 2),
    0x0C: (torch.int32, ">i", 4),
    0x0D: (torch.float32, ">f", 4),
    0x0E: (torch.float64, ">d", 8),
}
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class ImageSplit:
    """Train and test tensors of one dataset.

    Attributes:
        x_train: ``[N, ...]`` float32 inputs. y_train: ``[N]`` int64 labels.
        x_test, y_test: the same for the test split.
        name: dataset name for reports.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    name: str

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max()) + 1

    def train_dataset(self) -> TensorDataset:
        return TensorDataset(self.x_train, self.y_train)

    def test_dataset(self) -> TensorDataset:
        return TensorDataset(self.x_test, self.y_test)


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Parse an IDX file (the MNIST format; ``.gz`` is decompressed).

    Layout: two zero bytes, a type byte (0x08 uint8 ... 0x0E float64), the number of dimensions,
    one big-endian uint32 size per dimension, then the data in row-major big-endian order.

    Returns:
        A tensor of the stored dtype and shape.
    """
    p = Path(path)
    raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{p} is not an IDX file (it must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{p}: unknown IDX type code 0x{code:02x}; expected one of 0x08..0x0E")
    dtype, fmt, size = _IDX_DTYPES[code]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{p}: truncated header ({len(raw)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:head])
    count = 1
    for s in shape:
        count *= s
    if len(raw) - head != count * size:
        raise ValueError(
            f"{p}: header says {shape} ({count * size} data bytes) but the file has {len(raw) - head}"
        )
    if size == 1:
        data = torch.frombuffer(bytearray(raw[head:]), dtype=dtype)
    else:
        import numpy as np

        data = torch.from_numpy(
            np.frombuffer(raw, dtype=np.dtype(fmt), offset=head).astype(fmt[1:])
        )
    return data.reshape(shape).clone()


def fashion_mnist_candidates(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for the Fashion-MNIST IDX files, in order.

    ``$BATCHCRAFT_FASHION_MNIST``, then ``<data dir>/fashion-mnist`` (the data dir is ``data_dir``,
    a ``--data-dir`` option, else :func:`~batchcraft.data.paths.find_data_dir`'s search), then the
    Debian package's ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

    Raises:
        FileNotFoundError: ``data_dir`` is given but is not a folder.
    """
    from batchcraft.data.paths import find_data_dir

    env = os.environ.get("BATCHCRAFT_FASHION_MNIST", "")
    cands = [Path(env)] if env else []
    folder = find_data_dir(data_dir)
    if folder is not None:
        cands.append(folder / "fashion-mnist")
    return cands + [Path(d) for d in _FASHION_DIRS]


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder of :func:`fashion_mnist_candidates` holding all four IDX files, or ``None``."""
    for c in fashion_mnist_candidates(data_dir):
        if all(_idx_file(c, f) is not None for pair in _FILES.values() for f in pair):
            return c
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None, *, data_dir: str | os.PathLike[str] | None = None
) -> ImageSplit:
    """Fashion-MNIST as ``[N, 1, 28, 28]`` float32 in [0, 1] and int64 labels.

    Args:
        root: the folder holding the IDX files; ``None`` searches :func:`fashion_mnist_candidates`.
        data_dir: the data folder of that search (a ``--data-dir`` option).

    Raises:
        FileNotFoundError: when the files are absent, naming the folders tried and the Debian
            package to install.
    """
    folder = Path(root) if root is not None else find_fashion_mnist(data_dir)
    if folder is None:
        tried = ", ".join(str(c) for c in fashion_mnist_candidates(data_dir))
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found (tried {tried}); install them with "
            f"`apt-get install {FASHION_MNIST_APT_PACKAGE}`, set $BATCHCRAFT_FASHION_MNIST, or "
            "put them in <data dir>/fashion-mnist"
        )
    out: list[Tensor] = []
    for split in ("train", "test"):
        img_stem, lab_stem = _FILES[split]
        img, lab = _idx_file(folder, img_stem), _idx_file(folder, lab_stem)
        if img is None or lab is None:
            raise FileNotFoundError(
                f"{folder} lacks {img_stem}[.gz] or {lab_stem}[.gz]; install the files with "
                f"`apt-get install {FASHION_MNIST_APT_PACKAGE}`"
            )
        x, y = read_idx(img), read_idx(lab)
        if x.dim() != 3 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{folder}: images {tuple(x.shape)} do not match labels {tuple(y.shape)}"
            )
        out += [x.unsqueeze(1).float() / 255.0, y.long()]  # [N, 1, 28, 28]
    return ImageSplit(out[0], out[1], out[2], out[3], "Fashion-MNIST")


def load_digits_split(*, test_fraction: float = 0.2, seed: int = 0) -> ImageSplit:
    """scikit-learn digits (bundled): ``[N, 1, 8, 8]`` in [0, 1], seeded train/test split."""
    from batchcraft._capabilities import require

    datasets = require("sklearn", "the digits dataset").datasets
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * x.shape[0])
    te, tr = perm[:n_test], perm[n_test:]
    return ImageSplit(x[tr], y[tr], x[te], y[te], "digits")


def hard_mixture(
    num_train: int = 4000,
    num_test: int = 2000,
    *,
    features: int = 32,
    classes: int = 10,
    hard_fraction: float = 0.05,
    label_noise: float = 0.0,
    seed: int = 0,
) -> ImageSplit:
    """Gaussian mixture ``[N, F]`` where a ``hard_fraction`` of each class sits near another class.

    Args:
        label_noise: fraction of training labels flipped to a random other class (the known
            failure mode of loss-driven selection: mislabelled items keep a high loss).
    """
    if not 0.0 <= hard_fraction < 1.0 or not 0.0 <= label_noise < 1.0:
        raise ValueError("hard_fraction and label_noise must lie in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(classes, features, generator=g)  # [C, F]

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(classes, (n,), generator=g)
        hard = torch.rand(n, generator=g) < hard_fraction
        near = (y + 1) % classes
        mean = torch.where(hard[:, None], 0.3 * centers[y] + 0.7 * centers[near], centers[y])
        return mean + torch.randn(n, features, generator=g), y

    x_tr, y_tr = draw(num_train)
    x_te, y_te = draw(num_test)
    if label_noise > 0:
        flip = torch.rand(num_train, generator=g) < label_noise
        shift = torch.randint(1, classes, (num_train,), generator=g)
        y_tr = torch.where(flip, (y_tr + shift) % classes, y_tr)
    return ImageSplit(x_tr, y_tr, x_te, y_te, f"mixture(noise={label_noise})")
