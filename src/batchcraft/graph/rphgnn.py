"""RpHGNN pre-computation: even-odd propagation squashed by sparse random projection (maths: docs/rphgnn.md).

For ``k = 0 … K-1`` every relation ``ρ`` incident to a node type ``t`` contributes one *odd* term
(the 1-hop mean from the other end, ``Â_r X_s``) and one *even* term (the 2-hop return
``Â_r Â_{r⁻¹} X_t``). The target type's terms are **collected** per key ``(parity, ρ)``; every
type's terms are **squashed** into ``X_t⁽ᵏ⁺¹⁾ = Σ_h ν(h P_h)`` with fresh sparse random projections
``P_h`` and row normalisation ``ν``, so storage and cost grow linearly in ``K``.

:func:`rphgnn_precompute` is the fast path (CSR mean aggregation chunked over rows, projections
chunked over rows, groups written into pre-allocated fp16/bf16 tables);
:func:`naive_rphgnn_precompute` is the dense, loop-based reference. Both draw random numbers in one
fixed order (initial features by sorted type, then iteration, type, key), so with equal generators
they agree to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from batchcraft.graph.hetero import (
    EdgeType,
    build_csr,
    canonicalize_relations,
    csr_mean_propagate,
)

__all__ = [
    "check_positive_int",
    "initial_features",
    "naive_rphgnn_precompute",
    "random_projection",
    "row_normalize",
    "rphgnn_group_keys",
    "rphgnn_precompute",
]

_KERNELS = ("sparse", "gaussian", "gaussian_no_norm")
_EVEN_ODD = ("all", "odd", "even")


def random_projection(
    in_dim: int,
    out_dim: int,
    *,
    kernel: str = "sparse",
    s: float = 3.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """A random projection matrix ``P: [in_dim, out_dim]`` (no ``1/√k`` factor).

    ``"sparse"``: ``√s·ξ`` with ``ξ = ±1`` w.p. ``1/(2s)`` each, else 0 (Achlioptas / Li et al.);
    ``"gaussian"``: ``N(0, 2/(in+out))``; ``"gaussian_no_norm"``: ``N(0, 1)``.
    ``E[P Pᵀ] = out_dim · I`` for ``"sparse"`` and ``"gaussian_no_norm"``.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    if in_dim <= 0 or out_dim <= 0:
        raise ValueError(f"in_dim and out_dim must be positive, got {in_dim}, {out_dim}")
    if kernel == "sparse":
        if not s >= 1.0:
            raise ValueError(f"s must be >= 1 for the sparse kernel (s=3 is the default), got {s}")
        u = torch.rand(in_dim, out_dim, generator=generator, dtype=torch.float64)
        p = 1.0 / (2.0 * s)
        xi = (u < p).to(torch.float64) - (u >= 1.0 - p).to(torch.float64)
        return (math.sqrt(s) * xi).to(dtype=dtype, device=device)
    std = math.sqrt(2.0 / (in_dim + out_dim)) if kernel == "gaussian" else 1.0
    g = torch.randn(in_dim, out_dim, generator=generator, dtype=torch.float64)
    return (std * g).to(dtype=dtype, device=device)


def row_normalize(y: Tensor) -> Tensor:
    """``ν(y) = y / max(‖y‖_row, 1e-12)``: unit rows, zero rows stay zero. y: [N, F]."""
    return y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)


def initial_features(
    x_dict: dict[str, Tensor | None],
    num_nodes_dict: dict[str, int],
    target: str,
    *,
    embedding_size: int,
    use_all_features: bool,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """``X⁽⁰⁾``: own features where kept, else ``N(0, 1/e)`` drawn in sorted type order."""
    out: dict[str, Tensor] = {}
    for t in sorted(num_nodes_dict):
        x = x_dict.get(t)
        if x is not None and (use_all_features or t == target):
            if x.shape[0] != num_nodes_dict[t]:
                raise ValueError(
                    f"x_dict[{t!r}] has {x.shape[0]} rows, expected {num_nodes_dict[t]}"
                )
            out[t] = x.to(dtype=dtype, device=device)
        else:
            g = torch.randn(
                num_nodes_dict[t], embedding_size, generator=generator, dtype=torch.float64
            )
            out[t] = (g / math.sqrt(embedding_size)).to(dtype=dtype, device=device)
    return out


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 1 (``name`` is used in the message)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_args(
    num_nodes_dict: dict[str, int],
    target: str,
    num_iterations: int,
    kernel: str,
    even_odd: str,
    embedding_size: int,
) -> None:
    if target not in num_nodes_dict:
        raise ValueError(f"target {target!r} is not a node type; types: {sorted(num_nodes_dict)}")
    check_positive_int("num_iterations (K)", num_iterations)
    check_positive_int("embedding_size", embedding_size)
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    if even_odd not in _EVEN_ODD:
        raise ValueError(f"even_odd must be one of {_EVEN_ODD}, got {even_odd!r}")


def _incident(
    raw: dict[str, tuple[EdgeType, EdgeType]], t: str, even_odd: str
) -> list[tuple[str, str, EdgeType, EdgeType]]:
    """``H_t`` keys sorted by (raw relation, odd < even): ``(rho, parity, r_in, r_out)``.

    ``r_in`` is the directed relation ending at ``t`` (odd: ``Â_{r_in} X_other``);
    even is ``Â_{r_in} Â_{r_out} X_t`` with ``r_out`` leaving ``t``.
    """
    keys = []
    for rho in sorted(raw):
        fwd, rev = raw[rho]
        if fwd[2] == t:
            r_in, r_out = fwd, rev
        elif fwd[0] == t:
            r_in, r_out = rev, fwd
        else:
            continue
        for parity in ("odd", "even"):
            if even_odd in ("all", parity):
                keys.append((rho, parity, r_in, r_out))
    return keys


def rphgnn_group_keys(
    edge_index_dict: dict[EdgeType, Tensor],
    num_nodes_dict: dict[str, int],
    target: str,
    *,
    even_odd: str = "all",
    add_self_group: bool = False,
) -> list[str]:
    """Names of the groups :func:`rphgnn_precompute` returns, ``"<parity>:<s>__<r>__<d>"``."""
    _, raw = canonicalize_relations(edge_index_dict, num_nodes_dict)
    keys = [f"{p}:{rho}" for rho, p, _, _ in _incident(raw, target, even_odd)]
    return keys + (["self"] if add_self_group else [])


def rphgnn_precompute(
    x_dict: dict[str, Tensor | None],
    edge_index_dict: dict[EdgeType, Tensor],
    num_nodes_dict: dict[str, int],
    target: str,
    *,
    num_iterations: int = 3,
    embedding_size: int = 512,
    use_input: bool = True,
    use_all_features: bool = True,
    add_self_group: bool = False,
    even_odd: str = "all",
    kernel: str = "sparse",
    s: float = 3.0,
    generator: torch.Generator | None = None,
    storage_dtype: torch.dtype = torch.float16,
    compute_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    chunk_rows: int | None = 65536,
    impl: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Tensor]:
    """Collected RpHGNN groups for the target type.

    Args:
        x_dict: ``{type: [N_t, F_t] or None}``; edge_index_dict: ``{(s, r, d): [2, E]}``;
        num_nodes_dict: ``{type: N_t}``; target: the type to classify (``τ``).
        num_iterations: ``K`` propagate-then-squash iterations.
        embedding_size: width ``e`` of random features for featureless types.
        use_input: prepend ``X_τ⁽⁰⁾`` to every even group (depth ``K + 1``).
        use_all_features: keep every type's features (else only ``τ``'s).
        add_self_group: add ``"self"``: ``[N_τ, 1, d_τ]``.
        even_odd: ``"all"`` (the method), ``"odd"`` or ``"even"`` (ablations).
        kernel, s: projection kernel (:func:`random_projection`).
        generator: the only source of randomness.
        storage_dtype: dtype of the returned tables (float16 default, bfloat16, float32, float64).
        compute_dtype: dtype of propagation and projection.
        device: compute device (default: that of the inputs / CPU); tables stay there.
        chunk_rows: rows per chunk of aggregation and projection (bounded memory), ``None`` = all.
        impl: ``"auto"``/``"chunk"`` (this fast path) or ``"naive"`` (dense reference).
        progress: optional callback receiving one message per finished iteration.

    Returns:
        ``{"<parity>:<s>__<r>__<d>": [N_τ, n_j, m_j]}`` (and ``"self"``), keys in sorted draw order.
    """
    if impl == "naive":
        return naive_rphgnn_precompute(
            x_dict, edge_index_dict, num_nodes_dict, target,
            num_iterations=num_iterations, embedding_size=embedding_size, use_input=use_input,
            use_all_features=use_all_features, add_self_group=add_self_group, even_odd=even_odd,
            kernel=kernel, s=s, generator=generator, storage_dtype=storage_dtype,
            compute_dtype=compute_dtype, device=device,
        )  # fmt: skip
    if impl not in ("auto", "chunk"):
        raise ValueError(f"impl must be 'auto', 'chunk' or 'naive', got {impl!r}")
    _check_args(num_nodes_dict, target, num_iterations, kernel, even_odd, embedding_size)
    rels, raw = canonicalize_relations(edge_index_dict, num_nodes_dict)
    X = initial_features(
        x_dict, num_nodes_dict, target, embedding_size=embedding_size,
        use_all_features=use_all_features, generator=generator, dtype=compute_dtype, device=device,
    )  # fmt: skip
    dev = X[target].device
    csr = {r: build_csr(ei.to(dev), num_nodes_dict[r[2]]) for r, ei in rels.items()}
    types = sorted(num_nodes_dict)
    incident = {t: _incident(raw, t, even_odd) for t in types}
    n_tau, d_tau = X[target].shape
    K = num_iterations
    out: dict[str, Tensor] = {}
    for rho, parity, r_in, _ in incident[target]:
        width = X[r_in[0]].shape[1] if parity == "odd" else d_tau
        depth = K + 1 if (parity == "even" and use_input) else K
        tab = torch.empty(n_tau, depth, width, dtype=storage_dtype, device=dev)
        if depth == K + 1:
            tab[:, 0] = X[target].to(storage_dtype)
        out[f"{parity}:{rho}"] = tab
    if add_self_group:
        out["self"] = X[target].to(storage_dtype)[:, None, :].clone()
    step = chunk_rows

    def prop(r: EdgeType, x: Tensor) -> Tensor:
        return csr_mean_propagate(*csr[r], x, chunk_rows=step)

    for k in range(K):
        squash = k < K - 1
        new_x: dict[str, Tensor] = {}
        for t in types if squash else [target]:
            n_t, d_t = X[t].shape
            acc = torch.zeros(n_t, d_t, dtype=compute_dtype, device=dev) if squash else None
            for rho, parity, r_in, r_out in incident[t]:
                if parity == "odd":
                    h = prop(r_in, X[r_in[0]])  # [N_t, d_other]
                else:
                    h = prop(r_in, prop(r_out, X[t]))  # [N_t, d_t]
                if t == target:
                    tab = out[f"{parity}:{rho}"]
                    off = 1 if tab.shape[1] == K + 1 else 0
                    tab[:, k + off] = h.to(storage_dtype)
                if acc is not None:
                    P = random_projection(
                        h.shape[1], d_t, kernel=kernel, s=s, generator=generator,
                        dtype=compute_dtype, device=dev,
                    )  # fmt: skip
                    rows = n_t if step is None else step
                    for a in range(0, n_t, rows):  # [rows, d_in] @ [d_in, d_t], unit rows
                        acc[a : a + rows] += row_normalize(h[a : a + rows] @ P)
            if acc is not None:
                new_x[t] = acc
        if squash:
            X = new_x
        if progress is not None:
            progress(f"iteration {k + 1}/{K}")
    return out


def naive_rphgnn_precompute(
    x_dict: dict[str, Tensor | None],
    edge_index_dict: dict[EdgeType, Tensor],
    num_nodes_dict: dict[str, int],
    target: str,
    *,
    num_iterations: int = 3,
    embedding_size: int = 512,
    use_input: bool = True,
    use_all_features: bool = True,
    add_self_group: bool = False,
    even_odd: str = "all",
    kernel: str = "sparse",
    s: float = 3.0,
    generator: torch.Generator | None = None,
    storage_dtype: torch.dtype = torch.float16,
    compute_dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Dense reference of :func:`rphgnn_precompute`: explicit ``Â`` matrices, every term stored.

    Same arguments and outputs (without chunking); computes all ``H_t`` of an iteration first,
    then collects and squashes, literally as the formulas read (docs/rphgnn.md).
    """
    _check_args(num_nodes_dict, target, num_iterations, kernel, even_odd, embedding_size)
    rels, raw = canonicalize_relations(edge_index_dict, num_nodes_dict)
    X = initial_features(
        x_dict, num_nodes_dict, target, embedding_size=embedding_size,
        use_all_features=use_all_features, generator=generator, dtype=compute_dtype, device=device,
    )  # fmt: skip
    x0_tau = X[target]
    A_hat: dict[EdgeType, Tensor] = {}
    for (s_, r_, d_), ei in rels.items():
        a = torch.zeros(num_nodes_dict[d_], num_nodes_dict[s_], dtype=compute_dtype)
        a[ei[1], ei[0]] = 1.0  # A[dst, src] = 1
        deg = a.sum(1, keepdim=True)
        A_hat[(s_, r_, d_)] = (a / deg.clamp_min(1.0)).to(X[target].device)
    types = sorted(num_nodes_dict)
    collected: dict[str, list[Tensor]] = {}
    for k in range(num_iterations):
        H: dict[str, list[tuple[str, Tensor]]] = {}
        for t in types:
            H[t] = []
            for rho, parity, r_in, r_out in _incident(raw, t, even_odd):
                if parity == "odd":
                    h = A_hat[r_in] @ X[r_in[0]]
                else:
                    h = A_hat[r_in] @ (A_hat[r_out] @ X[t])
                H[t].append((f"{parity}:{rho}", h))
        for key, h in H[target]:
            collected.setdefault(key, []).append(h)
        if k < num_iterations - 1:
            new_x = {}
            for t in types:
                acc = torch.zeros_like(X[t])
                for _, h in H[t]:
                    P = random_projection(
                        h.shape[1], X[t].shape[1], kernel=kernel, s=s, generator=generator,
                        dtype=compute_dtype, device=h.device,
                    )  # fmt: skip
                    y = h @ P
                    for i in range(y.shape[0]):  # ν row by row
                        n = float(y[i].norm())
                        acc[i] += y[i] / max(n, 1e-12)
                new_x[t] = acc
            X = new_x
    out: dict[str, Tensor] = {}
    for key, hs in collected.items():
        if key.startswith("even:") and use_input:
            hs = [x0_tau, *hs]
        out[key] = torch.stack(hs, dim=1).to(storage_dtype)  # [N_τ, n_j, m_j]
    if add_self_group:
        out["self"] = x0_tau[:, None, :].to(storage_dtype)
    return out
