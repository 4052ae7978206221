"""Optimizer registry and a timm-style string factory.

    opt = create_optimizer(model, "adan", lr=1.5e-2, weight_decay=0.02, max_grad_norm=5.0)

Parameters with ``p.ndim < 2`` (biases, norm gains) go to a zero-decay group, as timm users
expect; parameters with ``requires_grad=False`` are skipped.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from batchcraft.optim.adan import Adan

__all__ = ["OptimInfo", "create_optimizer", "list_optimizers", "param_groups", "register_optimizer"]


@dataclass(frozen=True)
class OptimInfo:
    """A registered optimizer.

    Attributes:
        name: the factory name (``"adan"``).
        cls: the optimizer class (or any callable ``cls(params, **kwargs)``).
        num_betas: how many betas ``betas`` takes (0 when the optimizer has none).
        defaults: keyword defaults applied before the caller's (e.g. ``no_prox=True``).
        description: one line for listings.
    """

    name: str
    cls: Callable[..., torch.optim.Optimizer]
    num_betas: int = 2
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, OptimInfo] = {}


def register_optimizer(info: OptimInfo) -> OptimInfo:
    """Add ``info`` under ``info.name`` (lower-case); re-registering a name replaces it."""
    _REGISTRY[info.name.lower()] = info
    return info


def list_optimizers(filter: str | None = None) -> list[str]:
    """Sorted registered names, optionally matching a shell-style ``filter`` (``"adan*"``)."""
    names = sorted(_REGISTRY)
    return [n for n in names if filter is None or fnmatch.fnmatch(n, filter)]


def param_groups(
    model_or_params: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]],
    weight_decay: float,
    *,
    no_decay_1d: bool = True,
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decay group and a zero-decay group (``ndim < 2``).

    Explicit groups (an iterable of dicts) are returned unchanged, with ``weight_decay`` filled
    in where a group does not set it.
    """
    if isinstance(model_or_params, nn.Module):
        params: list[Any] = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = list(model_or_params)
    if params and isinstance(params[0], dict):
        return [{"weight_decay": weight_decay, **g} for g in params]
    if not no_decay_1d or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def create_optimizer(
    model_or_params: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]],
    name: str = "adan",
    lr: float | None = None,
    weight_decay: float = 0.0,
    *,
    no_decay_1d: bool = True,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build a registered optimizer by name with the usual no-decay grouping.

    Args:
        model_or_params: a module, an iterable of parameters, or parameter-group dicts.
        name: a name from :func:`list_optimizers` (case-insensitive).
        lr: learning rate; ``None`` keeps the optimizer's own default.
        weight_decay: decay for parameters with ``ndim >= 2``; 1-D ones get 0 when
            ``no_decay_1d``.
        **kwargs: forwarded to the optimizer (``betas``, ``max_grad_norm``, ``foreach``...).
    """
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list_optimizers()}")
    info = _REGISTRY[key]
    betas = kwargs.get("betas")
    if betas is not None and len(betas) != info.num_betas:
        raise ValueError(f"{name} takes {info.num_betas} betas, got {len(betas)}: {betas}")
    groups = param_groups(model_or_params, weight_decay, no_decay_1d=no_decay_1d)
    opts = {**info.defaults, **kwargs}
    if lr is not None:
        opts["lr"] = lr
    return info.cls(groups, **opts)


register_optimizer(OptimInfo("adan", Adan, 3, {"no_prox": False}, "Adan, proximal weight decay"))
register_optimizer(OptimInfo("adanw", Adan, 3, {"no_prox": True}, "Adan, decoupled weight decay"))
register_optimizer(OptimInfo("adamw", torch.optim.AdamW, 2, {}, "torch.optim.AdamW"))
register_optimizer(OptimInfo("adam", torch.optim.Adam, 2, {}, "torch.optim.Adam"))
register_optimizer(
    OptimInfo("sgd", torch.optim.SGD, 0, {"momentum": 0.9}, "torch.optim.SGD, momentum 0.9")
)
