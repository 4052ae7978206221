"""Functional Adan: one signature, three paths (single-tensor reference, foreach, fused).

Every tensor list is aligned by parameter: ``params[i]`` has gradient ``grads[i]`` and state
``exp_avgs[i]`` (m), ``exp_avg_diffs[i]`` (v), ``exp_avg_sqs[i]`` (n), ``prev_grads[i]`` (g_prev)
and the 0-d float32 CPU counter ``state_steps[i]``. Each tensor has any shape ``[*]``; the state
tensors have the parameter's shape and device and either its dtype or a wider one (fp32 state for
bf16/fp16 parameters). The functions update params and state in place, increment
``state_steps`` (torch convention), and never write to ``grads``.

The update for one parameter (code-convention betas, first step ``k = 1``)::

    g = clip_coef * grad (negated if maximize);  if k == 1: g_prev = g
    d = g - g_prev
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) d;  n = b3 n + (1 - b3) (g + b2 d)^2
    den = sqrt(n) / sqrt(1 - b3^k) + eps
    theta -= lr / (1 - b1^k) * m / den + lr * b2 / (1 - b2^k) * v / den
    theta /= 1 + lr wd   (proximal; no_prox: theta *= 1 - lr wd before the step)
    g_prev = g
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from batchcraft.optim._adan_fused import _fused_adan

__all__ = ["adan", "global_clip_coef"]


def _scalar(x: float | Tensor) -> float:
    """A Python float from a float or a 0-d tensor (CPU tensors: no device sync)."""
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def global_clip_coef(grads: Sequence[Tensor], max_norm: float, eps: float) -> Tensor | None:
    """``min(1, max_norm / (||g_all||_2 + eps))`` as a 0-d tensor on the first gradient's device.

    The norm runs over every tensor in ``grads`` (all parameter groups) and is accumulated in
    fp64 when any gradient is fp64, else fp32. Nothing is read back to the host.

    Args:
        grads: the gradients, any shapes ``[*]``, any devices.
        max_norm: the clipping threshold; ``0`` means off and returns ``None``.
        eps: added to the norm (the optimizer's ``eps``).
    """
    if max_norm <= 0 or not grads:
        return None
    acc = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    device = grads[0].device
    buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        buckets.setdefault((g.device, g.dtype), []).append(g)
    norms = []
    for gs in buckets.values():
        per = torch._foreach_norm(gs, 2, dtype=acc)  # accumulated in `acc`, no low-precision sum
        norms.append(torch.stack(per).to(device=device, non_blocking=True))
    total = torch.linalg.vector_norm(torch.cat(norms))
    return (max_norm / (total + eps)).clamp(max=1.0)


def _bias_steps(state_steps: list[Tensor], group_step: int | None) -> list[float]:
    """Increment the per-parameter counters; return the step each bias correction uses."""
    out = []
    for s in state_steps:
        s += 1
        out.append(float(group_step) if group_step is not None else _scalar(s))
    return out


def _single_tensor_adan(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    state_steps: list[Tensor],
    *,
    clip_coef: Tensor | None,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    maximize: bool,
    differentiable: bool,
    group_step: int | None,
) -> None:
    """The reference: per-tensor ops, least extra memory; the only differentiable path."""
    ks = [_scalar(s) + 1 for s in state_steps]  # seeding uses the per-parameter step
    bks = _bias_steps(state_steps, group_step)
    for i, p in enumerate(params):
        m, v, n, prev = exp_avgs[i], exp_avg_diffs[i], exp_avg_sqs[i], prev_grads[i]
        bc1, bc2 = 1 - beta1 ** bks[i], 1 - beta2 ** bks[i]
        sqrt_bc3 = math.sqrt(1 - beta3 ** bks[i])
        g = grads[i] if grads[i].dtype == m.dtype else grads[i].to(m.dtype)
        if clip_coef is not None:
            g = g * clip_coef.to(device=g.device, dtype=g.dtype)
        if maximize:
            g = torch.neg(g)
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        if differentiable:  # out of place: autograd keeps u and sqrt(n) for the backward
            if ks[i] == 1:
                prev.copy_(g)
            neg_d = prev - g
            v.mul_(beta2).add_(neg_d, alpha=-(1 - beta2))
            u = (neg_d * -beta2).add_(g)
            n.mul_(beta3).addcmul_(u, u, value=1 - beta3)
            den = (n.sqrt() / sqrt_bc3).add_(eps)
        else:
            if ks[i] == 1:
                prev.zero_()  # seeding g_prev = g makes the difference exactly 0
            else:
                prev.sub_(g)  # prev now holds -d = g_prev - g (negation is exact)
            v.mul_(beta2).add_(prev, alpha=-(1 - beta2))
            u = prev.mul_(-beta2).add_(g)  # Nesterov-corrected gradient g + b2 d
            n.mul_(beta3).addcmul_(u, u, value=1 - beta3)
            den = n.sqrt().div_(sqrt_bc3).add_(eps)
        target = p if p.dtype == m.dtype else p.to(m.dtype)
        if differentiable and target is p:
            target = p.clone()
        if no_prox and weight_decay != 0:
            target.mul_(1 - lr * weight_decay)
        target.addcdiv_(m, den, value=-lr / bc1)
        target.addcdiv_(v, den, value=-lr * beta2 / bc2)
        if not no_prox and weight_decay != 0:
            target.div_(1 + lr * weight_decay)
        if target is not p:
            p.copy_(target)
        prev.copy_(g)


def _multi_tensor_adan(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    state_steps: list[Tensor],
    *,
    clip_coef: Tensor | None,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    maximize: bool,
    differentiable: bool,
    group_step: int | None,
) -> None:
    """``torch._foreach_*`` over lists grouped by (device, param dtype, state dtype).

    Same op sequence as :func:`_single_tensor_adan`, so fp64 results are bitwise equal. The
    gradient difference and the Nesterov term are built in the ``prev_grads`` buffers (refilled
    with ``g`` at the end), so the only temporary is the denominator.
    """
    del differentiable  # validated by the caller: foreach is never differentiable
    buckets: dict[tuple[torch.device, torch.dtype, torch.dtype, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype, exp_avgs[i].dtype, grads[i].dtype), []).append(i)
    for (device, p_dtype, s_dtype, g_dtype), idx in buckets.items():
        ps = [params[i] for i in idx]
        ms, vs = [exp_avgs[i] for i in idx], [exp_avg_diffs[i] for i in idx]
        ns, prevs = [exp_avg_sqs[i] for i in idx], [prev_grads[i] for i in idx]
        steps = [state_steps[i] for i in idx]
        first = [j for j, s in enumerate(steps) if _scalar(s) == 0]
        bks = _bias_steps(steps, group_step)
        gs = [grads[i] for i in idx]
        if g_dtype != s_dtype:
            gs = [g.to(s_dtype) for g in gs]
        if clip_coef is not None:
            gs = list(torch._foreach_mul(gs, clip_coef.to(device=device, dtype=s_dtype)))
            if maximize:
                torch._foreach_neg_(gs)
        elif maximize:
            gs = list(torch._foreach_neg(gs))
        torch._foreach_sub_(prevs, gs)  # prevs now hold -d = g_prev - g (negation is exact)
        if first:  # seeding g_prev = g makes the difference exactly 0
            torch._foreach_zero_([prevs[j] for j in first])
        torch._foreach_mul_(ms, beta1)
        torch._foreach_add_(ms, gs, alpha=1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_add_(vs, prevs, alpha=-(1 - beta2))
        torch._foreach_mul_(prevs, -beta2)
        torch._foreach_add_(prevs, gs)  # prevs now hold u = g + b2 d
        torch._foreach_mul_(ns, beta3)
        torch._foreach_addcmul_(ns, prevs, prevs, value=1 - beta3)
        den = torch._foreach_sqrt(ns)
        torch._foreach_div_(den, [math.sqrt(1 - beta3**k) for k in bks])
        torch._foreach_add_(den, eps)
        targets = ps if p_dtype == s_dtype else [p.to(s_dtype) for p in ps]
        if no_prox and weight_decay != 0:
            torch._foreach_mul_(targets, 1 - lr * weight_decay)
        torch._foreach_addcdiv_(targets, ms, den, [-lr / (1 - beta1**k) for k in bks])
        torch._foreach_addcdiv_(targets, vs, den, [-lr * beta2 / (1 - beta2**k) for k in bks])
        if not no_prox and weight_decay != 0:
            torch._foreach_div_(targets, 1 + lr * weight_decay)
        if targets is not ps:
            torch._foreach_copy_(ps, targets)
        torch._foreach_copy_(prevs, gs)


def adan(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    prev_grads: list[Tensor],
    state_steps: list[Tensor],
    *,
    clip_coef: Tensor | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    maximize: bool,
    differentiable: bool = False,
    group_step: int | None = None,
) -> None:
    """Functional Adan step over aligned lists (see the module docstring for the update).

    Args:
        params: parameters ``[*]``, updated in place.
        grads: their gradients ``[*]``; read only.
        exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads: state ``[*]`` (m, v, n, g_prev).
        state_steps: 0-d float32 CPU counters, incremented here.
        clip_coef: 0-d global clip factor on the gradients' device, or ``None`` (no clipping).
        foreach: multi-tensor path; ``None`` picks it when every tensor is on CUDA.
        fused: one-pass kernel path (Triton on CUDA, one multi-tensor C kernel call on CPU);
            never chosen by default.
        lr, beta1, beta2, beta3, eps, weight_decay: hyper-parameters (code-convention betas).
        no_prox: decoupled (AdamW-style) decay instead of the proximal division.
        maximize: ascend instead of descend.
        differentiable: keep the step on the autograd tape (single-tensor path only).
        group_step: when given, bias corrections use this shared counter (official behaviour)
            instead of the per-parameter step; first-step seeding still follows ``state_steps``.
    """
    n = len(params)
    lists = (grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, state_steps)
    if any(len(x) != n for x in lists):
        raise ValueError(
            f"adan: all lists must have len(params)={n}, got {[len(x) for x in lists]}"
        )
    if fused and foreach:
        raise ValueError("adan: fused=True and foreach=True are exclusive; choose one")
    if differentiable and (fused or foreach):
        raise ValueError(
            "adan: differentiable=True needs the single-tensor path (no foreach/fused)"
        )
    if n == 0:
        return
    if foreach is None and not fused and not differentiable:
        foreach = all(p.is_cuda for p in params)
    kwargs: dict[str, Any] = dict(
        clip_coef=clip_coef,
        lr=_scalar(lr),
        beta1=beta1,
        beta2=beta2,
        beta3=beta3,
        eps=eps,
        weight_decay=weight_decay,
        no_prox=no_prox,
        maximize=maximize,
        differentiable=differentiable,
        group_step=group_step,
    )
    fn: Callable[..., None]
    if fused:
        fn = _fused_adan
    elif foreach:
        fn = _multi_tensor_adan
    else:
        fn = _single_tensor_adan
    fn(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, state_steps, **kwargs)
