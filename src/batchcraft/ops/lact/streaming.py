"""Streaming bidirectional update: one LaCT update over N tokens in bounded memory.

The bidirectional schedule performs ONE update over all ``N`` tokens of a set. Its descent
direction is a sum over tokens (every term is evaluated at the same ``W0``)::

    Delta_m = sum_t Delta_m(t)      e.g.  Delta_d = sum_t E_t^T (ld_t * Hk_t)

so it can be accumulated chunk by chunk in ``3*H*D*Dh`` floats, exactly (up to float summation
order); Muon, momentum and the weight norm are applied once, to the finished sum. The tokens then
read the new weights chunk by chunk too. Memory is ``O(C*D)`` activations + the fast weights,
independent of N, so a single layer can take 1M tokens on a CPU.

Shapes: ``k, v, q`` [B, S, H, D] per chunk, ``lr`` [B, S, H, 3], ``beta`` [B, S, H];
weights gate/up [H or B,H, Dh, D], down [H or B,H, D, Dh].

Example::

    w = streaming_update(iter_chunks(k, v, lr, chunk_size=4096), W0, muon="classic")
    o = torch.cat(list(streaming_apply(w, q.split(4096, dim=1))), dim=1)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from batchcraft.ops.lact.inner import lact_inner_grad, swiglu_apply
from batchcraft.ops.lact.options import resolve_options
from batchcraft.ops.lact.state import FastWeights, map_weights, row_norms
from batchcraft.ops.lact.update import update_rule

__all__ = ["iter_chunks", "streaming_apply", "streaming_bidirectional", "streaming_update"]

Chunk = tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor | None]


def iter_chunks(
    k: Tensor, v: Tensor, lr: Tensor, *, chunk_size: int, beta: Tensor | None = None
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
    """Split ``k, v, lr`` ([B, N, H, *]) and ``beta`` ([B, N, H]) along time into views of
    ``chunk_size`` tokens (no copies)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = k.shape[1]
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        yield k[:, s:e], v[:, s:e], lr[:, s:e], None if beta is None else beta[:, s:e]


def _expand(w: FastWeights, b: int) -> FastWeights:
    """Per-head weights [H, ...] -> [B, H, ...] (a view); [B, H, ...] passes through."""
    return map_weights(lambda x: x.expand(b, *x.shape) if x.dim() == 3 else x, w)


def streaming_update(
    chunks: Iterable[Chunk],
    w0: FastWeights,
    *,
    muon: str | None = None,
    muon_steps: int = 5,
    weight_norm: str | None = "post",
    fast_weight: str = "swiglu",
    loss: str = "neg_dot",
) -> FastWeights:
    """ONE bidirectional update over all tokens of ``chunks``, accumulated chunk by chunk.

    Equal to ``lact(..., schedule=[TTTOp("update", 0, N)])`` on the concatenated tokens.

    Args:
        chunks: iterable of ``(k, v, lr)`` or ``(k, v, lr, beta)`` chunks: k, v [B, S, H, D],
            lr [B, S, H, 3], beta [B, S, H] or None (momentum on iff beta is given; the buffer
            starts at zero, so ``M = Delta`` and only the token-mean of beta is tracked).
        w0: initial fast weights, gate/up [H or B,H, Dh, D], down [H or B,H, D, Dh].
        muon: ``None``, ``"tuned"`` or ``"classic"`` Newton-Schulz on the summed update.
        muon_steps: Newton-Schulz steps.
        weight_norm: ``"post"``, ``"pre"`` or ``None`` (renorm to the row norms of ``w0``).
        fast_weight: ``"swiglu"`` or ``"linear"``.
        loss: inner loss ``"neg_dot"`` or ``"mse"`` (both sums over tokens at fixed ``w0``).

    Returns:
        Updated ``FastWeights`` [B, H, ...].
    """
    # momentum is decided by the chunks (beta present or not), so it is off in these options
    cfg = resolve_options(
        None,
        dict(
            muon=muon,
            muon_steps=muon_steps,
            weight_norm=weight_norm,
            fast_weight=fast_weight,
            inner_loss=loss,
        ),
        beta_given=False,
    )
    if fast_weight == "linear":
        w0 = FastWeights(None, None, w0.down)
    total: list[Tensor] | None = None
    w_b: FastWeights | None = None
    n_tok, beta_sum, saw_beta = 0, None, False
    for chunk in chunks:
        k, v, lr = chunk[0], chunk[1], chunk[2]
        beta = chunk[3] if len(chunk) > 3 else None
        if k.dim() != 4 or v.shape != k.shape or lr.shape != (*k.shape[:3], 3):
            raise ValueError(
                "each chunk must be k, v [B, S, H, D] and lr [B, S, H, 3]; got "
                f"{tuple(k.shape)}, {tuple(v.shape)}, {tuple(lr.shape)}"
            )
        if w_b is None:
            w_b = _expand(w0, k.shape[0])
        d = lact_inner_grad(w_b, k, v, lr, fast_weight, loss=loss)
        parts = [x for x in d if x is not None]
        total = parts if total is None else [t + p for t, p in zip(total, parts, strict=True)]
        n_tok += k.shape[1]
        if beta is not None:
            saw_beta = True
            s = beta.to(k.dtype).sum(dim=1)  # [B, H]
            beta_sum = s if beta_sum is None else beta_sum + s
    if total is None or w_b is None:
        raise ValueError("chunks must contain at least one token")
    weights = [x for x in w_b if x is not None]
    rho = [x for x in row_norms(w_b) if x is not None] if weight_norm is not None else None
    mom, mu = None, None
    if saw_beta:
        assert beta_sum is not None
        mom = [torch.zeros_like(t) for t in total]  # M0 = 0, so M = Delta + mu * 0
        mu = (beta_sum / n_tok)[..., None, None]
    new_w, _, _ = update_rule(
        weights,
        total,
        accum=weights if weight_norm == "pre" else None,
        rho=rho,
        momentum=mom,
        mu=mu,
        cfg=cfg,
    )
    if len(new_w) == 1:
        return FastWeights(None, None, new_w[0])
    return FastWeights(new_w[0], new_w[1], new_w[2])


def streaming_apply(weights: FastWeights, q_chunks: Iterable[Tensor]) -> Iterator[Tensor]:
    """``f_W(q)`` for each query chunk ``q [B, S, H, D]`` (weights [H or B,H, ...])."""
    for q in q_chunks:
        yield swiglu_apply(_expand(weights, q.shape[0]), q)


def streaming_bidirectional(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    w0: FastWeights,
    *,
    chunk_size: int,
    beta: Tensor | None = None,
    muon: str | None = None,
    muon_steps: int = 5,
    weight_norm: str | None = "post",
    fast_weight: str = "swiglu",
    loss: str = "neg_dot",
) -> tuple[Tensor, FastWeights]:
    """``lact(q, k, v, lr, w0, schedule="bidirectional")`` computed chunk by chunk.

    Args:
        q, k, v: [B, N, H, D].
        lr: [B, N, H, 3].
        w0: initial fast weights (see :func:`streaming_update`).
        chunk_size: tokens per accumulation / apply chunk (any N, no divisibility needed).
        beta, muon, muon_steps, weight_norm, fast_weight, loss: as in :func:`streaming_update`.

    Returns:
        ``(o [B, N, H, D], weights)``.
    """
    if q.shape != k.shape:
        raise ValueError(
            f"q and k must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    w = streaming_update(
        iter_chunks(k, v, lr, chunk_size=chunk_size, beta=beta),
        w0,
        muon=muon,
        muon_steps=muon_steps,
        weight_norm=weight_norm,
        fast_weight=fast_weight,
        loss=loss,
    )
    o = torch.cat(list(streaming_apply(w, q.split(chunk_size, dim=1))), dim=1)
    return o, w
