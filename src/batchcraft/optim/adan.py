"""Adan (Adaptive Nesterov momentum) to the ``torch.optim`` contract.

Paper: Xie, Zhou, Li, Lin, Yan, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
Deep Models", arXiv 2208.06677 (TPAMI 2024). The functional paths live in
:mod:`batchcraft.optim._adan_functional`; this module holds the stateful optimizer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from batchcraft.optim._adan_functional import adan, global_clip_coef

__all__ = ["Adan"]

_STATE_KEYS = ("exp_avg", "exp_avg_diff", "exp_avg_sq", "prev_grad")
_GROUP_DEFAULTS: dict[str, Any] = {
    "no_prox": False,
    "max_grad_norm": 0.0,
    "foreach": None,
    "fused": None,
    "maximize": False,
    "capturable": False,
    "differentiable": False,
    "shared_step": False,
    "state_dtype": None,
}


def _validate(
    lr: float | Tensor, betas: tuple[float, ...], eps: float, wd: float, max_grad_norm: float
) -> None:
    """Reject bad hyper-parameters; ``not x >= 0`` (not ``x < 0``) so that NaN is rejected too."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(f"lr as a Tensor must have one element, got shape {tuple(lr.shape)}")
    if not float(lr) >= 0.0:
        raise ValueError(f"Invalid lr: {float(lr)}; the learning rate must be a number >= 0")
    if not eps >= 0.0:
        raise ValueError(f"Invalid eps: {eps}; eps must be a number >= 0")
    if len(betas) != 3:
        raise ValueError(f"Invalid betas: {betas}; Adan needs three betas (b1, b2, b3)")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta{i + 1}: {b}; every beta must be in [0, 1)")
    if not wd >= 0.0:
        raise ValueError(f"Invalid weight_decay: {wd}; weight_decay must be a number >= 0")
    if not max_grad_norm >= 0.0:
        raise ValueError(f"Invalid max_grad_norm: {max_grad_norm}; use 0 (off) or a positive norm")


class Adan(Optimizer):
    r"""Adan with single-tensor, foreach and fused paths (code-convention betas).

    Per parameter with its own step ``k`` (incremented before use, first step ``k = 1``)::

        c    = min(1, max_grad_norm / (||g_all||_2 + eps))  if max_grad_norm > 0 else 1
        g    = c * grad  (-grad if maximize); p.grad itself is never written
        if k == 1: g_prev = g              # so d = 0 at the first step
        d    = g - g_prev
        m    = b1 m + (1 - b1) g            # state "exp_avg"
        v    = b2 v + (1 - b2) d            # state "exp_avg_diff"
        n    = b3 n + (1 - b3) (g + b2 d)^2 # state "exp_avg_sq"
        den  = sqrt(n) / sqrt(1 - b3^k) + eps
        dir  = m / (1 - b1^k) + b2 v / (1 - b2^k)
        theta = (theta - lr dir / den) / (1 + lr wd)        # no_prox=False (proximal)
        theta = theta (1 - lr wd) - lr dir / den            # no_prox=True (AdamW-style)
        g_prev = g                          # state "prev_grad"

    Paper: https://arxiv.org/abs/2208.06677. Betas follow the official code: ``b = 1 - beta_paper``.

    Args:
        params: parameters or parameter groups (dicts may override any hyper-parameter).
        lr: learning rate (float or 0-d tensor). Adan's peak lr is usually 5-10x AdamW's.
        betas: ``(b1, b2, b3)`` for the gradient, gradient-difference and squared EMAs.
        eps: added to the bias-corrected ``sqrt(n)``; also added to the global norm for clipping.
        weight_decay: decay strength (about 10x smaller than AdamW's; 0.02 is a good default).
        no_prox: decoupled AdamW-style decay instead of the proximal division.
        max_grad_norm: global gradient-norm clipping over all groups (0 = off); computed on
            device with no host sync; uses the constructor's ``eps`` and ``max_grad_norm``.
            It is optimizer-wide: a param group that sets another value raises ``ValueError``,
            and :meth:`load_state_dict` keeps the constructor's value (warning if it differs).
        foreach: multi-tensor path; ``None`` picks it when every tensor is on CUDA (torch rule).
        fused: one-pass kernel: Triton on CUDA (fp16/bf16/fp32); on the CPU one call of a C
            kernel for all tensors of a dtype (fp16/bf16/fp32/fp64; compiled on first use);
            never picked by default.
        maximize: maximise the objective.
        capturable: accepted for signature compatibility; only ``False`` is supported (v1).
        differentiable: run the step under autograd (single-tensor path only).
        shared_step: opt in to the official code's group-level step counter for the bias
            corrections (exact parity with official checkpoints/trajectories); by default each
            parameter has its own 0-d ``step`` tensor, so a parameter that first receives a
            gradient late starts with a proper first step.
        state_dtype: dtype of the four state buffers; ``None`` = the parameter's dtype. Use
            ``torch.float32`` with bf16/fp16 parameters for full-precision moments.

    State per parameter: ``step`` (0-d float32 CPU tensor), ``exp_avg``, ``exp_avg_diff``,
    ``exp_avg_sq``, ``prev_grad`` (parameter-shaped). :meth:`restart_opt` re-zeroes them.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        no_prox: bool = False,
        max_grad_norm: float = 0.0,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        shared_step: bool = False,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        _validate(lr, tuple(betas), eps, weight_decay, max_grad_norm)
        if capturable:
            raise ValueError("capturable=True is not supported in v1; use capturable=False")
        if fused and foreach:
            raise ValueError("fused=True and foreach=True are exclusive; choose one")
        if differentiable and (fused or foreach):
            raise ValueError(
                "differentiable=True runs on the single-tensor path only; "
                "set foreach=False and fused=False"
            )
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, no_prox=no_prox,
            max_grad_norm=max_grad_norm, foreach=foreach, fused=fused, maximize=maximize,
            capturable=False, differentiable=differentiable, shared_step=shared_step,
            state_dtype=state_dtype,
        )  # fmt: skip
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, validating the group's hyper-parameters and dtypes.

        ``max_grad_norm`` is optimizer-wide (one clip factor from the norm of every gradient of
        every group), so a group that sets a different value is rejected rather than ignored.
        """
        clip = param_group.get("max_grad_norm", self.defaults["max_grad_norm"])
        if clip != self.defaults["max_grad_norm"]:
            raise ValueError(
                f"max_grad_norm={clip} in a param group: clipping is optimizer-wide (one global "
                f"norm over every group), so set it once with Adan(..., max_grad_norm=...) "
                f"(this optimizer has {self.defaults['max_grad_norm']})"
            )
        group = {**self.defaults, **param_group}
        _validate(group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"], 0.0)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["fused"]:
            from batchcraft.optim._adan_fused import fused_dtypes

            for p in group["params"]:
                if p.dtype not in fused_dtypes(p.device):
                    self.param_groups.pop()
                    raise ValueError(
                        f"fused=True supports float16/bfloat16/float32 parameters (and float64 "
                        f"on the CPU), got {p.dtype} on {p.device.type}; use foreach=True (or "
                        "fused=False) for this dtype"
                    )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _GROUP_DEFAULTS.items():
                group.setdefault(key, value)
        for st in self.state.values():
            if "step" in st and not torch.is_tensor(st["step"]):
                st["step"] = torch.tensor(float(st["step"]), dtype=torch.float32)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        params, grads, ms, vs, ns, prevs, steps = [], [], [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Adan does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError("Adan does not support complex parameters (v1)")
            state = self.state[p]
            if len(state) == 0:
                dtype = group["state_dtype"] or p.dtype
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                for key in _STATE_KEYS:
                    state[key] = torch.zeros_like(
                        p, dtype=dtype, memory_format=torch.preserve_format
                    )
            params.append(p)
            grads.append(p.grad)
            ms.append(state["exp_avg"])
            vs.append(state["exp_avg_diff"])
            ns.append(state["exp_avg_sq"])
            prevs.append(state["prev_grad"])
            steps.append(state["step"])
        return params, grads, ms, vs, ns, prevs, steps

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimisation step; returns the closure's loss when one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            groups = [self._init_group(g) for g in self.param_groups]
            clip = global_clip_coef(
                [g for lists in groups for g in lists[1]],
                float(self.defaults["max_grad_norm"]),
                float(self.defaults["eps"]),
            )
            for group, lists in zip(self.param_groups, groups, strict=True):
                group_step = None
                if group["shared_step"]:
                    group["step"] = int(group.get("step", 0)) + 1
                    group_step = group["step"]
                if not lists[0]:
                    continue
                b1, b2, b3 = group["betas"]
                adan(
                    *lists,
                    clip_coef=clip,
                    foreach=group["foreach"],
                    fused=group["fused"],
                    lr=group["lr"],
                    beta1=b1,
                    beta2=b2,
                    beta3=b3,
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    no_prox=group["no_prox"],
                    maximize=group["maximize"],
                    differentiable=group["differentiable"],
                    group_step=group_step,
                )
        return loss

    @torch.no_grad()
    def restart_opt(self) -> None:
        """Zero every ``step`` and the moments m, v, n; the next step re-seeds ``prev_grad``.

        The next step then equals the first step of a fresh optimizer at the current parameters.
        """
        for group in self.param_groups:
            if "step" in group:
                group["step"] = 0
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                state["step"].zero_()
                for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq"):
                    state[key].zero_()

    restart = restart_opt

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader, plus legacy keys and full-precision state for ``state_dtype``.

        Official/timm checkpoints store ``neg_pre_grad`` (negated) and a group-level ``step``;
        they are converted to ``prev_grad`` and per-parameter ``step`` tensors. State saved with
        a wider ``state_dtype`` than the parameter keeps its dtype (torch would cast it down).
        """
        state_dict = _convert_legacy(state_dict)
        keep: dict[Tensor, tuple[torch.dtype, dict[str, Tensor]]] = {}
        for saved, group in zip(state_dict["param_groups"], self.param_groups, strict=False):
            dtype = saved.get("state_dtype")
            for pid, p in zip(saved["params"], group["params"], strict=False):
                st = state_dict["state"].get(pid)
                if dtype is not None and st is not None:
                    keep[p] = (dtype, {k: st[k] for k in _STATE_KEYS if k in st})
        super().load_state_dict(state_dict)
        clip = self.defaults["max_grad_norm"]
        saved = {g.get("max_grad_norm", clip) for g in self.param_groups}
        if saved != {clip}:
            warnings.warn(
                f"the state dict was saved with max_grad_norm={sorted(saved)}; this optimizer "
                f"keeps its own max_grad_norm={clip} (clipping is optimizer-wide, set at "
                "construction)",
                stacklevel=2,
            )
        for group in self.param_groups:
            group["max_grad_norm"] = clip
        for p, (dtype, tensors) in keep.items():
            for k, t in tensors.items():
                self.state[p][k] = t.to(device=p.device, dtype=dtype, copy=True)


def _convert_legacy(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Rename official/timm/pytorch-optimizer state keys to ours (returns a shallow copy)."""
    groups = state_dict["param_groups"]
    group_step = {pid: g.get("step") for g in groups for pid in g["params"]}
    new_state: dict[Any, dict[str, Any]] = {}
    for pid, st in state_dict["state"].items():
        st = dict(st)
        if "neg_pre_grad" in st:
            st["prev_grad"] = -st.pop("neg_pre_grad")
        elif "previous_grad" in st:  # pytorch-optimizer also stores the negated gradient
            st["prev_grad"] = -st.pop("previous_grad")
        elif "pre_grad" in st:
            st["prev_grad"] = st.pop("pre_grad")
        if "step" not in st and group_step.get(pid) is not None:
            st["step"] = torch.tensor(float(group_step[pid]), dtype=torch.float32)
        elif "step" in st and not torch.is_tensor(st["step"]):
            st["step"] = torch.tensor(float(st["step"]), dtype=torch.float32)
        new_state[pid] = st
    return {**state_dict, "state": new_state}
