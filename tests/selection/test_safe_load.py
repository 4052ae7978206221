"""Selection state is loaded with weights_only=True: crafted pickles are refused unrun."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from batchcraft.selection._safe_load import load_state


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


def test_payload_is_real_under_an_unsafe_load(tmp_path):
    # the payload works: loading without weights_only creates the file (so the tests below that
    # see no file prove the payload did not run)
    path, canary = crafted(tmp_path)
    f = torch.load(path, weights_only=False)["x"]
    f.close()
    assert canary.exists()


def test_crafted_pickle_refused_without_running(tmp_path):
    path, canary = crafted(tmp_path)
    with pytest.raises(ValueError, match=r"refusing to load .*not a plain hard-batch checkpoint"):
        load_state(path, what="hard-batch checkpoint")
    assert not canary.exists()


def test_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"scores": torch.arange(3.0), "steps": 2, "name": "x", "t": (1, 2)}, good)
    state = load_state(good, what="state")
    assert torch.equal(state["scores"], torch.arange(3.0)) and state["t"] == (1, 2)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    for bad in (cut, junk):
        with pytest.raises(ValueError, match="not a readable state"):
            load_state(bad, what="state")


def test_train_high_loss_refuses_a_crafted_checkpoint(tmp_path):
    from torch import nn
    from torch.utils.data import TensorDataset

    from batchcraft.selection.hard_loop import supervised_loss, train_high_loss

    path, canary = crafted(tmp_path, "run.pt")
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ds = TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,)))
    with pytest.raises(ValueError, match="refusing to load"):
        train_high_loss(model, supervised_loss(), opt, ds, batch_size=4, delta=0.5, epochs=1,
                        checkpoint=path)  # fmt: skip
    assert not canary.exists()
