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

from batchcraft.ops.lact.chunk import _ChunkBackend, _Folded
from batchcraft.ops.lact.executor import Backend
from batchcraft.ops.lact.options import LaCTOptions, resolve_options
from batchcraft.ops.lact.runner import Layout, run_lact
from batchcraft.ops.lact.schedule import Schedule
from batchcraft.ops.lact.state import FastWeights, LaCTState

__all__ = ["compiled_lact", "compiled_step"]

CompileBackend = str | Callable[..., Any]


def _step_options(cfg: LaCTOptions) -> LaCTOptions:
    """The options the chunk step reads (the cache key: other options never change the graph)."""
    return LaCTOptions(
        use_muon=cfg.use_muon,
        muon=cfg.muon,
        muon_steps=cfg.muon_steps,
        weight_norm=cfg.weight_norm,
        inner_loss=cfg.inner_loss,
        inner_steps=cfg.inner_steps,
    )


@functools.lru_cache(maxsize=64)
def _compiled(
    cfg: LaCTOptions, backend: CompileBackend, dynamic: bool | None, mode: str | None
) -> Callable[..., Any]:
    eager = _ChunkBackend(cfg)

    def step(*args: Any) -> Any:
        return eager._step(*args)

    return torch.compile(step, backend=backend, fullgraph=True, dynamic=dynamic, mode=mode)


def compiled_step(
    cfg: LaCTOptions,
    *,
    backend: CompileBackend = "inductor",
    dynamic: bool | None = False,
    mode: str | None = None,
) -> Callable[..., Any]:
    """The compiled chunk step for these options (cached; same arguments as the eager step).

    Args:
        cfg: the op options (only the update rule's fields matter).
        backend: a ``torch.compile`` backend (``"inductor"``, ``"aot_eager"``, ``"eager"`` or a
            callable such as ``torch._dynamo.testing.CompileCounter()``).
        dynamic: ``torch.compile``'s ``dynamic`` (``False``: shapes are fixed by C and N anyway).
        mode: ``torch.compile``'s ``mode`` (e.g. ``"max-autotune-no-cudagraphs"``).
    """
    return _compiled(_step_options(cfg), backend, dynamic, mode)


class _CompiledBackend(_ChunkBackend):
    inference_fast = False  # the compiled step replaces the eager buffer loop
    fused_grad = False  # and the fused autograd node

    def __init__(
        self,
        cfg: LaCTOptions,
        backend: CompileBackend,
        dynamic: bool | None,
        mode: str | None,
    ) -> None:
        super().__init__(cfg)
        self._fn = compiled_step(cfg, backend=backend, dynamic=dynamic, mode=mode)

    def _step(self, *args: Any) -> Any:  # type: ignore[override]
        return self._fn(*args)


def compiled_lact(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    options: LaCTOptions | None = None,
    *,
    schedule: Schedule = "causal",
    beta: Tensor | None = None,
    cu_seqlens: Tensor | Sequence[int] | None = None,
    compile_backend: CompileBackend = "inductor",
    dynamic: bool | None = False,
    mode: str | None = None,
    **kw: Any,
) -> tuple[Tensor, LaCTState]:
    """:func:`batchcraft.ops.lact.chunk_lact` with a compiled chunk step; same contract.

    ``compile_backend``, ``dynamic`` and ``mode`` go to ``torch.compile`` (see
    :func:`compiled_step`). The linear variant and explicit schedules run eagerly.
    """
    opts = resolve_options(options, kw, beta_given=beta is not None)

    def make(cfg: LaCTOptions) -> tuple[Backend, Layout]:
        return _CompiledBackend(cfg, compile_backend, dynamic, mode), _Folded()

    return run_lact(
        make, q, k, v, lr, state, opts, schedule=schedule, beta=beta, cu_seqlens=cu_seqlens
    )
