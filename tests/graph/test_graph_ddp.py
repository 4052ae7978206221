"""Data-parallel GraphSAGE under torchrun with 2 CPU ranks (gloo), plus the seed sharding rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from batchcraft.data.graphs import planted_partition
from batchcraft.graph import csr_from_edge_index
from batchcraft.graph.loader import NeighborLoader

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from batchcraft.data.graphs import planted_partition
    from batchcraft.graph import GraphSAGE, csr_from_edge_index
    from batchcraft.graph.loader import NeighborLoader
    from batchcraft.recipes.dist import init_distributed
    from batchcraft.recipes.sage import SageTrainSettings, evaluate, fit, run_training

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    d = init_distributed("cpu")
    rank, world = d.rank, d.world_size
    assert world == 2
    data = planted_partition(num_blocks=3, block_size=60, seed=0)
    graph = csr_from_edge_index(data.edge_index, data.num_nodes)
    seen = []

    class Recording(NeighborLoader):
        def make_batch(self, seeds):
            seen.append(seeds.tolist())
            return super().make_batch(seeds)

    loader = Recording(graph, data.x, data.y, [4, 3], batch_size=16, input_nodes=data.train_idx,
                       generator=torch.Generator().manual_seed(rank), prefetch=1,
                       num_replicas=world, rank=rank, shuffle_seed=0)
    torch.manual_seed(100 + rank)  # different init per rank: DDP must broadcast rank 0's
    model = GraphSAGE(data.x.shape[1], 16, data.num_classes, num_layers=2, dropout=0.0)
    val = NeighborLoader(graph, data.x, data.y, [4, 3], batch_size=32, input_nodes=data.val_idx,
                         shuffle=False, generator=torch.Generator().manual_seed(5), prefetch=0)
    hist = fit(model, loader, epochs=2, eval_fn=lambda: {"val_acc": evaluate(model, val)},
               out_dir=out / "fit")
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    s = SageTrainSettings(dataset="planted", fanouts=(4, 3), batch_size=64, epochs=1, hidden=8,
                          seed=0)
    h2 = run_training(s, out_dir=out / "run")
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"seeds": seen, "history": hist, "run_history": h2}))
    torch.distributed.destroy_process_group()
    """
)


def test_torchrun_two_cpu_ranks(tmp_path: Path) -> None:
    script = tmp_path / "graph_ddp.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29533", str(script), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    train = planted_partition(num_blocks=3, block_size=60, seed=0).train_idx.tolist()
    per_epoch = len(r0["seeds"]) // 2
    assert len(r0["seeds"]) == len(r1["seeds"]) == 2 * per_epoch  # equal batch counts
    for e in range(2):
        s0 = [n for b in r0["seeds"][e * per_epoch : (e + 1) * per_epoch] for n in b]
        s1 = [n for b in r1["seeds"][e * per_epoch : (e + 1) * per_epoch] for n in b]
        assert not set(s0) & set(s1)  # disjoint
        assert sorted(s0 + s1) == sorted(train)  # cover, each seed once
    assert r0["seeds"][0] != r0["seeds"][per_epoch]  # reshuffled per epoch
    for key in ("loss", "train_acc", "val_acc"):  # epoch figures identical on both ranks
        assert [h[key] for h in r0["history"]] == [h[key] for h in r1["history"]]
    ckpt = json.loads((tmp_path / "fit" / "checkpoint" / "manifest.json").read_text())
    assert ckpt["step"] == 2 and ckpt["settings"]["train"]["world_size"] == 2  # rank 0 wrote
    assert r0["run_history"][0]["val_acc"] == r1["run_history"][0]["val_acc"]
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["settings"]["world_size"] == 2


def _loader(m: int, world: int, rank: int, bs: int, drop_last: bool = False) -> NeighborLoader:
    data = planted_partition(num_blocks=2, block_size=20, seed=0)
    graph = csr_from_edge_index(data.edge_index, data.num_nodes)
    return NeighborLoader(graph, data.x, data.y, [2], batch_size=bs,
                          input_nodes=torch.arange(m), num_replicas=world, rank=rank,
                          drop_last=drop_last, prefetch=0)  # fmt: skip


@pytest.mark.parametrize(
    ("m", "world", "bs", "drop_last"),
    [(40, 2, 8, False), (37, 3, 5, False), (11, 2, 5, False), (37, 3, 5, True), (7, 4, 2, False)],
    ids=["even", "uneven", "small", "drop_last", "tiny-pool"],
)
def test_shards_disjoint_cover_equal_counts(m: int, world: int, bs: int, drop_last: bool) -> None:
    shards = [_loader(m, world, r, bs, drop_last) for r in range(world)]
    for ld in shards:
        ld.set_epoch(3)
    batches = [ld.shard_seeds() for ld in shards]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(shards[0])
    assert all(0 < t.numel() <= bs for b in batches for t in b)
    nodes = torch.cat([t for b in batches for t in b]).tolist()
    assert len(set(nodes)) == len(nodes)
    if drop_last:
        assert all(t.numel() == bs for b in batches for t in b)
    else:
        assert sorted(nodes) == list(range(m))


def test_bad_sharding_raises() -> None:
    with pytest.raises(ValueError, match="0 <= rank < num_replicas"):
        _loader(10, 2, 2, 4)
    with pytest.raises(ValueError, match="at least one seed per rank"):
        _loader(3, 4, 0, 4)
    with pytest.raises(ValueError, match="empty batch"):
        len(_loader(11, 2, 0, 1))
