"""Feature probes: per-example gradient features of one parameter matrix (and baselines).

A batch is a mapping with the model inputs (``input_ids: [N, T]``, optional ``attention_mask``),
``labels: [N, T]`` (``-100`` where not trained) and optionally ``source: [N]``; ``labels`` and
``source`` are not passed to the model. The model returns logits ``[N, T, V]`` or an object with a
``.logits`` attribute (Hugging Face). Every probe:

* runs with the model in ``eval()`` mode and restores the previous mode;
* never writes a parameter: perturbed values are out-of-place copies passed through
  ``torch.func.functional_call``;
* never touches the global RNG: directions come from a private ``torch.Generator``.

Probes: :class:`ZOProbe` (zeroth-order directional estimates, the faithful CoLM feature),
:class:`ExactGradProbe` (per-example gradient via ``torch.func.vmap(grad)``, or a loop reference),
and the baselines :class:`LossProbe`, :class:`GradNormProbe`, :class:`HiddenProbe`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from batchcraft.selection.colm.loss import per_example_lm_loss

__all__ = [
    "ExactGradProbe",
    "GradNormProbe",
    "HiddenProbe",
    "LossProbe",
    "ZOProbe",
    "model_inputs",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
_NOT_INPUTS = ("labels", "source")


def model_inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The batch without ``labels`` and ``source`` (what the model's forward receives)."""
    if "labels" not in batch:
        raise ValueError("batch must hold 'labels' [N, T] (-100 where not trained)")
    return {k: v for k, v in batch.items() if k not in _NOT_INPUTS}


def _logits(out: Any) -> Tensor:
    return out.logits if hasattr(out, "logits") else out


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _Probe:
    """Shared plumbing: the probed parameter, the loss, call counters."""

    def __init__(
        self, model: nn.Module, param_name: str, loss_fn: LossFn = per_example_lm_loss
    ) -> None:
        params = dict(model.named_parameters())
        if param_name not in params:
            near = [n for n in params if param_name.split(".")[-1] in n][:5]
            raise ValueError(f"model has no parameter {param_name!r}; similar names: {near}")
        self.model, self.param_name, self.loss_fn = model, param_name, loss_fn
        self.calls = 0  # features() calls
        self.examples_seen = 0  # rows featurised in total

    @property
    def param(self) -> Tensor:
        return dict(self.model.named_parameters())[self.param_name]

    @property
    def dim(self) -> int:
        """Feature width ``F``."""
        return self.param.numel()

    def per_example_loss(
        self, batch: Mapping[str, Tensor], params: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """``[N]`` per-example losses, optionally with some parameters replaced (out of place)."""
        inputs = model_inputs(batch)
        if params:
            out = functional_call(self.model, dict(params), args=(), kwargs=inputs, strict=False)
        else:
            out = self.model(**inputs)
        return self.loss_fn(_logits(out), batch["labels"])

    def _count(self, n: int) -> None:
        self.calls += 1
        self.examples_seen += n

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "examples_seen": self.examples_seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))
        self.examples_seen = int(state.get("examples_seen", 0))


def _is_cache(name: str, value: Any) -> bool:
    return "past_key_value" in name or name == "cache" or type(value).__name__.endswith("Cache")


class _StopForward(Exception):
    """Raised by the capture hook to end a forward once the prefix has run."""


class ZOProbe(_Probe):
    """Zeroth-order features ``g_i = (1/m) sum_j c_ij vec(z_j)``.

    ``c_ij = (l_i(theta + eps z_j) - l_i(theta - eps z_j)) / (2 eps)`` estimates the directional
    derivative ``<grad l_i, z_j>``; ``z_j ~ N(0, I)`` shaped like the probed parameter.

    Args:
        model: the network (any ``nn.Module``; PEFT models work unchanged).
        param_name: name in ``model.named_parameters()`` of the probed matrix (``d`` entries).
        eps: perturbation size.
        directions: ``m`` shared directions per step (``m = 1``: rank-1 features).
        resample: ``"run"`` (faithful: one draw for the whole run) or ``"step"`` (fresh draw per
            :meth:`features` call, seeded from ``(seed, step)``).
        seed: seed of the private generator (``None``: drawn once from the OS).
        split_at: fast path. Name of the *final* block (it must own the probed parameter): a
            forward pre-hook captures its inputs (hidden states and extra args, e.g. rotary
            embeddings) and ends the forward, so the prefix runs once; only the block and the
            ``tail`` modules run twice (+-eps). ``None``: two full forwards (the reference).
        tail: names of the modules applied, in order, to the block's output (or output[0]) to
            get logits, e.g. ``("ln_f", "head")`` or ``("model.norm", "lm_head")``.
        loss_fn: ``(logits [N, T, V], labels [N, T]) -> [N]``.
    """

    def __init__(
        self,
        model: nn.Module,
        param_name: str,
        *,
        eps: float = 1e-3,
        directions: int = 1,
        resample: str = "run",
        seed: int | None = None,
        split_at: str | None = None,
        tail: tuple[str, ...] = (),
        loss_fn: LossFn = per_example_lm_loss,
    ) -> None:
        super().__init__(model, param_name, loss_fn)
        mods = dict(model.named_modules())
        if split_at is not None:
            if split_at not in mods:
                raise ValueError(f"split_at {split_at!r} is not a module name of the model")
            if not param_name.startswith(split_at + "."):
                raise ValueError(
                    f"split_at {split_at!r} must own the probed parameter {param_name!r}"
                )
            if not tail or any(t not in mods for t in tail):
                raise ValueError(f"tail must name the modules after {split_at!r}, got {tail}")
        self.split_at, self.tail = split_at, tuple(tail)
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if directions < 1:
            raise ValueError(f"directions must be >= 1, got {directions}")
        if resample not in ("run", "step"):
            raise ValueError(f"resample must be 'run' or 'step', got {resample!r}")
        self.eps, self.directions, self.resample = float(eps), int(directions), resample
        self.seed = int(seed) if seed is not None else int(torch.Generator().seed() % 2**62)
        self.step = 0  # features() calls that drew directions
        self.last_coefficients: Tensor | None = None  # [N, m] of the last call

    def directions_for_step(self, step: int) -> Tensor:
        """``[m, d]`` directions used at ``step`` (fp32, CPU, from the private generator)."""
        s = self.seed if self.resample == "run" else (self.seed * 1_000_003 + step) % 2**62
        gen = torch.Generator().manual_seed(s)
        return torch.randn(self.directions, self.dim, generator=gen)

    def _capture_prefix(self, batch: Mapping[str, Tensor]) -> tuple[Any, Any]:
        """Run the model up to ``split_at``; return the block's ``(args, kwargs)``."""
        block = dict(self.model.named_modules())[str(self.split_at)]
        got: list[tuple[Any, Any]] = []

        def hook(_m: nn.Module, args: Any, kwargs: Any) -> None:
            # a KV cache would grow on every replay: replay without it (HF decoder layers)
            kw = {
                k: (False if k == "use_cache" else None if _is_cache(k, v) else v)
                for k, v in kwargs.items()
            }
            got.append((args, kw))
            raise _StopForward

        handle = block.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.model(**model_inputs(batch))
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not got:
            raise RuntimeError(f"split_at module {self.split_at!r} was not called by forward")
        return got[0]

    def _suffix_loss(self, captured: tuple[Any, Any], labels: Tensor, value: Tensor) -> Tensor:
        """``[N]`` losses from the captured block inputs with the probed parameter = ``value``."""
        mods = dict(self.model.named_modules())
        block = mods[str(self.split_at)]
        rel = self.param_name[len(str(self.split_at)) + 1 :]
        out = functional_call(block, {rel: value}, args=captured[0], kwargs=captured[1])
        x = out[0] if isinstance(out, tuple) else out
        for name in self.tail:
            x = mods[name](x)
        return self.loss_fn(_logits(x), labels)

    def coefficients(self, batch: Mapping[str, Tensor], z: Tensor) -> Tensor:
        """``[N, m]`` two-sided finite-difference directional derivatives along ``z: [m, d]``."""
        p = self.param.detach()
        cols = []
        with _eval_mode(self.model), torch.no_grad():
            captured = self._capture_prefix(batch) if self.split_at is not None else None
            for j in range(z.shape[0]):
                dz = (self.eps * z[j]).to(device=p.device, dtype=p.dtype).view_as(p)
                if captured is not None:
                    lp = self._suffix_loss(captured, batch["labels"], p + dz)
                    lm = self._suffix_loss(captured, batch["labels"], p - dz)
                else:
                    lp = self.per_example_loss(batch, {self.param_name: p + dz})
                    lm = self.per_example_loss(batch, {self.param_name: p - dz})
                cols.append((lp - lm) / (2 * self.eps))
        return torch.stack(cols, dim=1)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``[N, d]`` features (fp32, or fp64 for an fp64 parameter)."""
        z = self.directions_for_step(self.step)  # [m, d]
        c = self.coefficients(batch, z)  # [N, m]
        self.step += 1
        self._count(c.shape[0])
        self.last_coefficients = c.detach()
        dt = torch.float64 if c.dtype == torch.float64 else torch.float32
        return (c.to(dt) @ z.to(device=c.device, dtype=dt)) / self.directions

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "seed": self.seed,
            "step": self.step,
            "eps": self.eps,
            "directions": self.directions,
            "resample": self.resample,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.seed, self.step = int(state["seed"]), int(state["step"])
        self.eps, self.directions = float(state["eps"]), int(state["directions"])
        self.resample = str(state["resample"])


class ExactGradProbe(_Probe):
    """Exact per-example gradients ``g_i = vec(d l_i / d theta_p)``.

    Args:
        model: the network.
        param_name: probed parameter.
        impl: ``"vmap"`` (``torch.func.vmap(grad)``, the fast path) or ``"loop"`` (one autograd
            call per example, the reference; works for any model).
        loss_fn: per-example loss.
    """

    def __init__(
        self,
        model: nn.Module,
        param_name: str,
        *,
        impl: str = "vmap",
        loss_fn: LossFn = per_example_lm_loss,
    ) -> None:
        super().__init__(model, param_name, loss_fn)
        if impl not in ("vmap", "loop"):
            raise ValueError(f"impl must be 'vmap' or 'loop', got {impl!r}")
        self.impl = impl

    def _one(self, p: Tensor, single: dict[str, Tensor]) -> Tensor:
        batch = {k: v.unsqueeze(0) for k, v in single.items()}
        return self.per_example_loss(batch, {self.param_name: p})[0]

    def per_example_grads(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``[N, d]`` gradients of each example's loss w.r.t. the probed parameter."""
        p = self.param.detach()
        keys = [k for k in batch if k != "source"]
        with _eval_mode(self.model), torch.enable_grad():
            if self.impl == "vmap":
                fn = vmap(grad(self._one), in_dims=(None, 0))
                g = fn(p, {k: batch[k] for k in keys})
            else:
                n = batch["labels"].shape[0]
                rows = []
                for i in range(n):
                    pi = p.clone().requires_grad_(True)
                    li = self._one(pi, {k: batch[k][i] for k in keys})
                    rows.append(torch.autograd.grad(li, pi)[0])
                g = torch.stack(rows)
        return g.reshape(g.shape[0], -1).detach()

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        g = self.per_example_grads(batch)
        self._count(g.shape[0])
        return g


class GradNormProbe(ExactGradProbe):
    """Baseline: ``g_i = [||d l_i / d theta_p||]`` (one feature)."""

    @property
    def dim(self) -> int:
        return 1

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        return super().features(batch).norm(dim=1, keepdim=True)


class LossProbe(_Probe):
    """Baseline: ``g_i = [l_i]`` (one feature)."""

    @property
    def dim(self) -> int:
        return 1

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        with _eval_mode(self.model), torch.no_grad():
            loss = self.per_example_loss(batch)
        self._count(loss.shape[0])
        return loss.detach().unsqueeze(1)


class HiddenProbe(_Probe):
    """Baseline: last attended token's hidden state at the output of module ``module_name``.

    Args:
        model: the network.
        module_name: name in ``model.named_modules()`` (e.g. the final block); its output (or
            output[0]) must be ``[N, T, D]``.
        dim: ``D`` (the feature width).
    """

    def __init__(
        self,
        model: nn.Module,
        module_name: str,
        *,
        dim: int,
        loss_fn: LossFn = per_example_lm_loss,
    ) -> None:
        mods = dict(model.named_modules())
        if module_name not in mods:
            raise ValueError(f"model has no module {module_name!r}")
        self.model, self.module, self.loss_fn = model, mods[module_name], loss_fn
        self.param_name, self._dim = module_name, int(dim)
        self.calls = self.examples_seen = 0

    @property
    def dim(self) -> int:
        return self._dim

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        grabbed: list[Tensor] = []

        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            grabbed.append(out[0] if isinstance(out, tuple) else out)

        handle = self.module.register_forward_hook(hook)
        try:
            with _eval_mode(self.model), torch.no_grad():
                self.model(**model_inputs(batch))
        finally:
            handle.remove()
        h = grabbed[-1]  # [N, T, D]
        n, t = h.shape[:2]
        mask = batch.get("attention_mask")
        last = (
            mask.long().sum(dim=1) - 1
            if mask is not None
            else torch.full((n,), t - 1, device=h.device)
        )
        self._count(n)
        return h[torch.arange(n, device=h.device), last].float()
