"""LaCT layers: the causal LM hybrid (TTT + sliding-window attention) and the bidirectional set layer.

The maths lives in :mod:`batchcraft.ops.lact`; these modules hold parameters, projections,
reshapes and the decode cache (docs/lact_lm.md). Shapes: ``x: [B, T, d]``; fast-weight heads ``H``
with head dim ``D = d / H`` and hidden width ``Dh = inter_multi * D``; attention heads ``Ha``
with head dim ``Da = d / Ha``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchcraft.nn.attention import KVBuffer, window_attention
from batchcraft.nn.rope import (
    RopeTables,
    apply_rope_pair,
    check_cu_seqlens,
    doc_ids_from_cu_seqlens,
    positions_from_cu_seqlens,
    rope_tables,
)
from batchcraft.ops.lact import (
    FastWeights,
    LaCTOptions,
    LaCTState,
    lact,
    lact_inner_grad,
    swiglu_apply,
)
from batchcraft.ops.lact.layer_ops import ttt_output, ttt_qk_prep
from batchcraft.ops.lact.profile import prof_range
from batchcraft.ops.lact.state import map_weights

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = [
    "LaCTLayer",
    "LaCTLayerCache",
    "LaCTLayerOptions",
    "inv_softplus",
    "l2_normalize",
    "token_lr",
]

_INITS = ("low_rank", "full", "nvs")
_TTT_EPS = 1e-5  # L2 norm of the fast q/k and RMSNorm of the TTT output (the paper's value)


def inv_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y``: ``y + log(-expm1(-y))``."""
    return y + math.log(-math.expm1(-y))


def token_lr(a: Tensor, options: LaCTLayerOptions) -> Tensor:
    """Per-token inner learning rates from the lr projection ``a = Linear(d, 3H)(x)``.

    The paper's per-token lr is ``softplus(a + inv_softplus(base_lr))``: ``base_lr`` at ``a = 0``
    and about ``base_lr * exp(a)`` below it, so the projection scales a token's lr
    multiplicatively; the update sums ``lr_t * grad_t`` over the chunk's ``C`` tokens, so its
    size grows with ``C`` and ``base_lr = 1e-3`` was tuned for ``C = 2048``
    (``inner_lr=None``). With ``inner_lr = eta`` the same token weights are normalised to 1 at
    init and the update is one step of size ``eta`` on the chunk-mean inner loss::

        lr_t = eta / C * softplus(a_t + inv_softplus(base_lr)) / base_lr      (= eta / C at a = 0)

    so replicating a chunk's tokens (``C -> r C``) leaves the update unchanged, and the paper's
    setting is ``eta = C * base_lr`` (2.05 at ``C = 2048``).

    Args:
        a: ``[..., 3H]`` (any shape) pre-activations.
        options: the layer options (``base_lr``, ``inner_lr``, ``chunk_size``).

    Returns:
        Learning rates shaped like ``a``.
    """
    lr = F.softplus(a + inv_softplus(options.base_lr))
    if options.inner_lr is None:
        return lr
    return lr * (options.inner_lr / (options.chunk_size * options.base_lr))


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


def _divisors_near(n: int, k: int) -> list[int]:
    return sorted((x for x in range(1, n + 1) if n % x == 0), key=lambda x: abs(x - k))[:3]


@dataclass(frozen=True, kw_only=True)
class LaCTLayerOptions(LaCTOptions):
    """Options of :class:`LaCTLayer`: the op options (inherited, LM defaults) plus the layer's.

    Validated once in ``__post_init__``; :class:`batchcraft.models.LaCTConfig` extends this class,
    so a field added here (or to :class:`LaCTOptions`) is at once a layer option and a config field.
    """

    hidden_size: int  # d
    num_heads: int = 4  # fast-weight (TTT) heads H; D = d / H
    num_attn_heads: int | None = None  # attention heads Ha (None: = num_heads); Da = d / Ha
    window_size: int | None = 2048  # W: attention window (None: full attention, 0: none)
    inter_multi: int = 1  # fast hidden width Dh = inter_multi * D
    base_lr: float = 1e-3  # paper per-token lr: softplus(Linear(x) + inv_softplus(base_lr))
    inner_lr: float | None = None  # step on the chunk-mean inner loss; None: the paper's sum
    lr_dim: int = 1  # one lr per matrix (only 1 is supported)
    qkv_bias: bool = False
    qk_norm: bool = False  # RMSNorm on q and k before both branches
    v_silu: bool = True  # SiLU on the TTT values
    use_rope: bool = True  # RoPE on attention and fast q/k (attention head split)
    rope_theta: float = 1e6
    init: str = "low_rank"  # fast-weight init: "low_rank", "full" or "nvs"
    low_rank: int = 32  # rank of the low-rank gate/up init
    fw_init_gain: float = 0.5  # gain of the low-rank factors
    output_gate: bool = True  # per-head SiLU gate on the TTT output
    use_ttt: bool = True  # False: attention-only layer (SWA / full-attention baseline)
    ttt_updates: bool = True  # False: fast weights never update (TTT branch = static SwiGLU f_W0)
    attn_impl: str = "auto"  # attention implementation ("auto", "sdpa", "flex", "naive")
    # op options with the LM layer's defaults
    chunk_size: int = 2048  # C
    use_momentum: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        d, h = self.hidden_size, self.num_heads
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"hidden_size must be a positive int, got {d!r}")
        if not isinstance(h, int) or h < 1 or d % h:
            raise ValueError(
                f"hidden_size ({d}) must be divisible by num_heads ({h}); "
                f"divisors near it: {_divisors_near(d, h if isinstance(h, int) else 1)}"
            )
        ha = self.attn_heads
        if not isinstance(ha, int) or ha < 1 or d % ha:
            raise ValueError(
                f"hidden_size ({d}) must be divisible by num_attn_heads ({ha}); "
                f"divisors near it: {_divisors_near(d, ha if isinstance(ha, int) else 1)}"
            )
        head, attn_head = d // h, d // ha
        if self.use_ttt and self.use_rope and head % attn_head:
            raise ValueError(
                f"fast-weight head dim D = {head} must be a multiple of the attention head dim "
                f"Da = {attn_head} (RoPE on the TTT branch uses the attention head split); "
                "choose num_attn_heads >= num_heads with divisible sizes, or use_rope=False"
            )
        w = self.window_size
        if w is not None and (not isinstance(w, int) or w < 0):
            raise ValueError(
                f"window_size ({w!r}) must be an int >= 0 (0 disables attention) or None"
            )
        if self.use_ttt and w is not None and 0 < w < self.chunk_size:
            raise ValueError(
                f"window_size ({w}) must be >= chunk_size ({self.chunk_size}) for exact "
                "causality: tokens of the current chunk are not yet in the fast weights, so the "
                "window must cover them (or use window_size=0 for pure TTT)"
            )
        if not self.use_ttt and w == 0:
            raise ValueError(
                "use_ttt=False needs attention: window_size must be > 0 or None "
                "(window_size=0 leaves no token mixing)"
            )
        if not isinstance(self.inter_multi, int) or self.inter_multi < 1:
            raise ValueError(f"inter_multi ({self.inter_multi!r}) must be an int >= 1")
        if not (isinstance(self.base_lr, (int, float)) and math.isfinite(self.base_lr)):
            raise ValueError(f"base_lr ({self.base_lr!r}) must be a finite number > 0")
        if self.base_lr <= 0:
            raise ValueError(f"base_lr ({self.base_lr}) must be > 0")
        eta = self.inner_lr
        if eta is not None and not (
            isinstance(eta, (int, float)) and not isinstance(eta, bool) and math.isfinite(eta)
            and eta > 0
        ):  # fmt: skip
            raise ValueError(
                f"inner_lr ({eta!r}) must be a finite number > 0 (the step on the chunk-mean "
                "inner loss), or None for the paper's per-token lr summed over the chunk"
            )
        if not isinstance(self.ttt_updates, bool):
            raise TypeError(f"ttt_updates must be a bool, got {self.ttt_updates!r}")
        if self.lr_dim != 1:
            raise ValueError(
                f"lr_dim ({self.lr_dim}) is not supported: use lr_dim=1 (one lr per matrix)"
            )
        if self.init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {self.init!r}")
        if self.init == "low_rank" and (not isinstance(self.low_rank, int) or self.low_rank < 1):
            raise ValueError(
                f"low_rank ({self.low_rank!r}) must be an int >= 1 with init='low_rank'"
            )
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta ({self.rope_theta}) must be > 0")

    @property
    def attn_heads(self) -> int:
        """Ha: ``num_attn_heads``, or ``num_heads`` when that is ``None``."""
        return self.num_heads if self.num_attn_heads is None else self.num_attn_heads

    @property
    def head_dim(self) -> int:
        """D = d / H."""
        return self.hidden_size // self.num_heads

    @property
    def attn_head_dim(self) -> int:
        """Da = d / Ha."""
        return self.hidden_size // self.attn_heads

    @property
    def hidden_dim(self) -> int:
        """Dh = inter_multi * D (the linear variant uses D)."""
        return self.head_dim if self.fast_weight == "linear" else self.inter_multi * self.head_dim


class LaCTLayer(nn.Module):
    """Causal LaCT layer: TTT branch (fast SwiGLU weights per head) + sliding-window attention.

    ``y = o_proj(o_swa + o_ttt)``. With ``use_ttt=False`` the layer is a plain
    attention layer: ``window_size=W`` gives the SWA-only baseline, ``window_size=None`` full
    causal attention. ``window_size=0`` disables attention (pure TTT ablation). With
    ``ttt_updates=False`` the fast weights never change: the TTT branch is the static SwiGLU
    ``f_W0(q)`` with the same parameters (the ablation of test-time training itself).

    The inner lr is :func:`token_lr`: ``inner_lr=None`` (the layer default) is the paper's
    per-token ``base_lr`` summed over the chunk, ``inner_lr=eta`` a step of ``eta`` on the
    chunk-mean inner loss (the LM presets' default, effective at any chunk size).
    :meth:`ttt_diagnostics` measures how far the fast weights move over a sequence.

    The options are one frozen :class:`LaCTLayerOptions` (``layer.options``); its op part
    (``layer.lact_options``) goes to :func:`batchcraft.ops.lact.lact` unchanged. Keyword arguments
    build or override it.

    Example::

        layer = LaCTLayer(128, num_heads=2, num_attn_heads=4, chunk_size=16, window_size=16)
        y, cache = layer(torch.randn(2, 40, 128), use_cache=True)   # y: [2, 40, 128]
        y2, cache = layer(torch.randn(2, 1, 128), cache=cache)        # one more token
        same = LaCTLayer(options=layer.options)                       # the same architecture
    """

    def __init__(
        self,
        hidden_size: int | None = None,
        num_heads: int | None = None,
        *,
        options: LaCTLayerOptions | None = None,
        layer_idx: int | None = None,
        cp_group: ProcessGroup | None = None,
        **kw: Any,
    ) -> None:
        """Build the layer.

        Args:
            hidden_size: d (a shortcut for the option of that name).
            num_heads: H (a shortcut for the option of that name).
            options: every option at once (a :class:`LaCTLayerOptions`, or any subclass such
                as a model config, read by field name).
            layer_idx: index of the layer in a model (bookkeeping only).
            cp_group: a ``torch.distributed`` process group for chunk parallelism (also settable
                as ``layer.cp_group``): every rank passes its piece of every chunk
                (:func:`batchcraft.ops.lact.parallel.shard_chunks`, ``chunk_size % P == 0``, the
                same length on every rank); the fast-weight updates sum over the ranks and the
                attention all-gathers keys and values. No cache, padding or packed documents.
            **kw: :class:`LaCTLayerOptions` fields, applied on top of ``options``.
        """
        super().__init__()
        if hidden_size is not None:
            kw["hidden_size"] = hidden_size
        if num_heads is not None:
            kw["num_heads"] = num_heads
        base = None if options is None else LaCTLayerOptions.project(options)
        if base is None and "hidden_size" not in kw:
            raise TypeError("LaCTLayer needs hidden_size (or options=LaCTLayerOptions(...))")
        opts = LaCTLayerOptions.build(base, **kw)
        self.options = opts
        self.lact_options = LaCTOptions.project(opts)  # what the op receives
        d = opts.hidden_size
        self.hidden_size, self.num_heads, self.num_attn_heads = d, opts.num_heads, opts.attn_heads
        self.head_dim, self.attn_head_dim = opts.head_dim, opts.attn_head_dim
        self.hidden_dim = opts.hidden_dim
        self.use_ttt, self.layer_idx = opts.use_ttt, layer_idx
        self.cp_group = cp_group
        self.use_attn = opts.window_size is None or opts.window_size > 0

        self.qkv = nn.Linear(d, 3 * d, bias=opts.qkv_bias)
        self.q_norm = nn.RMSNorm(d, eps=1e-6) if opts.qk_norm else None
        self.k_norm = nn.RMSNorm(d, eps=1e-6) if opts.qk_norm else None
        self.o_proj = nn.Linear(d, d, bias=False)
        if opts.use_ttt:
            h, dd, dh = opts.num_heads, self.head_dim, self.hidden_dim
            self.qk_scale = nn.Parameter(torch.ones(2, d))  # (q, k) affine scale
            self.qk_offset = nn.Parameter(torch.zeros(2, d))
            self.lr_proj = nn.Linear(d, 3 * h, bias=True)
            self.beta_proj = nn.Linear(d, h) if opts.use_momentum else None
            self.gate_proj = nn.Linear(d, h) if opts.output_gate else None
            self.ttt_norm = nn.RMSNorm(dd, eps=_TTT_EPS)
            self.w_down = nn.Parameter(torch.empty(h, dd, dh))  # linear: dh == dd
            if opts.fast_weight == "swiglu":
                if opts.init == "low_rank":
                    q = opts.low_rank
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
            gain = math.sqrt(2.0) if self.options.init == "nvs" else 1.0
            din = self.head_dim if self.options.fast_weight == "linear" else self.hidden_dim
            self.w_down.normal_(0.0, gain / math.sqrt(din))
            if self.options.fast_weight == "linear":
                return
            if self.options.init == "low_rank":
                g, q, dd = self.options.fw_init_gain, self.options.low_rank, self.head_dim
                for p in (self.gate_l, self.up_l):
                    p.normal_(0.0, g / math.sqrt(q))
                for p in (self.gate_r, self.up_r):
                    p.normal_(0.0, g / math.sqrt(dd))
            else:
                self.w_gate.normal_(0.0, gain / math.sqrt(self.head_dim))
                self.w_up.normal_(0.0, gain / math.sqrt(self.head_dim))

    def initial_weights(self) -> FastWeights:
        """``W0`` per head: gate/up ``[H, Dh, D]``, down ``[H, D, Dh]`` (rebuilt every call)."""
        if self.options.fast_weight == "linear":
            return FastWeights(None, None, self.w_down)
        if self.options.init == "low_rank":
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
        positions: Tensor | range
        if cu_seqlens is not None:
            positions = positions_from_cu_seqlens(cu_seqlens.to(x.device), t)
            doc_ids: Tensor | None = doc_ids_from_cu_seqlens(cu_seqlens.to(x.device), t)
        else:
            positions, doc_ids = range(pos0, pos0 + t), None
        if self.cp_group is not None:  # global positions of this rank's chunk pieces
            positions = self._cp_positions(x, cache, cu_seqlens, use_cache)[0]
        want_cache = (cache is not None or use_cache) and cu_seqlens is None
        rope = None  # one rotation table for every RoPE of this call (attention and TTT q, k)
        if self.options.use_rope and (self.use_attn or self.use_ttt):
            cdt = torch.promote_types(x.dtype, torch.float32)
            rope = rope_tables(
                positions, self.attn_head_dim, theta=self.options.rope_theta, dtype=cdt,
                device=x.device,
            )  # fmt: skip

        with prof_range("qkv"):
            qk, v, heads = self._split_projection(x)
        o: Tensor | None = None
        kv_new: KVBuffer | None = None
        if self.use_attn:
            o, kv_new = self._attention(qk, v, rope, doc_ids, cache, want_cache)
        ttt_new: LaCTState | None = None
        if self.use_ttt:  # the TTT branch adds itself to the attention output
            o, ttt_new = self._ttt(x, qk, v, heads, rope, cu_seqlens, cache, o)
        with prof_range("o_proj"):
            assert o is not None  # the options forbid a layer without attention and TTT
            y = self.o_proj(o)
        if not want_cache:
            return y, None
        return y, LaCTLayerCache(ttt=ttt_new, kv=kv_new, position=pos0 + t)

    def _project(self, x: Tensor) -> Tensor:
        """``[q | k | v | lr | beta | gate]`` = one matmul over the concatenated projection
        weights (the parameters stay separate modules): ``[B, T, 3d + 3H (+ H) (+ H)]``."""
        if not self.use_ttt:
            return self.qkv(x)
        mods = [self.lr_proj, self.beta_proj, self.gate_proj]
        heads = [m for m in mods if m is not None]
        weight = torch.cat([self.qkv.weight, *(m.weight for m in heads)])
        if self.qkv.bias is not None:
            return F.linear(x, weight, torch.cat([self.qkv.bias, *(m.bias for m in heads)]))
        # no q/k/v bias: add the heads' biases to their columns only (a zero bias for q/k/v would
        # give it a gradient buffer that the bias gradients then share as views)
        y = F.linear(x, weight)
        y[..., self.qkv.out_features :] += torch.cat([m.bias for m in heads])
        return y

    def _attention(
        self,
        qk: Tensor,
        v: Tensor,
        rope: RopeTables | None,
        doc_ids: Tensor | None,
        cache: LaCTLayerCache | None,
        want_cache: bool,
    ) -> tuple[Tensor, KVBuffer | None]:
        """Attention branch. qk: [B, T, 2, d] queries and keys; v: [B, T, d]."""
        b, t = qk.shape[:2]
        ha, da = self.num_attn_heads, self.attn_head_dim
        va = v.reshape(b, t, ha, da)  # [B, T, Ha, Da]
        if rope is not None:
            with prof_range("attn.rope"):
                qa, ka = apply_rope_pair(qk.unflatten(-1, (ha, da)), range(t), tables=rope)
        else:
            qa, ka = qk[:, :, 0].reshape(b, t, ha, da), qk[:, :, 1].reshape(b, t, ha, da)
        w = self.options.window_size
        if self.cp_group is not None:
            from batchcraft.nn.cp_attention import cp_window_attention

            pos, all_pos = self._cp_positions(va, cache, None, False)
            o = cp_window_attention(qa, ka, va, pos, all_pos, window=w,
                                    group=self.cp_group, impl=self.options.attn_impl)  # fmt: skip
            return o.reshape(b, t, -1), None
        if cache is not None:
            if cache.kv is None:
                raise ValueError("cache has no attention buffer but this layer uses attention")
            o, kv_next = cache.kv.attend(qa, ka, va, impl=self.options.attn_impl)
            return o.reshape(b, t, -1), kv_next
        with prof_range("attn"):
            o = window_attention(qa, ka, va, window=w, doc_ids=doc_ids, impl=self.options.attn_impl)
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

    def _ttt_inputs(
        self, x: Tensor, qk: Tensor, v: Tensor, heads: Tensor, rope: RopeTables | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """The op's inputs: ``q~, k~, v~`` [B, T, H, D], ``lr`` [B, T, H, 3], ``beta`` [B, T, H].

        qk: [B, T, 2, d] queries and keys; v: [B, T, d]; heads: the lr, beta and gate
        projections [B, T, 3H (+ H) (+ H)].
        """
        b, t, _ = x.shape
        h, dd = self.num_heads, self.head_dim
        with prof_range("ttt.prep"):
            qt, kt = ttt_qk_prep(
                qk, self.qk_scale, self.qk_offset, heads=h, eps=_TTT_EPS, rope=rope,
                rope_heads=self.num_attn_heads,
            )  # fmt: skip
            vt = v.reshape(b, t, h, dd)
            if self.options.v_silu:
                vt = F.silu(vt)
        with prof_range("ttt.heads"):
            cdt = torch.promote_types(x.dtype, torch.float32)
            lr = token_lr(heads[..., : 3 * h].to(cdt), self.options).reshape(b, t, h, 3)
            beta = None
            if self.beta_proj is not None:
                beta = torch.sigmoid(heads[..., 3 * h : 4 * h].to(cdt))  # [B, T, H]
        return qt, kt, vt, lr, beta

    def _ttt(
        self,
        x: Tensor,
        qk: Tensor,
        v: Tensor,
        heads: Tensor,
        rope: RopeTables | None,
        cu_seqlens: Tensor | None,
        cache: LaCTLayerCache | None,
        o_att: Tensor | None = None,
    ) -> tuple[Tensor, LaCTState | None]:
        """TTT branch plus ``o_att`` ([B, T, d] or None); other arguments as :meth:`_ttt_inputs`."""
        h = self.num_heads
        qt, kt, vt, lr, beta = self._ttt_inputs(x, qk, v, heads, rope)
        gate = None if self.gate_proj is None else heads[..., heads.shape[-1] - h :]
        with prof_range("ttt.w0"):
            w0 = self.initial_weights()  # [H, ...], expanded over B by the op
        if not self.options.ttt_updates:  # the static branch: no state to carry
            o = swiglu_apply(_expand(w0, x.shape[0]), qt)  # [B, T, H, D]
            return ttt_output(o, self.ttt_norm.weight, gate, o_att, eps=_TTT_EPS), None
        state: LaCTState | FastWeights = w0
        if cache is not None:
            if cache.ttt is None:
                raise ValueError("cache has no LaCT state but this layer uses TTT")
            state = cache.ttt
        with prof_range("ttt.op"):
            o, new_state = lact(
                qt, kt, vt, lr, state, self.lact_options, beta=beta, cu_seqlens=cu_seqlens,
                group=self.cp_group,
            )  # fmt: skip
        with prof_range("ttt.out"):  # o_att + RMSNorm_D(o) * silu(gate) (per head)
            y = ttt_output(o, self.ttt_norm.weight, gate, o_att, eps=_TTT_EPS)
        return y, new_state

    def _split_projection(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``qk`` [B, T, 2, d] (after the q/k norms), ``v`` [B, T, d], the TTT ``heads``."""
        d = self.hidden_size
        proj = self._project(x)  # [B, T, 3d (+ 3H + H + H)]
        # one split (one backward node) into q and k stacked [B, T, 2d], v, the TTT heads
        qk_flat, v, heads = proj.split([2 * d, d, proj.shape[-1] - 3 * d], dim=-1)
        qk = qk_flat.unflatten(-1, (2, d))  # [B, T, 2, d]
        if self.q_norm is not None and self.k_norm is not None:
            qk = torch.stack([self.q_norm(qk[:, :, 0]), self.k_norm(qk[:, :, 1])], dim=2)
        return qk, v, heads

    @torch.no_grad()
    def ttt_diagnostics(self, x: Tensor) -> dict[str, float]:
        """How far the fast weights move over one sequence (no gradients, no side effects).

        Streams ``x`` chunk by chunk through the op (exactly the one-shot computation) and
        compares the weights ``W_0 .. W_n`` after each of the ``n = T // C`` updates. Norms are
        Frobenius norms over the three matrices stacked, per (batch row, head), then averaged.

        Args:
            x: the layer's input ``[B, T, d]`` (after the block's norm).

        Returns:
            ``updates``: ``n`` (0 with ``ttt_updates=False``); ``drift``:
            ``||W_n - W_0|| / ||W_0||`` (and ``drift_gate`` / ``drift_up`` / ``drift_down`` per
            matrix); ``update_norm``: mean over updates of ``||W_j+1 - W_j|| / ||W_j||``, the
            applied step after momentum, Muon and the weight norm; ``grad_norm``: the same for
            the raw inner step ``Delta_j = -grad`` of the lr-weighted loss at ``W_j``;
            ``output_change``: ``||o_on - o_off|| / ||o_off||`` of the branch output after its
            norm (before the gate) at the tokens after the first chunk, updates on vs off;
            ``lr_mean``: mean per-token lr.
        """
        if not self.use_ttt:
            raise ValueError("ttt_diagnostics needs a TTT branch; this layer has use_ttt=False")
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        b, t, _ = x.shape
        rope = None
        if self.options.use_rope:
            rope = rope_tables(
                range(t), self.attn_head_dim, theta=self.options.rope_theta,
                dtype=torch.promote_types(x.dtype, torch.float32), device=x.device,
            )  # fmt: skip
        qk, v, heads = self._split_projection(x)
        qt, kt, vt, lr, beta = self._ttt_inputs(x, qk, v, heads, rope)
        opts, c = self.lact_options, self.options.chunk_size
        w0 = _expand(self.initial_weights(), b)
        n = t // c if self.options.ttt_updates else 0
        ws, grads = [w0], []
        state: LaCTState | FastWeights = w0
        for j in range(n):
            s = slice(j * c, (j + 1) * c)
            grads.append(
                lact_inner_grad(
                    ws[-1], kt[:, s], vt[:, s], lr[:, s], opts.fast_weight, loss=opts.inner_loss
                )
            )
            bj = None if beta is None else beta[:, s]
            _, state = lact(qt[:, s], kt[:, s], vt[:, s], lr[:, s], state, opts, beta=bj)
            assert isinstance(state, LaCTState)
            ws.append(state.weights)

        out = {"updates": float(n), "lr_mean": float(lr.mean())}
        out["drift"] = _rel(_sub(ws[-1], w0), w0)
        for name, m, m0 in zip(FastWeights._fields, ws[-1], w0, strict=True):
            if m is not None and m0 is not None:
                out[f"drift_{name}"] = _rel(
                    FastWeights(None, None, m - m0), FastWeights(None, None, m0)
                )
        steps = [_rel(_sub(w1, w), w) for w, w1 in itertools.pairwise(ws)]
        raw = [_rel(g, w) for g, w in zip(grads, ws[:-1], strict=True)]
        out["update_norm"] = sum(steps) / n if n else 0.0
        out["grad_norm"] = sum(raw) / n if n else 0.0
        out["output_change"] = 0.0
        if n and t > c:
            on, _ = lact(qt, kt, vt, lr, w0, opts, beta=beta)
            off = swiglu_apply(w0, qt)
            on, off = self.ttt_norm(on[:, c:]), self.ttt_norm(off[:, c:])
            out["output_change"] = float((on - off).norm() / off.norm())
        return out

    def _cp_positions(
        self, x: Tensor, cache: object, cu_seqlens: object, use_cache: bool
    ) -> tuple[Tensor, Tensor]:
        """Global positions of this rank's tokens and of every rank's (rank order)."""
        from batchcraft.ops.lact.parallel import chunk_positions, rank_world

        if cache is not None or use_cache or cu_seqlens is not None:
            raise ValueError(
                "chunk parallelism (cp_group) runs whole sequences: no cache, use_cache, "
                "attention_mask or cu_seqlens (set layer.cp_group = None to decode)"
            )
        rank, world = rank_world(self.cp_group)
        t, c = x.shape[1], self.options.chunk_size
        pos = [chunk_positions(t, c, r, world) for r in range(world)]
        return pos[rank].to(x.device), torch.cat(pos).to(x.device)

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


def _sub(a: FastWeights, b: FastWeights) -> FastWeights:
    def d(x: Tensor | None, y: Tensor | None) -> Tensor | None:
        return None if x is None or y is None else x - y

    return FastWeights(d(a.gate, b.gate), d(a.up, b.up), a.down - b.down)


def _rel(num: FastWeights, den: FastWeights) -> float:
    """Mean over (batch row, head) of ``||num|| / ||den||``, Frobenius over the present matrices."""

    def fro(w: FastWeights) -> Tensor:  # [B, H]
        return torch.stack([m.flatten(-2).norm(dim=-1) for m in w if m is not None]).norm(dim=0)

    return float((fro(num) / fro(den)).mean())


def _expand(w: FastWeights, batch: int) -> FastWeights:
    """Per-head weights [H, ...] -> [B, H, ...] (a view)."""
    return map_weights(lambda m: m.expand(batch, *m.shape), w)
