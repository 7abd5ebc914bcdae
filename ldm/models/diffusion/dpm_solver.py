"""DPM-Solver++(2M) for the model's discrete VP schedule, with DiffTalk's x0/mask inpainting.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models".
Time points are integer DDPM timesteps (the ones the UNet was trained on), uniform in t, between
the end points of the paper protocol's DDIM-200: x_T is taken as the sample at t = 996 and the
last step lands on abar[0]. Both choices were measured to bring DPM-Solver closest to DDIM-200
(uniform in log-SNR and a start at t = 999 are available; see benchmarks/bench_sampler.py).

With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and lambda_t = log(alpha_t / sigma_t),
one step s -> t with h = lambda_t - lambda_s and the data prediction D = (x_s - sigma_s eps) /
alpha_s is

    x_t = (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-(1 + eta) h}) D'
          + sigma_t sqrt(1 - e^{-2 eta h}) n,

where D' = D + (D - D_prev) / (2 r), r = h_prev / h (second order; first order on the first step
and, for fewer than 15 steps, on the last). eta = 0 is the ODE solver (its first-order step is
exactly DDIM); eta > 0 the SDE variant of DPM-Solver++(2M).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ldm.models.diffusion.ddim import inpaint_known, make_ddim_timesteps, randn

if TYPE_CHECKING:
    from ldm.models.diffusion.gaussian import DDPM
    from ldm.models.diffusion.wrapper import Cond

SPACINGS = ("time", "logsnr")
LOWER_ORDER_FINAL_BELOW = 15  # first-order last step for short schedules (DPM-Solver's default)
PAPER_DDIM_STEPS = 200  # DPM-Solver starts where DDIM-200 starts (t = 996 of 1000)


def ddim_start(num_timesteps: int, ddim_steps: int = PAPER_DDIM_STEPS) -> int:
    """The timestep at which a ``ddim_steps`` DDIM run evaluates x_T."""
    return int(make_ddim_timesteps(min(ddim_steps, num_timesteps - 1), num_timesteps)[-1])


def make_dpm_timesteps(
    steps: int, alphas_cumprod: np.ndarray, spacing: str = "time", t_start: int | None = None
) -> np.ndarray:
    """``steps + 1`` strictly decreasing integer timesteps from ``t_start`` (default T-1) to 0.

    'time': uniform in t (measured closest to DDIM-200); 'logsnr': uniform in
    lambda = log(alpha / sigma), rounded to the nearest trained timestep.
    """
    t_start = len(alphas_cumprod) - 1 if t_start is None else int(t_start)
    if not 0 < steps <= t_start < len(alphas_cumprod):
        raise ValueError(f"DPM-Solver steps must be in 1..{t_start}, got {steps}")
    if spacing == "time":
        ts = np.linspace(t_start, 0, steps + 1)
    elif spacing == "logsnr":
        abar = alphas_cumprod[: t_start + 1]
        lam = 0.5 * np.log(abar / (1.0 - abar))  # decreasing in t
        targets = np.linspace(lam[-1], lam[0], steps + 1)  # noisy -> clean
        ts = np.interp(targets, lam[::-1], np.arange(t_start + 1)[::-1].astype(np.float64))
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose from {SPACINGS}")
    ts = np.round(ts).astype(np.int64)
    for i in range(1, len(ts)):  # keep strictly decreasing after rounding
        ts[i] = min(ts[i], ts[i - 1] - 1)
    ts = np.maximum(ts, np.arange(len(ts))[::-1])  # ... and never below 0
    return ts


class DPMSolverSampler:
    """DPM-Solver++(2M) with the DDIMSampler's ``sample`` signature (x0/mask inpainting)."""

    def __init__(self, model: DDPM, spacing: str = "time", t_start: int | None = None) -> None:
        self.model = model
        self.spacing = spacing
        self.t_start = ddim_start(model.num_timesteps) if t_start is None else t_start

    def make_schedule(self, steps: int) -> None:
        """Time points and their alpha, sigma, lambda (float64, then float32 on the device)."""
        abar = self.model.alphas_cumprod.detach().cpu().double().numpy()
        self.timesteps = make_dpm_timesteps(steps, abar, self.spacing, self.t_start)
        a = abar[self.timesteps]
        self.alpha = np.sqrt(a)  # (steps + 1,)
        self.sigma = np.sqrt(1.0 - a)
        self.lam = np.log(self.alpha) - np.log(self.sigma)

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
        """Sample latents of ``shape`` (B, C, h, w) in ``steps`` model evaluations.

        With ``x0`` and ``mask`` (B, 1, h, w; 1 = known), the known region is replaced by the
        noised x0 at the current noise level before every step, as DDIMSampler does.
        """
        self.make_schedule(steps)
        dev = self.model.device
        x = randn(shape, generator, dev) if x_T is None else x_T.to(dev)
        d_prev, h_prev = None, None
        n = len(self.timesteps) - 1
        for i in tqdm(range(n), disable=not progress, desc="DPM-Solver++"):
            if mask is not None:
                x = inpaint_known(x, x0, mask, self.alpha[i], self.sigma[i], generator)
            d = self.predict_x0(x, i, cond)
            h = self.lam[i + 1] - self.lam[i]
            first_order = d_prev is None or (i == n - 1 and n < LOWER_ORDER_FINAL_BELOW)
            r = None if first_order else h_prev / h
            x = self.step(x, d, d_prev, i, h, r, eta, generator)
            d_prev, h_prev = d, h
        return x

    def predict_x0(self, x: torch.Tensor, i: int, cond: Cond) -> torch.Tensor:
        """Data prediction D = (x - sigma eps) / alpha at time point i."""
        t = torch.full((x.shape[0],), int(self.timesteps[i]), device=x.device, dtype=torch.long)
        eps = self.model.apply_model(x, t, cond)
        return (x - float(self.sigma[i]) * eps) / float(self.alpha[i])

    def step(
        self,
        x: torch.Tensor,
        d: torch.Tensor,
        d_prev: torch.Tensor | None,
        i: int,
        h: float,
        r: float | None,
        eta: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """One (multistep) update from time point i to i + 1."""
        decay = float(np.exp(-eta * h))
        gain = float(self.alpha[i + 1] * -np.expm1(-(1.0 + eta) * h))  # alpha_t (1 - e^-(1+eta)h)
        if r is not None:
            d = d + (d - d_prev) / (2.0 * r)
        out = float(self.sigma[i + 1] / self.sigma[i]) * decay * x + gain * d
        if eta > 0:
            noise_scale = float(self.sigma[i + 1] * np.sqrt(-np.expm1(-2.0 * eta * h)))
            out = out + noise_scale * randn(x.shape, generator, x.device)
        return out
