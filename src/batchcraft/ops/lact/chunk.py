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
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from batchcraft.ops.lact.executor import Backend, Run
from batchcraft.ops.lact.fused import fused_chunks, fused_supported
from batchcraft.ops.lact.inner import apply_rows, inner_grad_rows
from batchcraft.ops.lact.options import LaCTOptions, resolve_options
from batchcraft.ops.lact.runner import Layout, run_lact
from batchcraft.ops.lact.schedule import Schedule
from batchcraft.ops.lact.state import FastWeights, LaCTState
from batchcraft.ops.lact.update import update_rule

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


class _SiluGradMul(torch.autograd.Function):
    """``y = x * silu'(z)`` in one fused kernel forward (aten's ``silu_backward``), with its own
    backward (aten has no double backward for it)::

        dy/dx = silu'(z) ;  dy/dz = x * silu''(z),  silu''(z) = s (1 - s) (2 + z (1 - 2 s)),  s = sigma(z)
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, z: Tensor) -> Tensor:
        ctx.save_for_backward(x, z)
        return torch.ops.aten.silu_backward(x, z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, z = ctx.saved_tensors
        s = torch.sigmoid(z)
        second = s * (1 - s) * (2 + z * (1 - 2 * s))
        return torch.ops.aten.silu_backward(grad, z), grad * x * second


class _ChunkBackend(Backend):
    # the no-grad loop writes into reused fp32 buffers (out= variants); subclasses that replace
    # ``_step`` (compiled, Triton) turn it off, and it is skipped under autocast (bf16 path)
    inference_fast = True
    # with gradients, the chunk loop runs as one autograd node with a closed-form backward
    # (:mod:`batchcraft.ops.lact.fused`); subclasses that replace ``_step`` turn it off
    fused_grad = True

    def __init__(self, cfg: LaCTOptions) -> None:
        super().__init__(cfg)
        self.recompute = cfg.recompute

    def apply(self, w: Sequence[Tensor], q: Tensor) -> Tensor:
        if len(w) == 1:
            return apply_rows(FastWeights(None, None, w[0]), q)
        return apply_rows(FastWeights(w[0], w[1], w[2]), q)

    def grad(self, w: Sequence[Tensor], k: Tensor, v: Tensor, lr: Tensor) -> list[Tensor]:
        fw = FastWeights(None, None, w[0]) if len(w) == 1 else FastWeights(w[0], w[1], w[2])
        d = inner_grad_rows(fw, k, v, lr, loss=self.cfg.inner_loss)
        return [t for t in d if t is not None]

    def mu(self, beta: Tensor) -> Tensor:
        return beta.mean(dim=1, keepdim=True)  # [N, S, 1] -> [N, 1, 1]

    # -- fused loop over complete chunks -------------------------------------------------------
    def _step(
        self,
        w: tuple[Tensor, Tensor, Tensor],
        acc: tuple[Tensor, ...] | None,
        mom: tuple[Tensor, ...] | None,
        rho: tuple[Tensor, ...] | None,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lr: Tensor,
        scaled: tuple[Tensor, Tensor, Tensor],
        beta: Tensor | None,
    ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
        """One apply-then-update chunk.

        Args:
            w: (gate, up, down) used by this chunk.
            acc, mom, rho: pre-norm accumulators, momentum buffers, reference row norms (or None).
            q: queries of the chunk [N, C, D].
            k: keys of the chunk [N, C, D].
            v: values [N, C, D].
            lr: learning rates [N, C, 3] (only read by the "mse" loss).
            scaled: (lg * k, lu * k, ld * v), each [N, C, D] (lr folded into the right operand).
            beta: momentum gates [N, C, 1] or None.

        Returns:
            (o [N, C, D], new weights, new accumulators, new momentum buffers).
        """
        wg, wu, wd = w
        zkg, zku = k @ wg.mT, k @ wu.mT  # [N, C, Dh]
        zqg, zqu = q @ wg.mT, q @ wu.mT
        hq = torch.nn.functional.silu(zqg) * zqu
        o = hq @ wd.mT  # [N, C, D]
        kg, ku, vd = scaled
        mu = None if beta is None else beta.mean(dim=1, keepdim=True)  # [N, 1, 1]
        for step in range(self.cfg.inner_steps):
            if step > 0:
                zkg, zku = k @ wg.mT, k @ wu.mT
            a = torch.nn.functional.silu(zkg)  # [N, C, Dh]
            hk = a * zku
            if self.cfg.inner_loss == "mse":
                e = v - hk @ wd.mT  # [N, C, D]
                vd = lr[..., 2:3] * e
            else:
                e = v
            g = e @ wd  # [N, C, Dh]
            d_d = vd.mT @ hk  # [N, D, Dh] = v^T (ld * Hk)
            d_u = (g * a).mT @ ku  # (G * A)^T (lu * K)
            # G * Zu * silu'(Zg) in one fused kernel (aten's silu_backward, itself differentiable)
            pg = _SiluGradMul.apply(g * zku, zkg)
            d_g = pg.mT @ kg  # [N, Dh, D] = (G * Zu * silu'(Zg))^T (lg * K)
            new_w, new_a, new_m = update_rule(
                [wg, wu, wd],
                [d_g, d_u, d_d],
                accum=None if acc is None else list(acc),
                rho=None if rho is None else list(rho),
                momentum=None if mom is None else list(mom),
                mu=mu,
                cfg=self.cfg,
            )
            wg, wu, wd = new_w
            if new_a is not None:
                acc = tuple(new_a)
            if new_m is not None:
                mom = tuple(new_m)
        return o, (wg, wu, wd), acc, mom

    def _step_inference(
        self,
        w: tuple[Tensor, Tensor, Tensor],
        acc: tuple[Tensor, ...] | None,
        mom: tuple[Tensor, ...] | None,
        rho: tuple[Tensor, ...] | None,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lr: Tensor,
        beta: Tensor | None,
        out: Tensor,
        ws: dict[str, Tensor],
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
        """:meth:`_step` without a graph (neg_dot, one inner step): same maths, written into
        reused workspace buffers ``ws`` and ``out`` [N, C, D], elementwise chains in place.
        Fresh multi-MB allocations per chunk cost page faults on CPU; reuse avoids them."""
        wg, wu, wd = w
        zqg = torch.bmm(q, wg.mT, out=ws["zqg"])  # [N, C, Dh]
        zqu = torch.bmm(q, wu.mT, out=ws["zqu"])
        zkg = torch.bmm(k, wg.mT, out=ws["zkg"])
        zku = torch.bmm(k, wu.mT, out=ws["zku"])
        hq = torch.nn.functional.silu(zqg, inplace=True).mul_(zqu)
        torch.bmm(hq, wd.mT, out=out)  # o_j [N, C, D]
        lg, lu, ld = lr.split(1, dim=-1)  # [N, C, 1] each
        # lr folded into the right operands, per chunk into reused buffers (no fresh [N, T, D] tensors)
        kg = torch.mul(k, lg, out=ws["kg"])
        ku = torch.mul(k, lu, out=ws["ku"])
        vd = torch.mul(v, ld, out=ws["vd"])
        a = torch.nn.functional.silu(zkg)  # silu(zk_g)
        hk = torch.mul(a, zku, out=ws["hk"])
        g = torch.bmm(v, wd, out=ws["g"])  # [N, C, Dh]
        d_d = vd.mT @ hk  # [N, D, Dh]
        gz = torch.mul(g, zku, out=ws["t"])
        pg = torch.ops.aten.silu_backward.grad_input(
            gz, zkg, grad_input=ws["sg"]
        )  # G * Zu * silu'(Zg)
        d_g = pg.mT @ kg
        d_u = a.mul_(g).mT @ ku
        mu = None if beta is None else beta.mean(dim=1, keepdim=True)
        new_w, new_a, new_m = update_rule(
            [wg, wu, wd],
            [d_g, d_u, d_d],
            accum=None if acc is None else list(acc),
            rho=None if rho is None else list(rho),
            momentum=None if mom is None else list(mom),
            mu=mu,
            cfg=self.cfg,
        )
        return (
            tuple(new_w),
            acc if new_a is None else tuple(new_a),
            mom if new_m is None else tuple(new_m),
        )

    def chunks(
        self, run: Run, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, beta: Tensor | None, C: int
    ) -> Tensor:
        if len(run.w) == 1:
            return super().chunks(run, q, k, v, lr, beta, C)
        N, L, D = q.shape
        n = L // C
        w: tuple[Tensor, ...] = tuple(run.w)
        acc = None if run.acc is None else tuple(run.acc)
        mom = None if run.mom is None else tuple(run.mom)
        rho = None if run.rho is None else tuple(run.rho)
        # unbind/split (not per-chunk slicing) so backward gathers chunk gradients in one op
        qs, ks, vs, lrs = (x.split(C, dim=1) for x in (q, k, v, lr))
        bs = [None] * n if beta is None else beta.split(C, dim=1)
        fast = (
            self.inference_fast
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled(q.device.type)
            and self.cfg.inner_loss == "neg_dot"
            and self.cfg.inner_steps == 1
        )
        if (
            not fast
            and self.fused_grad
            and (run.mom is None) == (beta is None)
            and fused_supported(self.cfg, q)
        ):
            o, new_w, new_a, new_m = fused_chunks(self.cfg, C, q, k, v, lr, beta, w, acc, mom, rho)
            self._store(
                run,
                tuple(new_w),
                None if new_a is None else tuple(new_a),
                None if new_m is None else tuple(new_m),
            )
            return o
        if fast:
            Dh = w[2].shape[-1]
            names = ("zqg", "zqu", "zkg", "zku", "sg", "a", "hk", "g", "t")
            ws = {name: q.new_empty(N, C, Dh) for name in names}
            ws.update({name: q.new_empty(N, C, D) for name in ("kg", "ku", "vd")})
            o_all = q.new_empty(n, N, C, D)  # chunk-major so every chunk's output is contiguous
            for j in range(n):
                w, acc, mom = self._step_inference(
                    w,  # type: ignore[arg-type]
                    acc,
                    mom,
                    rho,
                    qs[j],
                    ks[j],
                    vs[j],
                    lrs[j],
                    bs[j],
                    out=o_all[j],
                    ws=ws,
                )
            self._store(run, w, acc, mom)
            return o_all.permute(1, 0, 2, 3).reshape(N, L, D)  # [N, n*C, D]
        # lr folded into the right-hand operands once for all chunks: [N, L, D] each
        lg, lu, ld = lr.split(1, dim=-1)  # [N, L, 1] each
        kgs, kus, vds = ((lg * k).split(C, 1), (lu * k).split(C, 1), (ld * v).split(C, 1))
        outs = []
        for j in range(n):
            step_args = (
                w,
                acc,
                mom,
                rho,
                qs[j],
                ks[j],
                vs[j],
                lrs[j],
                (kgs[j], kus[j], vds[j]),
                bs[j],
            )
            if self.recompute and torch.is_grad_enabled():
                o, w, acc, mom = checkpoint(self._step, *step_args, use_reentrant=False)
            else:
                o, w, acc, mom = self._step(*step_args)  # type: ignore[arg-type]
            outs.append(o)
        self._store(run, w, acc, mom)
        return torch.cat(outs, dim=1)  # [N, n*C, D]

    @staticmethod
    def _store(
        run: Run,
        w: tuple[Tensor, ...],
        acc: tuple[Tensor, ...] | None,
        mom: tuple[Tensor, ...] | None,
    ) -> None:
        run.w = list(w)
        if acc is not None:
            run.acc = list(acc)
        if mom is not None:
            run.mom = list(mom)


def chunk_lact(
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
    """Fast LaCT (closed-form gradients, folded heads, fused chunk loop). Same contract as
    :func:`batchcraft.ops.lact.lact`; ``options.recompute`` checkpoints every chunk step."""
    opts = resolve_options(options, kw, beta_given=beta is not None)

    def make(cfg: LaCTOptions) -> tuple[Backend, Layout]:
        return _ChunkBackend(cfg), _Folded()

    return run_lact(
        make, q, k, v, lr, state, opts, schedule=schedule, beta=beta, cu_seqlens=cu_seqlens
    )
