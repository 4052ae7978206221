"""GraphSAGE on Cora with neighbour sampling and a zero-copy feature store.

    python examples/graphsage_cora.py --data-dir path/to/data     # Cora from <dir>/cora.zip
    python examples/graphsage_cora.py                              # $BATCHCRAFT_DATA, else synthetic
    python examples/graphsage_cora.py --tiny                       # a few seconds

The feature table stays in host memory (pinned when a GPU is present, so GPU threads read rows
straight from it: the ``uva-triton`` backend); each mini-batch samples a 2-hop neighbourhood of
its seed nodes, gathers only those rows, and trains GraphSAGE on the sampled subgraph. Without
``cora.zip`` (Planetoid format) the script trains on a synthetic planted-partition graph and says
so.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from batchcraft.data.graphs import GraphData, load_planetoid, planted_partition
from batchcraft.data.paths import find_data_dir
from batchcraft.graph import GraphSAGE, NeighborLoader, PinnedFeatureStore, csr_from_edge_index
from batchcraft.recipes.sage import evaluate, train_epoch


def load_graph(data_dir: Path | None) -> GraphData:
    folder = find_data_dir(data_dir)  # --data-dir, $BATCHCRAFT_DATA, ../shared/data
    if folder is not None and (folder / "cora.zip").is_file():
        return load_planetoid(folder / "cora.zip")
    where = folder / "cora.zip" if folder is not None else "no data folder"
    print(f"Cora not found ({where}); using a synthetic planted-partition graph")
    return planted_partition(num_blocks=7, block_size=300, p_in=0.03, p_out=0.002, seed=0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding cora.zip")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--fanouts", default="10,10", help="neighbours sampled per hop")
    p.add_argument("--tiny", action="store_true", help="3 epochs")
    args = p.parse_args(argv)
    epochs = 3 if args.tiny else args.epochs
    fanouts = [int(f) for f in args.fanouts.split(",")]

    data = load_graph(args.data_dir)
    graph = csr_from_edge_index(data.edge_index, data.x.shape[0])  # in-neighbour CSR
    print(f"{data.name}: {data.x.shape[0]} nodes, {data.edge_index.shape[1]} edges, "
          f"{data.x.shape[1]} features, {data.num_classes} classes")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    with PinnedFeatureStore(data.x, pin="auto", backend="auto") as store:  # cpu backend here

        def loader(nodes: torch.Tensor, shuffle: bool) -> NeighborLoader:
            return NeighborLoader(graph, store, data.y, fanouts, batch_size=64, input_nodes=nodes,
                                  shuffle=shuffle, generator=g)  # fmt: skip

        torch.manual_seed(0)
        model = GraphSAGE(data.x.shape[1], 64, data.num_classes, dropout=0.5).to(store.device)
        opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
        for epoch in range(1, epochs + 1):
            stats = train_epoch(model, loader(data.train_idx, True), opt)
            val = evaluate(model, loader(data.val_idx, False))
            print(f"epoch {epoch}: loss {stats.loss:.3f}, validation accuracy {100 * val:.1f}%")
        test = evaluate(model, loader(data.test_idx, False))
    print(f"test accuracy {100 * test:.1f}% (store backend: {store.backend})")
    return {"test": test, "classes": data.num_classes, "dataset": data.name}


if __name__ == "__main__":
    main()
