"""Datasets and generators: everything runs on embedded or generated data; real data is optional.

* LaCT LM: :class:`RecallTask` / :class:`RecallBatches` / :func:`associative_recall` (recall
  beyond the attention window), :func:`copy_task`, :func:`load_corpus` (CPython standard-library
  bytes), :class:`ByteBatches`, :class:`ByteTokenizer`.
* Tokenized corpora: :func:`prepare_corpus` (text -> memory-mapped token shards), :class:`TokenShards`
  (streamed, resumable, rank-sharded windows with ``cu_seqlens``), :func:`load_tokenizer`,
  :func:`train_bpe`, :func:`bits_per_byte`, :func:`pack_batch`.
* NVS toy: :func:`random_scene`, :func:`render_dataset`, :class:`SceneViews`.
* CoLM: :func:`make_mixture` (synthetic instruction mixture), :func:`load_jsonl_mixture`.
* Graphs: :func:`powerlaw_graph`, :func:`load_planetoid` (Cora/CiteSeer zips), :func:`load_hgb`,
  :func:`hgb_split`, :func:`hetero_sbm`,
  :class:`HeteroGraph` (the heterogeneous graph container).
* Images (hard batches, LayerNorm): :mod:`batchcraft.data.images` (Fashion-MNIST IDX, digits).
"""

from batchcraft.data.graphs import GraphData, load_planetoid, powerlaw_graph
from batchcraft.data.hetero_graph import HeteroGraph
from batchcraft.data.hetero_sbm import hetero_sbm
from batchcraft.data.hgb import HGBData, hgb_split, load_hgb
from batchcraft.data.mixture import Mixture, load_jsonl_mixture, make_mixture
from batchcraft.data.prepare import prepare_corpus
from batchcraft.data.scenes import SceneViews, random_scene, render_dataset
from batchcraft.data.shards import ShardBatches, TokenShards, bits_per_byte, pack_batch
from batchcraft.data.synthetic import RecallBatches, RecallTask, associative_recall, copy_task
from batchcraft.data.text import ByteBatches, ByteTokenizer, load_corpus
from batchcraft.data.tokenizers import BytesTokenizer, load_tokenizer, train_bpe

__all__ = [
    "ByteBatches",
    "ByteTokenizer",
    "BytesTokenizer",
    "GraphData",
    "HGBData",
    "HeteroGraph",
    "Mixture",
    "RecallBatches",
    "RecallTask",
    "SceneViews",
    "ShardBatches",
    "TokenShards",
    "associative_recall",
    "bits_per_byte",
    "copy_task",
    "hetero_sbm",
    "hgb_split",
    "load_corpus",
    "load_hgb",
    "load_jsonl_mixture",
    "load_planetoid",
    "load_tokenizer",
    "make_mixture",
    "pack_batch",
    "powerlaw_graph",
    "prepare_corpus",
    "random_scene",
    "render_dataset",
    "train_bpe",
]
