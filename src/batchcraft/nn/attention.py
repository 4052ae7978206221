"""Causal (sliding-window or full) softmax attention with a constant-size decode buffer.

Window semantics: with ``window = W`` the query at absolute position ``t`` attends to keys at
positions ``[t - W + 1, t]`` (``W`` keys including itself); ``window=None`` is full causal
attention. Three interchangeable implementations share one signature and are tested equal:

* ``"naive"``: dense scores, explicit mask, softmax in float32 or higher (the reference);
* ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` with a boolean mask
  (the CPU default);
* ``"flex"``: ``torch.nn.attention.flex_attention`` with a block mask (used by ``"auto"`` on
  CUDA, where it skips fully masked blocks).

Decoding keeps a :class:`KVBuffer`: the last ``W - 1`` keys/values for a window (constant size,
whatever the context length) or every key/value for full attention (grows with the context).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from batchcraft import _capabilities as caps

__all__ = ["KVBuffer", "attention_mask_dense", "window_attention"]

_IMPLS = ("auto", "naive", "sdpa", "flex")


def attention_mask_dense(
    tq: int,
    tk: int,
    *,
    window: int | None,
    device: torch.device,
    key_valid: Tensor | None = None,
    doc_ids: Tensor | None = None,
) -> Tensor:
    """Boolean ``allowed`` mask: ``[B or 1, 1, Tq, Tk]``.

    The ``Tq`` queries are the last ``Tq`` of the ``Tk`` key positions (query ``i`` sits at key
    index ``Tk - Tq + i``).

    Args:
        tq: number of queries.
        tk: number of keys (``>= tq``).
        window: ``W`` or ``None`` for full causal attention.
        device: where to build the mask.
        key_valid: ``[B, Tk]`` bool, False for keys that do not exist (empty buffer slots).
        doc_ids: ``[Tk]`` document index per key position (packed sequences); queries use the
            last ``Tq`` entries.
    """
    past = tk - tq
    qi = torch.arange(tq, device=device)[:, None] + past  # [Tq, 1]
    kj = torch.arange(tk, device=device)[None, :]  # [1, Tk]
    allowed = kj <= qi
    if window is not None:
        allowed = allowed & (kj > qi - window)
    if doc_ids is not None:
        allowed = allowed & (doc_ids[past:][:, None] == doc_ids[None, :])
    mask = allowed[None, None]  # [1, 1, Tq, Tk]
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :]  # [B, 1, Tq, Tk]
    return mask


def _check(q: Tensor, k: Tensor, v: Tensor, window: int | None, impl: str) -> None:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(
            f"expected q [B, Tq, H, D] and k, v [B, Tk, H, D]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or k.shape[1] < q.shape[1]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must share B, H, D and have Tk >= Tq"
        )
    if window is not None and window < 1:
        raise ValueError(f"window ({window}) must be >= 1, or None for full causal attention")
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int | None,
    key_valid: Tensor | None = None,
    doc_ids: Tensor | None = None,
    scale: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """Causal softmax attention restricted to a sliding window.

    Args:
        q: ``[B, Tq, H, D]``, the last ``Tq`` positions of the key sequence.
        k: ``[B, Tk, H, D]``.
        v: ``[B, Tk, H, D]``.
        window: ``W`` (query ``t`` sees keys ``[t - W + 1, t]``) or ``None`` (full causal).
        key_valid: ``[B, Tk]`` bool, False for empty buffer slots.
        doc_ids: ``[Tk]`` document index per position (packed documents never attend across).
        scale: softmax scale, default ``D ** -0.5``.
        impl: ``"auto"``, ``"naive"``, ``"sdpa"`` or ``"flex"``.

    Returns:
        ``[B, Tq, H, D]``.
    """
    _check(q, k, v, window, impl)
    if impl == "auto":
        impl = "flex" if (q.is_cuda and caps.has_flex_attention()) else "sdpa"
    tq, tk = q.shape[1], k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
    if impl == "flex":
        return _flex(qh, kh, vh, window, key_valid, doc_ids, scale).transpose(1, 2)
    no_mask = tq == 1 and key_valid is None and doc_ids is None
    if impl == "sdpa" and no_mask and (window is None or tk <= window):
        # one query that sees every key (decoding): skip building a mask
        return F.scaled_dot_product_attention(qh, kh, vh, scale=scale).transpose(1, 2)
    if impl == "sdpa" and window is not None and tq >= 2 * window:
        return _blocked_sdpa(qh, kh, vh, window, key_valid, doc_ids, scale).transpose(1, 2)
    mask = attention_mask_dense(
        tq, tk, window=window, device=q.device, key_valid=key_valid, doc_ids=doc_ids
    )
    if impl == "sdpa":
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
        return o.transpose(1, 2)
    cdt = torch.promote_types(q.dtype, torch.float32)
    s = torch.einsum("bhqd,bhkd->bhqk", qh.to(cdt), kh.to(cdt)) * scale  # [B, H, Tq, Tk]
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", p, vh.to(cdt)).to(q.dtype).transpose(1, 2)


def _blocked_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    key_valid: Tensor | None,
    doc_ids: Tensor | None,
    scale: float,
) -> Tensor:
    """SDPA over query blocks of ``W``: each block sees at most ``2W - 1`` keys, so the cost is
    ``O(T * W)`` instead of the ``O(T^2)`` of one dense masked call. ``[B, H, T, D]`` tensors."""
    tq, tk = q.shape[2], k.shape[2]
    past = tk - tq
    outs = []
    for s in range(0, tq, window):
        e = min(tq, s + window)
        lo, hi = max(0, past + s - window + 1), past + e  # keys block s..e can see
        mask = attention_mask_dense(
            e - s,
            hi - lo,
            window=window,
            device=q.device,
            key_valid=None if key_valid is None else key_valid[:, lo:hi],
            doc_ids=None if doc_ids is None else doc_ids[lo:hi],
        )
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, s:e], k[:, :, lo:hi], v[:, :, lo:hi], attn_mask=mask, scale=scale
            )
        )
    return torch.cat(outs, dim=2)  # [B, H, Tq, D]


def _flex(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    key_valid: Tensor | None,
    doc_ids: Tensor | None,
    scale: float,
) -> Tensor:
    """Flex-attention path on ``[B, H, T, D]`` tensors (same mask as the dense reference)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, _, tq, _ = q.shape
    tk = k.shape[2]
    past = tk - tq

    def mask_mod(bi: Tensor, hi: Tensor, qi: Tensor, kj: Tensor) -> Tensor:
        qa = qi + past
        ok = kj <= qa
        if window is not None:
            ok = ok & (kj > qa - window)
        if doc_ids is not None:
            ok = ok & (doc_ids[qa] == doc_ids[kj])
        if key_valid is not None:
            ok = ok & key_valid[bi, kj]
        return ok

    bm = create_block_mask(
        mask_mod,
        B=b if key_valid is not None else None,
        H=None,
        Q_LEN=tq,
        KV_LEN=tk,
        device=q.device,
    )
    out = flex_attention(q, k, v, block_mask=bm, scale=scale)
    assert isinstance(out, Tensor)  # not a (out, lse) tuple: return_lse is False
    return out


@dataclass
class KVBuffer:
    """Keys/values kept for decoding.

    With a window ``W`` the buffer always holds ``W - 1`` slots (the last ``W - 1`` positions;
    slots before position 0 are marked invalid), so its size is independent of the context.
    With ``window=None`` it holds every past key/value (full attention, grows linearly).

    Attributes:
        k: ``[B, S, H, D]`` keys (post-RoPE).
        v: ``[B, S, H, D]`` values.
        position: number of tokens consumed so far.
        window: ``W`` or ``None``.
    """

    k: Tensor
    v: Tensor
    position: int
    window: int | None

    @staticmethod
    def empty(
        batch: int, heads: int, head_dim: int, *, window: int | None, like: Tensor
    ) -> KVBuffer:
        """An empty buffer (``W - 1`` zero slots for a window, 0 slots for full attention)."""
        s = 0 if window is None else window - 1
        z = like.new_zeros(batch, s, heads, head_dim)
        return KVBuffer(k=z, v=z.clone(), position=0, window=window)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, *, impl: str = "auto"
    ) -> tuple[Tensor, KVBuffer]:
        """Attend new queries to the buffer plus the new keys, and return the advanced buffer.

        Args:
            q: ``[B, M, H, D]`` queries of the next ``M`` tokens (post-RoPE).
            k: ``[B, M, H, D]`` their keys (post-RoPE).
            v: ``[B, M, H, D]`` their values.
            impl: attention implementation.

        Returns:
            ``(o [B, M, H, D], new buffer)``.
        """
        s = self.k.shape[1]
        kk = torch.cat([self.k, k], dim=1)  # [B, S + M, H, D]
        vv = torch.cat([self.v, v], dim=1)
        key_valid = None
        first = self.position - s  # absolute position of slot 0
        if self.window is not None and first < 0:  # some slots still empty
            pos = torch.arange(kk.shape[1], device=q.device) + first
            key_valid = (pos >= 0)[None].expand(q.shape[0], -1)  # [B, S + M]
        o = window_attention(q, kk, vv, window=self.window, key_valid=key_valid, impl=impl)
        if self.window is not None:
            kk, vv = kk[:, kk.shape[1] - s :], vv[:, vv.shape[1] - s :]
        new = KVBuffer(k=kk, v=vv, position=self.position + q.shape[1], window=self.window)
        return o, new

    def detach(self) -> KVBuffer:
        return KVBuffer(self.k.detach(), self.v.detach(), self.position, self.window)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
