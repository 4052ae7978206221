"""LaCT layers: the causal LM hybrid (TTT + sliding-window attention) and the bidirectional set layer.

The maths lives in :mod:`batchcraft.ops.lact`; these modules hold parameters, projections,
reshapes and the decode cache (spec §7, §8). Shapes: ``x: [B, T, d]``; fast-weight heads ``H``
with head dim ``D = d / H`` and hidden width ``Dh = inter_multi * D``; attention heads ``Ha``
with head dim ``Da = d / Ha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchcraft.nn.attention import KVBuffer, window_attention
from batchcraft.nn.rope import (
    apply_rope,
    check_cu_seqlens,
    doc_ids_from_cu_seqlens,
    positions_from_cu_seqlens,
)
from batchcraft.ops.lact import FastWeights, LaCTState, lact

__all__ = ["LaCTLayer", "LaCTLayerCache", "inv_softplus", "l2_normalize"]

_INITS = ("low_rank", "full", "nvs")


def inv_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y``: ``y + log(-expm1(-y))``."""
    return y + math.log(-math.expm1(-y))


def l2_normalize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``x / (||x||_2 + eps)`` over the last dim."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


@dataclass
class LaCTLayerCache:
    """Decode cache of one :class:`LaCTLayer`: constant size in the context length.

    Attributes:
        ttt: the LaCT op state (fast weights, momentum, < C pending tokens) or ``None``.
        kv: the attention buffer (``W - 1`` slots for a window; grows for full attention).
        position: tokens consumed so far (RoPE offset).
    """

    ttt: LaCTState | None
    kv: KVBuffer | None
    position: int

    def detach(self) -> LaCTLayerCache:
        """Cut the graph (truncated BPTT between calls)."""
        return LaCTLayerCache(
            None if self.ttt is None else self.ttt.detach(),
            None if self.kv is None else self.kv.detach(),
            self.position,
        )

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor held, by name (memory accounting, size checks)."""
        out = {} if self.ttt is None else {f"ttt.{k}": v for k, v in self.ttt.tensors().items()}
        if self.kv is not None:
            out["kv.k"], out["kv.v"] = self.kv.k, self.kv.v
        return out

    def nbytes(self) -> int:
        """Bytes held by the cache tensors (expanded views counted at their logical size)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


class LaCTLayer(nn.Module):
    """Causal LaCT layer: TTT branch (fast SwiGLU weights per head) + sliding-window attention.

    ``y = o_proj(o_swa + o_ttt)``; see spec §7. With ``use_ttt=False`` the layer is a plain
    attention layer: ``window_size=W`` gives the SWA-only baseline, ``window_size=None`` full
    causal attention. ``window_size=0`` disables attention (pure TTT ablation).

    Example::

        layer = LaCTLayer(128, num_heads=2, num_attn_heads=4, chunk_size=16, window_size=16)
        y, cache = layer(torch.randn(2, 40, 128), use_cache=True)   # y: [2, 40, 128]
        y2, cache = layer(torch.randn(2, 1, 128), cache=cache)        # one more token
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int = 4,
        *,
        chunk_size: int = 2048,
        window_size: int | None = 2048,
        num_attn_heads: int | None = None,
        inter_multi: int = 1,
        base_lr: float = 1e-3,
        lr_dim: int = 1,
        use_momentum: bool = True,
        use_muon: bool = False,
        muon: str = "tuned",
        muon_steps: int = 5,
        weight_norm: str | None = "post",
        qkv_bias: bool = False,
        qk_norm: bool = False,
        v_silu: bool = True,
        use_rope: bool = True,
        rope_theta: float = 1e6,
        init: str = "low_rank",
        low_rank: int = 32,
        fw_init_gain: float = 0.5,
        output_gate: bool = True,
        fast_weight: str = "swiglu",
        use_ttt: bool = True,
        layer_idx: int | None = None,
        lact_impl: str = "auto",
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        ha = num_heads if num_attn_heads is None else num_attn_heads
        d = hidden_size
        if num_heads < 1 or d % num_heads != 0:
            raise ValueError(f"hidden_size ({d}) must be divisible by num_heads ({num_heads})")
        if ha < 1 or d % ha != 0:
            raise ValueError(f"hidden_size ({d}) must be divisible by num_attn_heads ({ha})")
        head_dim, attn_dim = d // num_heads, d // ha
        if use_ttt and use_rope and head_dim % attn_dim != 0:
            raise ValueError(
                f"fast-weight head dim D = {head_dim} must be a multiple of the attention head dim "
                f"Da = {attn_dim} (RoPE on the TTT branch uses the attention head split); "
                "choose num_attn_heads >= num_heads with divisible sizes, or use_rope=False"
            )
        if window_size is not None and window_size < 0:
            raise ValueError(f"window_size ({window_size}) must be >= 0 (0 disables attention)")
        if use_ttt and window_size is not None and 0 < window_size < chunk_size:
            raise ValueError(
                f"window_size ({window_size}) must be >= chunk_size ({chunk_size}) for exact "
                "causality: tokens of the current chunk are not yet in the fast weights, so the "
                "window must cover them (or use window_size=0 for pure TTT)"
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size ({chunk_size}) must be >= 1")
        if not use_ttt and window_size == 0:
            raise ValueError("use_ttt=False with window_size=0 leaves no token mixing")
        if lr_dim != 1:
            raise ValueError(
                f"lr_dim ({lr_dim}) is not supported: use lr_dim=1 (one lr per matrix)"
            )
        if fast_weight not in ("swiglu", "linear"):
            raise ValueError(f"fast_weight must be 'swiglu' or 'linear', got {fast_weight!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if weight_norm not in ("post", "pre", None):
            raise ValueError(f"weight_norm must be 'post', 'pre' or None, got {weight_norm!r}")
        if muon not in ("tuned", "classic"):
            raise ValueError(f"muon must be 'tuned' or 'classic', got {muon!r}")
        if base_lr <= 0:
            raise ValueError(f"base_lr ({base_lr}) must be > 0")
        if init == "low_rank" and low_rank < 1:
            raise ValueError(f"low_rank ({low_rank}) must be >= 1 with init='low_rank'")

        self.hidden_size, self.num_heads, self.num_attn_heads = d, num_heads, ha
        self.head_dim, self.attn_head_dim = head_dim, attn_dim
        self.hidden_dim = inter_multi * head_dim
        self.chunk_size, self.window_size = chunk_size, window_size
        self.base_lr, self.use_momentum, self.use_muon = base_lr, use_momentum, use_muon
        self.muon, self.muon_steps, self.weight_norm = muon, muon_steps, weight_norm
        self.qk_norm, self.v_silu, self.use_rope, self.rope_theta = (
            qk_norm,
            v_silu,
            use_rope,
            rope_theta,
        )
        self.init, self.low_rank, self.fw_init_gain = init, low_rank, fw_init_gain
        self.output_gate, self.fast_weight, self.use_ttt = output_gate, fast_weight, use_ttt
        self.layer_idx, self.lact_impl, self.attn_impl = layer_idx, lact_impl, attn_impl
        self.use_attn = window_size is None or window_size > 0

        self.qkv = nn.Linear(d, 3 * d, bias=qkv_bias)
        self.q_norm = nn.RMSNorm(d, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(d, eps=1e-6) if qk_norm else None
        self.o_proj = nn.Linear(d, d, bias=False)
        if use_ttt:
            h, dd, dh = num_heads, head_dim, self.hidden_dim
            self.qk_scale = nn.Parameter(torch.ones(2, d))  # (q, k) affine scale
            self.qk_offset = nn.Parameter(torch.zeros(2, d))
            self.lr_proj = nn.Linear(d, 3 * h, bias=True)
            self.beta_proj = nn.Linear(d, h) if use_momentum else None
            self.gate_proj = nn.Linear(d, h) if output_gate else None
            self.ttt_norm = nn.RMSNorm(dd, eps=1e-5)
            if fast_weight == "linear":
                self.w_down = nn.Parameter(torch.empty(h, dd, dd))
            else:
                self.w_down = nn.Parameter(torch.empty(h, dd, dh))
                if init == "low_rank":
                    q = low_rank
                    self.gate_l = nn.Parameter(torch.empty(h, dh, q))
                    self.gate_r = nn.Parameter(torch.empty(h, q, dd))
                    self.up_l = nn.Parameter(torch.empty(h, dh, q))
                    self.up_r = nn.Parameter(torch.empty(h, q, dd))
                else:
                    self.w_gate = nn.Parameter(torch.empty(h, dh, dd))
                    self.w_up = nn.Parameter(torch.empty(h, dh, dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Spec §7 initialisation: Linear N(0, 0.02²), biases 0, fast weights per ``init``."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.RMSNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
        if not self.use_ttt:
            return
        with torch.no_grad():
            self.qk_scale.fill_(1.0)
            self.qk_offset.zero_()
            gain = math.sqrt(2.0) if self.init == "nvs" else 1.0
            din = self.head_dim if self.fast_weight == "linear" else self.hidden_dim
            self.w_down.normal_(0.0, gain / math.sqrt(din))
            if self.fast_weight == "linear":
                return
            if self.init == "low_rank":
                g, q, dd = self.fw_init_gain, self.low_rank, self.head_dim
                for p in (self.gate_l, self.up_l):
                    p.normal_(0.0, g / math.sqrt(q))
                for p in (self.gate_r, self.up_r):
                    p.normal_(0.0, g / math.sqrt(dd))
            else:
                self.w_gate.normal_(0.0, gain / math.sqrt(self.head_dim))
                self.w_up.normal_(0.0, gain / math.sqrt(self.head_dim))

    def initial_weights(self) -> FastWeights:
        """``W0`` per head: gate/up ``[H, Dh, D]``, down ``[H, D, Dh]`` (rebuilt every call)."""
        if self.fast_weight == "linear":
            return FastWeights(None, None, self.w_down)
        if self.init == "low_rank":
            g = self.gate_l  # rectangular identity [Dh, D], built on the fly (no buffer to load)
            eye = 0.5 * torch.eye(self.hidden_dim, self.head_dim, dtype=g.dtype, device=g.device)
            return FastWeights(
                self.gate_l @ self.gate_r + eye, self.up_l @ self.up_r + eye, self.w_down
            )
        return FastWeights(self.w_gate, self.w_up, self.w_down)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        *,
        cache: LaCTLayerCache | None = None,
        attention_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, LaCTLayerCache | None]:
        """Mix tokens causally.

        Args:
            x: ``[B, T, d]``.
            cache: continue from a previous call (decoding / streaming).
            attention_mask: ``[B, T]``, 1 for real tokens, 0 for right padding. Padding never
                updates fast weights and padded outputs are 0. Left padding raises.
            cu_seqlens: ``[N + 1]`` document boundaries of a packed ``B = 1`` batch; each
                document starts from ``W0`` with positions from 0 and attends only to itself.
            use_cache: return a cache even when none was given.

        Returns:
            ``(y [B, T, d], cache or None)``; no cache is returned for packed/padded input.
        """
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        b, t, _ = x.shape
        if attention_mask is not None:
            if cache is not None or cu_seqlens is not None:
                raise ValueError("attention_mask cannot be combined with cache or cu_seqlens")
            if not bool(attention_mask.all()):
                return self._forward_padded(x, attention_mask)
        if cu_seqlens is not None:
            if cache is not None:
                raise ValueError("cu_seqlens (packed documents) cannot be combined with a cache")
            check_cu_seqlens(cu_seqlens, b, t)
        pos0 = 0 if cache is None else cache.position
        if cu_seqlens is not None:
            positions = positions_from_cu_seqlens(cu_seqlens.to(x.device), t)
            doc_ids: Tensor | None = doc_ids_from_cu_seqlens(cu_seqlens.to(x.device), t)
        else:
            positions, doc_ids = torch.arange(pos0, pos0 + t, device=x.device), None
        want_cache = (cache is not None or use_cache) and cu_seqlens is None

        q, k, v = self.qkv(x).chunk(3, dim=-1)  # [B, T, d] each
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        o = x.new_zeros(b, t, self.hidden_size)
        kv_new: KVBuffer | None = None
        if self.use_attn:
            o_att, kv_new = self._attention(q, k, v, positions, doc_ids, cache, want_cache)
            o = o + o_att
        ttt_new: LaCTState | None = None
        if self.use_ttt:
            o_ttt, ttt_new = self._ttt(x, q, k, v, positions, cu_seqlens, cache)
            o = o + o_ttt
        y = self.o_proj(o)
        if not want_cache:
            return y, None
        return y, LaCTLayerCache(ttt=ttt_new, kv=kv_new, position=pos0 + t)

    def _attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        positions: Tensor,
        doc_ids: Tensor | None,
        cache: LaCTLayerCache | None,
        want_cache: bool,
    ) -> tuple[Tensor, KVBuffer | None]:
        b, t, _ = q.shape
        ha, da = self.num_attn_heads, self.attn_head_dim
        qa, ka, va = (z.reshape(b, t, ha, da) for z in (q, k, v))  # [B, T, Ha, Da]
        if self.use_rope:
            qa = apply_rope(qa, positions, theta=self.rope_theta)
            ka = apply_rope(ka, positions, theta=self.rope_theta)
        w = self.window_size
        if cache is not None:
            if cache.kv is None:
                raise ValueError("cache has no attention buffer but this layer uses attention")
            o, kv_next = cache.kv.attend(qa, ka, va, impl=self.attn_impl)
            return o.reshape(b, t, -1), kv_next
        o = window_attention(qa, ka, va, window=w, doc_ids=doc_ids, impl=self.attn_impl)
        kv: KVBuffer | None = None
        if want_cache:
            if w is None:  # full attention: keep everything
                kv = KVBuffer(ka, va, t, None)
            else:  # keep the last W - 1 keys; slots before position 0 stay zero (invalid)
                s = w - 1
                empty = KVBuffer.empty(b, ha, da, window=w, like=ka)
                kk, vv = torch.cat([empty.k, ka], dim=1), torch.cat([empty.v, va], dim=1)
                kv = KVBuffer(kk[:, kk.shape[1] - s :], vv[:, vv.shape[1] - s :], t, w)
        return o.reshape(b, t, -1), kv

    def _ttt(
        self,
        x: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        positions: Tensor,
        cu_seqlens: Tensor | None,
        cache: LaCTLayerCache | None,
    ) -> tuple[Tensor, LaCTState]:
        b, t, d = x.shape
        h, dd = self.num_heads, self.head_dim
        qt = (q * self.qk_scale[0] + self.qk_offset[0]).reshape(b, t, h, dd)
        kt = (k * self.qk_scale[1] + self.qk_offset[1]).reshape(b, t, h, dd)
        vt = v.reshape(b, t, h, dd)
        qt, kt = l2_normalize(F.silu(qt)), l2_normalize(F.silu(kt))
        if self.v_silu:
            vt = F.silu(vt)
        if self.use_rope:
            ha, da = self.num_attn_heads, self.attn_head_dim
            qt = apply_rope(qt.reshape(b, t, ha, da), positions, theta=self.rope_theta)
            kt = apply_rope(kt.reshape(b, t, ha, da), positions, theta=self.rope_theta)
            qt, kt = qt.reshape(b, t, h, dd), kt.reshape(b, t, h, dd)
        cdt = torch.promote_types(x.dtype, torch.float32)
        lr_raw = self.lr_proj(x).to(cdt) + inv_softplus(self.base_lr)
        lr = F.softplus(lr_raw).reshape(b, t, h, 3)  # [B, T, H, 3] (gate, up, down)
        beta = None
        if self.beta_proj is not None:
            beta = torch.sigmoid(self.beta_proj(x).to(cdt))  # [B, T, H]
        state: LaCTState | FastWeights = self.initial_weights()  # [H, ...], expanded by the op
        if cache is not None:
            if cache.ttt is None:
                raise ValueError("cache has no LaCT state but this layer uses TTT")
            state = cache.ttt
        o, new_state = lact(
            qt,
            kt,
            vt,
            lr,
            state,
            chunk_size=self.chunk_size,
            beta=beta,
            muon=self.muon if self.use_muon else None,
            muon_steps=self.muon_steps,
            weight_norm=self.weight_norm,
            fast_weight=self.fast_weight,
            cu_seqlens=cu_seqlens,
            impl=self.lact_impl,
        )
        o = self.ttt_norm(o)  # [B, T, H, D]
        if self.gate_proj is not None:
            o = o * F.silu(self.gate_proj(x)).unsqueeze(-1)  # per-head gate
        return o.reshape(b, t, d), new_state

    def _forward_padded(self, x: Tensor, attention_mask: Tensor) -> tuple[Tensor, None]:
        """Right-padded batch -> packed documents -> unpacked output (pads get 0)."""
        b, t, d = x.shape
        if attention_mask.shape != (b, t):
            raise ValueError(
                f"attention_mask must be [B, T] = {(b, t)}, got {tuple(attention_mask.shape)}"
            )
        m = attention_mask.to(torch.bool)
        lengths = m.sum(dim=1)  # [B]
        right = torch.arange(t, device=m.device)[None, :] < lengths[:, None]
        if not torch.equal(m, right):
            raise ValueError(
                "attention_mask must be right padding (ones then zeros in every row); left or "
                "interior padding is not supported: pad on the right instead"
            )
        if bool((lengths == 0).any()):
            raise ValueError("every row of attention_mask needs at least one real token")
        packed = x[m][None]  # [1, sum(lengths), d]
        cu = F.pad(lengths.cumsum(0), (1, 0))
        y, _ = self.forward(packed, cu_seqlens=cu)
        out = x.new_zeros(b, t, d)
        out[m] = y[0].to(out.dtype)
        return out, None
