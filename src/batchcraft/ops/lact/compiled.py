"""``torch.compile`` path of the LaCT chunk loop (issue 11).

Compiling the whole op would unroll the Python chunk loop, so every sequence length (number of
chunks) would trace a new graph. Instead the per-chunk step of the fast path (apply the current
weights to the chunk's queries, closed-form inner gradient, momentum / Muon / renorm update) is
compiled ONCE per option set with ``fullgraph=True``: its shapes are ``[N, C, D]`` whatever T
is, so a new T costs no recompilation; the eager Python loop drives it, and the pending-token
tail (fewer than C tokens) runs eagerly. ``recompute=True`` checkpoints the compiled step.

``tests/ops/lact/test_compile.py`` checks there is no graph break in the step
(``torch._dynamo.explain``) and that a second T reuses the graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.lact.api import Layout, Schedule, run_lact
from batchcraft.ops.lact.chunk import _ChunkBackend, _Folded
from batchcraft.ops.lact.executor import Backend
from batchcraft.ops.lact.state import FastWeights, LaCTState
from batchcraft.ops.lact.update import UpdateConfig

__all__ = ["compiled_lact", "compiled_step"]

CompileBackend = str | Callable[..., Any]


def _cfg_key(cfg: UpdateConfig) -> tuple[Any, ...]:
    return (cfg.muon, cfg.muon_steps, cfg.weight_norm, cfg.loss, cfg.inner_steps)


@functools.lru_cache(maxsize=64)
def _compiled(
    key: tuple[Any, ...], backend: CompileBackend, dynamic: bool | None, mode: str | None
) -> Callable[..., Any]:
    muon, muon_steps, weight_norm, loss, inner_steps = key
    cfg = UpdateConfig(
        muon=muon,
        muon_steps=muon_steps,
        weight_norm=weight_norm,
        loss=loss,
        inner_steps=inner_steps,
    )
    eager = _ChunkBackend(cfg, recompute=False)

    def step(*args: Any) -> Any:
        return eager._step(*args)

    return torch.compile(step, backend=backend, fullgraph=True, dynamic=dynamic, mode=mode)


def compiled_step(
    cfg: UpdateConfig,
    *,
    backend: CompileBackend = "inductor",
    dynamic: bool | None = False,
    mode: str | None = None,
) -> Callable[..., Any]:
    """The compiled chunk step for these options (cached; same arguments as the eager step).

    Args:
        cfg: the update options.
        backend: a ``torch.compile`` backend (``"inductor"``, ``"aot_eager"``, ``"eager"`` or a
            callable such as ``torch._dynamo.testing.CompileCounter()``).
        dynamic: ``torch.compile``'s ``dynamic`` (``False``: shapes are fixed by C and N anyway).
        mode: ``torch.compile``'s ``mode`` (e.g. ``"max-autotune-no-cudagraphs"``).
    """
    return _compiled(_cfg_key(cfg), backend, dynamic, mode)


class _CompiledBackend(_ChunkBackend):
    inference_fast = False  # the compiled step replaces the eager buffer loop

    def __init__(
        self,
        cfg: UpdateConfig,
        recompute: bool,
        backend: CompileBackend,
        dynamic: bool | None,
        mode: str | None,
    ) -> None:
        super().__init__(cfg, recompute)
        self._fn = compiled_step(cfg, backend=backend, dynamic=dynamic, mode=mode)

    def _step(self, *args: Any) -> Any:  # type: ignore[override]
        return self._fn(*args)


def compiled_lact(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    *,
    chunk_size: int,
    schedule: Schedule = "causal",
    beta: Tensor | None = None,
    muon: str | None = None,
    muon_steps: int = 5,
    weight_norm: str | None = "post",
    fast_weight: str = "swiglu",
    cu_seqlens: Tensor | Sequence[int] | None = None,
    loss: str = "neg_dot",
    inner_steps: int = 1,
    check: bool = False,
    recompute: bool = False,
    compile_backend: CompileBackend = "inductor",
    dynamic: bool | None = False,
    mode: str | None = None,
) -> tuple[Tensor, LaCTState]:
    """:func:`batchcraft.ops.lact.chunk_lact` with a compiled chunk step; same contract.

    ``compile_backend``, ``dynamic`` and ``mode`` go to ``torch.compile`` (see
    :func:`compiled_step`). The linear variant and explicit schedules run eagerly.
    """

    def make(cfg: UpdateConfig) -> tuple[Backend, Layout]:
        return _CompiledBackend(cfg, recompute, compile_backend, dynamic, mode), _Folded()

    return run_lact(
        make,
        q,
        k,
        v,
        lr,
        state,
        chunk_size=chunk_size,
        schedule=schedule,
        beta=beta,
        muon=muon,
        muon_steps=muon_steps,
        weight_norm=weight_norm,
        fast_weight=fast_weight,
        cu_seqlens=cu_seqlens,
        loss=loss,
        inner_steps=inner_steps,
        check=check,
    )
