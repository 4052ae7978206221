"""Distributed set-up for every recipe: one place that reads the ``torchrun`` environment.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`init_distributed` joins the
process group (NCCL on CUDA, gloo on CPU), pins this process to GPU ``LOCAL_RANK`` and returns a
:class:`DistInfo`. A plain ``python`` launch is a world of one, with no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

__all__ = ["DistInfo", "all_reduce_sum", "destroy_distributed", "dist_info", "init_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 writes files and logs).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the device this rank computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None or str(device) == "auto":
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {str(device)!r} is not a torch device; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device 'cuda' was asked for but CUDA is not available; use --device cpu"
            )
        return torch.device("cuda", local_rank if dev.index is None else dev.index)
    return dev


def dist_info(device: str | torch.device | None = "cpu") -> DistInfo:
    """The :class:`DistInfo` of an initialised process group (or a world of one)."""
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, _pick_device(device, local))
    return DistInfo(0, 1, 0, _pick_device(device, 0))


def init_distributed(device: str | torch.device | None = "auto") -> DistInfo:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1``; a no-op otherwise.

    Args:
        device: ``"auto"`` (GPU ``LOCAL_RANK`` when CUDA is available, else CPU), ``"cpu"``,
            ``"cuda"``.

    Returns:
        This process's :class:`DistInfo`.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist_info(dev)


def destroy_distributed() -> None:
    """Leave the process group (at the end of a ``torchrun`` job)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum Python numbers over all ranks (identity for a world of one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
