"""What every recipe shares around its training loop: the run folder, the saved settings, the
resume guard and atomic checkpoints.

A recipe builds a :class:`TrainSession` with its settings (a dataclass), calls :meth:`begin`
before any work (the output folder is proven writable and, when resuming, the checkpoint's
settings are compared with the new ones), then :meth:`save` at checkpoints. Checkpoints are
folders swapped into place atomically (:func:`batchcraft.utils.io.write_dir_atomic`) holding only
safetensors and JSON; the run's settings travel in the folder's manifest.

**Guarded resume.** Settings fields are either *algorithm* fields (changing one changes the
maths of the remaining steps: lr, batch size, optimizer, model config, ...) or *free* fields
(evaluation and checkpoint cadence, output, logging). Resuming with a changed algorithm field
is refused with a diff unless ``allow_change`` is set; changing the step budget is allowed only
when the recipe's ``extension_check`` says the run continues exactly as a longer run would
(see :mod:`batchcraft.recipes.schedule`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from batchcraft.recipes.dist import DistInfo
from batchcraft.utils.io import (
    CheckpointError,
    check_writable_dir,
    load_json,
    resolve_dir,
    write_dir_atomic,
    write_json,
)

__all__ = [
    "ResumeError",
    "TrainSession",
    "settings_dict",
    "settings_diff",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # checkpoint folder format (1: pickled train_state.pt, never loaded)


class ResumeError(ValueError):
    """Resuming would silently change the run (settings differ from the checkpoint's)."""


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass (or mapping) as a JSON-able dict (paths become strings)."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        d = dataclasses.asdict(settings)
    else:
        d = dict(settings)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def settings_diff(
    saved: Mapping[str, Any], now: Mapping[str, Any], *, ignore: Iterable[str] = ()
) -> list[str]:
    """Lines ``"name: saved -> now"`` for every (nested) field that differs, minus ``ignore``."""
    a, b = _flat(saved), _flat(now)
    skip = set(ignore)
    lines = []
    for k in sorted(set(a) | set(b)):
        if k in skip or k.split(".")[-1] in skip:  # a bare name matches at any depth
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            lines.append(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}")
    return lines


class TrainSession:
    """Run folder, resume guard and checkpoints of one training run.

    Args:
        recipe: the recipe's name (stored, and checked on resume).
        out_dir: the run folder (``checkpoint/`` and JSON records inside); ``None``: no files.
        settings: everything that defines the run, as a JSON-able dict (settings dataclass,
            model config, data description).
        dist: this rank; only rank 0 writes.
        resume: continue from ``out_dir/checkpoint`` when one exists.
        allow_change: resume even when algorithm settings differ (the diff is logged and kept).
        free: setting names that may change on resume without changing the maths.
        budget_field: the (dotted) name of the step budget (``"train.steps"``): allowed to change
            when ``extension_check`` returns ``None``.
        extension_check: ``fn(saved_settings, steps_done) -> reason or None``; ``None`` means a
            run resumed with the new budget is exactly a fresh run of the new length.
    """

    def __init__(
        self,
        recipe: str,
        out_dir: str | Path | None,
        *,
        settings: Mapping[str, Any],
        dist: DistInfo | None = None,
        resume: bool = True,
        allow_change: bool = False,
        free: Iterable[str] = (),
        budget_field: str | None = "steps",
        extension_check: Callable[[Mapping[str, Any], int], str | None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.settings = dict(settings)
        self.dist = dist or DistInfo()
        self.resume, self.allow_change = resume, allow_change
        self.free = set(free)
        self.budget_field = budget_field
        self.extension_check = extension_check
        self.changes: list[str] = []

    @property
    def ckpt_dir(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoint"

    @property
    def writes(self) -> bool:
        """True on the rank that writes files (rank 0) when there is a run folder."""
        return self.out_dir is not None and self.dist.is_main

    def begin(self) -> tuple[Path | None, dict[str, Any] | None]:
        """Check the run folder and find the checkpoint to resume from.

        Returns:
            ``(folder, manifest)`` of the checkpoint to load, or ``(None, None)`` for a fresh run.

        Raises:
            NotADirectoryError / PermissionError: the run folder cannot be written.
            CheckpointError: the checkpoint is damaged, from another recipe or format.
            ResumeError: settings differ and ``allow_change`` is off.
        """
        if self.out_dir is None:
            return None, None
        if self.dist.is_main:
            check_writable_dir(self.out_dir)
        ckpt = self.ckpt_dir
        assert ckpt is not None
        if not self.resume:
            if resolve_dir(ckpt) is not None and self.dist.is_main:
                log.info(f"{ckpt} exists; --no-resume starts over and will replace it")
            return None, None
        folder = resolve_dir(ckpt)
        if folder is None:
            return None, None
        manifest = load_json(folder / "manifest.json")
        if manifest.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"{folder} was written by an older batchcraft (format {manifest.get('format', 1)}); "
                "it cannot be resumed: start a new run folder (--out) or pass --no-resume"
            )
        if manifest.get("recipe") != self.recipe:
            raise CheckpointError(
                f"{folder} is a {manifest.get('recipe')!r} checkpoint, not {self.recipe!r}"
            )
        self._guard(manifest.get("settings", {}), int(manifest.get("step", 0)))
        if folder != ckpt and self.dist.is_main:
            log.warning(f"{ckpt} was incomplete (a run killed mid-save); resuming from {folder}")
        return folder, manifest

    def _guard(self, saved: Mapping[str, Any], done: int) -> None:
        budget = self.budget_field
        diff = settings_diff(
            saved, self.settings, ignore=self.free | ({budget} if budget else set())
        )
        if budget:
            a, b = _flat(saved).get(budget), _flat(self.settings).get(budget)
            if a != b:
                reason = None if self.extension_check is None else self.extension_check(saved, done)
                if reason is not None:
                    diff.append(f"{budget}: {a!r} -> {b!r} ({reason})")
        if not diff:
            return
        if not self.allow_change:
            raise ResumeError(
                "resuming would change the run; settings differ from the checkpoint's: "
                + "; ".join(diff)
                + ". Use the same settings, a new --out folder, or --allow-change"
            )
        self.changes = diff
        if self.dist.is_main:
            log.warning("resuming with changed settings (--allow-change): " + "; ".join(diff))

    def manifest_meta(self) -> dict[str, Any]:
        """What a checkpoint's manifest records about the run (format, recipe, settings)."""
        return {
            "format": FORMAT_VERSION,
            "recipe": self.recipe,
            "settings": self.settings,
            "changes": self.changes,
        }

    def save(self, step: int, fill: Callable[[Path], object], **meta: Any) -> Path | None:
        """Write the checkpoint of ``step`` atomically (rank 0 only); ``fill(folder)`` writes files."""
        if not self.writes:
            return None
        assert self.ckpt_dir is not None
        return write_dir_atomic(
            self.ckpt_dir,
            fill,
            meta={**self.manifest_meta(), "step": step, **meta},
        )

    def write_json(self, name: str, data: Any) -> Path | None:
        """Write ``out_dir/name`` (rank 0 only)."""
        if not self.writes:
            return None
        assert self.out_dir is not None
        return write_json(self.out_dir / name, data)
