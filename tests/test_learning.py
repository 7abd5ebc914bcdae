"""The talking LatentDiffusion learns: a few hundred steps on fixed frames cut the loss."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from ldm.data.talk import TalkTrain
from ldm.util import instantiate_from_config

from conftest import small_config


def fixed_loss(model, batch, t, noise) -> float:
    with torch.no_grad():
        z, cond, _ = model.get_input(batch)
        return model.p_losses(z, cond, t, noise)[0].item()


@pytest.mark.slow
def test_few_hundred_steps_reduce_the_loss_by_a_large_factor(tiny_dataset):
    torch.manual_seed(0)
    cfg = small_config()
    cfg.model.params.use_ema = True
    cfg.model.params.cache_first_stage = True  # fixed frames: encode once
    model = instantiate_from_config(cfg.model)
    model.learning_rate = 2e-3
    ds = TalkTrain(
        split_file=str(tiny_dataset.parent / "data_train.txt"), root=str(tiny_dataset), size=32
    )
    batch = next(iter(DataLoader(ds, batch_size=4)))  # 4 fixed frames of one identity
    t = torch.linspace(0, 999, 4).long()
    noise = torch.randn(4, 3, 8, 8)
    before = fixed_loss(model, batch, t, noise)
    opt = model.configure_optimizers()
    model.train()
    for _ in range(300):
        loss, _ = model.shared_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_ema()
    model.eval()
    after = fixed_loss(model, batch, t, noise)
    assert after < before / 4, (before, after)  # measured: 0.95 -> 0.18
    with model.ema_scope():  # the EMA weights have followed the training
        assert fixed_loss(model, batch, t, noise) < before / 2


def test_first_stage_cache_is_exact_and_encodes_each_frame_once(tiny_dataset):
    cfg = small_config()
    cfg.model.params.cache_first_stage = True
    model = instantiate_from_config(cfg.model)
    ds = TalkTrain(
        split_file=str(tiny_dataset.parent / "data_train.txt"), root=str(tiny_dataset), size=32
    )
    batch = next(iter(DataLoader(ds, batch_size=4)))
    calls = []
    encode = model.first_stage_model.encode
    model.first_stage_model.encode = lambda x: calls.append(len(x)) or encode(x)
    model.train()
    z1, cond1, _ = model.get_input(batch)
    n_first = sum(calls)
    z2, cond2, _ = model.get_input(batch)
    assert sum(calls) == n_first  # second pass: all from the cache
    assert n_first <= 4 + 4 + 4  # image, masked, reference: at most one encode each
    model.eval()  # validation/inference never use the cache
    z3, cond3, _ = model.get_input(batch)
    assert sum(calls) > n_first
    for a, b in ((z1, z3), (cond1["masked_latent"], cond3["masked_latent"])):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(cond2["reference_latent"], cond3["reference_latent"])
