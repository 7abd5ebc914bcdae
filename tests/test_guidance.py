"""Classifier-free guidance on the speech: dropping it in training, extrapolating at sampling."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_diffusion import fixture_cond, make_ddpm

from ldm.inference.render import RenderOptions
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.guidance import GuidedModel, drop_speech, null_speech

B = 400


def speech_cond(b: int = B) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {
        "masked_latent": torch.randn(b, 3, 4, 4, generator=gen),
        "reference_latent": torch.randn(b, 3, 4, 4, generator=gen),
        "audio_feature": torch.randn(b, 64, generator=gen) + 3.0,  # never zero by chance
        "landmark_feature": torch.randn(b, 64, generator=gen),
        "mouth_sketch": torch.rand(b, 20, 4, 4, generator=gen) + 0.5,
    }


def test_drop_speech_zeroes_the_speech_of_the_same_samples_and_nothing_else():
    cond = speech_cond()
    out = drop_speech(cond, 0.3, torch.Generator().manual_seed(0))
    dropped = (out["audio_feature"] == 0).all(-1)
    assert torch.equal(dropped, (out["mouth_sketch"] == 0).flatten(1).all(-1))  # both keys
    assert 0.22 < float(dropped.float().mean()) < 0.38  # about p of the batch
    for key in ("audio_feature", "mouth_sketch"):
        assert torch.equal(out[key][~dropped], cond[key][~dropped])
    for key in ("masked_latent", "reference_latent", "landmark_feature"):
        assert torch.equal(out[key], cond[key])
    untouched = drop_speech(cond, 0.0)
    assert all(torch.equal(untouched[k], v) for k, v in cond.items())


class Linear:
    """A stand-in DDPM whose eps is linear in the speech: x + t + sum(audio feature)."""

    condition_drop = 0.1
    alphas_cumprod, num_timesteps, device = torch.ones(10), 10, torch.device("cpu")

    def __init__(self) -> None:
        self.batches: list[int] = []

    def apply_model(self, x, t, cond):
        self.batches.append(len(x))
        return x + t.view(-1, 1, 1, 1) + cond["audio_feature"].sum(-1).view(-1, 1, 1, 1)


def test_guided_eps_extrapolates_from_the_null_speech_in_one_call():
    model, cond = Linear(), speech_cond(4)
    x, t = torch.randn(4, 3, 4, 4), torch.tensor([1, 2, 3, 4])
    guided = GuidedModel(model, 3.0).apply_model(x, t, cond)
    speech = cond["audio_feature"].sum(-1).view(-1, 1, 1, 1)
    torch.testing.assert_close(guided, x + t.view(-1, 1, 1, 1) + 3.0 * speech)
    assert model.batches == [8]  # the conditional and the null half in one UNet call


def test_guidance_one_samples_exactly_as_the_plain_model(original_vectors):
    v = original_vectors["ddim"]
    model = make_ddpm(original_vectors["unet"]["config"])
    model.model.diffusion_model.load_state_dict(original_vectors["unet"]["state_dict"])
    model.condition_drop = 0.1
    cond = fixture_cond(v)
    shape, x_T = tuple(v["x_T"].shape), v["x_T"]
    plain = DDIMSampler(model).sample(5, cond, shape, x_T=x_T)
    same = DDIMSampler(GuidedModel(model, 1.0)).sample(5, cond, shape, x_T=x_T)
    guided = DDIMSampler(GuidedModel(model, 3.0)).sample(5, cond, shape, x_T=x_T)
    torch.testing.assert_close(same, plain, rtol=1e-4, atol=1e-5)
    assert (guided - plain).abs().max() > 1e-3  # the speech moves the guided sample


def test_guidance_refuses_a_model_never_trained_without_speech():
    with pytest.raises(ValueError, match="condition_drop > 0"):
        GuidedModel(SimpleNamespace(condition_drop=0.0), 2.0)
    with pytest.raises(ValueError, match="guidance must be >= 1"):
        RenderOptions(guidance=0.5)


def test_null_speech_keeps_the_frame_reference_and_upper_face():
    cond = speech_cond(2)
    null = null_speech(cond)
    assert not null["audio_feature"].any() and not null["mouth_sketch"].any()
    assert torch.equal(null["reference_latent"], cond["reference_latent"])
    assert torch.equal(null["landmark_feature"], cond["landmark_feature"])
