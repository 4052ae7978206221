"""Benchmark: hard-batch selection overhead per step and data loading per round.

Arms, side by side in one run:
* data loading per round (b steps' worth of rounds), ``FixedBatchSampler`` (loads the K selected
  batches) vs the authors' approach (iterate every batch of the loader and discard unselected
  ones), for delta in {0.2, 0.5, 0.8, 1.0}, on a Fashion-MNIST-shaped uint8 dataset whose
  ``__getitem__`` decodes to normalised float32 (the cost a real pipeline pays per sample);
* selection time per step (``select_hard``: one sort over b floats per round, divided by the
  round's K steps) vs the reference Python sort + list-membership loop, as % of a training step
  of the experiment's small CNN, for b in {125, 1000, 10000};
* the loading throughput as a fraction of this machine's copy bandwidth (measured in the run).

Correctness gate first: the fast path and the reference loop train the same batch ids to the same
parameters, and ``select_hard`` equals the Python top-K on tied scores.

Run: ``batchcraft bench hard-batches`` (``--quick`` for a fast look) or
``python -m batchcraft.benchmarks.bench_hard_batches``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from batchcraft.recipes.hard_batches import supervised_loss, train_high_loss
from batchcraft.registry import register_benchmark
from batchcraft.selection.hard import FixedBatchSampler, fixed_partition, num_selected, select_hard
from batchcraft.utils.bench import copy_bandwidth_gbs, print_table, timeit, write_result


class DecodingDataset(Dataset):
    """uint8 images ``[N, 1, 28, 28]`` decoded per item to normalised float32 (a real loader's work)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.raw = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return self.raw.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.raw[i].float().div_(255.0).sub_(0.2860).div_(0.3530)  # [1, 28, 28]
        return x, self.y[i]


def _gate() -> None:
    ds = DecodingDataset(320)
    ds.raw = ds.raw[:, :, :8, :8].contiguous()  # tiny and fast

    def run(naive: bool) -> tuple[list[int], list[torch.Tensor]]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        log = train_high_loss(model, supervised_loss(), opt, ds, batch_size=16, delta=0.3,
                              epochs=4, naive=naive)  # fmt: skip
        return log.batch_ids, [p.detach() for p in model.parameters()]

    (ids_f, p_f), (ids_r, p_r) = run(False), run(True)
    assert ids_f == ids_r, "fast path and reference trained different batches"
    assert all(torch.equal(a, b) for a, b in zip(p_f, p_r, strict=True)), "parameters differ"
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        s = torch.randint(0, 4, (37,), generator=g).double()
        want = sorted(sorted(range(37), key=lambda i: (-float(s[i]), i))[:11])
        assert select_hard(s, 11).tolist() == want, "select_hard != Python top-K"


def _load_round_fast(ds: Dataset, part: torch.Tensor, ids: torch.Tensor) -> int:
    n = 0
    for x, _ in DataLoader(ds, batch_sampler=FixedBatchSampler(part, ids)):
        n += x.shape[0]
    return n


def _load_round_ref(ds: Dataset, part: torch.Tensor, ids: torch.Tensor) -> int:
    selected, n = ids.tolist(), 0
    for i, (x, _) in enumerate(
        DataLoader(ds, batch_sampler=FixedBatchSampler(part, range(part.shape[0])))
    ):
        if i in selected:  # the authors' loop: everything is loaded, most is thrown away
            n += x.shape[0]
    return n


def _python_select(scores: list[float], k: int) -> list[int]:
    return sorted(sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k])


def _reference_round(scores: list[float], k: int) -> list[bool]:
    """The authors' per-round selection work: Python sort, then a list-membership test per batch."""
    selected = _python_select(scores, k)
    return [i in selected for i in range(len(scores))]


@register_benchmark(
    "hard-batches",
    description="hard batches: selection overhead % of a step; loading per round, sampler vs load-all",
)
def main(quick: bool = False) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _main(quick)
    finally:
        torch.set_num_threads(threads)


def _main(quick: bool) -> dict[str, Any]:
    _gate()
    n, m = (2048, 64) if quick else (8192, 64)
    ds = DecodingDataset(n)
    part = fixed_partition(n, m, generator=torch.Generator().manual_seed(0))
    b = part.shape[0]
    scores = torch.rand(b, generator=torch.Generator().manual_seed(1)).double()
    bw = copy_bandwidth_gbs()
    rows: list[dict[str, Any]] = []
    repeat = 2 if quick else 3
    for delta in (0.2, 0.5, 0.8, 1.0):
        k = num_selected(b, delta)
        ids = select_hard(scores, k)
        assert _load_round_fast(ds, part, ids) == _load_round_ref(ds, part, ids) == k * m
        t_fast = timeit(lambda ids=ids: _load_round_fast(ds, part, ids), warmup=1, repeat=repeat)
        t_ref = timeit(lambda ids=ids: _load_round_ref(ds, part, ids), warmup=1, repeat=repeat)
        gbs = k * m * 28 * 28 * 4 / t_fast.median / 1e9
        rows.append({
            "arm": f"loading per round, δ={delta}", "b": b, "K": k, "unit": "ms/round",
            "ours": 1e3 * t_fast.median, "reference": 1e3 * t_ref.median,
            "reference / ours": t_ref.median / t_fast.median, "expected ratio": b / k,
            "ours GB/s / copy GB/s": gbs / bw,
        })  # fmt: skip

    # Selection overhead per step, as % of one training step of the experiment's CNN.
    from batchcraft.models.small import SmallResNet

    model = SmallResNet(width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 1, 14, 14), torch.randint(0, 10, (64,))

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_step = timeit(step, warmup=2, repeat=10 if quick else 30).median
    for nb in (125, 1000, 10000):
        s = torch.rand(nb, generator=torch.Generator().manual_seed(2)).double()
        sl = s.tolist()
        k = num_selected(nb, 0.5)
        t_sel = timeit(lambda s=s, k=k: select_hard(s, k), warmup=2, repeat=20).median
        t_sel_ref = timeit(lambda sl=sl, k=k: _reference_round(sl, k), warmup=1, repeat=3).median
        rows.append({
            "arm": "selection, δ=0.5", "b": nb, "K": k, "unit": "µs/step",
            "ours": 1e6 * t_sel / k, "reference": 1e6 * t_sel_ref / k,
            "reference / ours": t_sel_ref / t_sel, "ours % of a step": 100 * t_sel / k / t_step,
            "reference % of a step": 100 * t_sel_ref / k / t_step,
        })  # fmt: skip

    # End to end: one "epoch" of b steps, fast sampler vs reference loop (MLP on decoded images).
    def e2e(naive: bool, delta: float) -> float:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
        o = torch.optim.SGD(net.parameters(), lr=0.05)
        t0 = time.perf_counter()
        train_high_loss(
            net, supervised_loss(), o, ds, batch_size=m, delta=delta, epochs=3, naive=naive
        )
        return (time.perf_counter() - t0) / 3

    for delta in (0.2, 0.5):
        fast, ref = e2e(False, delta), e2e(True, delta)
        rows.append({"arm": f"end-to-end, δ={delta}", "b": b, "K": num_selected(b, delta),
                     "unit": "s per epoch of b steps", "ours": fast, "reference": ref,
                     "reference / ours": ref / fast})  # fmt: skip
    print_table(
        rows,
        title=f"hard batches (1 thread; training step {1e3 * t_step:.2f} ms; copy {bw:.1f} GB/s)",
    )
    out = {"rows": rows, "step_ms": 1e3 * t_step, "copy_gbs": bw, "quick": quick}
    write_result("hard-batches", out)
    return out


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
