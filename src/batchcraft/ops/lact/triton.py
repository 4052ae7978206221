"""Triton LaCT: fused kernels for the causal chunk loop, recomputation in backward (issue 11).

Forward, per complete chunk j (heads folded into the batch, ``[N, C, D]`` tiles)::

    o_j         = swiglu_apply(W_j, q_j)                     one kernel (hidden never stored)
    Delta       = inner_grad(W_j, k_j, v_j, lr_j)            one kernel, lr epilogues
    W_{j+1}     = fused_update(W_j, Delta, M_j, mu_j, rho)   momentum + add + renorm, one pass
                  (Muon: momentum in the kernel, Newton-Schulz in PyTorch, then add + renorm)

:class:`LaCTChunks` is a ``torch.autograd.Function`` over the whole loop that saves only the
per-chunk weights (with the pre-norm accumulator and momentum when present), the keys, values,
queries, lrs and betas, and in backward recomputes each chunk's step with PyTorch autograd, last
chunk first, carrying the weight gradients backwards: activation memory is one chunk's, not
the sequence's. The pending tail, explicit schedules, the linear variant, the ``mse`` loss and
``inner_steps > 1`` take the PyTorch chunk path (same maths, tested equal).

Inputs in bf16/fp16 run with fp32 state and bf16 dot operands (as :mod:`.bf16`). Works on CUDA
and, slowly, under Triton's CPU interpreter (``TRITON_INTERPRET=1``, used by the tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.lact.bf16 import LOW_PRECISION, mixed_precision
from batchcraft.ops.lact.chunk import _ChunkBackend, _Folded
from batchcraft.ops.lact.executor import Backend, Run
from batchcraft.ops.lact.muon import newton_schulz
from batchcraft.ops.lact.options import LaCTOptions, resolve_options
from batchcraft.ops.lact.runner import Layout, run_lact
from batchcraft.ops.lact.schedule import Schedule
from batchcraft.ops.lact.state import FastWeights, LaCTState
from batchcraft.ops.lact.triton_kernels import fused_update, inner_grad, swiglu_apply

__all__ = ["LaCTChunks", "triton_lact", "triton_step"]

Triple = tuple[Tensor, Tensor, Tensor]


def triton_step(
    w: Triple,
    acc: Triple | None,
    mom: Triple | None,
    rho: Triple | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    beta: Tensor | None,
    cfg: LaCTOptions,
    *,
    mm_bf16: bool = False,
    out: Tensor | None = None,
) -> tuple[Tensor, Triple, Triple | None, Triple | None]:
    """One apply-then-update chunk with the kernels (no graph); the maths of the chunk step.

    Args:
        w: (gate [N, Dh, D], up [N, Dh, D], down [N, D, Dh]) fp32 contiguous.
        acc, mom, rho: pre-norm accumulators, momentum buffers, row norms [N, rows, 1] or None.
        q, k, v: [N, C, D] (row stride D); lr: [N, C, 3]; beta: [N, C, 1] or None.
        cfg: update options (neg_dot loss, one inner step).
        mm_bf16: bf16 dot operands.
        out: where to write o (fp32 [N, C, D], row stride D), e.g. a slice of the whole output.

    Returns:
        (o [N, C, D] fp32, new weights, new accumulators, new momentum buffers).
    """
    o = swiglu_apply(*w, q, mm_bf16=mm_bf16, out=out)
    delta = inner_grad(*w, k, v, lr, mm_bf16=mm_bf16)
    mu = None if beta is None else beta.float().mean(dim=1).reshape(-1)  # [N]
    base = acc if cfg.weight_norm == "pre" else w
    assert base is not None
    rhos: Sequence[Tensor | None] = [None] * 3 if cfg.weight_norm is None else list(rho or ())
    new_w, new_a, new_m = [], [], []
    for i in range(3):
        d, m = delta[i], None if mom is None else mom[i]
        if cfg.use_muon:
            if m is not None:
                assert mu is not None
                m = d + mu.view(-1, 1, 1) * m  # heavy ball before Muon (M keeps the pre-NS sum)
                d = m
            with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=mm_bf16):
                d = newton_schulz(d, schedule=cfg.muon, steps=cfg.muon_steps).float()
            nw, na, _ = fused_update(base[i], d, rho=rhos[i], store_sum=cfg.weight_norm == "pre")
        else:
            nw, na, m = fused_update(
                base[i], d, rho=rhos[i], momentum=m, mu=mu, store_sum=cfg.weight_norm == "pre"
            )
        new_w.append(nw)
        new_a.append(na)
        new_m.append(m)
    a_out = (new_a[0], new_a[1], new_a[2]) if cfg.weight_norm == "pre" else acc
    m_out = None if mom is None else (new_m[0], new_m[1], new_m[2])
    return o, (new_w[0], new_w[1], new_w[2]), a_out, m_out  # type: ignore[return-value]


def _split(flat: Sequence[Tensor], has: tuple[bool, bool, bool]) -> list[Triple | None]:
    """flat = w(3) + [acc(3)] + [mom(3)] + [rho(3)] -> [w, acc, mom, rho]."""
    out: list[Triple | None] = []
    i = 0
    for present in (True, *has):
        if present:
            out.append((flat[i], flat[i + 1], flat[i + 2]))
            i += 3
        else:
            out.append(None)
    return out


class LaCTChunks(torch.autograd.Function):
    """Complete causal chunks with Triton forward and recomputing backward.

    Inputs: ``meta = (cfg, C, mm_bf16, has)``, q, k, v [N, L, D], lr [N, L, 3], beta [N, L, 1]
    or None, then the flat state ``w(3) [+ acc(3)] [+ mom(3)] [+ rho(3)]``.
    Outputs: o [N, L, D] then the new ``w(3) [+ acc(3)] [+ mom(3)]``.
    """

    @staticmethod
    def forward(
        ctx: Any, meta: Any, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, beta: Any, *flat: Tensor
    ) -> Any:  # type: ignore[override]
        cfg, C, mm_bf16, has = meta
        w, acc, mom, rho = _split([t.detach().float().contiguous() for t in flat], has)
        N, L, D = q.shape
        o = torch.empty(N, L, D, device=q.device, dtype=torch.float32)
        saved: list[Tensor] = []
        for j in range(L // C):
            sl = slice(j * C, (j + 1) * C)
            for part in (w, acc, mom):
                if part is not None:
                    saved.extend(part)
            bj = None if beta is None else beta[:, sl]
            assert w is not None
            _, w, acc, mom = triton_step(
                w,
                acc,
                mom,
                rho,
                q[:, sl],
                k[:, sl],
                v[:, sl],
                lr[:, sl],
                bj,
                cfg,
                mm_bf16=mm_bf16,
                out=o[:, sl],  # written in place: no per-chunk output copy
            )
        ctx.meta = meta
        ctx.has_beta = beta is not None
        rho_t = list(rho) if rho is not None else []
        extra = [beta] if beta is not None else []
        ctx.save_for_backward(q, k, v, lr, *extra, *rho_t, *saved)
        outs: list[Tensor] = [o.to(q.dtype), *w]  # type: ignore[misc]
        for part in (acc if has[0] else None, mom if has[1] else None):
            if part is not None:
                outs.extend(part)
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, go: Tensor, *g_state: Tensor | None) -> Any:
        cfg, C, mm_bf16, has = ctx.meta
        q, k, v, lr, *rest = ctx.saved_tensors
        beta = rest.pop(0) if ctx.has_beta else None
        rho = None
        if has[2]:
            rho, rest = tuple(rest[:3]), rest[3:]
        per = 3 * (1 + int(has[0]) + int(has[1]))  # state tensors saved per chunk
        n = q.shape[1] // C
        eager = _ChunkBackend(cfg)  # only its _step is called
        g_carry: list[Tensor | None] = list(g_state)
        grads_x = {
            name: torch.zeros_like(t) for name, t in (("q", q), ("k", k), ("v", v), ("lr", lr))
        }
        g_beta = None if beta is None else torch.zeros_like(beta)
        g_rho: list[Tensor] | None = None if rho is None else [torch.zeros_like(r) for r in rho]
        for j in reversed(range(n)):
            sl = slice(j * C, (j + 1) * C)
            st = [t.detach().requires_grad_() for t in rest[j * per : (j + 1) * per]]
            w_j, acc_j, mom_j, _ = _split(st, (has[0], has[1], False))
            rl = None if rho is None else tuple(r.detach().requires_grad_() for r in rho)
            xs = [t[:, sl].detach().requires_grad_() for t in (q, k, v, lr)]
            bj = None if beta is None else beta[:, sl].detach().requires_grad_()
            with (
                torch.enable_grad(),
                torch.autocast(q.device.type, dtype=torch.bfloat16, enabled=mm_bf16),
            ):
                qj, kj, vj, lj = xs
                lg, lu, ld = lj.split(1, dim=-1)
                assert w_j is not None
                oj, w2, a2, m2 = eager._step(
                    w_j,
                    acc_j,
                    mom_j,
                    rl,
                    qj,
                    kj,
                    vj,
                    lj,
                    (lg * kj, lu * kj, ld * vj),
                    bj,  # type: ignore[arg-type]
                )
            outs: list[Tensor] = [oj, *w2]
            for part, flag in ((a2, has[0]), (m2, has[1])):
                if flag and part is not None:
                    outs.extend(part)
            gouts = [go[:, sl]] + [
                torch.zeros_like(t) if g is None else g
                for t, g in zip(outs[1:], g_carry, strict=True)
            ]
            inputs = (
                st + (list(rl) if rl is not None else []) + xs + ([bj] if bj is not None else [])
            )
            gs = torch.autograd.grad(outs, inputs, gouts, allow_unused=True)
            gs_l = [
                torch.zeros_like(t) if g is None else g for t, g in zip(inputs, gs, strict=True)
            ]
            g_carry = list(gs_l[: len(st)])
            i = len(st)
            if g_rho is not None:
                g_rho = [a + b for a, b in zip(g_rho, gs_l[i : i + 3], strict=True)]
                i += 3
            for name in ("q", "k", "v", "lr"):
                grads_x[name][:, sl] = gs_l[i]
                i += 1
            if g_beta is not None:
                g_beta[:, sl] = gs_l[i]
        flat_grads: list[Tensor | None] = list(g_carry)
        if g_rho is not None:
            flat_grads.extend(g_rho)
        return (None, grads_x["q"], grads_x["k"], grads_x["v"], grads_x["lr"], g_beta, *flat_grads)


class _TritonBackend(_ChunkBackend):
    inference_fast = False

    def chunks(
        self, run: Run, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, beta: Tensor | None, C: int
    ) -> Tensor:
        if len(run.w) == 1 or self.cfg.inner_loss != "neg_dot" or self.cfg.inner_steps != 1:
            return super().chunks(run, q, k, v, lr, beta, C)
        mm_bf16 = torch.is_autocast_enabled(q.device.type)
        has = (run.acc is not None, run.mom is not None, run.rho is not None)
        flat = list(run.w)
        for part in (run.acc, run.mom, run.rho):
            if part is not None:
                flat.extend(part)
        meta = (self.cfg, C, mm_bf16, has)
        outs = LaCTChunks.apply(meta, q, k, v, lr, beta, *flat)
        o, rest = outs[0], list(outs[1:])
        run.w = rest[:3]
        i = 3
        if has[0]:
            run.acc, i = rest[i : i + 3], i + 3
        if has[1]:
            run.mom = rest[i : i + 3]
        return o


def _triton_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    options: LaCTOptions | None = None,
    **kw: Any,
) -> tuple[Tensor, LaCTState]:
    assert options is not None  # resolved by triton_lact

    def make(cfg: LaCTOptions) -> tuple[Backend, Layout]:
        return _TritonBackend(cfg), _Folded()  # the Triton loop always recomputes in backward

    return run_lact(make, q, k, v, lr, state, options, **kw)


_MIXED = mixed_precision(_triton_core)


def triton_lact(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    options: LaCTOptions | None = None,
    *,
    schedule: Schedule = "causal",
    beta: Tensor | None = None,
    cu_seqlens: Tensor | Sequence[int] | None = None,
    **kw: Any,
) -> tuple[Tensor, LaCTState]:
    """Triton LaCT; the contract of :func:`batchcraft.ops.lact.lact`.

    fp32 inputs run with fp32 state and fp32 (IEEE) dots, bf16/fp16 inputs with fp32 state and
    bf16 dot operands (also when any of q, k, v is low precision, or under autocast, as
    inside a layer run with ``torch.autocast``); float64 raises ``ValueError`` (use
    ``lact_impl="chunk"``). ``recompute`` is implied.
    """
    opts = resolve_options(options, kw, beta_given=beta is not None)
    call: dict[str, Any] = dict(schedule=schedule, beta=beta, cu_seqlens=cu_seqlens)
    if isinstance(q, Tensor) and q.dtype == torch.float64:
        raise ValueError(
            "impl='triton' computes in fp32 or bf16; pass float32/bfloat16 inputs or use "
            "impl='chunk' for float64"
        )
    low = any(isinstance(t, Tensor) and t.dtype in LOW_PRECISION for t in (q, k, v))
    if low or (isinstance(q, Tensor) and torch.is_autocast_enabled(q.device.type)):
        return _MIXED(q, k, v, lr, state, opts, **call)
    return _triton_core(q, k, v, lr, state, opts, **call)
