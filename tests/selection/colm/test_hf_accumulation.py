"""CoLMTrainer under gradient accumulation: the optimizer sees the MEAN micro-batch gradient.

Each micro-batch is one pool; its loss is the mean over its coreset. With ``k`` accumulated
micro-batches, the gradient at the optimizer step must be the mean of the ``k`` coreset-loss
gradients (not their sum) and the logged loss the mean of the ``k`` coreset losses, whatever
``k`` is and whether or not the model accepts the Trainer's loss kwargs. The reference below is
written by hand (a loop over examples and their label tokens), independent of the library's loss.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("peft")

POOL, CORESET = 8, 4


def _example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over one example's label tokens (``logits: [T, V]``, ``labels: [T]``)."""
    terms = [
        F.cross_entropy(logits[t - 1 : t].float(), labels[t : t + 1])
        for t in range(1, labels.shape[0])
        if int(labels[t]) != -100
    ]
    return torch.stack(terms).mean()


def _setup(tmp_path, ga: int, *, accepts_loss_kwargs: bool, steps: int = 2):
    from transformers import TrainerCallback, TrainingArguments

    from batchcraft.data.mixture import make_mixture
    from batchcraft.selection.colm import CoLMSelector, ZOProbe
    from batchcraft.selection.colm.hf import CoLMTrainer, find_param, lora_wrap, tiny_llama

    mix = make_mixture((40, 20, 6, 3), seed=0, eval_size=2)
    rows = [{k: v[i] for k, v in mix.train.items()} for i in range(len(mix.train["source"]))]

    def collator(examples):
        return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}

    model = lora_wrap(tiny_llama(mix.tokenizer.vocab_size, hidden_size=16, heads=2), r=4)
    # LoRA-B starts at zero, which makes every LoRA-A gradient zero: give B values so both count
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model.base_model.model.accepts_loss_kwargs = accepts_loss_kwargs
    name = find_param(model, "layers.1.self_attn.v_proj.lora_B")
    selector = CoLMSelector(ZOProbe(model, name, seed=0), CORESET, source_counts=mix.counts, h=16)
    seen: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []
    select = selector.select

    def recording_select(batch):
        sel = select(batch)
        seen.append(({k: v.clone() for k, v in batch.items()}, sel.idx.clone()))
        return sel

    selector.select = recording_select  # type: ignore[method-assign]
    grads: list[dict[str, torch.Tensor]] = []

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            grads.append(
                {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            )

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=POOL,
        gradient_accumulation_steps=ga,
        learning_rate=0.0,  # parameters stay put: the reference can be computed afterwards
        max_grad_norm=0.0,  # no clipping between accumulation and the optimizer
        report_to=[],
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        use_cpu=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = CoLMTrainer(
        selector=selector, model=model, args=args, train_dataset=rows, data_collator=collator
    )
    trainer.add_callback(Capture())
    return trainer, model, seen, grads


def _reference(model, seen, ga: int):
    """Per optimizer step: mean over its micro-batches of the coreset-mean loss and gradient."""
    from batchcraft.selection.colm import model_inputs

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    out_losses, out_grads = [], []
    for s in range(len(seen) // ga):
        losses, grads = [], []
        for batch, idx in seen[s * ga : (s + 1) * ga]:
            sub = {k: v[idx] for k, v in batch.items()}
            logits = model(**model_inputs(sub)).logits  # [K, T, V]
            loss = torch.stack(
                [_example_loss(logits[i], sub["labels"][i]) for i in range(idx.numel())]
            ).mean()
            gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            grads.append({n: torch.zeros_like(p) if g is None else g
                          for (n, p), g in zip(params.items(), gs, strict=True)})  # fmt: skip
            losses.append(float(loss))
        out_losses.append(sum(losses) / ga)
        out_grads.append({n: sum(g[n] for g in grads) / ga for n in params})
    return out_losses, out_grads


@pytest.mark.parametrize(
    ("ga", "accepts"),
    [(1, True), (2, True), (4, True), (2, False)],
    ids=["ga1", "ga2", "ga4", "ga2-no-loss-kwargs"],
)
def test_optimizer_sees_mean_micro_batch_gradient(tmp_path, ga, accepts):
    trainer, model, seen, grads = _setup(tmp_path, ga, accepts_loss_kwargs=accepts)
    trainer.train()
    assert len(seen) == 2 * ga and len(grads) == 2  # one pool per micro-batch, two steps
    ref_losses, ref_grads = _reference(model, seen, ga)
    for step, (got, want) in enumerate(zip(grads, ref_grads, strict=True)):
        assert any(float(want[n].abs().max()) > 0 for n in want)
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-7, msg=f"{step} {n}")
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert logged == pytest.approx(ref_losses, rel=1e-4)


def test_logged_loss_does_not_scale_with_accumulation(tmp_path):
    # the same first pool is a micro-batch of both runs: with ga=4 the logged loss is the mean of
    # four coreset losses, so it must stay within the spread of single-pool losses (a sum would
    # be about 4x).
    logged = {}
    for ga in (1, 4):
        trainer, _, _, _ = _setup(tmp_path / f"ga{ga}", ga, accepts_loss_kwargs=True, steps=1)
        trainer.train()
        logged[ga] = next(e["loss"] for e in trainer.state.log_history if "loss" in e)
    assert logged[4] == pytest.approx(logged[1], rel=0.5)


def test_evaluation_does_not_select_and_refuses_compute_loss_func(tmp_path):
    trainer, model, seen, _ = _setup(tmp_path, 1, accepts_loss_kwargs=True)
    ev = trainer.train_dataset[:POOL]
    steps_before = trainer.selector.steps
    metrics = trainer.evaluate(eval_dataset=ev)
    assert trainer.selector.steps == steps_before and not seen  # evaluation never selects
    from batchcraft.selection.colm import model_inputs

    batch = trainer.data_collator(ev)
    model.eval()
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
    want = torch.stack([_example_loss(logits[i], batch["labels"][i]) for i in range(POOL)]).mean()
    assert metrics["eval_loss"] == pytest.approx(float(want), rel=1e-4)

    from batchcraft.selection.colm.hf import CoLMTrainer

    with pytest.raises(ValueError, match="compute_loss_func"):
        CoLMTrainer(
            selector=trainer.selector,
            model=model,
            args=trainer.args,
            compute_loss_func=lambda *a, **k: 0.0,
        )
