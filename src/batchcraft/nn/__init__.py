"""batchcraft.nn."""
from batchcraft.nn.norm import LayerNorm, RMSNorm, create_norm  # noqa: E402  (layernorm)
from batchcraft.nn.rnn import LayerNormGRU, LayerNormLSTM  # noqa: E402  (layernorm)
from batchcraft.nn.rnn_cell import LayerNormGRUCell, LayerNormLSTMCell  # noqa: E402  (layernorm)
from batchcraft.nn.attention import KVBuffer, window_attention  # noqa: E402  (lact)
from batchcraft.nn.bidirectional_lact import BidirectionalLaCTLayer  # noqa: E402  (lact)
from batchcraft.nn.lact import LaCTLayer, LaCTLayerCache  # noqa: E402  (lact)
from batchcraft.nn.rope import apply_rope  # noqa: E402  (lact)
from batchcraft.nn.ttt_linear import TTTLinearLayer  # noqa: E402  (lact baseline)
