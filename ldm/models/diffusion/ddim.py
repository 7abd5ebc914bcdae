"""DDIMSampler with DiffTalk's latent inpainting (x0 + mask), on whatever device the model is."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:  # neither imports this module: no circle, even for a type checker
    from ldm.models.diffusion.gaussian import DDPM
    from ldm.models.diffusion.wrapper import Cond


def make_ddim_timesteps(num_ddim_steps: int, num_ddpm_timesteps: int) -> np.ndarray:
    """LDM's "uniform" subset: 0, c, 2c, ... plus one, with c = T // S (S=200: 1, 6, ..., 996).

    Exactly S steps: where T % S != 0, LDM's ``range(0, T, c)`` yields more than S and its last
    one (+1) runs past the schedule (S=3: t=1000); the first S of them are kept here.
    """
    if not 0 < num_ddim_steps < num_ddpm_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{num_ddpm_timesteps - 1}, got {num_ddim_steps}")
    c = num_ddpm_timesteps // num_ddim_steps
    return np.arange(num_ddim_steps) * c + 1


class DDIMSampler:
    """Deterministic (eta=0) or stochastic DDIM over a uniform subset of the model's timesteps."""

    def __init__(self, model: DDPM) -> None:
        self.model = model

    def make_schedule(self, steps: int, eta: float = 0.0) -> None:
        """Compute the timestep subset and its alphas/sigmas (float64, then float32 on device)."""
        alphacums = self.model.alphas_cumprod.detach().cpu().double().numpy()
        self.timesteps = make_ddim_timesteps(steps, self.model.num_timesteps)
        alphas = alphacums[self.timesteps]
        alphas_prev = np.asarray([alphacums[0]] + alphacums[self.timesteps[:-1]].tolist())
        sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        dev = self.model.device
        as_t = lambda a: torch.tensor(np.asarray(a, dtype=np.float32), device=dev)  # noqa: E731
        self.alphas, self.alphas_prev, self.sigmas = as_t(alphas), as_t(alphas_prev), as_t(sigmas)
        self.sqrt_one_minus_alphas = as_t(np.sqrt(1.0 - alphas))

    @torch.no_grad()
    def sample(
        self,
        steps: int,
        cond: Cond,
        shape: tuple[int, ...],
        eta: float = 0.0,
        x_T: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample latents of ``shape`` (B, C, h, w).

        With ``x0`` and ``mask`` (B, 1, h, w; 1 = known), the known region is replaced by
        q_sample(x0, t) before every step (fresh noise each time), as the original does; the
        final output is not re-composited (SPEC 5.1).
        """
        self.make_schedule(steps, eta)
        dev = self.model.device
        img = randn(shape, generator, dev) if x_T is None else x_T.to(dev)
        for i, step in enumerate(tqdm(np.flip(self.timesteps), disable=not progress, desc="DDIM")):
            index = len(self.timesteps) - i - 1
            ts = torch.full((shape[0],), int(step), device=dev, dtype=torch.long)
            if mask is not None:
                abar = float(self.model.alphas_cumprod[int(step)])
                img = inpaint_known(img, x0, mask, abar**0.5, (1 - abar) ** 0.5, generator)
            img = self.p_sample_ddim(img, cond, ts, index, generator)
        return img

    def p_sample_ddim(
        self,
        x: torch.Tensor,
        cond: Cond,
        t: torch.Tensor,
        index: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One DDIM update z_t -> z_prev."""
        e_t = self.model.apply_model(x, t, cond)
        a_t, a_prev = self.alphas[index], self.alphas_prev[index]
        sigma_t = self.sigmas[index]
        pred_x0 = (x - self.sqrt_one_minus_alphas[index] * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt
        if float(sigma_t) > 0:
            x_prev = x_prev + sigma_t * randn(x.shape, generator, x.device)
        return x_prev


def inpaint_known(
    x: torch.Tensor,
    x0: torch.Tensor,
    mask: torch.Tensor,
    alpha: float,
    sigma: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Replace the known region (mask 1) of x by alpha x0 + sigma noise, fresh noise each call."""
    noised = alpha * x0 + sigma * randn(x0.shape, generator, x.device)
    return noised * mask + (1.0 - mask) * x


def randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)
