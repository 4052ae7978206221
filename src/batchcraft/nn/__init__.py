"""Modules: parameters, projections, reshapes and caching around the ops in :mod:`batchcraft.ops`.

* LaCT: :class:`LaCTLayer` (causal, with sliding-window attention and a constant-size decode
  cache :class:`LaCTLayerCache`; options :class:`LaCTLayerOptions`), :class:`BidirectionalLaCTLayer` (sets), the small-chunk
  :class:`TTTLinearLayer` baseline, :func:`window_attention`, :func:`apply_rope`.
* Layer normalisation: :class:`LayerNorm`, :class:`RMSNorm`, :func:`create_norm`, and the
  layer-normalised recurrent networks :class:`LayerNormLSTM`, :class:`LayerNormGRU` and their cells.
"""

from batchcraft.nn.attention import KVBuffer, window_attention
from batchcraft.nn.bidirectional_lact import BidirectionalLaCTLayer
from batchcraft.nn.lact import LaCTLayer, LaCTLayerCache, LaCTLayerOptions
from batchcraft.nn.norm import LayerNorm, RMSNorm, create_norm
from batchcraft.nn.rnn import LayerNormGRU, LayerNormLSTM
from batchcraft.nn.rnn_cell import LayerNormGRUCell, LayerNormLSTMCell
from batchcraft.nn.rope import apply_rope
from batchcraft.nn.ttt_linear import TTTLinearLayer

__all__ = [
    "BidirectionalLaCTLayer",
    "KVBuffer",
    "LaCTLayer",
    "LaCTLayerCache",
    "LaCTLayerOptions",
    "LayerNorm",
    "LayerNormGRU",
    "LayerNormGRUCell",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
    "RMSNorm",
    "TTTLinearLayer",
    "apply_rope",
    "create_norm",
    "window_attention",
]
