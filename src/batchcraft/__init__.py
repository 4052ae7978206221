"""batchcraft: efficient mini-batch training for PyTorch.

Seven research results as tested, measured PyTorch components:

* :mod:`batchcraft.ops.lact`, :mod:`batchcraft.nn`, :mod:`batchcraft.models` — LaCT (large-chunk
  test-time training), arXiv 2505.23884.
* :mod:`batchcraft.optim` — Adan, arXiv 2208.06677.
* :mod:`batchcraft.ops.norm`, :mod:`batchcraft.nn` — LayerNorm/RMSNorm and layer-normalised
  LSTM/GRU, arXiv 1607.06450.
* :mod:`batchcraft.selection` — hard-batch training (arXiv 2304.03486) and CoLM coresets
  (arXiv 2407.19580).
* :mod:`batchcraft.graph` — zero-copy feature gathering (arXiv 2103.03330) and RpHGNN
  (arXiv 2310.14481).

Importing this package imports only torch (optional packages load lazily, on use).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
