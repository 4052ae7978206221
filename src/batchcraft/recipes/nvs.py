"""Recipe: train LaCT-NVS (or the attention baseline) on procedural scenes (``batchcraft nvs``).

Each step ``i`` draws, from a generator seeded by ``(seed, i)`` only, the number of input views
(from ``input_views``), ``B`` training scenes and, per scene, a random permutation of its views:
the first ``n_in`` are inputs, the next ``target_views`` targets. The loss is pixel MSE on the
targets. Since every step's draw is a pure function of the seed and the step, a resumed run
takes exactly the steps of an uninterrupted one; checkpoints are folders with
``model.safetensors``, ``config.json`` and ``train_state.safetensors``.

Example::

    data = render_dataset("train", num_scenes=256, num_views=10, size=32)
    model = build_nvs(nvs_tiny(), seed=0)
    hist = train_nvs(model, data, NVSTrainSettings(steps=300), out_dir="runs/nvs")
    evaluate_nvs(model, render_dataset("test", num_scenes=32, num_views=6), num_inputs=4)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from batchcraft.data.scenes import SceneViews
from batchcraft.models.nvs import NVSConfig, NVSModel
from batchcraft.models.nvs_eval import split_views
from batchcraft.recipes.dist import DistInfo, dist_info
from batchcraft.recipes.schedule import LRSchedule
from batchcraft.recipes.seeding import generator, isolated_rng, seeded, step_seed
from batchcraft.recipes.session import TrainSession, settings_dict
from batchcraft.utils.io import (
    CheckpointError,
    load_checkpoint,
    load_json,
    load_module_state,
    resolve_dir,
    save_checkpoint,
    write_json,
)
from batchcraft.utils.progress import progress_bar

__all__ = ["NVSTrainSettings", "build_nvs", "load_nvs", "train_nvs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class NVSTrainSettings:
    """NVS training settings (validated on construction)."""

    steps: int = 300
    batch_size: int = 8  # scenes per step
    lr: float = 1e-3  # AdamW peak (measured best for Muon LaCT); warm-up then cosine to 10 %
    warmup: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    input_views: tuple[int, ...] = (4,)  # n_in drawn per step from these
    target_views: int = 2
    seed: int = 0
    ckpt_every: int = 100

    FREE: ClassVar[tuple[str, ...]] = ("ckpt_every",)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "target_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.ckpt_every < 0:
            raise ValueError("warmup and ckpt_every must be >= 0")
        if not self.input_views or any(int(n) < 1 for n in self.input_views):
            raise ValueError(f"input_views must be counts >= 1, got {self.input_views}")
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        self.lr_schedule()

    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(peak=self.lr, total=self.steps, warmup=self.warmup, min_lr_ratio=0.1)


def build_nvs(config: NVSConfig, seed: int = 0) -> NVSModel:
    """A freshly initialised NVS model whose starting weights are decided by ``seed``."""
    with seeded(seed):
        return NVSModel(config)


def _files(model: NVSModel, opt: torch.optim.Optimizer, step: int, losses: list[float]):  # type: ignore[no-untyped-def]
    def fill(folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                  str(folder / "model.safetensors"))  # fmt: skip
        write_json(folder / "config.json", dataclasses.asdict(model.cfg))
        save_checkpoint(
            folder / "train_state.safetensors",
            {"step": step, "optimizer": opt.state_dict(), "losses": losses},
        )

    return fill


def load_nvs(path: str | Path) -> NVSModel:
    """The model of an ``nvs train`` checkpoint folder (eval mode).

    Raises:
        CheckpointError: not an NVS checkpoint folder, or damaged files.
    """
    from safetensors.torch import load_file

    p = Path(path)
    folder = p if (p / "config.json").is_file() else resolve_dir(p)
    if folder is None or not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{p} is not an NVS checkpoint folder (`nvs train` writes OUT/checkpoint)"
        )
    raw = load_json(folder / "config.json")
    try:
        cfg = NVSConfig(**raw)
    except TypeError as exc:
        raise CheckpointError(f"{folder / 'config.json'} is not an NVS config: {exc}") from None
    model = NVSModel(cfg)
    try:
        state = load_file(str(folder / "model.safetensors"))
    except Exception as exc:  # safetensors' own error types
        raise CheckpointError(f"{folder / 'model.safetensors'} cannot be read: {exc}") from None
    load_module_state(model, state, folder / "model.safetensors")
    return model.eval()


def train_nvs(
    model: NVSModel,
    data: SceneViews,
    s: NVSTrainSettings,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    allow_change: bool = False,
    data_meta: Mapping[str, Any] | None = None,
    progress: str | None = None,
    stop_after: int | None = None,
    dist: DistInfo | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` for ``s.steps`` steps.

    Returns:
        ``{"losses": [per-step loss], "steps": steps done, "seconds": wall time of this call}``.
    """
    views = data.images.shape[1]
    if max(s.input_views) + s.target_views > views:
        raise ValueError(
            f"max(input_views) + target_views ({max(s.input_views)} + {s.target_views}) "
            f"must be <= views per scene ({views})"
        )
    dist = dist or dist_info("cpu")
    session = TrainSession(
        "nvs", out_dir, dist=dist, resume=resume, allow_change=allow_change,
        settings={"train": settings_dict(s), "model": dataclasses.asdict(model.cfg),
                  "data": dict(data_meta or {})},
        free=NVSTrainSettings.FREE, budget_field=None,
    )  # fmt: skip
    folder, _ = session.begin()
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    losses: list[float] = []
    start = 0
    if folder is not None:
        load_module_state(model, load_nvs(folder).state_dict(), folder / "model.safetensors")
        st = load_checkpoint(folder / "train_state.safetensors")
        opt.load_state_dict(st["optimizer"])
        losses, start = list(st["losses"]), int(st["step"])
        log.info(f"resumed from {folder} at step {start}")
    schedule = s.lr_schedule()
    end = s.steps if stop_after is None else min(s.steps, stop_after)
    t0 = time.perf_counter()
    model.train()
    with isolated_rng(), progress_bar(s.steps if progress else None, progress or "") as bar:
        if progress and start:
            bar.advance(start)
        for step in range(start, end):
            step_seed(s.seed, step, dist.rank)
            g = generator(s.seed, "nvs-batch", step)
            for grp in opt.param_groups:
                grp["lr"] = schedule.lr_at(step)
            n_in = s.input_views[int(torch.randint(len(s.input_views), (1,), generator=g))]
            scenes = torch.randint(len(data), (s.batch_size,), generator=g)
            inp, tgt = split_views(data, scenes, n_in, s.target_views, g)
            pred = model(inp.images, inp.origins, inp.dirs, tgt.origins, tgt.dirs)
            loss = F.mse_loss(pred, tgt.images)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            opt.step()
            losses.append(loss.item())
            if progress:
                bar.advance(loss=losses[-1])
            if s.ckpt_every and (step + 1) % s.ckpt_every == 0 and step + 1 < end:
                session.save(step + 1, _files(model, opt, step + 1, losses))
    last = max(start, end)
    session.save(last, _files(model, opt, last, losses))
    model.eval()
    res = {"losses": losses, "steps": last, "seconds": time.perf_counter() - t0}
    session.write_json("history.json", {**res, "settings": session.settings})
    return res
