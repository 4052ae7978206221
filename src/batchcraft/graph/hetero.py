"""Operators on heterogeneous graphs: relation canonicalisation and mean propagation.

The container :class:`~batchcraft.data.hetero_graph.HeteroGraph` (PyG vocabulary: ``x_dict``,
``edge_index_dict``, ``num_nodes_dict``, ``metadata()``) lives in the data layer and is re-exported
here.

:func:`canonicalize_relations` turns the raw edge types into the relation set RpHGNN propagates
over: binarised edges, transposed pairs de-duplicated, same-type relations symmetrised, a reverse
``(d, "rev_" + r, s)`` for every cross-type relation. :func:`mean_propagate` computes
``D⁻¹ A X`` (``A[dst, src] = 1``) chunked over destination rows; :func:`naive_mean_propagate` is its
dense reference.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from batchcraft.data.hetero_graph import EdgeType, HeteroGraph
from batchcraft.data.hetero_graph import check_edge_index as _check_edge_index

__all__ = [
    "EdgeType",
    "HeteroGraph",
    "build_csr",
    "canonicalize_relations",
    "csr_mean_propagate",
    "mean_propagate",
    "naive_mean_propagate",
    "relation_name",
]


def relation_name(edge_type: EdgeType) -> str:
    """``"src__rel__dst"``: the string form of an edge type used in group keys."""
    return "__".join(edge_type)


def _edge_keys(edge_index: Tensor, num_src: int) -> Tensor:
    """Sorted unique keys ``dst * num_src + src`` (destination-major, i.e. CSR order)."""
    keys = edge_index[1].long() * max(num_src, 1) + edge_index[0].long()
    return torch.unique(keys, sorted=True)


def _from_keys(keys: Tensor, num_src: int) -> Tensor:
    n = max(num_src, 1)
    return torch.stack([keys % n, keys // n])


def canonicalize_relations(
    edge_index_dict: dict[EdgeType, Tensor], num_nodes_dict: dict[str, int]
) -> tuple[dict[EdgeType, Tensor], dict[str, tuple[EdgeType, EdgeType]]]:
    """The RpHGNN relation set.

    1. edges binarised (duplicates removed); 2. of two edge types with exactly transposed edge
    sets the one whose ``(s, r, d)`` sorts first is kept; 3. same-type relations are symmetrised
    and are their own reverse; 4. every cross-type relation gets ``(d, "rev_" + r, s)``.

    Args:
        edge_index_dict: ``{(src, rel, dst): [2, E]}`` local ids.
        num_nodes_dict: ``{type: N_t}``.

    Returns:
        ``(relations, raw)``: every directed relation's edges ``[2, E_r]`` (sorted by destination,
        then source) and ``{relation_name(forward): (forward, reverse)}`` per raw relation.
    """
    keys: dict[EdgeType, Tensor] = {}
    for et in sorted(edge_index_dict):
        s, _, d = et
        if s not in num_nodes_dict or d not in num_nodes_dict:
            raise ValueError(f"edge type {et!r} names a node type missing from num_nodes_dict")
        _check_edge_index(edge_index_dict[et], num_nodes_dict[s], num_nodes_dict[d], f"[{et!r}]")
        keys[et] = _edge_keys(edge_index_dict[et], num_nodes_dict[s])
    dropped: set[EdgeType] = set()
    ets = sorted(keys)
    for i, a in enumerate(ets):
        if a in dropped:
            continue
        for b in ets[i + 1 :]:
            if b in dropped or (b[0], b[2]) != (a[2], a[0]):
                continue
            # transpose of b in a's key space: src_a = dst_b, dst_a = src_b
            tb = _edge_keys(_from_keys(keys[b], num_nodes_dict[b[0]]).flip(0), num_nodes_dict[a[0]])
            if tb.shape == keys[a].shape and bool(torch.equal(tb, keys[a])):
                dropped.add(b)  # b sorts after a
    relations: dict[EdgeType, Tensor] = {}
    raw: dict[str, tuple[EdgeType, EdgeType]] = {}
    for et in ets:
        if et in dropped:
            continue
        s, r, d = et
        ei = _from_keys(keys[et], num_nodes_dict[s])
        if s == d:
            sym = _edge_keys(torch.cat([ei, ei.flip(0)], dim=1), num_nodes_dict[s])
            relations[et] = _from_keys(sym, num_nodes_dict[s])
            raw[relation_name(et)] = (et, et)
        else:
            rev: EdgeType = (d, "rev_" + r, s)
            if rev in keys:
                raise ValueError(f"cannot add reverse {rev!r}: an edge type of that name exists")
            relations[et] = ei
            relations[rev] = _from_keys(
                _edge_keys(ei.flip(0), num_nodes_dict[d]), num_nodes_dict[d]
            )
            raw[relation_name(et)] = (et, rev)
    return relations, raw


def build_csr(edge_index: Tensor, num_dst: int) -> tuple[Tensor, Tensor]:
    """Destination-major CSR of an edge list.

    Args:
        edge_index: ``[2, E]`` (source, destination); duplicates are kept (they count twice).
        num_dst: number of destination rows ``N_d``.

    Returns:
        ``(rowptr [N_d + 1], col [E])`` with ``col`` the sources sorted by destination.
    """
    dst = edge_index[1].long()
    order = torch.argsort(dst, stable=True)
    col = edge_index[0].long()[order]
    counts = torch.bincount(dst, minlength=num_dst)
    rowptr = torch.zeros(num_dst + 1, dtype=torch.long, device=edge_index.device)
    rowptr[1:] = torch.cumsum(counts, 0)
    return rowptr, col


def csr_mean_propagate(
    rowptr: Tensor, col: Tensor, x_src: Tensor, *, chunk_rows: int | None = None
) -> Tensor:
    """Mean over in-neighbours from a CSR, chunked over destination rows.

    Args:
        rowptr: ``[N_d + 1]``; col: ``[E]`` sources; x_src: ``[N_s, F]``.
        chunk_rows: destination rows per chunk (``None`` = all at once); memory per chunk is
            ``O(chunk_rows * F + edges_in_chunk)``.

    Returns:
        ``[N_d, F]``; rows with no in-neighbour are zero.
    """
    num_dst = rowptr.numel() - 1
    out = torch.zeros(num_dst, x_src.shape[1], dtype=x_src.dtype, device=x_src.device)
    if num_dst == 0 or col.numel() == 0:
        return out
    step = num_dst if chunk_rows is None else int(chunk_rows)
    if step <= 0:
        raise ValueError(f"chunk_rows must be a positive int or None, got {chunk_rows}")
    for a in range(0, num_dst, step):
        b = min(a + step, num_dst)
        e0, e1 = int(rowptr[a]), int(rowptr[b])
        if e1 == e0:
            continue
        ptr = rowptr[a : b + 1] - e0
        deg = (ptr[1:] - ptr[:-1]).to(x_src.dtype)
        val = (1.0 / deg.clamp_min(1)).repeat_interleave(ptr[1:] - ptr[:-1])
        if x_src.device.type == "cpu" and x_src.dtype in (torch.float16, torch.bfloat16):
            rows = torch.repeat_interleave(
                torch.arange(b - a, device=x_src.device), ptr[1:] - ptr[:-1]
            )
            out[a:b].index_add_(0, rows, x_src[col[e0:e1]] * val[:, None])
            continue
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            mat = torch.sparse_csr_tensor(
                ptr, col[e0:e1], val, size=(b - a, x_src.shape[0]), check_invariants=False
            )
        out[a:b] = torch.sparse.mm(mat, x_src)
    return out


def mean_propagate(
    edge_index: Tensor, x_src: Tensor, num_dst: int, *, chunk_rows: int | None = None
) -> Tensor:
    """``D⁻¹ A x_src`` with ``A[dst, src] = 1`` per edge: the mean over in-neighbours (fast path).

    Args:
        edge_index: ``[2, E]`` (source, destination) local ids.
        x_src: ``[N_s, F]`` source features.
        num_dst: number of destination nodes ``N_d``.
        chunk_rows: destination rows per chunk (bounded memory), ``None`` = one chunk.

    Returns:
        ``[N_d, F]``; zero in-degree rows are zero.
    """
    if x_src.dim() != 2:
        raise ValueError(f"x_src must be [N_s, F], got shape {list(x_src.shape)}")
    _check_edge_index(edge_index, x_src.shape[0], num_dst)
    rowptr, col = build_csr(edge_index, num_dst)
    return csr_mean_propagate(rowptr, col, x_src, chunk_rows=chunk_rows)


def naive_mean_propagate(edge_index: Tensor, x_src: Tensor, num_dst: int) -> Tensor:
    """Dense reference of :func:`mean_propagate`: builds ``A`` and ``D⁻¹`` explicitly.

    Args:
        edge_index: ``[2, E]``; x_src: ``[N_s, F]``; num_dst: ``N_d``.

    Returns:
        ``[N_d, F]``.
    """
    if x_src.dim() != 2:
        raise ValueError(f"x_src must be [N_s, F], got shape {list(x_src.shape)}")
    _check_edge_index(edge_index, x_src.shape[0], num_dst)
    a = torch.zeros(num_dst, x_src.shape[0], dtype=x_src.dtype, device=x_src.device)
    ones = torch.ones(edge_index.shape[1], dtype=x_src.dtype, device=x_src.device)
    a.index_put_((edge_index[1].long(), edge_index[0].long()), ones, accumulate=True)
    deg = a.sum(1, keepdim=True)
    a = torch.where(deg > 0, a / deg.clamp_min(1), torch.zeros_like(a))
    return a @ x_src
