"""TTT-Linear with mini-batch inner steps: the small-chunk baseline of LaCT.

``ttt_linear_minibatch(q, k, v, eta, w0, b0, gamma, beta, mini_batch=16, impl="auto")`` returns
``(o [B, T, H, D], (W, b))``; ``impl="naive"`` is the primal per-token loop with autograd inner
gradients, ``"dual"`` (the default) the matmul form. They are tested equal.
"""

from __future__ import annotations

from torch import Tensor

from batchcraft.ops.ttt_linear.dual import dual_ttt_linear, ln_mse_grad
from batchcraft.ops.ttt_linear.naive import naive_ttt_linear

__all__ = ["dual_ttt_linear", "ln_mse_grad", "naive_ttt_linear", "ttt_linear_minibatch"]


def ttt_linear_minibatch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    w0: Tensor,
    b0: Tensor,
    gamma: Tensor,
    beta: Tensor,
    *,
    mini_batch: int = 16,
    impl: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Dispatch to the dual form (``auto``/``dual``) or the primal reference (``naive``)."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share shape [B, T, H, D], got {tuple(q.shape)}")
    bsz, t, h, d = q.shape
    if tuple(eta.shape) != (bsz, t, h):
        raise ValueError(f"eta must be [B, T, H] = {(bsz, t, h)}, got {tuple(eta.shape)}")
    if tuple(w0.shape) != (h, d, d) or tuple(b0.shape) != (h, d):
        raise ValueError(f"w0 must be [H, D, D] = {(h, d, d)} and b0 [H, D] = {(h, d)}")
    if mini_batch < 1:
        raise ValueError(f"mini_batch ({mini_batch}) must be >= 1")
    if impl in ("auto", "dual"):
        return dual_ttt_linear(q, k, v, eta, w0, b0, gamma, beta, mini_batch=mini_batch)
    if impl == "naive":
        return naive_ttt_linear(q, k, v, eta, w0, b0, gamma, beta, mini_batch=mini_batch)
    raise ValueError(f"impl must be 'auto', 'dual' or 'naive', got {impl!r}")
