"""LaCT causal language model with an O(1)-memory decode cache.

``Embedding -> L x [RMSNorm -> LaCTLayer -> residual -> RMSNorm -> SwiGLU MLP -> residual]
-> RMSNorm -> lm_head``. The same class builds the baselines: ``use_ttt=False`` gives the
sliding-window (``window_size=W``) or full-attention (``window_size=None``) Transformer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchcraft.models.lact_config import LaCTConfig
from batchcraft.nn.lact import LaCTLayer, LaCTLayerCache
from batchcraft.nn.ttt_linear import TTTLinearLayer
from batchcraft.ops.lact.profile import prof_range

__all__ = [
    "IGNORE_INDEX",
    "LMCache",
    "LMOutput",
    "LaCTForCausalLM",
    "count_parameters",
    "full_attention_baseline",
    "load_lact_lm",
    "swa_baseline",
    "ttt_linear_baseline",
]

IGNORE_INDEX = -100
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@dataclass
class LMCache:
    """Per-layer decode caches; :meth:`nbytes` is independent of the context for LaCT/SWA."""

    layers: list[LaCTLayerCache]

    @property
    def position(self) -> int:
        return self.layers[0].position

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.layers)

    def detach(self) -> LMCache:
        return LMCache([c.detach() for c in self.layers])

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every cached tensor (for constant-size checks)."""
        return {
            f"{i}.{k}": tuple(t.shape)
            for i, c in enumerate(self.layers)
            for k, t in c.tensors().items()
        }


@dataclass
class LMOutput:
    """``logits [B, T, V]``, mean next-token ``loss`` (or None) and the ``cache`` (or None)."""

    logits: Tensor
    loss: Tensor | None
    cache: LMCache | None


class SwiGLUMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` without biases."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        g, u = self.gate_up(x).chunk(2, dim=-1)  # [B, T, I] each
        return self.down(F.silu(g) * u)


class LaCTBlock(nn.Module):
    """Pre-norm block: token mixing (LaCT / attention) then a SwiGLU MLP, both residual."""

    def __init__(self, cfg: LaCTConfig, layer_idx: int) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.mix_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.mix: LaCTLayer | TTTLinearLayer
        if cfg.mixer == "ttt_linear":
            self.mix = TTTLinearLayer(
                d,
                cfg.num_heads,
                mini_batch=cfg.ttt_mini_batch,
                window_size=cfg.window_size,
                num_attn_heads=cfg.attn_heads,
                use_rope=cfg.use_rope,
                rope_theta=cfg.rope_theta,
                attn_impl=cfg.attn_impl,
            )
        else:
            # the config is a LaCTLayerOptions: the layer reads its own fields by name
            self.mix = LaCTLayer(options=cfg, layer_idx=layer_idx)
        self.mlp_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.mlp = SwiGLUMLP(d, cfg.intermediate_size)

    def forward(
        self,
        x: Tensor,
        *,
        cache: LaCTLayerCache | None,
        attention_mask: Tensor | None,
        cu_seqlens: Tensor | None,
        use_cache: bool,
    ) -> tuple[Tensor, LaCTLayerCache | None]:
        if isinstance(self.mix, TTTLinearLayer):
            if (
                cache is not None
                or use_cache
                or attention_mask is not None
                or cu_seqlens is not None
            ):
                raise ValueError(
                    "the ttt_linear mixer (a training baseline) supports neither caches nor "
                    "attention_mask / cu_seqlens; use mixer='lact' for decoding and packing"
                )
            x = x + self.mix(self.mix_norm(x))
            return x + self.mlp(self.mlp_norm(x)), None
        with prof_range("norms"):
            hn = self.mix_norm(x)
        h, new_cache = self.mix(
            hn,
            cache=cache,
            attention_mask=attention_mask,
            cu_seqlens=cu_seqlens,
            use_cache=use_cache,
        )
        with prof_range("norms"):
            x = x + h
            hn = self.mlp_norm(x)
        with prof_range("mlp"):
            return x + self.mlp(hn), new_cache


class LaCTForCausalLM(nn.Module):
    """LaCT (or attention-baseline) language model.

    Example::

        model = LaCTForCausalLM(lact_tiny())
        out = model(ids, labels=ids)          # ids: [B, T] -> out.logits [B, T, 256], out.loss
        new = model.generate(ids[:, :8], max_new_tokens=32)   # [B, 40]
    """

    def __init__(self, config: LaCTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(LaCTBlock(config, i) for i in range(config.num_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Slow weights N(0, init_std²); each LaCT layer then applies its own init."""
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, nn.RMSNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
        for b in self.blocks:
            assert isinstance(b, LaCTBlock)
            b.mix.reset_parameters()  # LaCT / TTT-Linear own init

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        cache: LMCache | None = None,
        *,
        attention_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        use_cache: bool = False,
    ) -> LMOutput:
        """Logits and (optionally) the loss and the decode cache.

        Args:
            input_ids: ``[B, T]`` token ids.
            labels: ``[B, T]`` targets aligned with ``input_ids`` (shifted inside: logits at
                ``t`` predict ``labels[t + 1]``); ``-100`` is ignored.
            cache: continue from a previous call.
            attention_mask: ``[B, T]`` right-padding mask (1 real, 0 pad).
            cu_seqlens: ``[N + 1]`` packed-document boundaries for ``B = 1``.
            use_cache: return a cache (implied when ``cache`` is given).
        """
        self._check_ids(input_ids, labels)
        if cache is not None and len(cache.layers) != len(self.blocks):
            raise ValueError(f"cache has {len(cache.layers)} layers, model has {len(self.blocks)}")
        with prof_range("embed"):
            x = self.embed(input_ids)  # [B, T, d]
        new_layers: list[LaCTLayerCache] = []
        for i, block in enumerate(self.blocks):
            x, c = block(
                x,
                cache=None if cache is None else cache.layers[i],
                attention_mask=attention_mask,
                cu_seqlens=cu_seqlens,
                use_cache=use_cache,
            )
            if c is not None:
                new_layers.append(c)
        with prof_range("lm_head"):
            logits = self.lm_head(self.norm(x))  # [B, T, V]
        loss = None
        if labels is not None:
            with prof_range("loss"):
                target = labels[:, 1:]
                if attention_mask is not None:
                    target = target.masked_fill(~attention_mask[:, 1:].bool(), IGNORE_INDEX)
                if cu_seqlens is not None:  # never predict across a document boundary
                    starts = cu_seqlens[1:-1].to(target.device) - 1
                    target = target.clone()
                    target[:, starts] = IGNORE_INDEX
                loss = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                    target.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                )
        out_cache = LMCache(new_layers) if len(new_layers) == len(self.blocks) else None
        return LMOutput(logits=logits, loss=loss, cache=out_cache)

    @torch.no_grad()
    def ttt_diagnostics(self, input_ids: Tensor) -> dict[int, dict[str, float]]:
        """Per LaCT layer, how much its fast weights learn over ``input_ids`` [B, T].

        Runs the model once to capture every LaCT layer's input, then
        :meth:`batchcraft.nn.LaCTLayer.ttt_diagnostics` on it: ``drift`` (relative change of the
        fast weights from ``W0`` over the sequence), ``update_norm`` / ``grad_norm`` (relative
        size of one update, applied and raw), ``output_change`` (updates on vs off) and more.

        Returns:
            ``{layer index: {name: value}}`` for the layers with a LaCT TTT branch (empty for
            attention-only and TTT-Linear models).
        """
        self._check_ids(input_ids, None)
        layers = {
            i: b.mix
            for i, b in enumerate(self.blocks)
            if isinstance(b.mix, LaCTLayer) and b.mix.use_ttt
        }
        seen: dict[int, Tensor] = {}
        hooks = [
            layer.register_forward_pre_hook(
                lambda _m, args, i=i: seen.__setitem__(i, args[0].detach())
            )
            for i, layer in layers.items()
        ]
        was = self.training
        self.eval()
        try:
            self(input_ids)
        finally:
            for hk in hooks:
                hk.remove()
            self.train(was)
        return {i: layer.ttt_diagnostics(seen[i]) for i, layer in layers.items()}

    def _check_ids(self, input_ids: Tensor, labels: Tensor | None) -> None:
        """Token ids in ``[0, vocab)`` (labels may also be ``IGNORE_INDEX``); one ``ValueError``.

        The range check reads two scalars back (a device sync per forward); the embedding would
        otherwise fail with an index error (CPU) or a device-side assert (CUDA).
        """
        if not isinstance(input_ids, Tensor) or input_ids.dtype not in _INT_DTYPES:
            got = input_ids.dtype if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise TypeError(f"input_ids must be an integer tensor (torch.long), got {got}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got {tuple(input_ids.shape)}")
        vocab = self.config.vocab_size
        if input_ids.numel() > 0:
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= vocab:
                raise ValueError(
                    f"input_ids must lie in [0, vocab_size = {vocab}), got values in [{lo}, {hi}]"
                )
        if labels is None:
            return
        if not isinstance(labels, Tensor) or labels.dtype not in _INT_DTYPES:
            raise TypeError("labels must be an integer tensor (torch.long) like input_ids")
        if labels.shape != input_ids.shape:
            raise ValueError(
                f"labels must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
            )
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))
        if bool(bad.any()):
            raise ValueError(
                f"labels must lie in [0, vocab_size = {vocab}) or be {IGNORE_INDEX} (ignored), "
                f"got {int(labels[bad][0])}"
            )

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        top_k: int | None = None,
    ) -> Tensor:
        """Prefill, then decode one token at a time on the constant-size cache.

        Args:
            input_ids: ``[B, T]`` prompt.
            max_new_tokens: tokens to append.
            temperature: 0 for greedy, else softmax sampling at this temperature.
            generator: randomness for sampling.
            top_k: sample among the ``top_k`` most likely tokens only (``>= 1``; ``None``: all).

        Returns:
            ``[B, T + max_new_tokens]``.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise TypeError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) must be >= 0")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(
                f"temperature ({temperature}) must be a finite number >= 0 (0: greedy)"
            )
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ValueError(f"top_k ({top_k!r}) must be an int >= 1 or None (no top-k filter)")
        out = self(input_ids, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
        tokens = [input_ids]
        for i in range(max_new_tokens):
            nxt = _sample(logits, temperature, generator, top_k)  # [B, 1]
            tokens.append(nxt)
            if i + 1 < max_new_tokens:
                out = self(nxt, cache=cache)
                cache, logits = out.cache, out.logits[:, -1]
        return torch.cat(tokens, dim=1)


def _sample(
    logits: Tensor, temperature: float, generator: torch.Generator | None, top_k: int | None
) -> Tensor:
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    z = logits.float() / temperature
    if top_k is not None:
        kth = z.topk(min(top_k, z.shape[-1]), dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    p = z.softmax(dim=-1)
    return torch.multinomial(p.cpu(), 1, generator=generator).to(logits.device)


def load_lact_lm(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> LaCTForCausalLM:
    """The model of a single-file checkpoint folder (``config.json`` + ``model.safetensors``, as
    ``batchcraft lm export`` writes it), in eval mode; a folder killed mid-swap falls back to its
    ``.old`` copy. Nothing is unpickled. Sharded training checkpoints (``lm train``'s
    ``OUT/checkpoint``) are read by ``batchcraft.recipes.lm.load_lm``.

    Raises:
        CheckpointError: (a ``ValueError``) the folder is missing, incomplete, damaged, sharded,
            or its weights do not fit its config.
    """
    from safetensors.torch import load_file

    from batchcraft.utils.io import CheckpointError, load_json, load_module_state, resolve_dir

    p = Path(path)
    complete = (p / "config.json").is_file() and (p / "model.safetensors").is_file()
    folder = p if complete else resolve_dir(p)
    if folder is None or not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{p} is not a LaCT checkpoint folder (expected config.json and model.safetensors, "
            "as `batchcraft lm export` writes them)"
        )
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(
            f"{folder} has no model.safetensors (a sharded training checkpoint?): convert it "
            "with `batchcraft lm export --checkpoint DIR --out DIR2` first"
        )
    try:
        cfg = LaCTConfig.from_dict(load_json(folder / "config.json"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from None
    model = LaCTForCausalLM(cfg)
    try:
        state = load_file(str(folder / "model.safetensors"), device=str(map_location))
    except Exception as exc:  # safetensors' own error types for missing/truncated files
        raise CheckpointError(f"{folder / 'model.safetensors'} cannot be read: {exc}") from None
    load_module_state(model, state, folder / "model.safetensors")
    return model.to(map_location).eval()


def count_parameters(config: LaCTConfig) -> int:
    """Parameter count without allocating memory (the model is built on the meta device)."""
    with torch.device("meta"):
        model = LaCTForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- parameter-matched baselines
def swa_baseline(cfg: LaCTConfig, *, match_params: bool = True) -> LaCTConfig:
    """Sliding-window Transformer with ``cfg``'s blocks (TTT removed), MLP widened to match params."""
    base = replace(cfg, use_ttt=False)
    return _match(base, cfg) if match_params else base


def full_attention_baseline(cfg: LaCTConfig, *, match_params: bool = True) -> LaCTConfig:
    """Full-attention Transformer with ``cfg``'s blocks, MLP widened to match params."""
    base = replace(cfg, use_ttt=False, window_size=None)
    return _match(base, cfg) if match_params else base


def ttt_linear_baseline(cfg: LaCTConfig, *, match_params: bool = True) -> LaCTConfig:
    """Small-chunk TTT-Linear (mini-batch 16) + the same SWA, MLP adjusted to match params."""
    base = replace(cfg, mixer="ttt_linear", use_ttt=True)
    return _match(base, cfg) if match_params else base


def _match(base: LaCTConfig, target: LaCTConfig) -> LaCTConfig:
    """Widen the MLP of ``base`` so its parameter count is closest to ``target``'s."""
    want = count_parameters(target)
    have = count_parameters(base)
    per_unit = 3 * base.hidden_size * base.num_layers  # one more MLP hidden unit in every block
    extra = round((want - have) / per_unit)
    return replace(base, mlp_hidden=max(1, base.intermediate_size + extra))
