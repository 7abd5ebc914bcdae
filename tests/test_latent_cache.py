"""The training-latent cache filled before the first step (fill_cache) holds what training reads."""

from __future__ import annotations

import pytest
import torch
from test_demo_recipe import demo_model, kl_first_stage, talking_demo_args  # noqa: F401
from test_train import data  # noqa: F401
from torch.utils.data import default_collate

from ldm.models.diffusion.latent_cache import FirstStageCache
from ldm.models.diffusion.latents import REFERENCE_KEY
from ldm.util import instantiate_from_config

pytestmark = pytest.mark.usefixtures("one_thread")


def training_set(config):
    """The run's training dataset (mouth-matched, resampled and self references)."""
    dataset = instantiate_from_config(config.data.params.train)
    assert dataset.resample_reference and dataset.self_reference > 0
    return dataset


def test_the_filled_cache_holds_every_pair_training_draws_and_their_latents(demo_model):  # noqa: F811
    _, model, config = demo_model
    dataset = training_set(config)
    model.latent_cache = FirstStageCache()
    model.fill_latent_cache(dataset)
    filled = dict(model.latent_cache.store)
    assert not model.training  # the fill left the model as it found it
    torch.manual_seed(0)
    drawn = [dataset[i % len(dataset)] for i in range(4 * len(dataset))]
    for item in drawn:
        vid, frame, ref = item["video_id"], item["frame"], item["reference_frame"]
        assert (vid, frame, "image") in filled and (vid, frame, "image_mask") in filled
        if ref != frame:  # a frame that is its own reference reads its image latent
            assert (vid, frame * REFERENCE_KEY + ref, "aligned_reference") in filled
    assert any(item["reference_frame"] == item["frame"] for item in drawn)
    assert not any(k[2] == "aligned_reference" and k[1] // REFERENCE_KEY == k[1] % REFERENCE_KEY
                   for k in filled)  # fmt: skip

    # the same pairs encoded one batch at a time in fp32, as the first epochs would
    batch = default_collate(drawn[:8])
    model.latent_cache = FirstStageCache()
    model.train()
    with torch.no_grad():
        lazy = model.reference_latents(batch)
        image = model.encode_frames(batch, "image", "frame")
    model.eval()
    model.latent_cache = FirstStageCache()
    model.latent_cache.store = filled
    model.train()
    with torch.no_grad():
        cached = model.reference_latents(batch)
    model.eval()
    spread = lazy.std()
    assert (cached - lazy).pow(2).mean().sqrt() < 0.01 * spread  # bf16 encodes: ~0.3 %
    own = batch["reference_frame"] == batch["frame"]
    assert torch.equal(lazy[own], image[own])
