"""Real per-rank memory of one training step on 2 gloo ranks (imported as
``recipes.plan_cases``): ``measure_ranks`` writes ``out/rank{r}.json`` with, per
``preset/parallel/optimizer``, the bytes ``measure_step_memory`` counts."""

from __future__ import annotations

import json
from pathlib import Path

from batchcraft.models.lact_config import get_preset
from batchcraft.recipes.memory import measure_step_memory

SETTINGS = [
    ("tiny", "ddp", "adamw"),
    ("tiny", "fsdp", "adamw"),
    ("small", "ddp", "adan"),
    ("small", "fsdp", "adan"),
]
CONTEXT = 128  # two chunks of the small preset: every parameter gets a gradient


def measure_ranks(rank: int, world: int, out: str) -> None:
    res = {}
    for preset, parallel, optimizer in SETTINGS:
        res[f"{preset}/{parallel}/{optimizer}"] = measure_step_memory(
            get_preset(preset), parallel=parallel, optimizer=optimizer, context=CONTEXT
        )
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
