"""Feature probes on a tiny fp64 causal LM with LoRA: ZO == autograd directional derivative,
nothing mutated, padding independence, feature rank, exact per-example gradients, training."""

from __future__ import annotations

import pytest
import torch

from batchcraft.data.mixture import make_mixture
from batchcraft.models.tiny_lm import TinyLM, TinyLMConfig, apply_lora
from batchcraft.recipes.colm import ColmTrainer
from batchcraft.selection.colm import (
    CoLMSelector,
    ExactGradProbe,
    GradNormProbe,
    HiddenProbe,
    LossProbe,
    ZOProbe,
    per_example_lm_loss,
    subset_batch,
)

P = "blocks.1.attn.v.lora_B"


@pytest.fixture(scope="module")
def mix():
    return make_mixture((60, 30, 20, 10, 5, 4, 3, 2), seed=0, eval_size=4)


def _model(mix, dtype=torch.float64) -> TinyLM:
    cfg = TinyLMConfig(vocab_size=mix.tokenizer.vocab_size, d_model=32, n_heads=2, max_len=32)
    m = TinyLM(cfg, generator=torch.Generator().manual_seed(0))
    apply_lora(m, ("q", "k", "v"), r=4, alpha=8.0, generator=torch.Generator().manual_seed(1))
    m = m.to(dtype)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # non-zero LoRA-B so the probed gradient is generic
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=dtype))
    return m


def _pool(mix, n: int = 12, seed: int = 0):
    return mix.sample_pool(n, generator=torch.Generator().manual_seed(seed))


def test_zo_matches_autograd_directional_derivative_fp64(mix):
    model = _model(mix)
    pool = _pool(mix)
    probe = ZOProbe(model, P, eps=1e-6, seed=3)
    z = probe.directions_for_step(0)  # [1, d]
    c = probe.coefficients(pool, z)[:, 0]  # [N]
    g = ExactGradProbe(model, P).features(pool)  # [N, d]
    exact = g @ z[0].double()
    rel = ((c - exact).abs() / exact.abs()).max()
    assert rel < 1e-6, rel


def test_zo_fp32_correlates_with_exact(mix):
    model = _model(mix, torch.float32)
    pool = _pool(mix, 16, 1)
    probe = ZOProbe(model, P, eps=1e-3, seed=3)
    c = probe.coefficients(pool, probe.directions_for_step(0))[:, 0]
    exact = ExactGradProbe(model, P).features(pool) @ probe.directions_for_step(0)[0]
    corr = torch.corrcoef(torch.stack([c, exact]))[0, 1]
    assert corr > 0.99


def test_probes_touch_no_parameter_rng_or_mode(mix):
    model = _model(mix)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    pool = _pool(mix)
    probes = [
        ZOProbe(model, P, directions=3, resample="step", seed=0),
        ExactGradProbe(model, P),
        LossProbe(model, P),
        GradNormProbe(model, P),
        HiddenProbe(model, "blocks.1", dim=32),
    ]
    for probe in probes:
        probe.features(pool)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_loss_independent_of_padding_and_companions(mix):
    model = _model(mix)
    pool = _pool(mix, 8)
    probe = LossProbe(model, P)
    alone = torch.cat([probe.features(subset_batch(pool, torch.tensor([i]))) for i in range(8)])
    together = probe.features(pool)
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-12)
    # extra right padding changes nothing
    padded = {
        k: torch.nn.functional.pad(v, (0, 5), value=(-100 if k == "labels" else 0))
        if v.dim() == 2
        else v
        for k, v in pool.items()
    }
    torch.testing.assert_close(probe.features(padded), together, rtol=1e-10, atol=1e-12)


def test_feature_rank_fixed_vs_multi_direction(mix):
    model = _model(mix)
    pool = _pool(mix, 10)
    fixed = ZOProbe(model, P, seed=0).features(pool)
    centred = fixed - fixed.mean(0)
    assert torch.linalg.matrix_rank(centred).item() == 1  # faithful mode collapses to 1-D
    multi = ZOProbe(model, P, directions=4, seed=0).features(pool)
    r = torch.linalg.matrix_rank(multi).item()
    assert 1 < r <= 4


def test_resample_run_vs_step(mix):
    model = _model(mix)
    run, step = ZOProbe(model, P, seed=5), ZOProbe(model, P, seed=5, resample="step")
    assert torch.equal(run.directions_for_step(0), run.directions_for_step(7))
    assert not torch.equal(step.directions_for_step(0), step.directions_for_step(1))
    other = ZOProbe(model, P, seed=5, resample="step")
    other.load_state_dict(step.state_dict())
    assert other.seed == 5 and other.resample == "step"


def test_exact_grad_vmap_equals_loop(mix):
    model = _model(mix)
    pool = _pool(mix, 6)
    a = ExactGradProbe(model, P, impl="vmap").features(pool)
    b = ExactGradProbe(model, P, impl="loop").features(pool)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_coreset_gradient_is_weighted_mean_of_per_example_gradients(mix):
    model = _model(mix)
    pool = _pool(mix, 5)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    per = ExactGradProbe(model, P).features(pool)  # [5, d]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    trainer = ColmTrainer(model, opt, grad_clip=None)
    model.zero_grad()
    trainer.loss_on(pool, w).backward()
    got = dict(model.named_parameters())[P].grad.flatten()
    torch.testing.assert_close(got, (w[:, None] * per).sum(0) / w.sum())


def test_two_training_steps_change_only_lora(mix):
    model = _model(mix, torch.float32)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    modes: list[bool] = []
    model.blocks[0].register_forward_pre_hook(lambda m, a: modes.append(m.training))
    probe = ZOProbe(model, P, seed=0)
    sel = CoLMSelector(probe, 6, source_counts=mix.counts, h=16)
    opt = torch.optim.AdamW(list(lora_params(model)), lr=1e-2)
    trainer = ColmTrainer(model, opt, sel)
    for s in range(2):
        stats = trainer.step(_pool(mix, 12, s))
        assert stats.size == 6
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    assert all(
        not torch.equal(dict(model.named_parameters())[n], v)
        for n, v in lora.items()
        if "lora_B" in n
    )
    # per step: 2 ZO forwards in eval mode, then the training forward in train mode
    assert modes == [False, False, True, False, False, True]


def lora_params(model):
    return (p for p in model.parameters() if p.requires_grad)


def test_probe_errors(mix):
    model = _model(mix)
    with pytest.raises(ValueError, match=r"no parameter 'blocks\.9\.v'"):
        ZOProbe(model, "blocks.9.v")
    with pytest.raises(ValueError, match="resample must be"):
        ZOProbe(model, P, resample="epoch")
    with pytest.raises(ValueError, match="directions must be >= 1"):
        ZOProbe(model, P, directions=0)
    with pytest.raises(ValueError, match="'labels'"):
        LossProbe(model, P).features({"input_ids": torch.zeros(2, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"\[N, T, V\]"):
        per_example_lm_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("directions", [1, 3], ids=["m1", "m3"])
def test_split_fast_path_equals_full_forwards(mix, directions):
    model = _model(mix)
    pool = _pool(mix, 9, 4)
    ref = ZOProbe(model, P, seed=1, directions=directions, eps=1e-4)
    fast = ZOProbe(
        model,
        P,
        seed=1,
        directions=directions,
        eps=1e-4,
        split_at="blocks.1",
        tail=("ln_f", "head"),
    )
    torch.testing.assert_close(fast.features(pool), ref.features(pool), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="must own the probed parameter"):
        ZOProbe(model, P, split_at="blocks.0", tail=("ln_f", "head"))
    with pytest.raises(ValueError, match="tail must name"):
        ZOProbe(model, P, split_at="blocks.1", tail=("norm",))


def test_per_example_loss_hand_computed():
    # logits[t] predicts labels[t + 1]; prompt (-100) and padding are skipped; an example with no
    # label token has loss 0. Reference: an explicit log-softmax written with math.
    import math

    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]],
            [[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ],
        dtype=torch.float64,
    )  # [N=2, T=4, V=3]
    labels = torch.tensor([[-100, 1, 2, 0], [-100, -100, -100, -100]])

    def nll(row: list[float], target: int) -> float:
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    # example 0: positions 1, 2, 3 are targets, predicted from logits at 0, 1, 2
    want0 = (nll([2, 0, 0], 1) + nll([0, 1, 0], 2) + nll([0, 0, 3], 0)) / 3
    got = per_example_lm_loss(logits, labels)
    assert got.tolist() == pytest.approx([want0, 0.0], rel=1e-12)
