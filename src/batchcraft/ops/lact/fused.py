"""The causal chunk loop of the fast path as one autograd node with a hand-written backward.

Autograd through the eager chunk step records ~45 small nodes per chunk and runs twice as many
kernels in backward as the maths needs. :class:`FusedChunks` runs the same maths
with gate and up stacked (``Wgu = [Wg; Wu]`` [N, 2Dh, D]). The update of chunk j needs only its
keys and values, four ``bmm``::

    Zk  = k_j @ Wgu^T                         [N, C, 2Dh]   key pre-activations (gate | up)
    G   = v_j @ Wd                            [N, C, Dh]
    Dd  = (ld * v_j)^T @ Hk                   [N, D, Dh]     Hk = silu(Zk_g) * Zk_u
    Dgu = (lgu * Pt)^T @ k_j                  [N, 2Dh, D]    Pt = [G * Zk_u * silu'(Zk_g), G * silu(Zk_g)]

then momentum (``M <- D + mu M``), Newton-Schulz on the three matrices as one batch, and the
weight norm. The apply half (``o_j = (silu(q_j Wg^T) * q_j Wu^T) Wd^T``) needs only the weights
entering each chunk, so it runs once for all chunks after the loop as large batched products.
The backward walks the chunks last to first with the closed-form vector-Jacobian products
(eight ``bmm`` per chunk, four per Newton-Schulz step, the apply half batched again) from
tensors saved in the forward: the pre-activations of every chunk and the per-chunk weights,
momentum and pre-norm sums (nothing is recomputed with autograd). With ``recompute=True`` only
the per-chunk state is kept and each chunk (apply included) is re-run in backward (activation
memory of one chunk; bitwise the same results).

Scope: SwiGLU fast weights, the ``neg_dot`` loss, one inner step, outside autocast; any weight
norm, momentum and Muon schedule. Everything else takes the eager step (same maths, tested equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from batchcraft.ops.lact.muon import ns_coefficients
from batchcraft.ops.lact.options import LaCTOptions
from batchcraft.ops.lact.state import NORM_EPS

__all__ = ["FusedChunks", "fused_chunks", "fused_supported"]

_NS_EPS = 1e-7  # X0 = G / (||G||_F + eps), as batchcraft.ops.lact.muon.newton_schulz


def fused_supported(cfg: LaCTOptions, q: Tensor) -> bool:
    """Whether :func:`fused_chunks` implements these options (else the eager step runs)."""
    return (
        cfg.fast_weight == "swiglu"
        and cfg.inner_loss == "neg_dot"
        and cfg.inner_steps == 1
        and q.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled(q.device.type)
    )


# ----------------------------------------------------------------------------- Newton-Schulz
def _ns_orient(gu: Tensor, d: Tensor, Dh: int) -> Tensor:
    """Gate, up and down as one batch [3N, m, n] with m <= n (tall matrices transposed)."""
    g, u = gu[:, :Dh], gu[:, Dh:]  # [N, Dh, D] each
    if Dh > d.shape[1]:  # gate/up tall, down wide
        return torch.cat([g.mT, u.mT, d], dim=0)
    if Dh < d.shape[1]:  # gate/up wide, down tall
        return torch.cat([g, u, d.mT], dim=0)
    return torch.cat([g, u, d], dim=0)


def _ns_unorient(x: Tensor, N: int, Dh: int, D: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`_ns_orient`: ([N, 2Dh, D], [N, D, Dh])."""
    g, u, d = x[:N], x[N : 2 * N], x[2 * N :]
    if Dh > D:
        return torch.cat([g.mT, u.mT], dim=1), d
    if Dh < D:
        return torch.cat([g, u], dim=1), d.mT
    return torch.cat([g, u], dim=1), d


def _ns_forward(
    g: Tensor, coeffs: Sequence[tuple[float, float, float]]
) -> tuple[Tensor, list[Tensor]]:
    """``NS(g)`` for g [S, m, n] (m <= n); returns the result and what the backward needs."""
    f = torch.linalg.matrix_norm(g, keepdim=True)  # [S, 1, 1]
    x = g / (f + _NS_EPS)
    saved = [g, f]
    for a, b, c in coeffs:
        A = x @ x.mT  # [S, m, m]
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        saved += [x, A, B]
        x = torch.baddbmm(x, B, x, beta=a)
    return x, saved


def _ns_backward(
    gx: Tensor, saved: Sequence[Tensor], coeffs: Sequence[tuple[float, float, float]]
) -> Tensor:
    """Vector-Jacobian product of :func:`_ns_forward`::

    X' = a X + B X, B = b A + c A A, A = X X^T (symmetric):
        gB = gX' X^T,  S = gB + gB^T,  gA + gA^T = b S + c (S A + (S A)^T)
        gX = a gX' + B^T gX' + (gA + gA^T) X                 (four products per step)
    X0 = G / (f + eps), f = ||G||_F:  gG = gX0 / (f + eps) - G <gX0, G> / ((f + eps)^2 f)
    """
    g, f = saved[0], saved[1]
    for i in reversed(range(len(coeffs))):
        a, b, c = coeffs[i]
        x, A, B = saved[2 + 3 * i : 5 + 3 * i]
        gB = gx @ x.mT  # [S, m, m]
        S = gB.add_(gB.mT.clone())
        SA = S @ A
        gsym = torch.add(SA, SA.mT, alpha=1.0).mul_(c).add_(S, alpha=b)  # gA + gA^T
        gx = torch.baddbmm(torch.baddbmm(gx, B.mT, gx, beta=a), gsym, x)
    fe = f + _NS_EPS
    dot = (gx * g).sum(dim=(-2, -1), keepdim=True)
    # f = 0 means g = 0: the second term vanishes (torch's norm backward gives 0 there too)
    corr = torch.where(f > 0, dot / (fe * fe * f.clamp_min(torch.finfo(f.dtype).tiny)), 0.0)
    return gx / fe - g * corr


# ----------------------------------------------------------------------------- weight norm
def _renorm(x: Tensor, rho: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """``out = x / (||x||_row + eps) * rho``; returns (row norms r, scale s = rho / (r + eps))."""
    r = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # [N, rows, 1]
    s = rho / (r + NORM_EPS)
    torch.mul(x, s, out=out)
    return r, s


def _renorm_backward(
    gw: Tensor, x: Tensor, r: Tensor, s: Tensor, rho: Tensor
) -> tuple[Tensor, Tensor]:
    """VJP of ``w = x * rho / (r + eps)``, ``r = ||x||_row``: returns (gx, grho)."""
    c = (gw * x).sum(dim=-1, keepdim=True)  # <gw, x> per row
    re = r + NORM_EPS
    grho = c / re
    # d r / d x = x / r (0 at r = 0, as torch's norm backward)
    coef = torch.where(r > 0, s * c / (re * r.clamp_min(torch.finfo(r.dtype).tiny)), 0.0)
    return gw * s - x * coef, grho


class _Meta(NamedTuple):
    cfg: LaCTOptions
    C: int
    has_acc: bool
    has_mom: bool
    has_rho: bool


Pair = tuple[Tensor, Tensor]  # (gate and up stacked [N, 2Dh, D], down [N, D, Dh])


def _silu_grad(z: Tensor, s: Tensor) -> Tensor:
    """``silu'(z) = s (1 + z (1 - s))`` with ``s = sigmoid(z)``."""
    return s * (1 + z * (1 - s))


def _key_activations(
    k: Tensor, v: Tensor, w_gu: Tensor, w_d: Tensor, Z: Tensor, G: Tensor, Pt: Tensor
) -> Tensor:
    """One chunk's key-side pre-activations, written into ``Z`` [N, C, 2Dh], ``G`` [N, C, Dh]
    and ``Pt`` [N, C, 2Dh] (the descent direction's left factors before the lr); returns
    ``Hk = silu(Z_g) * Z_u`` [N, C, Dh]."""
    Dh = w_d.shape[-1]
    torch.matmul(k, w_gu.mT, out=Z)  # [N, C, 2Dh]
    zg, zu = Z[..., :Dh], Z[..., Dh:]
    a = torch.nn.functional.silu(zg)  # [N, C, Dh]
    torch.matmul(v, w_d, out=G)  # [N, C, Dh]
    torch.ops.aten.silu_backward.grad_input(G * zu, zg, grad_input=Pt[..., :Dh])
    torch.mul(G, a, out=Pt[..., Dh:])
    return a.mul_(zu)


def _apply_forward(q: Tensor, w_gu: Tensor, w_d: Tensor, Zq: Tensor, o: Tensor) -> None:
    """Queries of m chunks at once: ``o = (silu(Zq_g) * Zq_u) Wd^T``, ``Zq = q Wgu^T``.

    q: [m, N, C, D]; w_gu: [m, N, 2Dh, D]; w_d: [m, N, D, Dh]; writes Zq [m, N, C, 2Dh] and
    o [m, N, C, D]. The weights of every chunk are known after the update loop, so the apply
    half of the work runs as a few large batched products instead of per-chunk ones.
    """
    Dh = w_d.shape[-1]
    torch.matmul(q, w_gu.mT, out=Zq)
    h = torch.nn.functional.silu(Zq[..., :Dh]).mul_(Zq[..., Dh:])
    torch.matmul(h, w_d.mT, out=o)


def _apply_backward(
    q: Tensor, w_gu: Tensor, w_d: Tensor, Zq: Tensor, go: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """VJP of :func:`_apply_forward`: (gq [m, N, C, D], gWgu [m, N, 2Dh, D], gWd [m, N, D, Dh])."""
    Dh = w_d.shape[-1]
    zg, zu = Zq[..., :Dh], Zq[..., Dh:]
    a = torch.nn.functional.silu(zg)
    ghq = go @ w_d  # [m, N, C, Dh]
    gwd = go.mT @ (a * zu)  # [m, N, D, Dh]
    gZ = torch.empty_like(Zq)
    torch.mul(ghq, a, out=gZ[..., Dh:])
    torch.ops.aten.silu_backward.grad_input(ghq.mul_(zu), zg, grad_input=gZ[..., :Dh])
    return gZ @ w_gu, gZ.mT @ q, gwd


class _Saved(NamedTuple):
    """What the backward of one chunk's update needs beyond the state buffers."""

    norms: tuple[Tensor, Tensor, Tensor, Tensor] | None  # (r_gu, s_gu, r_d, s_d)
    ns: list[Tensor] | None  # Newton-Schulz intermediates


def _chunk_update(
    cfg: LaCTOptions,
    coeffs: Sequence[tuple[float, float, float]] | None,
    k: Tensor,
    v: Tensor,
    vd: Tensor,
    lgu: Tensor,
    mu: Tensor | None,
    w: Pair,
    acc: Pair | None,
    mom: Pair | None,
    rho: Pair | None,
    bufs: tuple[Tensor, Tensor, Tensor],
    w_out: Pair,
    acc_out: Pair | None,
    mom_out: Pair | None,
    x_out: Pair | None,
) -> _Saved:
    """One chunk's update of the state, writing into the ``*_out`` buffers.

    Args:
        k, v, vd: k_j, v_j and ld * v_j [N, C, D]; lgu: lr [N, C, 2, 1].
        mu: chunk-mean beta [N, 1, 1] or None.
        w, acc, mom, rho: the state entering the chunk ((gu, d) pairs, or None).
        bufs: (Z, G, Pt) written by :func:`_key_activations`.
        w_out, acc_out, mom_out: the state after the chunk.
        x_out: post-norm only, the sum ``W + U`` before the renorm.
    """
    N, C, D = k.shape
    Dh = w[1].shape[-1]
    Z, G, Pt = bufs
    hk = _key_activations(k, v, w[0], w[1], Z, G, Pt)
    d_d = vd.mT @ hk  # [N, D, Dh]
    d_gu = (Pt.view(N, C, 2, Dh) * lgu).view(N, C, 2 * Dh).mT @ k  # [N, 2Dh, D]
    if mom is not None:
        assert mu is not None and mom_out is not None
        d_gu = torch.addcmul(d_gu, mu, mom[0], out=mom_out[0])  # M <- D + mu M
        d_d = torch.addcmul(d_d, mu, mom[1], out=mom_out[1])
    ns = None
    if coeffs is not None:
        x, ns = _ns_forward(_ns_orient(d_gu, d_d, Dh), coeffs)
        d_gu, d_d = _ns_unorient(x, N, Dh, D)
    if cfg.weight_norm is None:
        torch.add(w[0], d_gu, out=w_out[0])
        torch.add(w[1], d_d, out=w_out[1])
        return _Saved(None, ns)
    assert rho is not None
    if cfg.weight_norm == "post":
        assert x_out is not None
        xs = (torch.add(w[0], d_gu, out=x_out[0]), torch.add(w[1], d_d, out=x_out[1]))
    else:
        assert acc is not None and acc_out is not None
        xs = (torch.add(acc[0], d_gu, out=acc_out[0]), torch.add(acc[1], d_d, out=acc_out[1]))
    norms = (*_renorm(xs[0], rho[0], w_out[0]), *_renorm(xs[1], rho[1], w_out[1]))
    return _Saved(norms, ns)


def _opt_pair(a: Tensor | None, b: Tensor | None, j: int) -> Pair | None:
    return None if a is None or b is None else (a[j], b[j])


def _chunk_major(x: Tensor, n: int) -> Tensor:
    """[N, n*C, X] -> contiguous [n, N, C, X]."""
    N, L, X = x.shape
    return x.reshape(N, n, L // n, X).transpose(0, 1).contiguous()


class FusedChunks(torch.autograd.Function):
    """Complete causal chunks (apply then update), forward and closed-form backward.

    Inputs: ``meta``; q, k, v [N, L, D] (L = n*C); lr [N, L, 3]; beta [N, L] or None; weights
    ``wgu`` [N, 2Dh, D] (gate rows then up rows), ``wd`` [N, D, Dh]; pre-norm accumulators,
    momentum buffers and row norms ``rho`` (gu [N, 2Dh, 1], d [N, D, 1]) or None.
    Outputs: o [N, L, D], new wgu, wd, then (acc_gu, acc_d) and (mom_gu, mom_d) when present.

    The loop runs the key side (the update) chunk by chunk; the query side (apply) needs only
    the weights entering each chunk, so it runs once for all chunks after the loop (with
    ``recompute``, chunk by chunk inside it, to keep one chunk's activations).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        meta: _Meta,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lr: Tensor,
        beta: Tensor | None,
        wgu: Tensor,
        wd: Tensor,
        agu: Tensor | None,
        ad: Tensor | None,
        mgu: Tensor | None,
        md: Tensor | None,
        rgu: Tensor | None,
        rd: Tensor | None,
    ) -> tuple[Tensor, ...]:
        cfg, C = meta.cfg, meta.C
        N, L, D = q.shape
        Dh = wd.shape[-1]
        n = L // C
        norm = cfg.weight_norm
        coeffs = ns_coefficients(cfg.muon, cfg.muon_steps) if cfg.use_muon else None
        qc = _chunk_major(q, n)  # [n, N, C, D]
        vd = v * lr[..., 2:3]  # [N, L, D]: ld folded into the values once
        lgu = lr[..., :2].reshape(N, n, C, 2, 1)
        mu = None if beta is None else beta.reshape(N, n, C).mean(-1)  # [N, n]
        # key-side activations of every chunk, saved for backward; with recompute one chunk's
        # buffers are reused and the backward recomputes them from the saved per-chunk state
        m = 1 if cfg.recompute else n
        Z = q.new_empty(m, N, C, 2 * Dh)
        G = q.new_empty(m, N, C, Dh)
        Pt = q.new_empty(m, N, C, 2 * Dh)
        Zq = q.new_empty(m, N, C, 2 * Dh)  # query pre-activations
        O = q.new_empty(n, N, C, D)
        # the state entering chunk j at [j]; the final state at [n]
        Wgu, Wd = q.new_empty(n + 1, *wgu.shape), q.new_empty(n + 1, *wd.shape)
        Wgu[0], Wd[0] = wgu, wd
        Agu = Ad = Mgu = Md = Xgu = Xd = None
        if norm == "pre":
            assert agu is not None and ad is not None
            Agu, Ad = q.new_empty(n + 1, *agu.shape), q.new_empty(n + 1, *ad.shape)
            Agu[0], Ad[0] = agu, ad
        if mu is not None:
            assert mgu is not None and md is not None
            Mgu, Md = q.new_empty(n + 1, *mgu.shape), q.new_empty(n + 1, *md.shape)
            Mgu[0], Md[0] = mgu, md
        if norm == "post":
            Xgu, Xd = q.new_empty(m, *wgu.shape), q.new_empty(m, *wd.shape)
        rho = None if rgu is None or rd is None else (rgu, rd)
        saved: list[_Saved] = []
        for j in range(n):
            sl, jj = slice(j * C, (j + 1) * C), (0 if cfg.recompute else j)
            if cfg.recompute:
                _apply_forward(qc[j : j + 1], Wgu[j : j + 1], Wd[j : j + 1], Zq, O[j : j + 1])
            s_j = _chunk_update(
                cfg, coeffs, k[:, sl], v[:, sl], vd[:, sl], lgu[:, j],
                None if mu is None else mu[:, j].view(N, 1, 1),
                (Wgu[j], Wd[j]), _opt_pair(Agu, Ad, j), _opt_pair(Mgu, Md, j), rho,
                (Z[jj], G[jj], Pt[jj]),
                (Wgu[j + 1], Wd[j + 1]), _opt_pair(Agu, Ad, j + 1), _opt_pair(Mgu, Md, j + 1),
                _opt_pair(Xgu, Xd, jj),
            )  # fmt: skip
            if not cfg.recompute:
                saved.append(s_j)
        if not cfg.recompute:
            _apply_forward(qc, Wgu[:n], Wd[:n], Zq, O)

        ctx.meta, ctx.shape, ctx.saved = meta, (N, n, C, D, Dh), saved
        if cfg.recompute:  # per-chunk state and the inputs only
            Z = G = Pt = Zq = Xgu = Xd = vd = None  # type: ignore[assignment]
        ctx.save_for_backward(
            qc, k, v, vd, lr, beta, Z, G, Pt, Zq, Wgu, Wd, Agu, Ad, Mgu, Md, Xgu, Xd, rgu, rd
        )
        o = O.permute(1, 0, 2, 3).reshape(N, L, D)
        outs: list[Tensor] = [o, Wgu[n].clone(), Wd[n].clone()]
        if meta.has_acc:
            assert Agu is not None and Ad is not None
            outs += [Agu[n].clone(), Ad[n].clone()]
        if meta.has_mom:
            assert Mgu is not None and Md is not None
            outs += [Mgu[n].clone(), Md[n].clone()]
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, go: Tensor, *g_state: Tensor | None) -> Any:
        meta: _Meta = ctx.meta
        cfg = meta.cfg
        N, n, C, D, Dh = ctx.shape
        L = n * C
        (qc, k, v, vd, lr, beta, Z, G, Pt, Zq, Wgu, Wd, Agu, Ad, Mgu, Md, Xgu, Xd, rgu, rd) = (
            ctx.saved_tensors
        )
        norm = cfg.weight_norm
        coeffs = ns_coefficients(cfg.muon, cfg.muon_steps) if cfg.use_muon else None
        has_mom = Mgu is not None
        rho = None if rgu is None or rd is None else (rgu, rd)
        mu = None if beta is None else beta.reshape(N, n, C).mean(-1)
        lgu = lr[..., :2].reshape(N, n, C, 2, 1)
        go_c = _chunk_major(go, n)  # [n, N, C, D]
        if cfg.recompute:  # one chunk's buffers, refilled by re-running each chunk forward
            Z = qc.new_empty(1, N, C, 2 * Dh)
            G, Pt = qc.new_empty(1, N, C, Dh), qc.new_empty(1, N, C, 2 * Dh)
            tmp_w = (torch.empty_like(Wgu[0]), torch.empty_like(Wd[0]))
            tmp_a = None if Agu is None else (torch.empty_like(Agu[0]), torch.empty_like(Ad[0]))
            tmp_m = None if Mgu is None else (torch.empty_like(Mgu[0]), torch.empty_like(Md[0]))
            if norm == "post":
                Xgu, Xd = torch.empty_like(Wgu[:1]), torch.empty_like(Wd[:1])
            gq_c = qc.new_empty(n, N, C, D)
        else:  # the query side of every chunk at once
            gq_c, gwgu_q, gwd_q = _apply_backward(qc, Wgu[:n], Wd[:n], Zq, go_c)

        def zero_if_none(g: Tensor | None, like: Tensor) -> Tensor:
            return torch.zeros_like(like) if g is None else g

        gs = list(g_state)
        gw_gu, gw_d = zero_if_none(gs[0], Wgu[n]), zero_if_none(gs[1], Wd[n])
        i = 2
        ga_gu = ga_d = gm_gu = gm_d = None
        if norm == "pre":
            assert Agu is not None and Ad is not None
            if meta.has_acc:
                ga_gu, ga_d = zero_if_none(gs[i], Agu[n]), zero_if_none(gs[i + 1], Ad[n])
                i += 2
            else:
                ga_gu, ga_d = torch.zeros_like(Agu[n]), torch.zeros_like(Ad[n])
        if has_mom:
            assert Mgu is not None and Md is not None
            if meta.has_mom:
                gm_gu, gm_d = zero_if_none(gs[i], Mgu[n]), zero_if_none(gs[i + 1], Md[n])
            else:
                gm_gu, gm_d = torch.zeros_like(Mgu[n]), torch.zeros_like(Md[n])
        grho_gu = None if rgu is None else torch.zeros_like(rgu)
        grho_d = None if rd is None else torch.zeros_like(rd)

        gk_all = k.new_empty(N, L, D)
        gv = v.new_empty(N, L, D)
        glr = lr.new_empty(N, L, 3)
        gmu = None if beta is None else beta.new_empty(N, n)
        gZ = qc.new_empty(N, C, 2 * Dh)
        for j in reversed(range(n)):
            sl = slice(j * C, (j + 1) * C)
            kj, vj, ldj = k[:, sl], v[:, sl], lr[:, sl, 2:3]
            vdj = vj * ldj if vd is None else vd[:, sl]
            if cfg.recompute:
                jj = 0
                sv = _chunk_update(
                    cfg, coeffs, kj, vj, vdj, lgu[:, j],
                    None if mu is None else mu[:, j].view(N, 1, 1),
                    (Wgu[j], Wd[j]), _opt_pair(Agu, Ad, j), _opt_pair(Mgu, Md, j), rho,
                    (Z[0], G[0], Pt[0]), tmp_w, tmp_a, tmp_m, _opt_pair(Xgu, Xd, 0),
                )  # fmt: skip
                a_next = tmp_a
                zq = qc[j : j + 1] @ Wgu[j : j + 1].mT  # [1, N, C, 2Dh]
                gqj, gwgu_qj, gwd_qj = _apply_backward(
                    qc[j : j + 1], Wgu[j : j + 1], Wd[j : j + 1], zq, go_c[j : j + 1]
                )
                gq_c[j] = gqj[0]
                gwgu_qj, gwd_qj = gwgu_qj[0], gwd_qj[0]
            else:
                jj, sv = j, ctx.saved[j]
                a_next = _opt_pair(Agu, Ad, j + 1)
                gwgu_qj, gwd_qj = gwgu_q[j], gwd_q[j]
            # ---- the update W_j -> W_{j+1} (weight norm, Muon, momentum), backwards
            gprev: Pair | None
            if norm == "post":
                assert Xgu is not None and Xd is not None and rho is not None
                assert grho_gu is not None and grho_d is not None and sv.norms is not None
                r_gu, s_gu, r_d, s_d = sv.norms
                gu_gu, gr = _renorm_backward(gw_gu, Xgu[jj], r_gu, s_gu, rho[0])
                grho_gu += gr
                gu_d, gr = _renorm_backward(gw_d, Xd[jj], r_d, s_d, rho[1])
                grho_d += gr
                gprev = (gu_gu, gu_d)  # X = W + U
            elif norm == "pre":
                assert a_next is not None and rho is not None and sv.norms is not None
                assert grho_gu is not None and grho_d is not None
                assert ga_gu is not None and ga_d is not None
                r_gu, s_gu, r_d, s_d = sv.norms
                gx, gr = _renorm_backward(gw_gu, a_next[0], r_gu, s_gu, rho[0])
                grho_gu += gr
                ga_gu = ga_gu + gx
                gx, gr = _renorm_backward(gw_d, a_next[1], r_d, s_d, rho[1])
                grho_d += gr
                ga_d = ga_d + gx
                gu_gu, gu_d = ga_gu, ga_d  # A' = A + U
                gprev = None  # the used weights only feed this chunk's maths
            else:
                gu_gu, gu_d = gw_gu, gw_d
                gprev = (gw_gu, gw_d)
            if coeffs is not None:
                assert sv.ns is not None
                gx = _ns_backward(_ns_orient(gu_gu, gu_d, Dh), sv.ns, coeffs)
                gu_gu, gu_d = _ns_unorient(gx, N, Dh, D)
            if has_mom:
                assert gm_gu is not None and gm_d is not None and mu is not None
                assert Mgu is not None and Md is not None and gmu is not None
                gu_gu, gu_d = gm_gu + gu_gu, gm_d + gu_d  # M' = D + mu M
                gmu[:, j] = (gu_gu * Mgu[j]).sum((-2, -1)) + (gu_d * Md[j]).sum((-2, -1))
                mj = mu[:, j].view(N, 1, 1)
                gm_gu, gm_d = gu_gu * mj, gu_d * mj
            gd_gu, gd_d = gu_gu, gu_d  # gradients of this chunk's descent direction
            # ---- the chunk's key-side maths, backwards
            w_gu, w_d = Wgu[j], Wd[j]
            Zj, Gj, Ptj = Z[jj], G[jj], Pt[jj]
            zkg, zku = Zj[..., :Dh], Zj[..., Dh:]
            sk = torch.sigmoid(zkg)  # [N, C, Dh]
            ak = zkg * sk  # silu
            # Dgu = (lgu * Pt)^T k ;  Dd = (ld v)^T Hk
            lj = lgu[:, j]  # [N, C, 2, 1]
            pt4 = Ptj.view(N, C, 2, Dh)
            gp = (kj @ gd_gu.mT).view(N, C, 2, Dh)  # d/d(lgu * Pt)
            gk = (pt4 * lj).view(N, C, 2 * Dh) @ gd_gu  # [N, C, D]
            glr[:, sl, :2] = (gp * pt4).sum(-1)
            gpt = gp * lj
            gptg, gptu = gpt[:, :, 0], gpt[:, :, 1]  # [N, C, Dh]
            gvd = (ak * zku) @ gd_d.mT  # [N, C, D]   (Hk = ak * zku)
            ghk = vdj @ gd_d  # [N, C, Dh]
            glr[:, sl, 2] = (gvd * vj).sum(-1)
            # Pt_g = G * zku * silu'(zkg) ; Pt_u = G * ak ; Hk = ak * zku ; ak = silu(zkg)
            dsk = _silu_grad(zkg, sk)
            t = gptg * Gj
            gG = gptu * ak + gptg * zku * dsk
            gak = gptu * Gj + ghk * zku
            torch.addcmul(t * dsk, ghk, ak, out=gZ[..., Dh:])  # d zku
            second = sk * (1 - sk) * (2 + zkg * (1 - 2 * sk))  # silu''(zkg)
            torch.addcmul(gak * dsk, t * zku, second, out=gZ[..., :Dh])  # d zkg
            # G = v Wd
            gv[:, sl] = torch.baddbmm(gvd * ldj, gG, w_d.mT)
            gwd = torch.baddbmm(gwd_qj, vj.mT, gG)
            # Zk = k Wgu^T
            gwgu = torch.baddbmm(gwgu_qj, gZ.mT, kj)  # [N, 2Dh, D]
            gk_all[:, sl] = torch.baddbmm(gk, gZ, w_gu)  # [N, C, D]
            # the weights used by chunk j: their gradient joins the carried one of the state
            if gprev is None:  # pre-norm: W_j = renorm(A_j), or the input weights at j = 0
                gw_gu, gw_d = gwgu, gwd
            else:
                gw_gu, gw_d = gprev[0] + gwgu, gprev[1] + gwd

        gq = gq_c.permute(1, 0, 2, 3).reshape(N, L, D)
        gbeta = None
        if gmu is not None:
            gbeta = (gmu / C).unsqueeze(-1).expand(N, n, C).reshape(N, L)
        g_acc = (ga_gu, ga_d) if norm == "pre" else (None, None)
        g_mom = (gm_gu, gm_d) if has_mom else (None, None)
        return (None, gq, gk_all, gv, glr, gbeta, gw_gu, gw_d, *g_acc, *g_mom, grho_gu, grho_d)


def fused_chunks(
    cfg: LaCTOptions,
    C: int,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    beta: Tensor | None,
    w: Sequence[Tensor],
    acc: Sequence[Tensor] | None,
    mom: Sequence[Tensor] | None,
    rho: Sequence[Tensor] | None,
) -> tuple[Tensor, list[Tensor], list[Tensor] | None, list[Tensor] | None]:
    """Run ``n = L // C`` complete chunks through :class:`FusedChunks`.

    Args:
        cfg: the op options.
        C: chunk size.
        q, k, v: [N, L, D] with L a multiple of C.
        lr: [N, L, 3]; beta: [N, L, 1] or None.
        w: (gate [N, Dh, D], up [N, Dh, D], down [N, D, Dh]).
        acc, mom, rho: pre-norm accumulators, momentum buffers, row norms (same layout) or None.

    Returns:
        (o [N, L, D], new weights, new accumulators or None, new momentum buffers or None).
    """
    Dh = w[2].shape[-1]

    def stack(ts: Sequence[Tensor] | None) -> tuple[Tensor | None, Tensor | None]:
        if ts is None:
            return None, None
        return torch.cat([ts[0], ts[1]], dim=1), ts[2]

    meta = _Meta(cfg, C, acc is not None, mom is not None, rho is not None)
    if mom is not None and beta is None:
        raise ValueError("momentum buffers need beta")
    b = None if beta is None else beta.reshape(beta.shape[0], beta.shape[1])
    outs = FusedChunks.apply(
        meta, q, k, v, lr, b, *stack(w), *stack(acc), *stack(mom if b is not None else None),
        *stack(rho),
    )  # fmt: skip
    o, rest = outs[0], list(outs[1:])

    def unstack(gu: Tensor, d: Tensor) -> list[Tensor]:
        return [gu[:, :Dh], gu[:, Dh:], d]

    new_w = unstack(rest[0], rest[1])
    i = 2
    new_a = None
    if acc is not None:
        new_a, i = unstack(rest[i], rest[i + 1]), i + 2
    new_m = unstack(rest[i], rest[i + 1]) if mom is not None else None
    return o, new_w, new_a, new_m
