"""A restricted unpickler for the Planetoid ``ind.<name>.*`` files: arrays and an adjacency dict only.

The Planetoid files (Cora, CiteSeer, PubMed) are Python 2 pickles of numpy arrays, scipy CSR
matrices and a ``defaultdict(list)`` adjacency. Plain ``pickle.loads`` would run whatever a
crafted file names (``os.system``, ``builtins.open``, ...). :func:`load_planetoid_pickle` resolves
only these globals and refuses every other one with a ``ValueError`` before anything is called:

* ``numpy ndarray`` (as the array type only) and ``numpy.core.multiarray _reconstruct``
  (also ``numpy._core.multiarray``): builds an empty array that the stream then fills;
* ``numpy dtype``: numeric dtypes only (object dtypes are refused, so arrays cannot hold
  arbitrary objects);
* ``scipy.sparse.csr csr_matrix`` (also ``scipy.sparse._csr``): mapped to :class:`CSRArrays`, a
  plain holder of ``data``, ``indices``, ``indptr`` and ``shape``; scipy is never imported;
* ``collections defaultdict`` with the ``list`` factory, and ``list`` itself;
* ``numpy._core.numeric _frombuffer`` and ``_codecs encode`` (str to latin1 bytes only), which
  newer pickle protocols use for array buffers.

:func:`csr_to_dense` turns a :class:`CSRArrays` into a dense tensor after checking its invariants.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["CSRArrays", "csr_to_dense", "load_planetoid_pickle"]


class CSRArrays:
    """The state of a pickled ``scipy.sparse.csr_matrix``, held as plain numpy arrays.

    Attributes:
        data: ``[nnz]`` values; indices: ``[nnz]`` column ids; indptr: ``[rows + 1]`` row starts;
        shape: ``(rows, cols)``.
    """

    def __init__(self) -> None:
        self.data: np.ndarray = np.zeros(0)
        self.indices: np.ndarray = np.zeros(0, dtype=np.int64)
        self.indptr: np.ndarray = np.zeros(1, dtype=np.int64)
        self.shape: tuple[int, int] = (0, 0)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ValueError("a pickled csr_matrix must carry a dict state")
        arrays: dict[str, np.ndarray] = {}
        for k in ("data", "indices", "indptr"):
            v = state.get(k)
            if not isinstance(v, np.ndarray):
                raise ValueError("a pickled csr_matrix needs numpy arrays data, indices and indptr")
            arrays[k] = v
        shape = state.get("_shape", state.get("shape"))
        if not (
            isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(v, int) for v in shape)
        ):
            raise ValueError(f"a pickled csr_matrix needs a (rows, cols) shape, got {shape!r}")
        self.data, self.indices, self.indptr = arrays["data"], arrays["indices"], arrays["indptr"]
        self.shape = (int(shape[0]), int(shape[1]))


def _safe_dtype(*args: Any) -> np.dtype[Any]:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise ValueError(f"refusing a pickled array of dtype {dt}: only numeric arrays are allowed")
    return dt


def _defaultdict(factory: Any = None) -> collections.defaultdict[Any, Any]:
    if factory is not list:
        raise ValueError("refusing a pickled defaultdict whose factory is not list")
    return collections.defaultdict(list)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise ValueError("refusing an ndarray buffer that is not bytes")
    if order not in ("C", "F"):
        raise ValueError(f"refusing an ndarray with memory order {order!r}")
    arr = np.frombuffer(bytes(buf), dtype=_safe_dtype(dtype))
    return arr.reshape(shape, order=order).copy()


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("refusing _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise ValueError("refusing to rebuild an ndarray subclass from a pickle")
    return np.ndarray.__new__(np.ndarray, shape, _safe_dtype(dtype))


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
    ("scipy.sparse.csr", "csr_matrix"): CSRArrays,
    ("scipy.sparse._csr", "csr_matrix"): CSRArrays,
    ("scipy.sparse", "csr_matrix"): CSRArrays,
    ("collections", "defaultdict"): _defaultdict,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}


class _PlanetoidUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ValueError(
                f"{self.where}: refusing to unpickle global {module}.{name}; Planetoid files may "
                "only hold numpy arrays, scipy CSR matrices and a defaultdict(list) adjacency"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise ValueError(f"{self.where}: refusing a pickle with persistent ids")


def load_planetoid_pickle(data: bytes, where: str = "pickle") -> Any:
    """Unpickle one Planetoid file with the restricted set of globals above.

    Args:
        data: the file's bytes; where: its name, for error messages.

    Raises:
        ValueError: when the stream names any other global (nothing of it is run), or is corrupt.
    """
    try:
        return _PlanetoidUnpickler(data, where).load()
    except ValueError:
        raise
    except Exception as exc:  # truncated or garbage streams: one clear error
        raise ValueError(f"{where} is not a readable Planetoid pickle: {exc}") from None


def csr_to_dense(m: CSRArrays, where: str = "matrix") -> Tensor:
    """Dense float32 ``[rows, cols]`` of a :class:`CSRArrays`, after checking the CSR invariants."""
    rows, cols = m.shape
    indptr = np.asarray(m.indptr, dtype=np.int64)
    indices = np.asarray(m.indices, dtype=np.int64)
    nnz = indices.size
    ok = (
        rows >= 0
        and cols >= 0
        and indptr.shape == (rows + 1,)
        and m.data.shape == (nnz,)
        and int(indptr[0]) == 0
        and int(indptr[-1]) == nnz
        and bool(np.all(np.diff(indptr) >= 0))
        and (nnz == 0 or (int(indices.min()) >= 0 and int(indices.max()) < cols))
    )
    if not ok:
        raise ValueError(f"{where}: the pickled CSR matrix is inconsistent (indptr/indices/shape)")
    out = torch.zeros(rows, cols, dtype=torch.float32)
    row_ids = torch.repeat_interleave(torch.arange(rows), torch.from_numpy(np.diff(indptr)))
    vals = torch.from_numpy(np.asarray(m.data, dtype=np.float32))
    out.index_put_((row_ids, torch.from_numpy(indices)), vals, accumulate=True)
    return out
