"""Fast LaCT: closed-form inner gradients, heads folded into the batch, one bmm per product.

Layout: ``q, k, v`` [B, T, H, D] are re-laid once to contiguous [N = B*H, T, D]; weights to
[N, Dh, D] / [N, D, Dh]. Complete causal chunks run in a fused loop that keeps gate and up
stacked as ``Wgu = [Wg; Wu]`` [N, 2*Dh, D], so per chunk::

    Z   = [q_j; k_j] @ Wgu^T                      [N, 2C, 2Dh]  (query and key pre-activations at once)
    o_j = (silu(Zq_g) * Zq_u) @ Wd^T              [N, C, D]
    G   = v_j @ Wd ; Delta_d = v_j^T (ld * Hk)     (§3)
    [Delta_g; Delta_u] = [lg*G*Zu*silu'(Zg), lu*G*A]^T @ k_j     one bmm  [N, 2Dh, D]

then the shared update rule (momentum, per-matrix Muon, renorm). No per-token Python work;
autograd differentiates through the loop, and ``recompute=True`` checkpoints each chunk step
(activation memory bounded by one chunk plus the per-chunk weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from batchcraft.ops.lact.api import Layout, Schedule, run_lact
from batchcraft.ops.lact.executor import Backend, Run
from batchcraft.ops.lact.inner import apply_rows, inner_grad_rows
from batchcraft.ops.lact.state import FastWeights, LaCTState
from batchcraft.ops.lact.update import UpdateConfig, update_rule

__all__ = ["chunk_lact"]


class _Folded(Layout):
    """[B, T, H, X] <-> [B*H, T, X]; weights [B, H, a, b] <-> [B*H, a, b]."""

    def x_in(self, x: Tensor) -> Tensor:
        B, T, H, X = x.shape
        return x.permute(0, 2, 1, 3).reshape(B * H, T, X)  # [B*H, T, X]

    def x_out(self, x: Tensor, B: int, H: int) -> Tensor:
        return x.unflatten(0, (B, H)).permute(0, 2, 1, 3)  # [B, T, H, X]

    def beta_in(self, b: Tensor) -> Tensor:
        return self.x_in(b.unsqueeze(-1))  # [B*H, T, 1]

    def beta_out(self, b: Tensor, B: int, H: int) -> Tensor:
        return self.x_out(b, B, H).squeeze(-1)

    def w_in(self, w: Tensor) -> Tensor:
        return w.reshape(-1, *w.shape[-2:])  # [B*H, a, b]

    def w_out(self, w: Tensor, B: int, H: int) -> Tensor:
        return w.unflatten(0, (B, H))


def _cat0(a: Sequence[Tensor] | None, i: int, j: int) -> Tensor | None:
    return None if a is None else torch.cat([a[i], a[j]], dim=1)


class _ChunkBackend(Backend):
    def __init__(self, cfg: UpdateConfig, recompute: bool) -> None:
        super().__init__(cfg)
        self.recompute = recompute

    def apply(self, w: Sequence[Tensor], q: Tensor) -> Tensor:
        if len(w) == 1:
            return apply_rows(FastWeights(None, None, w[0]), q)
        return apply_rows(FastWeights(w[0], w[1], w[2]), q)

    def grad(self, w: Sequence[Tensor], k: Tensor, v: Tensor, lr: Tensor) -> list[Tensor]:
        fw = FastWeights(None, None, w[0]) if len(w) == 1 else FastWeights(w[0], w[1], w[2])
        d = inner_grad_rows(fw, k, v, lr, loss=self.cfg.loss)
        return [t for t in d if t is not None]

    def mu(self, beta: Tensor) -> Tensor:
        return beta.mean(dim=1, keepdim=True)  # [N, S, 1] -> [N, 1, 1]

    # -- fused loop over complete chunks -------------------------------------------------------
    def _step(
        self,
        wgu: Tensor,
        wd: Tensor,
        acc_gu: Tensor | None,
        acc_d: Tensor | None,
        mom_gu: Tensor | None,
        mom_d: Tensor | None,
        rho_gu: Tensor | None,
        rho_d: Tensor | None,
        qk: Tensor,
        v: Tensor,
        lr: Tensor,
        beta: Tensor | None,
    ) -> tuple[Tensor, ...]:
        """One apply-then-update chunk. qk: [N, 2C, D] (queries then keys), v: [N, C, D], lr: [N, C, 3]."""
        C = v.shape[1]
        Dh = wd.shape[-1]
        z = qk @ wgu.mT  # [N, 2C, 2Dh]
        zq = z[:, :C]
        o = (torch.nn.functional.silu(zq[..., :Dh]) * zq[..., Dh:]) @ wd.mT  # [N, C, D]
        k = qk[:, C:]  # [N, C, D]
        lg, lu, ld = lr[..., 0:1], lr[..., 1:2], lr[..., 2:3]
        mu = None if beta is None else beta.mean(dim=1, keepdim=True)  # [N, 1, 1]
        zk = z[:, C:]
        for step in range(self.cfg.inner_steps):
            if step > 0:
                zk = k @ wgu.mT
            zg, zu = zk[..., :Dh], zk[..., Dh:]  # [N, C, Dh]
            sg = torch.sigmoid(zg)
            a = zg * sg
            hk = a * zu
            e = v - hk @ wd.mT if self.cfg.loss == "mse" else v  # [N, C, D]
            g = e @ wd  # [N, C, Dh]
            d_d = e.mT @ (ld * hk)  # [N, D, Dh]
            gz = g * zu
            p = torch.cat([lg * gz * sg * (1 + zg * (1 - sg)), lu * g * a], dim=-1)  # [N, C, 2Dh]
            d_gu = p.mT @ k  # [N, 2Dh, D]
            w, acc, mom = update_rule(
                [wgu, wd],
                [d_gu, d_d],
                accum=None if acc_gu is None or acc_d is None else [acc_gu, acc_d],
                rho=None if rho_gu is None or rho_d is None else [rho_gu, rho_d],
                momentum=None if mom_gu is None or mom_d is None else [mom_gu, mom_d],
                mu=mu,
                cfg=self.cfg,
                stacked=[2, 1],
            )
            wgu, wd = w
            if acc is not None:
                acc_gu, acc_d = acc
            if mom is not None:
                mom_gu, mom_d = mom
        return o, wgu, wd, acc_gu, acc_d, mom_gu, mom_d  # type: ignore[return-value]

    def chunks(
        self, run: Run, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, beta: Tensor | None, C: int
    ) -> Tensor:
        if len(run.w) == 1:
            return super().chunks(run, q, k, v, lr, beta, C)
        N, L, D = q.shape
        n = L // C
        qk = torch.cat([q.view(N, n, C, D), k.view(N, n, C, D)], dim=2)  # [N, n, 2C, D]
        vc = v.view(N, n, C, D)
        lrc = lr.view(N, n, C, 3)
        bc = None if beta is None else beta.view(N, n, C, 1)
        wgu = torch.cat([run.w[0], run.w[1]], dim=1)  # [N, 2Dh, D]
        wd = run.w[2]
        acc_gu, acc_d = _cat0(run.acc, 0, 1), None if run.acc is None else run.acc[2]
        mom_gu, mom_d = _cat0(run.mom, 0, 1), None if run.mom is None else run.mom[2]
        rho_gu, rho_d = _cat0(run.rho, 0, 1), None if run.rho is None else run.rho[2]
        outs = []
        for j in range(n):
            args = (
                wgu,
                wd,
                acc_gu,
                acc_d,
                mom_gu,
                mom_d,
                rho_gu,
                rho_d,
                qk[:, j],
                vc[:, j],
                lrc[:, j],
            )
            bj = None if bc is None else bc[:, j]
            if self.recompute and torch.is_grad_enabled():
                res = checkpoint(self._step, *args, bj, use_reentrant=False)
            else:
                res = self._step(*args, bj)
            o, wgu, wd, acc_gu, acc_d, mom_gu, mom_d = res
            outs.append(o)
        Dh = wd.shape[-1]
        run.w = [wgu[:, :Dh], wgu[:, Dh:], wd]
        if acc_gu is not None and acc_d is not None:
            run.acc = [acc_gu[:, :Dh], acc_gu[:, Dh:], acc_d]
        if mom_gu is not None and mom_d is not None:
            run.mom = [mom_gu[:, :Dh], mom_gu[:, Dh:], mom_d]
        return torch.cat(outs, dim=1)  # [N, n*C, D]


def chunk_lact(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    *,
    chunk_size: int,
    schedule: Schedule = "causal",
    beta: Tensor | None = None,
    muon: str | None = None,
    muon_steps: int = 5,
    weight_norm: str | None = "post",
    fast_weight: str = "swiglu",
    cu_seqlens: Tensor | Sequence[int] | None = None,
    loss: str = "neg_dot",
    inner_steps: int = 1,
    check: bool = False,
    recompute: bool = False,
) -> tuple[Tensor, LaCTState]:
    """Fast LaCT (closed-form gradients, folded heads, fused chunk loop). Same contract as
    :func:`batchcraft.ops.lact.lact`; ``recompute=True`` checkpoints every chunk step."""

    def make(cfg: UpdateConfig) -> tuple[Backend, Layout]:
        return _ChunkBackend(cfg, recompute), _Folded()

    return run_lact(
        make,
        q,
        k,
        v,
        lr,
        state,
        chunk_size=chunk_size,
        schedule=schedule,
        beta=beta,
        muon=muon,
        muon_steps=muon_steps,
        weight_norm=weight_norm,
        fast_weight=fast_weight,
        cu_seqlens=cu_seqlens,
        loss=loss,
        inner_steps=inner_steps,
        check=check,
    )
