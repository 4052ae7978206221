"""Fused Adan: the whole update in one pass over memory.

Two backends behind :func:`_fused_adan`, chosen per device (:func:`fused_backend`):

* ``"cpu"``: one call of a small C kernel per (param dtype, state dtype) bucket, over every
  tensor of the bucket at once (:mod:`batchcraft.optim._adan_cpu`); its cost does not grow with
  the number of tensors beyond collecting their pointers.
* ``"triton"``: the kernel of :mod:`batchcraft.optim._adan_triton`, one launch per tensor; CUDA,
  or CPU under ``TRITON_INTERPRET=1`` when forced (how the tests exercise it without a GPU).

Both load fp16/bf16/fp32 storage, compute in fp32 registers and store back in each tensor's own
dtype (fp32 state for bf16/fp16 parameters is supported); the CPU kernel also takes fp64 (fp64
maths). This module depends on no other Adan module at import time: the functional entry point
imports it, never the reverse.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

__all__ = ["FUSED_DTYPES", "fused_backend", "fused_dtypes"]

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # every backend
_CPU_ONLY_DTYPES = (torch.float64,)


def fused_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """The parameter and state dtypes the fused path supports on ``device``."""
    return FUSED_DTYPES + _CPU_ONLY_DTYPES if device.type == "cpu" else FUSED_DTYPES


def fused_backend(device: torch.device) -> str:
    """``"triton"`` on CUDA, ``"cpu"`` on the CPU.

    ``$BATCHCRAFT_ADAN_FUSED=triton`` forces the Triton kernel on the CPU too (it then needs
    ``TRITON_INTERPRET=1``); tests use it to run the kernel in the interpreter.
    """
    if device.type == "cuda":
        return "triton"
    return "triton" if os.environ.get("BATCHCRAFT_ADAN_FUSED", "") == "triton" else "cpu"


def _fused_adan(
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
    backend: str | None = None,
) -> None:
    """Fused path of :func:`batchcraft.optim.adan` (same arguments, plus ``backend``)."""
    del differentiable  # validated by the caller
    hp: dict[str, Any] = dict(
        clip_coef=clip_coef, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
        weight_decay=weight_decay, no_prox=no_prox, maximize=maximize, group_step=group_step,
    )  # fmt: skip
    buckets: dict[tuple[torch.device, torch.dtype, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype, exp_avgs[i].dtype), []).append(i)
    lists = (params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads)
    for (device, p_dtype, s_dtype), idx in buckets.items():
        which = backend or fused_backend(device)
        ok = fused_dtypes(device) if which == "cpu" else FUSED_DTYPES
        if p_dtype not in ok or s_dtype not in ok:
            raise ValueError(
                f"fused Adan supports {'/'.join(str(d)[6:] for d in ok)} params and state on "
                f"{device.type}, got {p_dtype} params with {s_dtype} state; use foreach=True "
                "for other dtypes"
            )
        if which == "cpu":
            from batchcraft.optim._adan_cpu import CPU_KERNELS

            if (p_dtype, s_dtype) not in CPU_KERNELS:
                pairs = ", ".join(f"{str(a)[6:]}/{str(b)[6:]}" for a, b in CPU_KERNELS)
                raise ValueError(
                    f"fused Adan on the CPU has no kernel for {p_dtype} params with {s_dtype} "
                    f"state; supported (param/state): {pairs}; use foreach=True otherwise"
                )
        tensors = [[x[i] for i in idx] for x in lists]
        steps = [state_steps[i] for i in idx]
        if which == "cpu":
            if device.type != "cpu":
                raise ValueError(f"the 'cpu' fused Adan backend cannot update {device} tensors")
            _cpu_bucket(tensors, steps, p_dtype, s_dtype, hp)
        elif which == "triton":
            for i in range(len(steps)):
                _check_aligned(i, *(ts[i] for ts in tensors))
            _triton_each(tensors, steps, hp)
        else:
            raise ValueError(f"fused Adan backend must be 'triton' or 'cpu', got {which!r}")


def _check_aligned(i: int, p: Tensor, g: Tensor, m: Tensor, *state: Tensor) -> None:
    """The kernels index raw memory, so sizes, devices and state dtypes must agree exactly."""
    for name, t in zip(("grad", "exp_avg", "exp_avg_diff", "exp_avg_sq", "prev_grad"),
                       (g, m, *state), strict=True):  # fmt: skip
        if t.shape != p.shape or t.device != p.device or (name != "grad" and t.dtype != m.dtype):
            raise ValueError(
                f"fused Adan: {name}[{i}] is {t.dtype} {tuple(t.shape)} on {t.device}, but "
                f"param[{i}] is {tuple(p.shape)} on {p.device} with {m.dtype} state; every "
                "tensor must match its parameter's shape and device, every state tensor the "
                "exp_avg dtype"
            )


def _cpu_bucket(
    tensors: list[list[Tensor]],
    steps: list[Tensor],
    p_dtype: torch.dtype,
    s_dtype: torch.dtype,
    hp: dict[str, Any],
) -> None:
    """One C call for the bucket, after one cheap pass of checks over its tensors.

    This pass is the per-tensor cost of a step, so it uses only cheap attribute reads
    (``numel``, ``dtype``, ``is_cpu``, ``is_contiguous``). Non-contiguous tensors and counters
    that are not float32 CPU tensors go through copies written back after the call.
    """
    from batchcraft.optim._adan_cpu import adan_cpu_update

    ps, gs, ms, vs, ns, prevs = tensors
    f32 = torch.float32
    copies: list[tuple[list[Tensor], int, Tensor]] = []  # (list, position, original)
    for i in range(len(ps)):
        p, g, m, v, n, prev = ps[i], gs[i], ms[i], vs[i], ns[i], prevs[i]
        k = p.numel()
        if not (
            g.numel() == k and m.numel() == k and v.numel() == k and n.numel() == k
            and prev.numel() == k and v.dtype is s_dtype and n.dtype is s_dtype
            and prev.dtype is s_dtype and g.is_cpu and m.is_cpu and v.is_cpu and n.is_cpu
            and prev.is_cpu
        ):  # fmt: skip
            _check_aligned(i, p, g, m, v, n, prev)  # raises with the details
        if g.dtype is not p_dtype:
            gs[i] = g.to(p_dtype)
        if not (
            p.is_contiguous() and g.is_contiguous() and m.is_contiguous() and v.is_contiguous()
            and n.is_contiguous() and prev.is_contiguous()
        ):  # fmt: skip
            for j, ts in enumerate(tensors):
                if not ts[i].is_contiguous():
                    if j != 1:  # gradients are read only
                        copies.append((ts, i, ts[i]))
                    ts[i] = ts[i].contiguous()
        s = steps[i]
        if s.dtype is not f32 or not s.is_cpu:
            copies.append((steps, i, s))
            steps[i] = s.to("cpu", f32)
    adan_cpu_update(ps, gs, ms, vs, ns, prevs, steps, **hp)
    for ts, i, original in copies:
        original.copy_(ts[i])


def _triton_each(tensors: list[list[Tensor]], steps: list[Tensor], hp: dict[str, Any]) -> None:
    """One Triton launch per tensor, with the step's bias corrections computed on the host."""
    from batchcraft.optim._adan_triton import adan_triton_update

    b1, b2, b3, group_step = hp["beta1"], hp["beta2"], hp["beta3"], hp["group_step"]
    for i, step in enumerate(steps):
        first = float(step.item()) == 0
        step += 1
        k = float(group_step) if group_step is not None else float(step.item())
        own = [ts[i] for ts in tensors]
        work = [t if t.is_contiguous() else t.contiguous() for t in own]
        clip = None if hp["clip_coef"] is None else hp["clip_coef"].to(own[0].device)
        p, g, m, v, n, prev = work
        adan_triton_update(
            p, g, m, v, n, prev, clip, first=first, lr=hp["lr"], beta1=b1, beta2=b2, beta3=b3,
            bc1=1 - b1**k, bc2=1 - b2**k, bc3=1 - b3**k, eps=hp["eps"],
            weight_decay=hp["weight_decay"], no_prox=hp["no_prox"], maximize=hp["maximize"],
        )  # fmt: skip
        for j, (t, w) in enumerate(zip(own, work, strict=True)):
            if w is not t and j != 1:
                t.copy_(w)
