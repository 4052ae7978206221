"""train_high_loss: delta=1 equals plain training bitwise, reference == fast path, only selected
batches are loaded, exact budget, determinism, refresh in eval/no-grad, checkpoint resume, DDP."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from batchcraft.recipes.hard_batches import supervised_loss, train_high_loss
from batchcraft.selection.hard import FixedBatchSampler, fixed_partition


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster and avoids oversubscribing a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class CountingDataset(Dataset):
    """Synthetic 3-class data that counts ``__getitem__`` per index (shared with workers)."""

    def __init__(self, n: int = 60, features: int = 5, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, features, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()
        self.counts = mp.get_context("fork").Array("i", n)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        with self.counts.get_lock():
            self.counts[i] += 1
        return self.x[i], self.y[i]

    def count_list(self) -> list[int]:
        return list(self.counts[:])


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def run(delta: float, *, epochs: float = 3, seed: int = 0, ds=None, decay: bool = False, **kw):
    ds = CountingDataset() if ds is None else ds
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    if decay:
        kw["scheduler"] = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s))
    log = train_high_loss(model, supervised_loss(), opt, ds, batch_size=8, delta=delta,
                          epochs=epochs, generator=torch.Generator().manual_seed(seed), **kw)  # fmt: skip
    return model, log, ds


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_bitwise(a: nn.Module, b: nn.Module) -> None:
    for x, y in zip(params(a), params(b), strict=True):
        assert torch.equal(x, y)


def test_delta_one_equals_plain_training_bitwise():
    model, log, ds = run(1.0, epochs=4)
    # Plain training on the same fixed partition, written out by hand.
    part = fixed_partition(len(ds), 8, generator=torch.Generator().manual_seed(0))
    plain = make_model()
    opt = torch.optim.SGD(plain.parameters(), lr=0.2, momentum=0.9)
    loader = DataLoader(ds, batch_sampler=FixedBatchSampler(part, range(part.shape[0])))
    for _ in range(4):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(plain(x), y).backward()
            opt.step()
    assert_bitwise(model, plain)
    assert log.batch_ids == list(range(7)) * 4


@pytest.mark.parametrize("delta", [0.3, 0.5, 1.0])
def test_reference_loop_equals_fast_path(delta):
    fast, lf, _ = run(delta, epochs=5, decay=True)
    ref, lr, _ = run(delta, epochs=5, naive=True, decay=True)
    assert lf.batch_ids == lr.batch_ids
    assert lf.losses == lr.losses
    assert_bitwise(fast, ref)


@pytest.mark.parametrize("epochs", [2.0, 2.5, 3.3], ids=["whole", "half", "odd"])
def test_budget_exact_and_unselected_batches_never_loaded(epochs):
    _model, log, ds = run(0.3, epochs=epochs)
    b = 7  # 60 // 8
    assert log.steps_done == round(epochs * b) == log.num_steps
    counts = ds.count_list()
    assert sum(counts) == log.steps_done * 8 == log.samples_loaded
    part = fixed_partition(60, 8, generator=torch.Generator().manual_seed(0))
    for i in range(b):  # every sample of batch i was loaded exactly (#times i trained)
        times = log.batch_ids.count(i)
        assert all(counts[j] == times for j in part[i].tolist())
    _, _naive_log, naive_ds = run(0.3, epochs=epochs, naive=True)
    assert sum(naive_ds.count_list()) > sum(counts)  # the reference loads everything


def test_workers_load_only_selected_batches():
    model, log, ds = run(0.3, epochs=1.6, loader_kwargs={"num_workers": 2,
                         "multiprocessing_context": "fork"})  # fmt: skip
    ref, _, _ = run(0.3, epochs=1.6)
    assert sum(ds.count_list()) == log.steps_done * 8
    assert_bitwise(model, ref)


def test_recorded_loss_is_the_pre_update_forward():
    seen: list[float] = []
    base = supervised_loss()

    def loss_fn(model, batch):
        loss = base(model, batch)
        seen.append(float(loss.detach()))
        return loss

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    log = train_high_loss(model, loss_fn, opt, CountingDataset(), batch_size=8, delta=0.5,
                          epochs=3)  # fmt: skip
    assert log.losses == seen  # one forward per step, no extra scoring forward


def test_determinism_and_seed_dependence():
    a, la, _ = run(0.5, seed=1)
    b, lb, _ = run(0.5, seed=1)
    _c, lc, _ = run(0.5, seed=2)
    assert la.batch_ids == lb.batch_ids and la.losses == lb.losses
    assert_bitwise(a, b)
    assert la.losses != lc.losses


def test_refresh_scores_in_eval_mode_without_grad():
    calls: list[tuple[bool, bool]] = []
    base = supervised_loss()

    def loss_fn(model, batch):
        calls.append((model.training, torch.is_grad_enabled()))
        return base(model, batch)

    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.1), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    log = train_high_loss(model, loss_fn, opt, CountingDataset(), batch_size=8, delta=0.3,
                          epochs=3, refresh_every=1)  # fmt: skip
    train_calls = [c for c in calls if c == (True, True)]
    eval_calls = [c for c in calls if c == (False, False)]
    assert len(train_calls) == log.steps_done and len(calls) == len(train_calls) + len(eval_calls)
    selection_rounds = log.rounds - 1
    assert len(eval_calls) == log.refresh_forwards == 7 * selection_rounds


def test_random_control_and_reshuffle_run_the_budget():
    _, lr_, _ = run(0.3, selector="random")
    _, lh, _ = run(0.3)
    assert lr_.steps_done == lh.steps_done == 21 and lr_.batch_ids != lh.batch_ids
    _, ls, _ = run(0.3, reshuffle=True)
    assert ls.steps_done == 21


def test_eval_fn_runs_in_eval_mode_each_epoch():
    modes: list[tuple[bool, bool]] = []

    def eval_fn(model):
        modes.append((model.training, torch.is_grad_enabled()))
        return 0.5

    _, log, _ = run(0.5, epochs=3, eval_fn=eval_fn)
    assert [s for s, _ in log.evals] == [7, 14, 21]
    assert modes == [(False, False)] * 3


@pytest.mark.parametrize(
    "opts",
    [{"decay": True}, {"selector": "random", "reshuffle": True}],
    ids=["hard-lr-schedule", "random-reshuffle"],
)
def test_checkpoint_resume_is_identical(tmp_path, opts):
    full, lfull, _ = run(0.3, epochs=4, **opts)
    ckpt = tmp_path / "run"

    def stop(log):
        if log.rounds == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(0.3, epochs=4, out_dir=ckpt, on_round_end=stop, **opts)
    resumed, lres, _ = run(0.3, epochs=4, out_dir=ckpt, **opts)
    assert lres.batch_ids == lfull.batch_ids
    assert_bitwise(resumed, full)


def test_loop_errors():
    with pytest.raises(ValueError, match="delta"):
        run(1.5)
    with pytest.raises(ValueError, match="empty"):
        run(0.5, ds=CountingDataset(n=0))
    with pytest.raises(ValueError, match="naive=True"):
        run(0.5, naive=True, refresh_every=1)
    with pytest.raises(ValueError, match="epochs"):
        run(0.5, epochs=0)


_DDP_WORKER = """
import sys, torch, torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset
from batchcraft.recipes.hard_batches import supervised_loss, train_high_loss

rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
g = torch.Generator().manual_seed(0)
x = torch.randn(60, 5, generator=g)
y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
x = x + 0.3 * rank  # different local losses per rank; the schedule averages them
torch.manual_seed(0)
model = nn.parallel.DistributedDataParallel(
    nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)))
opt = torch.optim.SGD(model.parameters(), lr=0.2)
log = train_high_loss(model, supervised_loss(), opt, TensorDataset(x, y), batch_size=8,
                      delta=0.3, epochs=3)
torch.save({"ids": log.batch_ids, "loaded": log.samples_loaded,
            "params": [p.detach().clone() for p in model.parameters()]}, f"{out}.{rank}")
dist.destroy_process_group()
"""


def test_ddp_ranks_agree_on_selection(tmp_path):
    # Separate interpreters (not fork): forking a threaded test process can deadlock gloo/OpenMP.
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    init, out = f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "res")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", init, out])
             for r in range(2)]  # fmt: skip
    try:
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    r0, r1 = (torch.load(tmp_path / f"res.{r}") for r in range(2))
    assert r0["ids"] == r1["ids"] and len(r0["ids"]) == 21
    assert r0["loaded"] == r1["loaded"] == 21 * 4  # each rank loads its half of every batch
    for a, b in zip(r0["params"], r1["params"], strict=True):
        assert torch.equal(a, b)


def test_learning_smoke_digits():
    pytest.importorskip("sklearn")
    from batchcraft.data.images import load_digits_split

    d = load_digits_split(seed=0)
    for delta in (0.5, 1.0):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        train_high_loss(model, supervised_loss(), opt, d.train_dataset(), batch_size=32,
                        delta=delta, epochs=10, generator=torch.Generator().manual_seed(0))  # fmt: skip
        model.eval()
        acc = float((model(d.x_test).argmax(1) == d.y_test).float().mean())
        assert acc >= 0.90, (delta, acc)


@pytest.mark.parametrize("reshuffle", [False, True], ids=["fixed", "reshuffled"])
def test_batch_contents_fixed_across_rounds_unless_reshuffled(reshuffle):
    seen: list[torch.Tensor] = []
    base = supervised_loss()

    def loss_fn(model, batch):
        seen.append(batch[0].detach().clone())
        return base(model, batch)

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    log = train_high_loss(model, loss_fn, opt, CountingDataset(), batch_size=8, delta=1.0,
                          epochs=3, reshuffle=reshuffle)  # fmt: skip
    assert log.batch_ids == list(range(7)) * 3
    same = [torch.equal(seen[i], seen[i + 7]) for i in range(7)]
    assert all(same) if not reshuffle else not any(same)


class _CountingSGD(torch.optim.SGD):
    """SGD that counts its optimizer steps (what an LR schedule sees)."""

    def __init__(self, params, **kw) -> None:
        super().__init__(params, **kw)
        self.count = 0

    def step(self, closure=None):
        self.count += 1
        return super().step(closure)


@pytest.mark.parametrize(
    ("n", "m", "epochs", "expected"),
    [
        (60, 8, 3, 21),  # b = 7
        (100, 8, 2.5, 30),  # b = 12
        (61, 8, 1.5, 10),  # b = 7 (last 5 samples dropped); 10.5 rounds half to even
        (60, 8, 0.01, 1),  # at least one step
    ],
    ids=["whole-epochs", "fractional", "half-to-even", "minimum-one"],
)
@pytest.mark.parametrize("delta,naive", [(1.0, False), (0.3, False), (0.3, True)],
                         ids=["plain", "hard", "hard-naive"])  # fmt: skip
def test_num_training_steps_is_the_steps_the_loop_takes(n, m, epochs, expected, delta, naive):
    from batchcraft.selection import num_training_steps

    assert num_training_steps(n, m, epochs) == expected  # hand-computed, independent of the loop
    model = make_model()
    opt = _CountingSGD(model.parameters(), lr=0.1)
    log = train_high_loss(model, supervised_loss(), opt, CountingDataset(n=n), batch_size=m,
                          delta=delta, epochs=epochs, naive=naive)  # fmt: skip
    assert opt.count == log.steps_done == expected


def test_num_training_steps_errors():
    from batchcraft.selection import num_training_steps

    with pytest.raises(ValueError, match="empty"):
        num_training_steps(0, 8, 1)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, num_samples=5\]"):
        num_training_steps(5, 8, 1)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="epochs must be"):
            num_training_steps(50, 8, bad)
