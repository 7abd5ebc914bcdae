"""Schedule, forward noising, DDIM sampling and EMA against closed forms and the original."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ldm.config import ConfigError, check_targets
from ldm.models.diffusion.ddim import DDIMSampler, make_ddim_timesteps
from ldm.models.diffusion.ddpm import DDPM

UNET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"


def make_ddpm(unet_params: dict, **kwargs) -> DDPM:
    return DDPM(
        unet_config={"target": UNET, "params": unet_params},
        linear_start=0.0015,
        linear_end=0.0195,
        **kwargs,
    )


def fixture_cond(v: dict) -> dict:
    return {
        "masked_latent": v["masked_latent"],
        "reference_latent": v["reference_latent"],
        "audio_feature": v["audio_feature"],
        "landmark_feature": v["landmark_feature"],
    }


def test_schedule_equals_the_original(original_vectors):
    model = make_ddpm(original_vectors["unet"]["config"])
    ref = original_vectors["schedule"]["alphas_cumprod"]
    torch.testing.assert_close(model.alphas_cumprod.double(), ref, atol=1e-7, rtol=1e-6)
    assert abs(float(ref[-1]) - 1.42e-4) < 1e-5  # SPEC 4.5: abar_T ~ 1.42e-4


def test_q_sample_matches_its_closed_form(original_vectors):
    model = make_ddpm(original_vectors["unet"]["config"])
    abar = original_vectors["schedule"]["alphas_cumprod"].float()
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    expected = (
        abar[t].sqrt()[:, None, None, None] * x0 + (1 - abar[t]).sqrt()[:, None, None, None] * noise
    )
    torch.testing.assert_close(model.q_sample(x0, t, noise), expected)
    # Statistically: at t=999 the sample is almost pure unit-variance noise around sqrt(abar) x0.
    x0 = torch.full((20000,), 3.0)
    z = model.q_sample(x0[:, None], torch.full((20000,), 999))
    assert abs(z.mean().item() - 3.0 * abar[999].sqrt().item()) < 0.03
    assert abs(z.std().item() - (1 - abar[999]).sqrt().item()) < 0.03


def test_ddim_timesteps_are_the_original_uniform_subset():
    assert make_ddim_timesteps(200, 1000)[[0, 1, -1]].tolist() == [1, 6, 996]
    assert len(make_ddim_timesteps(200, 1000)) == 200
    for steps in (3, 27, 111, 333, 999):  # T % S != 0: LDM's range overran the schedule
        ts = make_ddim_timesteps(steps, 1000)
        assert len(ts) == steps and ts.max() <= 999


def test_ddim_reproduces_the_original_sample(original_vectors):
    v, unet = original_vectors["ddim"], original_vectors["unet"]
    model = make_ddpm(unet["config"])
    model.model.diffusion_model.load_state_dict(unet["state_dict"])
    sampler = DDIMSampler(model)
    out = sampler.sample(
        v["steps"], fixture_cond(v), tuple(v["x_T"].shape), eta=v["eta"], x_T=v["x_T"]
    )
    np.testing.assert_array_equal(sampler.timesteps, v["timesteps"].numpy())
    torch.testing.assert_close(out, v["sample"], rtol=1e-3, atol=1e-4)


def test_ddim_inpainting_keeps_the_known_region(original_vectors):
    torch.manual_seed(0)
    model = make_ddpm(original_vectors["unet"]["config"])  # fresh UNet
    cond = fixture_cond(original_vectors["ddim"])
    x0 = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., :8, :] = 1.0  # upper half known
    gen = torch.Generator().manual_seed(1)
    out = DDIMSampler(model).sample(20, cond, (2, 3, 16, 16), x0=x0, mask=mask, generator=gen)
    known_err = (out - x0)[..., :8, :].abs().mean().item()
    free_err = (out - x0)[..., 8:, :].abs().mean().item()
    noise_level = (1 - model.alphas_cumprod[1]).sqrt().item()  # the last step's noise, ~0.055
    assert known_err < 2 * noise_level
    assert free_err > 10 * noise_level


def test_same_generator_gives_the_same_sample(original_vectors):
    model = make_ddpm(original_vectors["unet"]["config"])
    cond = fixture_cond(original_vectors["ddim"])
    runs = [
        DDIMSampler(model).sample(
            5, cond, (2, 3, 16, 16), eta=1.0, generator=torch.Generator().manual_seed(s)
        )
        for s in (7, 7, 8)
    ]
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    assert not torch.allclose(runs[0], runs[2])


def test_ema_warms_up_and_swaps_in_and_out(original_vectors):
    model = make_ddpm(original_vectors["unet"]["config"])
    param = model.model.diffusion_model.time_embed[0].weight
    before = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)
    model.update_ema()  # first update: decay = min(0.9999, 2/11)
    shadow = model.model_ema.diffusion_modeltime_embed0weight
    torch.testing.assert_close(shadow, before + (1 - 2 / 11))
    with model.ema_scope():
        torch.testing.assert_close(param.detach(), shadow)
    torch.testing.assert_close(param.detach(), before + 1.0)


def test_ema_swaps_into_a_model_frozen_for_inference(original_vectors):
    """load_model freezes every parameter; the EMA weights must still be the ones rendering."""
    model = make_ddpm(original_vectors["unet"]["config"])
    param = model.model.diffusion_model.time_embed[0].weight
    with torch.no_grad():
        param.add_(1.0)
    model.update_ema()
    shadow = model.model_ema.diffusion_modeltime_embed0weight.clone()
    model.requires_grad_(False)
    with model.ema_scope():
        torch.testing.assert_close(param.detach(), shadow)
    assert not torch.allclose(param.detach(), shadow)


def test_options_nothing_honours_are_clear_errors(original_vectors):
    with pytest.raises(ValueError, match="parameterization must be one of"):
        make_ddpm(original_vectors["unet"]["config"], parameterization="x0")
    for key, value in (("loss_type", "l1"), ("beta_schedule", "cosine")):
        cfg = OmegaConf.create({"target": "ldm.models.diffusion.ddpm.DDPM", "params": {key: value}})
        with pytest.raises(ConfigError, match=f"takes no parameter '{key}'"):
            check_targets(cfg)


class TrueV(torch.nn.Module):
    """A denoiser that outputs the exact v of known (z_0, eps)."""

    def __init__(self, ddpm: DDPM, z0: torch.Tensor, noise: torch.Tensor) -> None:
        super().__init__()
        self.a, self.s = ddpm.sqrt_alphas_cumprod, ddpm.sqrt_one_minus_alphas_cumprod
        self.z0, self.noise = z0, noise

    def forward(self, x, t, cond):
        a, s = self.a[t].view(-1, 1, 1, 1), self.s[t].view(-1, 1, 1, 1)
        return a * self.noise - s * self.z0


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_v_prediction_is_converted_to_eps(original_vectors, parameterization):
    model = make_ddpm(original_vectors["unet"]["config"], parameterization=parameterization)
    gen = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([0, 250, 600, 999])
    model.model = TrueV(model, z0, noise)
    eps = model.apply_model(model.q_sample(z0, t, noise), t, {})
    loss, _ = model.p_losses(z0, {}, t, noise=noise)
    if parameterization == "v":  # the true v is the true eps once converted
        torch.testing.assert_close(eps, noise, atol=1e-5, rtol=1e-5)
        assert float(loss) < 1e-9
    else:  # an eps model that outputs v is wrong wherever abar < 1
        assert float(loss) > 0.1
