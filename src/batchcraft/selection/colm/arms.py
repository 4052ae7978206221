"""The CoLM study's arms (baselines and ablations) as one factory, plus per-source evaluation.

Shared by the ``colm`` experiment and benchmark so both run exactly the same recipes::

    ARMS = random-b | random-2b | random-4b | upsample-small | structure-random | colm |
           colm-multi | colm-exact | colm-no-keep | colm-no-adam | loss-select | gradnorm-select

Each arm is a pool size and an optional :class:`CoLMSelector` (plus static source weights for
``upsample-small``); training is :class:`batchcraft.recipes.colm.ColmTrainer` in every case
(:func:`batchcraft.recipes.colm.train_arm`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from batchcraft.selection.colm.composition import small_sources_from_counts
from batchcraft.selection.colm.loss import per_example_lm_loss
from batchcraft.selection.colm.probes import (
    ExactGradProbe,
    GradNormProbe,
    LossProbe,
    ZOProbe,
    model_inputs,
)
from batchcraft.selection.colm.select import CoLMSelector

__all__ = ["ARMS", "ArmSetup", "evaluate_sources", "make_arm"]

ARMS = (
    "random-b",
    "random-2b",
    "random-4b",
    "upsample-small",
    "structure-random",
    "colm",
    "colm-multi",
    "colm-exact",
    "colm-no-keep",
    "colm-no-adam",
    "loss-select",
    "gradnorm-select",
)


@dataclass
class ArmSetup:
    """How one arm trains: draw ``pool`` examples, optionally select ``b`` of them."""

    name: str
    pool: int
    selector: CoLMSelector | None
    source_weights: dict[int, float]


def make_arm(
    name: str,
    model: nn.Module,
    param_name: str,
    *,
    b: int,
    big: int,
    counts: Tensor,
    h: int | None = 256,
    directions: int = 16,
    seed: int = 0,
    split_at: str | None = None,
    tail: tuple[str, ...] = (),
) -> ArmSetup:
    """Build arm ``name`` for coreset size ``b`` and pool ``big`` (``B``).

    Args:
        name: one of :data:`ARMS`.
        model: the network being trained.
        param_name: the probed matrix.
        b: coreset / small batch size.
        big: pool size ``B`` of the selection arms.
        counts: ``[Q]`` dataset size per source (small-source rule).
        h: top-h sparsification of the gradient-feature arms.
        directions: ``m`` of ``colm-multi``.
        seed: seeds the probe directions and random rankings.
        split_at, tail: prefix/suffix fast path of the zeroth-order probes (see ZOProbe).
    """
    gen = torch.Generator().manual_seed(10_007 + seed)
    small = small_sources_from_counts(counts)

    def colm(probe: object, **kw: object) -> CoLMSelector:
        opts: dict[str, object] = {"source_counts": counts, "h": h, "generator": gen, **kw}
        return CoLMSelector(probe, b, **opts)  # type: ignore[arg-type]

    zo = (
        ZOProbe(model, param_name, seed=seed, split_at=split_at, tail=tail)
        if name.startswith("colm")
        else None
    )
    if name == "random-b":
        return ArmSetup(name, b, None, {})
    if name == "random-2b":
        return ArmSetup(name, 2 * b, None, {})
    if name == "random-4b":
        return ArmSetup(name, 4 * b, None, {})
    if name == "upsample-small":
        return ArmSetup(name, b, None, {q: big / b for q in small})
    if name == "structure-random":
        return ArmSetup(name, big, colm(LossProbe(model, param_name), ranking="random"), {})
    if name == "colm":
        return ArmSetup(name, big, colm(zo), {})
    if name == "colm-multi":
        multi = ZOProbe(
            model,
            param_name,
            seed=seed,
            directions=directions,
            resample="step",
            split_at=split_at,
            tail=tail,
        )
        return ArmSetup(name, big, colm(multi), {})
    if name == "colm-exact":
        return ArmSetup(name, big, colm(ExactGradProbe(model, param_name)), {})
    if name == "colm-no-keep":
        return ArmSetup(name, big, colm(zo, keep_small=False), {})
    if name == "colm-no-adam":
        return ArmSetup(name, big, colm(zo, normalize=None), {})
    if name == "loss-select":
        return ArmSetup(name, big, colm(LossProbe(model, param_name), normalize=None, h=None), {})
    if name == "gradnorm-select":
        probe = GradNormProbe(model, param_name)
        return ArmSetup(name, big, colm(probe, normalize=None, h=None), {})
    raise ValueError(f"unknown arm {name!r}; choose one of {list(ARMS)}")


@torch.no_grad()
def evaluate_sources(
    model: nn.Module, evals: Mapping[int, Mapping[str, Tensor]], *, chunk: int = 256
) -> dict[int, tuple[float, float]]:
    """Per source: (mean answer loss [nats/token], exact-match accuracy).

    Exact match = every answer token is the argmax under teacher forcing, which equals greedy
    decoding of the answer (the prefix stays correct while the tokens are correct).
    """
    was = model.training
    model.eval()
    out: dict[int, tuple[float, float]] = {}
    for q, ev in evals.items():
        losses, hits = [], []
        n = ev["labels"].shape[0]
        for s in range(0, n, chunk):
            part = {k: v[s : s + chunk] for k, v in ev.items()}
            o = model(**model_inputs(part))
            logits = o.logits if hasattr(o, "logits") else o
            losses.append(per_example_lm_loss(logits, part["labels"]))
            tgt = part["labels"][:, 1:]
            ok = (logits[:, :-1].argmax(-1) == tgt) | (tgt == -100)
            hits.append(ok.all(dim=1).float())
        out[q] = (float(torch.cat(losses).mean()), float(torch.cat(hits).mean()))
    model.train(was)
    return out
