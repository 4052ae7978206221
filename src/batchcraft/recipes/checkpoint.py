"""Model + optimizer checkpoints that work on one process, under DDP and under FSDP2.

Tensors go through ``torch.distributed.checkpoint`` (DCP) with its safetensors storage: every
rank writes the shards it owns (``state/shard-*.safetensors``, sharding offsets in the files'
JSON metadata), and loading reshards to whatever layout the loading model has, so a checkpoint
saved by 2 ranks resumes on 1 or on 4, sharded or not. Everything else in the optimizer's state
(hyper-parameters, Python step counters) is JSON. DCP's default storage keeps its metadata in a
pickle; the safetensors storage does not, so loading a checkpoint never unpickles anything.

Keys: ``model.<parameter name>`` and ``optim.<parameter name>.<state name>`` (FQNs as
``torch.distributed.checkpoint.state_dict`` names them: the same for a plain, DDP or FSDP model).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from batchcraft.utils.io import CheckpointError, decode_tree, encode_tree

__all__ = ["STATE_DIR", "load_model_state", "load_train_state", "save_train_state"]

STATE_DIR = "state"  # sub-folder of a checkpoint folder holding the DCP shards
_MARK = "__dcp"


@contextlib.contextmanager
def _quiet_dcp() -> Iterator[None]:
    """DCP warns when used without a process group (a single process): that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*")
        yield


def _state_dicts(
    model: nn.Module, opt: torch.optim.Optimizer | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if opt is None:
        return get_model_state_dict(model), None
    msd, osd = get_state_dict(model, opt)
    return msd, osd


def _split(osd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state dict -> (tensors by DCP key, JSON-able skeleton with markers)."""
    flat: dict[str, Tensor] = {}
    state: dict[str, Any] = {}
    for fqn, entry in osd.get("state", {}).items():
        state[fqn] = {}
        for k, v in entry.items():
            if isinstance(v, Tensor):
                key = f"optim.{fqn}.{k}"
                flat[key] = v
                state[fqn][k] = {_MARK: key}
            else:
                state[fqn][k] = v
    skeleton = {"state": state, "param_groups": osd.get("param_groups", [])}
    return flat, encode_tree(skeleton, {})


def save_train_state(
    folder: Path, model: nn.Module, opt: torch.optim.Optimizer | None, *, distributed: bool
) -> dict[str, Any] | None:
    """Write ``folder/state/`` (every rank calls this); returns the optimizer skeleton (JSON).

    Args:
        folder: the (temporary) checkpoint folder, the same path on every rank.
        model: the model (plain, DDP-unwrapped, or FSDP2-sharded).
        opt: its optimizer, or ``None`` for weights only.
        distributed: every rank of the process group takes part.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    msd, osd = _state_dicts(model, opt)
    flat = {f"model.{k}": v for k, v in msd.items()}
    skeleton = None
    if osd is not None:
        opt_flat, skeleton = _split(osd)
        flat.update(opt_flat)
    writer = HuggingFaceStorageWriter(str(folder / STATE_DIR), save_distributed=distributed)
    with _quiet_dcp():
        dcp.save(flat, storage_writer=writer)
    return skeleton


def _load(folder: Path, flat: dict[str, Tensor]) -> None:
    import torch.distributed.checkpoint as dcp
    from safetensors import safe_open
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.api import CheckpointException

    state = folder / STATE_DIR
    shards = sorted(state.glob("*.safetensors")) if state.is_dir() else []
    if not shards:
        raise CheckpointError(f"{folder} has no {STATE_DIR}/ folder of tensor shards")
    for shard in shards:  # check every header first: DCP would log a traceback on a bad file
        try:
            with safe_open(str(shard), framework="pt") as f:
                f.metadata()
        except Exception as exc:  # safetensors' own error types
            raise CheckpointError(f"{shard} is truncated or corrupt: {exc}") from None
    try:
        with _quiet_dcp():
            dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(state)))
    except (Exception, CheckpointException) as exc:  # DCP: several types (a BaseException too)
        raise CheckpointError(
            f"{state} does not fit this model or is damaged: {' '.join(str(exc).split())[:300]}"
        ) from None


def load_model_state(folder: Path, model: nn.Module) -> None:
    """Load only the model's weights from ``folder/state/`` (any saving world size)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    msd, _ = _state_dicts(model, None)
    flat = {f"model.{k}": v for k, v in msd.items()}
    _load(folder, flat)
    set_model_state_dict(model, {k[len("model.") :]: v for k, v in flat.items()})


def load_train_state(
    folder: Path, model: nn.Module, opt: torch.optim.Optimizer, skeleton: dict[str, Any] | None
) -> None:
    """Load weights and optimizer state saved by :func:`save_train_state` (every rank calls this).

    The templates come from ``get_state_dict(model, opt)``, which creates a fresh optimizer's
    state with one zero-lr step and gives every state tensor the sharding of its parameter; the
    saved tensors are read into them (resharded), then the saved hyper-parameters and counters
    replace the template's.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    msd, template = _state_dicts(model, opt)
    flat: dict[str, Tensor] = {f"model.{k}": v for k, v in msd.items()}
    osd: dict[str, Any] = {}
    if skeleton is not None:
        assert template is not None
        tensors, _ = _split(template)
        osd = decode_tree(skeleton, {})
        for fqn, entry in osd.get("state", {}).items():
            for k, v in entry.items():
                if isinstance(v, dict) and _MARK in v:
                    if v[_MARK] not in tensors:
                        raise CheckpointError(
                            f"{folder}: the checkpoint holds optimizer state {k!r} for {fqn}, "
                            "which this optimizer does not have (another optimizer?)"
                        )
                    flat[v[_MARK]] = tensors[v[_MARK]]
                    entry[k] = tensors[v[_MARK]]
    _load(folder, flat)  # in place: the template tensors now hold the saved values
    model_sd = {k[len("model.") :]: v for k, v in flat.items() if k.startswith("model.")}
    set_model_state_dict(model, model_sd)  # type: ignore[arg-type]
    try:
        # not strict: a parameter that never had a gradient has no optimizer state, in the
        # saved run as in this one
        set_optimizer_state_dict(
            model,
            opt,
            osd,
            options=StateDictOptions(strict=False),  # type: ignore[arg-type]
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: optimizer state does not fit: {exc}") from None
