"""Recipe: train and evaluate the LaCT language model (``batchcraft lm``).

Exact resume: batch ``i`` is a pure function of ``(data seed, i)``, the lr of a step is a pure
function of the step (:mod:`batchcraft.recipes.schedule`), the global RNG is reseeded per step
(:func:`batchcraft.recipes.seeding.step_seed`), and a checkpoint folder holds the model
(``model.safetensors`` + ``config.json``, also what ``lm eval/generate/export`` read) and the
optimizer state and history (``train_state.safetensors``). A run resumed at step ``s`` therefore
takes bit-identical steps to an uninterrupted one.

Example::

    model = build_lm(lact_tiny(), seed=0)
    batches = ByteBatches(load_corpus(max_bytes=2**20), batch_size=8, context=256, seed=0)
    res = train_lm(model, batches, LMTrainSettings(steps=100), out_dir="runs/lm")
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from batchcraft.data.synthetic import RecallTask
from batchcraft.data.tokenizers import Tokenizer
from batchcraft.models.lact_config import LaCTConfig
from batchcraft.models.lact_lm import IGNORE_INDEX, LaCTForCausalLM, load_lact_lm
from batchcraft.recipes.checkpoint import (
    STATE_DIR,
    load_model_state,
    load_train_state,
    save_train_state,
)
from batchcraft.recipes.dist import DistInfo, all_reduce_sum, dist_info
from batchcraft.recipes.schedule import SCHEDULES, LRSchedule, first_divergence
from batchcraft.recipes.seeding import isolated_rng, seeded, step_seed
from batchcraft.recipes.session import FORMAT_VERSION, TrainSession, settings_dict
from batchcraft.utils.io import (
    CheckpointError,
    commit_dir,
    load_checkpoint,
    load_json,
    prepare_dir,
    resolve_dir,
    save_checkpoint,
    write_dir_atomic,
    write_json,
)
from batchcraft.utils.progress import progress_bar

__all__ = [
    "TASKS",
    "LMBatch",
    "LMTrainSettings",
    "RecallSource",
    "build_lm",
    "build_optimizer",
    "evaluate",
    "export_lm",
    "fast_weight_diagnostics",
    "format_diagnostics",
    "load_lm",
    "load_lm_checkpoint",
    "load_run_tokenizer",
    "parallelize",
    "save_lm_checkpoint",
    "to_lm_batch",
    "train_lm",
    "with_ttt_updates",
]

log = logging.getLogger(__name__)

PARALLEL = ("ddp", "fsdp")
TASKS = ("text", "recall")  # next-token LM on text | multi-query associative recall
TOKENIZER_DIR = "tokenizer"  # inside checkpoint and export folders


@dataclass(frozen=True, kw_only=True)
class LMTrainSettings:
    """What ``batchcraft lm train`` runs (validated on construction)."""

    steps: int = 200
    batch_size: int = 8
    context: int = 256  # T: tokens per training window
    lr: float = 1e-3  # peak lr (paper: AdamW 1e-3, cosine)
    warmup: int = 20  # linear warm-up steps
    min_lr_ratio: float = 0.1  # final lr as a fraction of lr
    schedule: str = "cosine"  # cosine | wsd | constant (see recipes.schedule)
    optimizer: str = "adamw"  # adamw, or any name of batchcraft.optim.create_optimizer
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 4
    ckpt_every: int = 0  # 0: only at the end (when out_dir is set)
    parallel: str = "ddp"  # with torchrun: ddp (replicated) or fsdp (FSDP2, sharded)
    activation_checkpointing: bool = False  # recompute each block in the backward pass
    task: str = "text"  # text (every next token scored) | recall (only the answers scored)

    # may change on resume: they change neither the batches nor the maths
    FREE: ClassVar[tuple[str, ...]] = (
        "eval_every", "eval_batches", "ckpt_every", "parallel", "activation_checkpointing",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context < 2:
            raise ValueError(f"context must be >= 2, got {self.context}")
        for name in ("warmup", "eval_every", "ckpt_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}, got {self.parallel!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        from batchcraft.optim.factory import list_optimizers

        if self.optimizer.lower() not in list_optimizers():
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose one of {list_optimizers()}"
            )
        self.lr_schedule()  # validates lr and min_lr_ratio

    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(
            peak=self.lr, total=self.steps, warmup=self.warmup, kind=self.schedule,
            min_lr_ratio=self.min_lr_ratio,
        )  # fmt: skip


@dataclass
class LMBatch:
    """One training batch.

    Attributes:
        inputs: ``[B, T]`` token ids.
        targets: ``[B, T]`` next-token targets (``targets[:, t]`` follows ``inputs[:, t]``);
            ``-100`` is not scored.
        cu_seqlens: ``[N + 1]`` packed-document boundaries for ``B = 1``, or ``None``.
    """

    inputs: Tensor
    targets: Tensor
    cu_seqlens: Tensor | None = None

    def to(self, device: torch.device) -> LMBatch:
        cu = None if self.cu_seqlens is None else self.cu_seqlens.to(device)
        return LMBatch(self.inputs.to(device), self.targets.to(device), cu)


def to_lm_batch(x: LMBatch | Tensor | tuple[Tensor, Tensor | None]) -> LMBatch:
    """Accept what batch sources yield: an :class:`LMBatch`, a ``[B, T + 1]`` token window
    (inputs ``x[:, :-1]``, targets ``x[:, 1:]``), or ``(windows, cu_seqlens)`` of packed
    documents, which becomes one ``B = 1`` row with document boundaries (the fast-weight state
    and attention reset at every document; see :func:`batchcraft.data.shards.pack_batch`)."""
    if isinstance(x, LMBatch):
        return x
    cu = None
    if isinstance(x, tuple):
        x, cu = x
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] < 2:
        raise TypeError("a batch must be an LMBatch or a [B, T + 1] tensor of token ids")
    if cu is None:
        return LMBatch(x[:, :-1], x[:, 1:])
    from batchcraft.data.shards import pack_batch

    inputs, targets, cu = pack_batch(x, cu)
    return LMBatch(inputs, targets, cu)


class RecallSource:
    """A :class:`batchcraft.data.RecallTask` as a batch source of :func:`train_lm` and
    :func:`evaluate`: batch ``i`` depends only on ``(seed, i)``; only the answers are scored.

    Example::

        task = RecallTask.for_window(window=16, num_layers=2, num_pairs=4)
        train, val = RecallSource(task, 32, seed=0), RecallSource(task, 32, seed=10**6)
    """

    def __init__(self, task: RecallTask, batch_size: int, seed: int = 0) -> None:
        self.task = task
        self.data = task.batches(batch_size, seed=seed)
        self.batch_size = batch_size
        self.context = task.length - 1  # T: inputs drop the last token (it is only a target)

    def get(self, step: int) -> LMBatch:
        ids, labels = self.data.get(step)  # [B, T + 1] each; labels aligned with ids
        return LMBatch(ids[:, :-1], labels[:, 1:])  # targets[:, t] follows inputs[:, t]

    def sequential(self, max_batches: int | None = None) -> Iterator[LMBatch]:
        """Batches ``0 .. max_batches - 1`` (default 1)."""
        for i in range(1 if max_batches is None else max_batches):
            yield self.get(i)


class BatchSource(Protocol):
    """What :func:`train_lm` draws from: ``get(i)`` is batch ``i`` (a pure function of ``i``)."""

    batch_size: int
    context: int

    def get(self, step: int) -> Any:
        """Batch ``step``: the global batch, or this rank's rows when the source has a
        ``world_size`` attribute > 1 (it splits the global batch itself)."""
        ...

    def sequential(self, max_batches: int | None = None) -> Iterable[Any]: ...


def build_lm(
    config: LaCTConfig, seed: int = 0, device: str | torch.device = "cpu"
) -> LaCTForCausalLM:
    """A freshly initialised LM whose starting weights are decided by ``seed`` alone."""
    with seeded(seed):
        model = LaCTForCausalLM(config)
    return model.to(device)


def build_optimizer(model: torch.nn.Module, s: LMTrainSettings) -> torch.optim.Optimizer:
    """AdamW with betas (0.9, 0.95) (decay on matrices only), or a named optimizer."""
    if s.optimizer.lower() == "adamw":
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": s.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95))
    from batchcraft.optim.factory import create_optimizer

    return create_optimizer(model, s.optimizer, lr=s.lr, weight_decay=s.weight_decay)


def _loss(model: torch.nn.Module, b: LMBatch) -> Tensor:
    logits = model(b.inputs, cu_seqlens=b.cu_seqlens).logits  # [B, T, V]
    return F.cross_entropy(logits.float().transpose(1, 2), b.targets, ignore_index=IGNORE_INDEX)


def train_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, batch: LMBatch, lr: float, clip: float
) -> float:
    """One optimizer step; returns the loss. ``model`` may be a DDP wrapper of the LM."""
    for g in opt.param_groups:
        g["lr"] = lr
    loss = _loss(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(
    model: LaCTForCausalLM,
    batches: Iterable[Any],
    *,
    bytes_per_token: float = 1.0,
    diagnostics: bool = False,
) -> dict[str, Any]:
    """Validation loss, bits per byte, accuracy and the per-position loss curve.

    Args:
        model: the LM.
        batches: what a batch source yields (see :func:`to_lm_batch`).
        bytes_per_token: text bytes per token of the tokenizer (1 for bytes), so bits per byte
            compare across tokenizers.
        diagnostics: also measure how the fast weights move over the first batch
            (:func:`fast_weight_diagnostics`, at most 8 rows).

    Returns:
        ``{"loss": nats/token, "bits_per_token", "bpb": bits/byte, "tokens": n,
        "accuracy": share of scored targets that are the argmax prediction (the answer accuracy
        of the recall task), "per_position": [T] mean loss at each position}``, and with
        ``diagnostics`` ``"ttt"``: one dict per LaCT layer (``[]`` for models without one).
    """
    was = model.training
    model.eval()
    total, count, hits = 0.0, 0, 0
    ttt: list[dict[str, float]] | None = None
    pos_sum: Tensor | None = None
    pos_n: Tensor | None = None
    device = next(model.parameters()).device
    for raw in batches:
        b = to_lm_batch(raw).to(device)
        logits = model(b.inputs, cu_seqlens=b.cu_seqlens).logits.float()  # [B, T, V]
        nll = F.cross_entropy(
            logits.transpose(1, 2), b.targets, reduction="none", ignore_index=IGNORE_INDEX
        )  # [B, T]; 0 where ignored
        scored = (b.targets != IGNORE_INDEX).to(nll.dtype)  # [B, T]
        total += float(nll.sum())
        count += int(scored.sum())
        hits += int((logits.argmax(-1) == b.targets).sum())  # ignored targets (-100) never hit
        if diagnostics and ttt is None:
            ttt = fast_weight_diagnostics(model, b.inputs[:8])
        pos_sum = nll.sum(0) if pos_sum is None else pos_sum + nll.sum(0)
        pos_n = scored.sum(0) if pos_n is None else pos_n + scored.sum(0)
    model.train(was)
    if count == 0 or pos_sum is None or pos_n is None:
        raise ValueError("evaluate got no scored tokens (no batches, or every target ignored)")
    loss = total / count
    per_pos = (pos_sum / pos_n.clamp_min(1)).masked_fill(pos_n == 0, float("nan"))
    out: dict[str, Any] = {
        "loss": loss,
        "bits_per_token": loss / math.log(2),
        "bpb": loss / math.log(2) / bytes_per_token,
        "tokens": count,
        "accuracy": hits / count,
        "per_position": per_pos.tolist(),
    }
    if ttt is not None:
        out["ttt"] = ttt
    return out


DIAGNOSTICS = ("drift", "update_norm", "output_change")  # what the history and the CLI keep


def fast_weight_diagnostics(model: LaCTForCausalLM, input_ids: Tensor) -> list[dict[str, float]]:
    """How far each LaCT layer's fast weights move over ``input_ids [B, T]``.

    One entry per layer with a LaCT TTT branch (``[]`` for attention-only and TTT-Linear
    models): ``layer``; ``drift``, ``||W_n - W_0|| / ||W_0||`` after the ``n = T // C`` updates;
    ``update_norm``, the mean relative size of one applied update ``||W_j+1 - W_j|| / ||W_j||``;
    ``output_change``, ``||o_on - o_off|| / ||o_off||`` of the branch output, updates on vs off
    (see :meth:`batchcraft.models.LaCTForCausalLM.ttt_diagnostics` for the rest). Packed
    documents (``cu_seqlens``) are not split: the rows are read as whole sequences.
    """
    per_layer = model.ttt_diagnostics(input_ids)
    return [{"layer": float(i), **d} for i, d in sorted(per_layer.items())]


def format_diagnostics(ttt: list[dict[str, float]]) -> str:
    """One line for logs: ``layer 0 drift 12.3% update 1.5%, layer 1 ...`` (``""`` if none)."""
    return ", ".join(
        f"layer {int(d['layer'])} drift {d['drift']:.2%} update {d['update_norm']:.2%}" for d in ttt
    )


def with_ttt_updates(model: LaCTForCausalLM, enabled: bool) -> LaCTForCausalLM:
    """``model`` with its fast-weight updates switched on or off, the same parameters.

    Off (``ttt_updates=False``), every LaCT layer's TTT branch is the static SwiGLU ``f_W0``:
    the ablation of test-time training itself. Returns ``model`` when nothing changes, else a
    new model (same device, dtype and train/eval mode) sharing no storage with it.
    """
    if model.config.ttt_updates == enabled:
        return model
    p = next(model.parameters())
    with isolated_rng():  # the throw-away initialisation draws nothing from the caller's RNG
        new = LaCTForCausalLM(dataclasses.replace(model.config, ttt_updates=enabled))
    new.load_state_dict(model.state_dict())
    return new.to(device=p.device, dtype=p.dtype).train(model.training)


# --------------------------------------------------------------------------- checkpoints
def _save_checkpoint(
    dest: Path,
    model: LaCTForCausalLM,
    opt: torch.optim.Optimizer | None,
    *,
    step: int,
    history: list[dict[str, Any]],
    dist: DistInfo,
    meta: Mapping[str, Any],
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Every rank calls this: shards via DCP, then rank 0 seals and swaps the folder."""
    import torch.distributed as tdist

    def barrier() -> None:
        if dist.distributed:
            tdist.barrier()

    tmp = dest.with_name(f".{dest.name}.tmp")
    if dist.is_main:
        tmp = prepare_dir(dest)
    barrier()
    skeleton = save_train_state(tmp, model, opt, distributed=dist.distributed)
    barrier()
    if dist.is_main:
        write_json(tmp / "config.json", model.config.to_dict())
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_DIR)
        save_checkpoint(
            tmp / "train_state.safetensors",
            {"step": step, "optimizer": skeleton, "history": history,
             "world_size": dist.world_size},
        )  # fmt: skip
        commit_dir(dest, tmp, meta={**meta, "step": step})
    barrier()
    return dest


def save_lm_checkpoint(
    path: str | Path,
    model: LaCTForCausalLM,
    opt: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    history: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint folder from one process (``lm train`` writes the same layout)."""
    meta = {"format": FORMAT_VERSION, "recipe": "lm", "settings": {}}
    return _save_checkpoint(
        Path(path), model, opt, step=step, history=history or [], dist=DistInfo(), meta=meta
    )


def export_lm(checkpoint: str | Path, out: str | Path) -> Path:
    """One ``model.safetensors`` + ``config.json`` from a (possibly sharded) checkpoint."""
    from safetensors.torch import save_file

    model = load_lm(checkpoint)
    dest = Path(out)

    def fill(folder: Path) -> None:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        write_json(folder / "config.json", model.config.to_dict())
        tokenizer.save(folder / TOKENIZER_DIR)

    tokenizer = load_run_tokenizer(checkpoint)
    return write_dir_atomic(dest, fill, meta={"format": FORMAT_VERSION, "recipe": "lm-export"})


def _checkpoint_folder(p: Path) -> Path:
    if (p / "manifest.json").is_file() or p.with_name(f".{p.name}.old").is_dir():
        folder = resolve_dir(p)  # checks the manifest's file sizes, falls back to .old
        if folder is not None:
            return folder
    if (p / "config.json").is_file() and (
        (p / "model.safetensors").is_file() or (p / STATE_DIR).is_dir()
    ):
        return p
    folder = resolve_dir(p)
    if folder is None or not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{p} is not a LaCT checkpoint folder (expected config.json with model.safetensors "
            f"or {STATE_DIR}/; `lm train` writes OUT/checkpoint)"
        )
    return folder


def load_lm(path: str | Path, map_location: str | torch.device = "cpu") -> LaCTForCausalLM:
    """The model of a checkpoint folder (trained: sharded ``state/``; exported:
    ``model.safetensors``), in eval mode, on ``map_location``.

    Raises:
        CheckpointError: not a LaCT checkpoint folder, or damaged files.
    """
    folder = _checkpoint_folder(Path(path))
    if (folder / "model.safetensors").is_file():
        return load_lact_lm(folder, map_location)
    try:
        cfg = LaCTConfig.from_dict(load_json(folder / "config.json"))
    except TypeError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from None
    model = LaCTForCausalLM(cfg)
    load_model_state(folder, model)
    return model.to(map_location).eval()


def load_run_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer a checkpoint (or exported folder) was trained with: its ``tokenizer/``
    folder, else bytes."""
    from batchcraft.data.tokenizers import BytesTokenizer, load_tokenizer

    folder = _checkpoint_folder(Path(path))
    if (folder / TOKENIZER_DIR).is_dir():
        return load_tokenizer(folder / TOKENIZER_DIR)
    return BytesTokenizer()


def load_lm_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[LaCTForCausalLM, dict[str, Any]]:
    """Model (weights loaded) and the train state record (``step``, ``history``, ...)."""
    p = Path(path)
    model = load_lm(p, map_location)
    folder = _checkpoint_folder(p)
    state_file = folder / "train_state.safetensors"
    if not state_file.is_file():
        if (folder / "train_state.pt").is_file():
            raise CheckpointError(
                f"{folder} holds a pickled train_state.pt from an older batchcraft; pickles are "
                "never loaded. Its model still works with `lm eval`/`lm generate`"
            )
        raise CheckpointError(f"{folder} has no train_state.safetensors")
    return model.train(), load_checkpoint(state_file, map_location=map_location)


def parallelize(model: LaCTForCausalLM, s: LMTrainSettings, dist: DistInfo) -> torch.nn.Module:
    """Wrap for the job: DDP (replicated) or FSDP2 per block (sharded), with optional per-block
    activation checkpointing; returns the module to call (FSDP2 changes ``model`` in place).

    FSDP2 on CUDA computes in bf16 with fp32 master weights and fp32 gradient reduction; on the
    CPU everything stays fp32.
    """
    if s.activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in model.blocks:
            checkpoint(block)
    if s.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not dist.distributed:
            import torch.distributed as tdist

            if not tdist.is_initialized():
                return model  # a world of one without a process group: nothing to shard
        mp = MixedPrecisionPolicy()
        if dist.device.type == "cuda":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    if dist.distributed:  # DDP broadcasts rank 0's weights (identical anyway: seeded init)
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    return model


def _extension_check(s: LMTrainSettings) -> Callable[[Mapping[str, Any], int], str | None]:
    def check(saved: Mapping[str, Any], done: int) -> str | None:
        train = dict(saved.get("train", {}))
        try:
            old = dataclasses.replace(s, steps=int(train["steps"])).lr_schedule()
        except (KeyError, TypeError, ValueError):
            return "the checkpoint does not record its schedule"
        step = first_divergence(old, s.lr_schedule(), done)
        if step is None:
            return None
        return (
            f"the {s.schedule} lr schedule spans the whole run, so its lr at step {step + 1} "
            "differs; use --schedule wsd or constant to extend runs exactly"
        )

    return check


def train_lm(
    model: LaCTForCausalLM,
    train: BatchSource,
    s: LMTrainSettings,
    *,
    val: BatchSource | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    allow_change: bool = False,
    data_meta: Mapping[str, Any] | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    on_eval: Callable[[int, dict[str, Any]], None] | None = None,
    progress: str | None = None,
    stop_after: int | None = None,
    dist: DistInfo | None = None,
    tokenizer: Tokenizer | None = None,
    bytes_per_token: float = 1.0,
) -> dict[str, Any]:
    """Train ``model`` for ``s.steps`` steps on ``train`` batches.

    Args:
        model: the LM (its weights are replaced by the checkpoint's when resuming).
        train: batch source; batch ``i`` must depend only on its seed and ``i``.
        s: settings.
        val: validation source (sequential windows) for periodic and final evaluation.
        out_dir: run folder (``checkpoint/`` and ``history.json``); ``None``: no files.
        resume: continue from ``out_dir/checkpoint`` when it exists (guarded: changed settings
            are refused unless ``allow_change``).
        allow_change: resume even when settings differ from the checkpoint's.
        data_meta: description of the data (part of the guarded settings).
        on_step: ``fn(step, loss, tokens_per_s)`` after each step.
        on_eval: ``fn(step, result)`` after each evaluation (periodic and final) with the
            :func:`evaluate` result, including the fast-weight diagnostics (``"ttt"``).
        progress: show a progress display with this description.
        stop_after: stop (and checkpoint) after this global step, as if interrupted.
        dist: this rank (default: from the initialised process group, if any).
        tokenizer: saved into the checkpoint (``tokenizer/``) for ``lm generate``/``export``;
            ``None``: bytes.
        bytes_per_token: text bytes per token of the validation data (bits per byte).

    Returns:
        ``{"history": [...], "final_eval": {...} | None, "step": last step}``. A history entry
        of an evaluation step holds ``val`` (and ``val_accuracy``) and ``ttt``: per LaCT layer,
        its fast-weight ``drift``, ``update_norm`` and ``output_change`` over the first
        validation batch (:func:`fast_weight_diagnostics`; not measured under FSDP).
    """
    dist = dist or dist_info(next(model.parameters()).device)
    session = TrainSession(
        "lm", out_dir, dist=dist, resume=resume, allow_change=allow_change,
        settings={"train": settings_dict(s), "model": model.config.to_dict(),
                  "data": dict(data_meta or {})},
        free=LMTrainSettings.FREE, budget_field="train.steps",
        extension_check=_extension_check(s),
    )  # fmt: skip
    folder, _ = session.begin()
    if s.batch_size % dist.world_size:
        raise ValueError(
            f"batch_size ({s.batch_size}) is the global batch and must be divisible by the "
            f"number of ranks ({dist.world_size})"
        )
    runner = parallelize(model, s, dist)
    opt = build_optimizer(model, s)
    start, history = 0, []
    if folder is not None:
        record = load_checkpoint(folder / "train_state.safetensors")
        load_train_state(folder, model, opt, record.get("optimizer"))
        start, history = int(record["step"]), list(record["history"])
        if dist.is_main:
            log.info(f"resumed from {folder} at step {start}")
    model.train()
    # diagnostics read the layers' weights directly: not possible on FSDP-sharded parameters
    diag = type(next(model.parameters())).__name__ != "DTensor"

    def run_eval(step: int, **kw: Any) -> dict[str, Any]:
        assert val is not None
        ev = evaluate(model, val.sequential(s.eval_batches), diagnostics=diag, **kw)
        if on_eval is not None:
            on_eval(step, ev)
        return ev

    def record_eval(rec: dict[str, Any], ev: dict[str, Any]) -> None:
        rec["val"], rec["val_accuracy"] = ev["loss"], ev["accuracy"]
        rec["ttt"] = [{k: d[k] for k in ("layer", *DIAGNOSTICS)} for d in ev.get("ttt", [])]

    schedule = s.lr_schedule()
    end = s.steps if stop_after is None else min(s.steps, stop_after)
    evaluate_every = s.eval_every if val is not None else 0
    rows = s.batch_size // dist.world_size  # this rank's rows of every global batch
    source_world = int(getattr(train, "world_size", 1))
    rank_local = source_world > 1
    if rank_local and (source_world != dist.world_size or train.batch_size != rows):
        raise ValueError(
            f"the batch source splits over {source_world} ranks x {train.batch_size} rows, "
            f"but the job has {dist.world_size} ranks x {rows} rows"
        )

    def save(step: int) -> None:
        if session.ckpt_dir is not None:
            meta = session.manifest_meta()
            _save_checkpoint(session.ckpt_dir, model, opt, step=step, history=history,
                             dist=dist, meta=meta, tokenizer=tokenizer)  # fmt: skip

    with isolated_rng(), progress_bar(s.steps if progress else None, progress or "") as bar:
        if progress and start:
            bar.advance(start)
        for step in range(start, end):
            t0 = time.perf_counter()
            step_seed(s.seed, step, dist.rank)
            raw = train.get(step)
            if dist.distributed and not rank_local:  # this rank's rows of the global batch
                if isinstance(raw, tuple) or (
                    isinstance(raw, LMBatch) and raw.cu_seqlens is not None
                ):
                    raise ValueError("a packed source must split batches over ranks itself")
                full = to_lm_batch(raw)
                sl = slice(dist.rank * rows, (dist.rank + 1) * rows)
                batch = LMBatch(full.inputs[sl], full.targets[sl])
            else:
                batch = to_lm_batch(raw)
            batch = batch.to(dist.device)
            loss = train_step(runner, opt, batch, schedule.lr_at(step), s.grad_clip)
            if dist.distributed:
                loss = all_reduce_sum([loss], dist.device)[0] / dist.world_size
            dt = time.perf_counter() - t0
            tps = dist.world_size * int((batch.targets != IGNORE_INDEX).sum()) / max(dt, 1e-9)
            rec: dict[str, Any] = {"step": step + 1, "loss": loss, "tokens_per_s": tps}
            # the last step's figures come from the final evaluation below (run once, not twice)
            if evaluate_every and (step + 1) % evaluate_every == 0 and step + 1 < s.steps:
                record_eval(rec, run_eval(step + 1))
            history.append(rec)
            if progress:
                bar.advance(1, loss=loss, tok_s=round(tps))
            if on_step is not None:
                on_step(step + 1, loss, tps)
            if s.ckpt_every and (step + 1) % s.ckpt_every == 0 and step + 1 < end:
                save(step + 1)
    last = max(end, start)
    final = None
    if val is not None and last == s.steps:  # before the save, so the checkpoint's history has it
        final = run_eval(last, bytes_per_token=bytes_per_token)
        if history and history[-1]["step"] == last:
            record_eval(history[-1], final)
    save(last)
    res = {"history": history, "final_eval": final, "step": last}
    session.write_json("history.json", {**res, "settings": session.settings})
    return res
