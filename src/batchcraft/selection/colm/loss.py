"""Per-example causal-LM loss over each example's own label tokens, and the coreset loss.

Labels follow the Hugging Face convention: ``labels`` is aligned with ``input_ids`` and shifted
here (``logits[:, t]`` predicts ``labels[:, t + 1]``); ``ignore_index`` marks prompt and padding.
The mean runs over the example's own label tokens only, so an example's loss does not depend on
how much padding its batch companions force on it (the upstream padded-width bug).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["coreset_loss", "per_example_lm_loss"]


def per_example_lm_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean next-token cross-entropy over each example's label tokens, in fp32 (or fp64).

    Args:
        logits: ``[N, T, V]``.
        labels: ``[N, T]`` token ids aligned with the inputs; ``ignore_index`` where not trained.
        ignore_index: label value that is skipped.

    Returns:
        ``[N]`` losses; an example without label tokens gets 0.
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits must be [N, T, V] and labels [N, T] with the same N, T; got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    dtype = logits.dtype if logits.dtype == torch.float64 else torch.float32
    lg = logits[:, :-1].to(dtype)  # [N, T-1, V]
    tgt = labels[:, 1:]  # [N, T-1]
    mask = tgt != ignore_index
    tok = F.cross_entropy(
        lg.reshape(-1, lg.shape[-1]),
        tgt.masked_fill(~mask, 0).reshape(-1),
        reduction="none",
    ).view_as(tgt)  # [N, T-1]
    tok = tok * mask
    return tok.sum(dim=1) / mask.sum(dim=1).clamp_min(1)


def coreset_loss(per_example: Tensor, weights: Tensor) -> Tensor:
    """``sum_i w_i l_i / sum_i w_i`` (uniform weights give the plain mean).

    Args:
        per_example: ``[K]`` losses.
        weights: ``[K]`` non-negative weights with a positive sum.
    """
    if per_example.shape != weights.shape or per_example.dim() != 1:
        raise ValueError(
            f"per_example and weights must both be [K], got {tuple(per_example.shape)} "
            f"and {tuple(weights.shape)}"
        )
    w = weights.to(per_example.dtype)
    total = w.sum()
    if bool(total <= 0) or bool((w < 0).any()):
        raise ValueError("weights must be non-negative with a positive sum")
    return (per_example * w).sum() / total
