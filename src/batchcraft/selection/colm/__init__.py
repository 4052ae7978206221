"""CoLM: mini-batch coresets for LLM fine-tuning on data mixtures (arXiv 2407.19580).

Composition (keep small sources whole, proportional quotas for the rest), per-source facility
location on Adam-normalised, top-h sparsified gradient features, and pluggable feature probes.
Nothing here imports transformers or peft; the Hugging Face integration lives in
:mod:`batchcraft.selection.colm.hf` (extra ``hf``), imported on demand.

Example::

    probe = ZOProbe(model, "blocks.1.attn.v.lora_B", seed=0)
    selector = CoLMSelector(probe, coreset_size=32, source_counts=mixture.counts, h=512)
    sel = selector.select(pool)                       # pool: inputs + labels + source, [64, ...]
    loss = coreset_loss(per_example_lm_loss(model(**inputs_of(pool, sel.idx)), ...), sel.weights)
"""

from batchcraft.selection.colm.composition import (
    keep_mask,
    small_sources_from_counts,
    source_budgets,
)
from batchcraft.selection.colm.facility import (
    cluster_weights,
    facility_location,
    facility_objective,
    l1_similarity,
)
from batchcraft.selection.colm.loss import coreset_loss, per_example_lm_loss
from batchcraft.selection.colm.normalize import AdamFeatureNormalizer, topk_mask
from batchcraft.selection.colm.probes import (
    ExactGradProbe,
    GradNormProbe,
    HiddenProbe,
    LossProbe,
    ZOProbe,
    model_inputs,
)
from batchcraft.selection.colm.select import (
    ColmSelection,
    CoLMSelector,
    FeatureProbe,
    colm_select,
    subset_batch,
)

__all__ = [
    "AdamFeatureNormalizer",
    "CoLMSelector",
    "ColmSelection",
    "ExactGradProbe",
    "FeatureProbe",
    "GradNormProbe",
    "HiddenProbe",
    "LossProbe",
    "ZOProbe",
    "cluster_weights",
    "colm_select",
    "coreset_loss",
    "facility_location",
    "facility_objective",
    "keep_mask",
    "l1_similarity",
    "model_inputs",
    "per_example_lm_loss",
    "small_sources_from_counts",
    "source_budgets",
    "subset_batch",
    "topk_mask",
]
