"""LaCT novel view synthesis toy (docs/nvs.md) and its full-attention baseline.

Posed input views become one set of patch tokens (Plücker rays + RGB); target views become ray-only
tokens. Each block is ``[per-view attention; set layer; MLP]`` (pre-LayerNorm, residual). The set
layer is a :class:`BidirectionalLaCTLayer` (``mixer="lact"``: input tokens write the fast weights in
ONE update, every token reads them) or full softmax attention whose keys/values are the input
tokens (``mixer="attention"``, the baseline). Input tokens never see target tokens, so

* :meth:`NVSModel.reconstruct` runs the input tokens alone and keeps, per layer, the scene state:
  the fast weights (LaCT; size independent of the number of views) or the input keys/values
  (attention; grows with the views);
* :meth:`NVSModel.render` runs only target tokens against that state: its cost is independent of
  the number of input views for LaCT, linear in it for attention.

Shapes: images ``[B, V, 3, H, W]`` in [0, 1]; ray origins / directions ``[B, V, H, W, 3]``;
tokens ``[B, V, P, d]`` with ``P = (H / patch)^2``.

Example::

    model = NVSModel(nvs_tiny())
    state = model.reconstruct(images, origins, dirs)      # 4 posed input views
    pred = model.render(state, t_origins, t_dirs)         # [B, Vt, 3, H, W]
    model.fast_weight_drift(state)                        # [B, layers, 3]: ||W - W0|| / ||W0||
    off = model.reconstruct(images, origins, dirs, update=False)   # updates-off ablation: W0
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchcraft.nn.bidirectional_lact import BidirectionalLaCTLayer
from batchcraft.ops.lact import FastWeights

__all__ = [
    "NVS_PRESETS",
    "NVSConfig",
    "NVSModel",
    "NVSState",
    "attention_baseline",
    "lact_nvs_l14_d768_ttt2x",
    "lact_nvs_l24_d768_ttt2x",
    "lact_nvs_l24_d768_ttt4x",
    "nvs_tiny",
    "ray_features",
]


@dataclass(kw_only=True)
class NVSConfig:
    """LaCT-NVS configuration (defaults: the CPU toy)."""

    image_size: int = 32  # H = W
    patch: int = 8  # patch side; token features 12 * patch^2
    hidden: int = 128  # d
    layers: int = 2
    attn_head_dim: int = 32  # per-view (and baseline) attention head size
    mixer: str = "lact"  # "lact" | "attention" (full attention over all input tokens)
    lact_head_dim: int | None = None  # None: one LaCT head of size d
    inter_multi: int = 2  # r: fast-weight hidden = r * head dim
    base_lr: float = 1e-2
    use_muon: bool = True  # classic Newton-Schulz, muon_steps steps
    muon_steps: int = 5
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None  # overrides mlp_ratio (the baseline uses it to match params)

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch ({self.patch})"
            )
        if self.mixer not in ("lact", "attention"):
            raise ValueError(f"mixer must be 'lact' or 'attention', got {self.mixer!r}")
        if self.hidden % self.attn_head_dim:
            raise ValueError(
                f"hidden ({self.hidden}) must be divisible by attn_head_dim ({self.attn_head_dim})"
            )

    @property
    def mlp_dim(self) -> int:
        return self.mlp_hidden if self.mlp_hidden is not None else int(self.mlp_ratio * self.hidden)


def nvs_tiny(**kw: object) -> NVSConfig:
    """CPU toy: 32 px, patch 8 (16 tokens / view), d 128, 2 layers, 4 LaCT heads of 32, r 2.

    Four heads of 32 rather than one of 128: measured on the toy scenes, they learn to use the
    fast weights in fewer steps and cost a third of the time per step (the Newton-Schulz step
    on a 256 x 128 matrix dominates one head of 128); see ``docs/nvs.md``.
    """
    return replace(NVSConfig(lact_head_dim=32), **kw)  # type: ignore[arg-type]


def lact_nvs_l14_d768_ttt2x(**kw: object) -> NVSConfig:
    """Paper preset: 14 layers, d 768, one LaCT head of 768, r 2 (256 px, patch 8)."""
    base = NVSConfig(image_size=256, patch=8, hidden=768, layers=14, attn_head_dim=64)
    return replace(base, **kw)  # type: ignore[arg-type]


def lact_nvs_l24_d768_ttt2x(**kw: object) -> NVSConfig:
    """Paper preset: 24 layers, d 768, r 2 (~312M params incl. 84.9M fast weights)."""
    return replace(lact_nvs_l14_d768_ttt2x(layers=24), **kw)  # type: ignore[arg-type]


def lact_nvs_l24_d768_ttt4x(**kw: object) -> NVSConfig:
    """Paper preset: 24 layers, d 768, r 4."""
    return replace(lact_nvs_l14_d768_ttt2x(layers=24, inter_multi=4), **kw)  # type: ignore[arg-type]


NVS_PRESETS = {
    "tiny": nvs_tiny,
    "lact_nvs_l14_d768_ttt2x": lact_nvs_l14_d768_ttt2x,
    "lact_nvs_l24_d768_ttt2x": lact_nvs_l24_d768_ttt2x,
    "lact_nvs_l24_d768_ttt4x": lact_nvs_l24_d768_ttt4x,
}


def ray_features(origins: Tensor, dirs: Tensor, images: Tensor | None = None) -> Tensor:
    """Per-pixel ``[o, d, o x d, rgb * 2 - 1]``: ``[B, V, H, W, 12]`` (rgb zeros when None)."""
    rgb = (
        torch.zeros_like(dirs) if images is None else images.permute(0, 1, 3, 4, 2) * 2 - 1
    )  # [B, V, H, W, 3]
    return torch.cat([origins, dirs, torch.linalg.cross(origins, dirs), rgb], dim=-1)


class _Attention(nn.Module):
    """Softmax attention with QK RMSNorm; queries ``x`` attend to keys/values of ``ctx``."""

    def __init__(self, d: int, head_dim: int) -> None:
        super().__init__()
        self.h, self.hd = d // head_dim, head_dim
        self.q, self.kv, self.o = (
            nn.Linear(d, d, bias=False),
            nn.Linear(d, 2 * d, bias=False),
            nn.Linear(d, d, bias=False),
        )
        self.q_norm, self.k_norm = nn.RMSNorm(head_dim, eps=1e-6), nn.RMSNorm(head_dim, eps=1e-6)

    def kv_of(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """ctx [N, S, d] -> k, v [N, h, S, hd]."""
        n, s, _ = ctx.shape
        k, v = self.kv(ctx).view(n, s, 2, self.h, self.hd).permute(2, 0, 3, 1, 4)
        return self.k_norm(k), v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        """x [N, T, d], k/v [N, h, S, hd] -> [N, T, d]."""
        n, t, d = x.shape
        q = self.q_norm(self.q(x).view(n, t, self.h, self.hd).transpose(1, 2))
        o = F.scaled_dot_product_attention(q, kv[0], kv[1])  # [N, h, T, hd]
        return self.o(o.transpose(1, 2).reshape(n, t, d))


class _Block(nn.Module):
    def __init__(self, cfg: NVSConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.n1, self.n2, self.n3 = (nn.LayerNorm(d, bias=False) for _ in range(3))
        self.view_attn = _Attention(d, cfg.attn_head_dim)
        self.mixer: nn.Module
        if cfg.mixer == "lact":
            self.mixer = BidirectionalLaCTLayer(
                d,
                cfg.lact_head_dim or d,
                inter_multi=cfg.inter_multi,
                base_lr=cfg.base_lr,
                use_muon=cfg.use_muon,
                muon_steps=cfg.muon_steps,
            )
        else:
            self.mixer = _Attention(d, cfg.attn_head_dim)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_dim, bias=False), nn.GELU(), nn.Linear(cfg.mlp_dim, d, bias=False)
        )

    def per_view(self, x: Tensor) -> Tensor:
        """x [B, V, P, d]: attention inside each view, residual."""
        b, v, p, d = x.shape
        h = self.n1(x).reshape(b * v, p, d)
        return x + self.view_attn(h, self.view_attn.kv_of(h)).view(b, v, p, d)

    def state(self, x_in: Tensor) -> FastWeights | tuple[Tensor, Tensor]:
        """Scene state from input tokens x_in [B, Ti, d] (already through per-view attention)."""
        h = self.n2(x_in)
        if isinstance(self.mixer, BidirectionalLaCTLayer):
            return self.mixer.reconstruct(h)
        assert isinstance(self.mixer, _Attention)
        return self.mixer.kv_of(h)

    def read(self, x: Tensor, st: FastWeights | tuple[Tensor, Tensor]) -> Tensor:
        """Tokens x [B, T, d] read the state; residual + MLP."""
        h = self.n2(x)
        if isinstance(self.mixer, BidirectionalLaCTLayer):
            assert isinstance(st, FastWeights)
            x = x + self.mixer.render(st, h)
        else:
            assert not isinstance(st, FastWeights)
            x = x + self.mixer(h, st)
        return x + self.mlp(self.n3(x))


@dataclass
class NVSState:
    """Scene representation: per layer, fast weights (LaCT) or input keys/values (attention)."""

    layers: list[FastWeights | tuple[Tensor, Tensor]]
    num_views: int

    def numel(self) -> int:
        """Floats held per scene batch (the memory of the scene representation)."""
        return sum(t.numel() for st in self.layers for t in st if t is not None)


class NVSModel(nn.Module):
    """LaCT-NVS (``cfg.mixer="lact"``) or the full-attention baseline (``"attention"``)."""

    def __init__(self, cfg: NVSConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch, cfg.hidden
        self.embed = nn.Linear(12 * p * p, d, bias=False)
        self.embed_norm = nn.LayerNorm(d, bias=False)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.out_norm = nn.LayerNorm(d, bias=False)
        self.decode = nn.Linear(d, p * p * 3)

    def tokens(self, origins: Tensor, dirs: Tensor, images: Tensor | None = None) -> Tensor:
        """Patch tokens ``[B, V, P, d]`` from rays (+ RGB for input views)."""
        self._check_rays(origins, dirs)
        f = ray_features(origins, dirs, images)  # [B, V, H, W, 12]
        b, v, hh, ww, c = f.shape
        p = self.cfg.patch
        f = f.view(b, v, hh // p, p, ww // p, p, c).permute(0, 1, 2, 4, 3, 5, 6)
        f = f.reshape(b, v, (hh // p) * (ww // p), p * p * c)  # [B, V, P, p*p*12]
        return self.embed_norm(self.embed(f))

    def _pixels(self, x: Tensor) -> Tensor:
        """Tokens [B, V, P, d] -> images [B, V, 3, H, W]."""
        b, v, _, _ = x.shape
        p, n = self.cfg.patch, self.cfg.image_size // self.cfg.patch
        y = torch.sigmoid(self.decode(self.out_norm(x)))  # [B, V, P, p*p*3]
        y = y.view(b, v, n, n, p, p, 3).permute(0, 1, 6, 2, 4, 3, 5)
        return y.reshape(b, v, 3, n * p, n * p)

    def reconstruct(
        self, images: Tensor, origins: Tensor, dirs: Tensor, *, update: bool = True
    ) -> NVSState:
        """Absorb input views (images [B, Vi, 3, H, W], rays [B, Vi, H, W, 3]) into the state.

        ``update=False`` (LaCT only) is the updates-off ablation: every layer keeps ``W0``, so
        renderings no longer depend on the input views.
        """
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, V, 3, H, W], got {tuple(images.shape)}")
        self._check_update(update)
        x = self.tokens(origins, dirs, images)
        b, v, p, d = x.shape
        if not update:
            return NVSState([lact.static_weights(b) for lact in self._lact_layers()], v)
        states: list[FastWeights | tuple[Tensor, Tensor]] = []
        for i, blk in enumerate(self._blocks()):
            x = blk.per_view(x)
            flat = x.reshape(b, v * p, d)
            st = blk.state(flat)
            states.append(st)
            if i + 1 < len(self.blocks):  # the last block's input tokens are not needed
                x = blk.read(flat, st).view(b, v, p, d)
        return NVSState(states, v)

    def fast_weight_drift(self, state: NVSState) -> Tensor:
        """How far the inputs moved the fast weights: ``[B, L, 3]``.

        Per scene and layer, ``||W - W0||_F / ||W0||_F`` of (gate, up, down), averaged over heads.
        """
        if self.cfg.mixer != "lact":
            raise ValueError("fast_weight_drift needs mixer='lact' (attention has no fast weights)")
        out = []
        for lact, st in zip(self._lact_layers(), state.layers, strict=True):
            assert isinstance(st, FastWeights)
            out.append(lact.drift(st))
        return torch.stack(out, dim=1)

    def render(self, state: NVSState, origins: Tensor, dirs: Tensor) -> Tensor:
        """Render target views from rays [B, Vt, H, W, 3] -> images [B, Vt, 3, H, W]."""
        if len(state.layers) != len(self.blocks):
            raise ValueError(f"state has {len(state.layers)} layers, model {len(self.blocks)}")
        x = self.tokens(origins, dirs)
        b, v, p, d = x.shape
        for blk, st in zip(self._blocks(), state.layers, strict=True):
            x = blk.per_view(x)
            x = blk.read(x.reshape(b, v * p, d), st).view(b, v, p, d)
        return self._pixels(x)

    def forward(
        self,
        images: Tensor,
        origins: Tensor,
        dirs: Tensor,
        target_origins: Tensor,
        target_dirs: Tensor,
        *,
        update: bool = True,
    ) -> Tensor:
        """Single pass over the joint set (inputs then targets); returns target images.

        ``update=False``: the LaCT updates-off ablation (see :meth:`reconstruct`).
        """
        self._check_update(update)
        xi = self.tokens(origins, dirs, images)
        xt = self.tokens(target_origins, target_dirs)
        b, vi, p, d = xi.shape
        x = torch.cat([xi, xt], dim=1)  # [B, Vi + Vt, P, d]
        n_in = vi * p
        for blk in self._blocks():
            x = blk.per_view(x)
            flat = x.reshape(b, -1, d)
            h = blk.n2(flat)
            if isinstance(blk.mixer, BidirectionalLaCTLayer):
                # update on the input tokens, apply to all
                y, _ = blk.mixer(h, num_update=n_in, update=update)
            else:
                attn = blk.mixer
                assert isinstance(attn, _Attention)
                y = attn(h, attn.kv_of(h[:, :n_in]))  # keys/values: input tokens only
            flat = flat + y
            flat = flat + blk.mlp(blk.n3(flat))
            x = flat.view(x.shape)
        return self._pixels(x[:, vi:])

    def _check_update(self, update: bool) -> None:
        if not update and self.cfg.mixer != "lact":
            raise ValueError(
                "update=False is the LaCT updates-off ablation; the attention model has no "
                "fast weights (use mixer='lact')"
            )

    def _lact_layers(self) -> list[BidirectionalLaCTLayer]:
        return [b.mixer for b in self._blocks() if isinstance(b.mixer, BidirectionalLaCTLayer)]

    def _blocks(self) -> list[_Block]:
        return [b for b in self.blocks if isinstance(b, _Block)]

    def _check_rays(self, origins: Tensor, dirs: Tensor) -> None:
        s = self.cfg.image_size
        if origins.shape != dirs.shape or origins.dim() != 5 or origins.shape[2:] != (s, s, 3):
            raise ValueError(
                f"origins and dirs must both be [B, V, {s}, {s}, 3], got "
                f"{tuple(origins.shape)} and {tuple(dirs.shape)}"
            )


def attention_baseline(cfg: NVSConfig) -> NVSConfig:
    """The same model with full attention over all input tokens, MLP widened to equal params."""
    d = cfg.hidden
    lact_extra = _count(NVSModel(replace(cfg, layers=1, mixer="lact")))
    attn_base = _count(NVSModel(replace(cfg, layers=1, mixer="attention")))
    widen = round((lact_extra - attn_base) / (2 * d))
    return replace(cfg, mixer="attention", mlp_hidden=cfg.mlp_dim + max(widen, 0))


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
