"""batchcraft.nn."""
from batchcraft.nn.norm import LayerNorm, RMSNorm, create_norm  # noqa: E402  (layernorm)
from batchcraft.nn.rnn import LayerNormGRU, LayerNormLSTM  # noqa: E402  (layernorm)
from batchcraft.nn.rnn_cell import LayerNormGRUCell, LayerNormLSTMCell  # noqa: E402  (layernorm)
