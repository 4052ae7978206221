"""The GraphSAGE recipe: seeded starting weights, exact resume, the resume guard, validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from batchcraft.data.graphs import powerlaw_graph
from batchcraft.graph import GraphSAGE, NeighborLoader, csr_from_edge_index
from batchcraft.recipes.sage import SageTrainSettings, build_model, fit, run_training
from batchcraft.recipes.session import ResumeError
from batchcraft.utils.io import CheckpointError

TINY = SageTrainSettings(dataset="powerlaw", num_nodes=500, num_features=8, fanouts=(4, 3),
                         batch_size=64, hidden=16, epochs=1, max_batches=3, prefetch=0)  # fmt: skip


@pytest.fixture(scope="module")
def small():  # type: ignore[no-untyped-def]
    d = powerlaw_graph(400, 6.0, num_features=12, num_classes=3, seed=1)
    return d, csr_from_edge_index(d.edge_index, d.num_nodes)


def _make(small, prefetch: int = 2):  # type: ignore[no-untyped-def]
    d, g = small
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GraphSAGE(12, 8, 3, dropout=0.3)  # dropout: the global RNG matters too
    loader = NeighborLoader(g, d.x, d.y, [3, 2], batch_size=50, prefetch=prefetch)
    return model, loader


def test_same_seed_same_starting_weights_and_first_loss() -> None:
    a, b = build_model(TINY, 8, 3), build_model(TINY, 8, 3)
    c = build_model(dataclasses.replace(TINY, seed=1), 8, 3)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    state = torch.random.get_rng_state()
    build_model(TINY, 8, 3)  # the caller's RNG is left alone
    assert torch.equal(state, torch.random.get_rng_state())
    first = [run_training(TINY, out_dir=None)[0]["loss"] for _ in range(2)]
    torch.manual_seed(123)  # the global RNG does not decide the run
    first.append(run_training(TINY, out_dir=None)[0]["loss"])
    assert first[0] == first[1] == first[2]
    # same graph (powerlaw_graph is seeded apart), another seed: other weights, another loss
    other = run_training(dataclasses.replace(TINY, seed=1), out_dir=None)[0]["loss"]
    assert other != first[0]


@pytest.mark.parametrize("max_batches", [None, 3], ids=["whole-epochs", "max-batches"])
def test_fit_resumed_is_bit_identical(small, tmp_path, max_batches) -> None:  # type: ignore[no-untyped-def]
    """A prefetching loader cut short by max_batches must not leak draws into the next epoch."""
    m1, l1 = _make(small)
    full = fit(m1, l1, epochs=4, seed=5, max_batches=max_batches)
    m2, l2 = _make(small)
    fit(m2, l2, epochs=2, seed=5, max_batches=max_batches, out_dir=tmp_path)
    m3, l3 = _make(small)  # a fresh process would start from other weights: they are loaded
    with torch.no_grad():
        for p in m3.parameters():
            p.add_(1.0)
    resumed = fit(m3, l3, epochs=4, seed=5, max_batches=max_batches, out_dir=tmp_path)
    assert [h["loss"] for h in resumed] == [h["loss"] for h in full]
    for (k, a), b in zip(m1.state_dict().items(), m3.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_fit_resume_guard_and_damaged_checkpoint(small, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m, ld = _make(small, prefetch=0)
    fit(m, ld, epochs=1, lr=1e-2, out_dir=tmp_path, settings_meta={"model": {"hidden": 8}})
    for kw in ({"lr": 2e-2}, {"seed": 1}, {"max_batches": 2},
               {"settings_meta": {"model": {"hidden": 9}}}):  # fmt: skip
        with pytest.raises(ResumeError, match="settings differ"):
            fit(m, ld, **{"epochs": 2, "lr": 1e-2, "out_dir": tmp_path,
                          "settings_meta": {"model": {"hidden": 8}}, **kw})  # fmt: skip
    hist = fit(m, ld, epochs=2, lr=2e-2, out_dir=tmp_path, allow_change=True,
               settings_meta={"model": {"hidden": 8}})  # fmt: skip
    assert [h["epoch"] for h in hist] == [1, 2]
    wrong = GraphSAGE(12, 5, 3)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        fit(wrong, ld, epochs=3, lr=2e-2, out_dir=tmp_path, allow_change=True)
    state = tmp_path / "checkpoint" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="incomplete or damaged"):
        fit(m, ld, epochs=3, lr=2e-2, out_dir=tmp_path, allow_change=True)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("dataset", "reddit", "dataset must be one of"),
        ("model", "gat", "model must be one of"),
        ("epochs", 0, "epochs must be an int >= 1"),
        ("batch_size", -1, "batch_size"),
        ("hidden", 2.5, "hidden"),
        ("fanouts", (), "fanouts"),
        ("fanouts", (4, 0), "fanouts"),
        ("avg_degree", float("nan"), "avg_degree"),
        ("lr", 0.0, "lr must be a finite number > 0"),
        ("dropout", 1.0, "dropout"),
        ("prefetch", -1, "prefetch"),
        ("max_batches", 0, "max_batches"),
        ("seed", -3, "seed"),
        ("backend", "gpu", "backend must be one of"),
        ("pin", "maybe", "pin must be one of"),
    ],
)
def test_settings_validation(field, value, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        SageTrainSettings(**{field: value})


def test_fit_validation(small) -> None:  # type: ignore[no-untyped-def]
    m, ld = _make(small, prefetch=0)
    for kw, match in [({"epochs": -1}, "epochs"), ({"epochs": 1, "lr": float("nan")}, "lr"),
                      ({"epochs": 1, "max_batches": 0}, "max_batches")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            fit(m, ld, **kw)  # type: ignore[arg-type]
