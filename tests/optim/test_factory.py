"""Optimizer registry and the timm-style factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from batchcraft.optim import Adan, OptimInfo, create_optimizer, list_optimizers, register_optimizer


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def test_list_optimizers_has_adan_variants() -> None:
    names = list_optimizers()
    assert {"adan", "adanw", "adamw", "sgd"} <= set(names)
    assert list_optimizers("adan*") == ["adan", "adanw"]


def test_create_adan_groups_1d_params_without_decay() -> None:
    model = small_model()
    opt = create_optimizer(model, "adan", lr=1.5e-2, weight_decay=0.02, max_grad_norm=5.0)
    assert isinstance(opt, Adan)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.ndim < 2 for p in no_decay["params"]) and len(no_decay["params"]) == 4
    assert decay["lr"] == 1.5e-2 and opt.defaults["max_grad_norm"] == 5.0
    assert decay["no_prox"] is False


def test_adanw_is_decoupled_and_case_insensitive() -> None:
    opt = create_optimizer(small_model(), "AdanW", weight_decay=0.05)
    assert all(g["no_prox"] for g in opt.param_groups)
    assert opt.defaults["lr"] == 1e-3  # the optimizer's own default when lr is None


def test_adamw_and_frozen_params() -> None:
    model = small_model()
    model[0].weight.requires_grad_(False)
    opt = create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model[0].weight) not in ids and len(ids) == 5


def test_no_decay_1d_off_and_explicit_groups() -> None:
    model = small_model()
    opt = create_optimizer(model, "adan", weight_decay=0.02, no_decay_1d=False)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.02
    groups = [
        {"params": list(model[0].parameters()), "lr": 0.1},
        {"params": list(model[2].parameters())},
    ]
    opt = create_optimizer(groups, "adan", lr=0.01, weight_decay=0.03)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.03, 0.03]


def test_factory_errors() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        create_optimizer(small_model(), "lamb")
    with pytest.raises(ValueError, match="takes 3 betas"):
        create_optimizer(small_model(), "adan", betas=(0.9, 0.99))


def test_register_custom_optimizer() -> None:
    register_optimizer(OptimInfo("adan-shared", Adan, 3, {"shared_step": True}, "official counter"))
    opt = create_optimizer(small_model(), "adan-shared")
    assert opt.defaults["shared_step"] is True
