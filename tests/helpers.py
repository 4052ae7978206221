"""Test helpers shared across components."""

from __future__ import annotations

import torch


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, msg: str = ""
) -> None:
    """``torch.testing.assert_close`` with a caller message prefix."""
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}: {m}" if msg else m
    )


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error ``||a - b||_2 / ||a||_2`` (the spec's tolerance measure for low precision)."""
    a64, b64 = a.detach().double(), b.detach().double()
    return float((a64 - b64).norm() / a64.norm().clamp_min(1e-30))
