"""Fused Adan: the whole update in one pass over memory, per parameter tensor.

Two backends behind :func:`_fused_adan`, chosen once per device (:func:`fused_backend`):

* ``"triton"``: the kernel of :mod:`batchcraft.optim._adan_triton`; CUDA, or CPU under
  ``TRITON_INTERPRET=1`` (how the test suite exercises it without a GPU).
* ``"compile"``: the same update as an elementwise function compiled by ``torch.compile``
  (inductor's C++ backend on CPU) with dynamic shapes, so one compiled graph serves every size;
  it multiplies by ``1 / den`` once instead of dividing three times (CPU divisions are slow).
  All flags are folded into scalars (exact: multiplying by 1 or dividing by 1), so there is one
  graph per dtype combination. Tensors under ``SMALL_NUMEL`` elements take one batched foreach
  call instead: a compiled call has a fixed cost (guards, an OpenMP region) that exceeds their
  work.

Both load fp16/bf16/fp32 storage, compute in fp32 registers and store back in each tensor's own
dtype (fp32 state for bf16 parameters is supported).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["FUSED_DTYPES", "SMALL_NUMEL", "fused_backend"]

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SMALL_NUMEL = 2**16  # compile backend: smaller tensors take the batched foreach path


def fused_backend(device: torch.device) -> str:
    """``"triton"`` on CUDA (or on CPU under ``TRITON_INTERPRET=1``), else ``"compile"``.

    ``$BATCHCRAFT_ADAN_FUSED`` (``triton`` or ``compile``) overrides the choice, for tests and
    benchmarks.
    """
    forced = os.environ.get("BATCHCRAFT_ADAN_FUSED", "")
    if forced in ("triton", "compile"):
        return forced
    if device.type == "cuda":
        return "triton"
    from batchcraft import _capabilities as caps

    return "triton" if caps.triton_interpret() and caps.has_triton() else "compile"


def _elementwise(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, n: Tensor, prev: Tensor, clip: Tensor, s: Tensor
) -> None:
    """One Adan update on flat tensors ``[N]``; ``s`` packs the scalars (see :func:`_scalars`)."""
    g32 = g.float() * clip.float() * s[9]
    d = (g32 - prev.float()) * s[10]
    m32 = m.float() * s[0] + g32 * (1.0 - s[0])
    v32 = v.float() * s[1] + d * (1.0 - s[1])
    u = d * s[1] + g32
    n32 = n.float() * s[2] + u * u * (1.0 - s[2])
    inv_den = 1.0 / (n32.sqrt() * s[5] + s[6])  # one division per element, not three
    p32 = (p.float() * s[7] - (s[3] * m32 + s[4] * v32) * inv_den) * s[8]
    p.copy_(p32)
    m.copy_(m32)
    v.copy_(v32)
    n.copy_(n32)
    prev.copy_(g32)


@functools.cache
def _compiled() -> Callable[..., Any]:
    return torch.compile(_elementwise, dynamic=True, fullgraph=True)


@functools.cache
def _one(device: torch.device) -> Tensor:
    return torch.ones((), device=device)


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
    for i, p in enumerate(params):
        if p.dtype not in FUSED_DTYPES or exp_avgs[i].dtype not in FUSED_DTYPES:
            raise ValueError(
                f"fused Adan supports float16/bfloat16/float32 params and state, got {p.dtype} "
                f"params with {exp_avgs[i].dtype} state; use foreach=True for other dtypes"
            )
    if backend is None and params and fused_backend(params[0].device) == "compile":
        # A compiled call costs tens of microseconds (guards, an OpenMP region) whatever the
        # size, so small tensors go through one batched foreach call instead (same maths).
        small = [i for i, p in enumerate(params) if p.numel() < SMALL_NUMEL]
        if small:
            from batchcraft.optim._adan_functional import _multi_tensor_adan

            lists = (params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, state_steps)
            _multi_tensor_adan(
                *([x[i] for i in small] for x in lists),
                clip_coef=clip_coef, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
                weight_decay=weight_decay, no_prox=no_prox, maximize=maximize,
                differentiable=False, group_step=group_step,
            )  # fmt: skip
            big = [i for i in range(len(params)) if params[i].numel() >= SMALL_NUMEL]
            params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, state_steps = (
                [x[i] for i in big] for x in lists
            )
    for i, p in enumerate(params):
        step = state_steps[i]
        first = float(step.item()) == 0
        step += 1
        k = float(group_step) if group_step is not None else float(step.item())
        bc1, bc2, bc3 = 1 - beta1**k, 1 - beta2**k, 1 - beta3**k
        tensors = [p, grads[i], exp_avgs[i], exp_avg_diffs[i], exp_avg_sqs[i], prev_grads[i]]
        work = [t if t.is_contiguous() else t.contiguous() for t in tensors]
        which = backend or fused_backend(p.device)
        clip = None if clip_coef is None else clip_coef.to(p.device)
        if which == "triton":
            from batchcraft.optim._adan_triton import adan_triton_update

            adan_triton_update(
                work[0],
                work[1],
                work[2],
                work[3],
                work[4],
                work[5],
                clip,
                first=first,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                beta3=beta3,
                bc1=bc1,
                bc2=bc2,
                bc3=bc3,
                eps=eps,
                weight_decay=weight_decay,
                no_prox=no_prox,
                maximize=maximize,
            )
        elif which == "compile":
            if p.numel() == 0:
                continue
            scal = torch.tensor(
                [
                    beta1,
                    beta2,
                    beta3,
                    lr / bc1,
                    lr * beta2 / bc2,
                    bc3**-0.5,
                    eps,
                    1 - lr * weight_decay if no_prox else 1.0,
                    1.0 if no_prox else 1 / (1 + lr * weight_decay),
                    -1.0 if maximize else 1.0,
                    0.0 if first else 1.0,
                ],
                dtype=torch.float32,
                device=p.device,
            )
            flat = [t.view(-1) for t in work]
            _compiled()(*flat, _one(p.device) if clip is None else clip, scal)
        else:
            raise ValueError(f"fused Adan backend must be 'triton' or 'compile', got {which!r}")
        for t, w in zip(tensors, work, strict=True):
            if w is not t and t is not grads[i]:
                t.copy_(w)
