"""Newton-Schulz orthogonalisation for Muon-style fast-weight updates.

``NS(G)`` maps every singular value of ``G`` towards 1 while keeping its singular vectors
(each step is an odd matrix polynomial). It runs in the input dtype (fp32/fp64 in the reference
and in tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CLASSIC_COEFFS", "TUNED_COEFFS", "newton_schulz", "ns_coefficients"]

# "tuned" (LM default): exactly these five (a, b, c) steps.
TUNED_COEFFS: tuple[tuple[float, float, float], ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
# "classic" (NVS / video, paper App. A): one step repeated ``steps`` times.
CLASSIC_COEFFS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)


def ns_coefficients(schedule: str, steps: int) -> list[tuple[float, float, float]]:
    """The ``(a, b, c)`` list of a schedule.

    ``"tuned"`` uses its first ``steps`` triples (``steps`` <= 5; the default 5 is the LM recipe);
    ``"classic"`` repeats its triple ``steps`` times. ``steps=0`` means Frobenius normalisation only.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"muon_steps must be an int >= 0, got {steps!r}")
    if schedule == "tuned":
        if steps > len(TUNED_COEFFS):
            raise ValueError(
                f"the 'tuned' schedule has exactly 5 steps; muon_steps must be <= 5, got {steps}"
            )
        return list(TUNED_COEFFS[:steps])
    if schedule == "classic":
        return [CLASSIC_COEFFS] * steps
    raise ValueError(f"Muon schedule must be 'tuned' or 'classic', got {schedule!r}")


def newton_schulz(
    g: Tensor, *, schedule: str = "tuned", steps: int = 5, eps: float = 1e-7
) -> Tensor:
    """Approximately orthogonalise a batch of matrices.

    Args:
        g: [..., m, n] matrices (any leading batch dims).
        schedule: ``"tuned"`` (five tuned steps) or ``"classic"`` (paper App. A).
        steps: number of steps (``"tuned"``: at most 5).
        eps: added to the Frobenius norm before the first division.

    Returns:
        [..., m, n], same dtype as ``g``: ``X_K`` of ``X_0 = G / (||G||_F + eps)``,
        ``X <- a X + (b A + c A A) X`` with ``A = X X^T`` (on the transpose when m > n).
    """
    if g.dim() < 2:
        raise ValueError(f"newton_schulz needs [..., m, n] matrices, got shape {tuple(g.shape)}")
    coeffs = ns_coefficients(schedule, steps)
    transpose = g.shape[-2] > g.shape[-1]
    x = g.mT if transpose else g
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    for a, b, c in coeffs:
        A = x @ x.mT  # [..., m, m] with m <= n
        B = torch.baddbmm(A, A, A, beta=b, alpha=c) if A.dim() == 3 else b * A + c * (A @ A)
        x = a * x + B @ x
    return x.mT if transpose else x
