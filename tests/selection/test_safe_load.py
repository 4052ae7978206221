"""Selection checkpoints never unpickle: a crafted pickle is refused without running its payload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchcraft.recipes.hard_batches import supervised_loss, train_high_loss


class _Payload:
    """Unpickling this object calls ``open(path, "w")``: it would create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def crafted(tmp_path: Path, name: str = "evil.pt") -> tuple[Path, Path]:
    """A torch.save file whose payload would create ``canary`` when unpickled."""
    canary = tmp_path / f"{name}.canary"
    path = tmp_path / name
    torch.save({"model": {}, "x": _Payload(canary)}, path)
    return path, canary


def _run(out_dir: Path, epochs: float = 1):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ds = TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,)))
    return train_high_loss(model, supervised_loss(), opt, ds, batch_size=4, delta=0.5,
                           epochs=epochs, out_dir=out_dir)  # fmt: skip


def test_payload_is_real_under_an_unsafe_load(tmp_path):
    # the payload works: loading without weights_only creates the file (so the tests below that
    # see no file prove the payload did not run)
    path, canary = crafted(tmp_path)
    torch.load(path, weights_only=False)["x"].close()
    assert canary.exists()


def _swap_state(out: Path, data: bytes) -> None:
    """Replace the run's state file (and its manifest size, so only its content is wrong)."""
    import json

    ck = out / "checkpoint"
    (ck / "state.safetensors").write_bytes(data)
    manifest = json.loads((ck / "manifest.json").read_text())
    manifest["files"]["state.safetensors"] = len(data)
    (ck / "manifest.json").write_text(json.dumps(manifest))


def test_train_high_loss_refuses_a_crafted_checkpoint(tmp_path):
    out = tmp_path / "run"
    _run(out)
    path, canary = crafted(tmp_path, "evil.pt")
    _swap_state(out, path.read_bytes())
    with pytest.raises(ValueError, match="not a readable batchcraft checkpoint"):
        _run(out)
    assert not canary.exists()


def test_train_high_loss_refuses_a_truncated_checkpoint(tmp_path):
    out = tmp_path / "run"
    _run(out, epochs=1)  # writes a valid checkpoint, then resumes from it unchanged
    assert _run(out, epochs=1).steps_done == 4
    good = (out / "checkpoint" / "state.safetensors").read_bytes()
    (out / "checkpoint" / "state.safetensors").write_bytes(good[:200])  # manifest size now wrong
    with pytest.raises(ValueError, match="incomplete or damaged"):
        _run(out)
    _swap_state(out, good[:200])
    with pytest.raises(ValueError, match="not a readable batchcraft checkpoint"):
        _run(out)
