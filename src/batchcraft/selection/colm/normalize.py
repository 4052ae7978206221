"""Selector-side Adam normalisation of gradient features, and top-h sparsification.

Not the training optimizer's moments: the selector keeps its own ``m_prev, v_prev: [F]`` and a
step count ``t``, updated only from the rows it selected::

    M_i = b1 m_prev + (1 - b1) g_i;   V_i = b2 v_prev + (1 - b2) g_i^2
    U_i = (M_i / (1 - b1^(t+1))) / (sqrt(V_i / (1 - b2^(t+1))) + eps)
    commit: m_prev <- mean_{picks} M;  v_prev <- mean_{picks} V;  t <- t + 1
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["AdamFeatureNormalizer", "topk_mask"]


class AdamFeatureNormalizer:
    """Adam-style normalisation with moments built from selected rows only.

    Args:
        dim: feature width ``F``.
        betas: ``(b1, b2)`` in ``[0, 1)``.
        eps: added to the bias-corrected root second moment.
    """

    def __init__(
        self, dim: int, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.dim, self.betas, self.eps = dim, (float(betas[0]), float(betas[1])), float(eps)
        self.m = torch.zeros(dim, dtype=torch.float64)
        self.v = torch.zeros(dim, dtype=torch.float64)
        self.t = 0

    def transform(self, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalise a feature block without changing the state.

        Args:
            g: ``[N, F]`` raw features.

        Returns:
            ``(U, M, V)``, each ``[N, F]`` in ``g``'s dtype.
        """
        if g.dim() != 2 or g.shape[1] != self.dim:
            raise ValueError(f"g must be [N, {self.dim}], got shape {tuple(g.shape)}")
        b1, b2 = self.betas
        m = self.m.to(device=g.device, dtype=g.dtype)
        v = self.v.to(device=g.device, dtype=g.dtype)
        big_m = torch.add(b1 * m, g, alpha=1 - b1)  # [N, F]
        big_v = torch.addcmul(b2 * v, g, g, value=1 - b2)  # [N, F]
        c1 = 1 - b1 ** (self.t + 1)
        c2 = 1 - b2 ** (self.t + 1)
        denom = big_v.div(c2).sqrt_().add_(self.eps)
        u = big_m.div(c1).div_(denom)  # (M / c1) / (sqrt(V / c2) + eps)
        return u, big_m, big_v

    def commit(self, m_sel: Tensor, v_sel: Tensor) -> None:
        """Update the moments from the selected rows' ``M`` and ``V`` (``[K, F]``)."""
        if m_sel.shape != v_sel.shape or m_sel.dim() != 2 or m_sel.shape[1] != self.dim:
            raise ValueError(
                f"m_sel and v_sel must both be [K, {self.dim}], got {tuple(m_sel.shape)} "
                f"and {tuple(v_sel.shape)}"
            )
        if m_sel.shape[0] == 0:
            return  # nothing selected from big sources: history unchanged, t unchanged
        self.m = m_sel.detach().to(torch.float64).mean(dim=0).cpu()
        self.v = v_sel.detach().to(torch.float64).mean(dim=0).cpu()
        self.t += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "m": self.m.clone(),
            "v": self.v.clone(),
            "t": self.t,
            "betas": self.betas,
            "eps": self.eps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        m, v = state["m"], state["v"]
        if m.shape != (self.dim,) or v.shape != (self.dim,):
            raise ValueError(f"state moments must have shape ({self.dim},), got {tuple(m.shape)}")
        self.m, self.v = m.clone().to(torch.float64), v.clone().to(torch.float64)
        self.t = int(state["t"])
        self.betas = (float(state["betas"][0]), float(state["betas"][1]))
        self.eps = float(state["eps"])


def topk_mask(features: Tensor, h: int) -> Tensor:
    """Coordinates with the ``h`` largest ``|mean over rows|`` (ties -> lower coordinate).

    Args:
        features: ``[N, F]``.
        h: number of coordinates kept; clipped to ``F``.

    Returns:
        ``[min(h, F)]`` long coordinate indices in ascending order.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D [N, F], got shape {tuple(features.shape)}")
    if h < 1:
        raise ValueError(f"h must be >= 1, got {h}")
    f = features.shape[1]
    if h >= f:
        return torch.arange(f, device=features.device)
    imp = features.mean(dim=0).abs()  # [F]
    thr = torch.topk(imp, h, sorted=False).values.min()  # h-th largest value
    above = torch.nonzero(imp > thr).flatten()
    ties = torch.nonzero(imp == thr).flatten()[: h - above.numel()]  # lower coordinates first
    return torch.sort(torch.cat([above, ties])).values
