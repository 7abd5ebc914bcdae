"""DDPM: the linear schedule, noising, the eps loss (Min-SNR optional), EMA and the optimiser
(LDM's DDPM); LatentDiffusion (ldm/models/diffusion/ddpm.py) builds on it."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from ldm.models.diffusion.wrapper import Cond, DiffusionWrapper
from ldm.modules.diffusionmodules.util import extract_into_tensor, make_beta_schedule
from ldm.modules.ema import LitEma
from ldm.util import default, mean_flat

logger = logging.getLogger(__name__)

PARAMETERIZATIONS = ("eps", "v")


class DDPM(pl.LightningModule):
    """Gaussian diffusion with eps (or v) prediction on what ``get_input`` returns (LDM's DDPM)."""

    def __init__(
        self,
        unet_config: Any,
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        parameterization: str = "eps",  # what the UNet outputs: "eps" (the original) or "v"
        # (v = sqrt(abar) eps - sqrt(1 - abar) z_0, Salimans & Ho 2022), converted to eps in
        # apply_model, so the loss and the samplers work in eps either way
        use_ema: bool = True,
        ema_decay: float = 0.9999,
        l_simple_weight: float = 1.0,
        original_elbo_weight: float = 0.0,
        weight_decay: float = 0.01,  # AdamW's default, as the original
        snr_gamma: float | None = None,  # Min-SNR-gamma loss weights (Hang et al. 2023); None:
        # the original's uniform weighting over timesteps
        conditioning_key: str = "hybrid",
        image_size: int = 64,  # latent size
        channels: int = 3,  # latent channels
        monitor: str | None = None,
    ) -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"model.params.parameterization must be one of {PARAMETERIZATIONS}, "
                f"got {parameterization!r}"
            )
        self.parameterization = parameterization
        self.image_size = image_size
        self.channels = channels
        self.l_simple_weight = l_simple_weight
        self.original_elbo_weight = original_elbo_weight
        self.weight_decay = weight_decay
        self.snr_gamma = snr_gamma
        self.learning_rate = 1e-4  # set by main.py from base_learning_rate (and --scale_lr)
        if monitor is not None:
            self.monitor = monitor
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model, decay=ema_decay)
        self.register_schedule(timesteps, linear_start, linear_end)

    def register_schedule(self, timesteps: int, linear_start: float, linear_end: float) -> None:
        """Register the schedule buffers (float32) and the VLB weights of eps prediction."""
        betas = make_beta_schedule(timesteps, linear_start, linear_end)
        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        with np.errstate(divide="ignore"):
            lvlb = betas**2 / (2 * posterior_variance * (1.0 - betas) * (1 - alphas_cumprod))
        lvlb[0] = lvlb[1]
        self.num_timesteps = int(timesteps)
        for name, value in {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "lvlb_weights": lvlb,
        }.items():
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32), persistent=False)

    @contextmanager
    def ema_scope(self, context: str | None = None):
        """Swap the EMA weights into the UNet wrapper for the duration of the block."""
        if self.use_ema:
            self.model_ema.store(self.model.parameters())
            self.model_ema.copy_to(self.model)
            if context is not None:
                logger.debug("%s: switched to EMA weights", context)
        try:
            yield
        finally:
            if self.use_ema:
                self.model_ema.restore(self.model.parameters())

    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sample z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps for a batch of timesteps t (B,)."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        return (
            extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The denoiser's eps estimate for (B, C, h, w) latents z_t at timesteps t (B,).

        With ``parameterization: v`` the UNet predicts v and eps = sqrt(abar) v + sqrt(1 - abar)
        z_t. The eps loss of that estimate is abar times the v loss, so with ``snr_gamma`` it
        equals the v loss under Min-SNR's v weights min(SNR, gamma) / (SNR + 1)."""
        out = self.unet_output(x_noisy, t, cond)
        if self.parameterization == "v":
            a = extract_into_tensor(self.sqrt_alphas_cumprod, t, x_noisy.shape)
            s = extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_noisy.shape)
            out = a * out + s * x_noisy
        return out

    def unet_output(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """What the UNet wrapper predicts (eps or v) for z_t at timesteps t; subclasses may
        offset it (LatentDiffusion's ``reference_prior``)."""
        return self.model(x_noisy, t, cond)

    def p_losses(
        self,
        x_start: torch.Tensor,
        cond: Cond,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Simple (eps) loss, plus the weightless-by-default VLB term; ``weight`` scales pixels."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        model_out = self.apply_model(self.q_sample(x_start, t, noise), t, cond)
        err = (model_out - noise) ** 2
        if weight is not None:
            err = err * weight
        loss_simple = mean_flat(err)  # (B,)
        if self.snr_gamma is not None:
            loss_simple = loss_simple * self.min_snr_weight(t)
        loss_vlb = (self.lvlb_weights[t] * loss_simple).mean()
        loss = self.l_simple_weight * loss_simple.mean() + self.original_elbo_weight * loss_vlb
        split = "train" if self.training else "val"
        return loss, {
            f"{split}/loss_simple": loss_simple.mean(),
            f"{split}/loss_vlb": loss_vlb,
            f"{split}/loss": loss,
        }

    def min_snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) Min-SNR-gamma weights min(SNR, gamma) / SNR of eps prediction at timesteps t:
        the nearly clean timesteps, whose noise is easy to tell, no longer dominate the loss."""
        abar = self.alphas_cumprod[t]
        snr = abar / (1.0 - abar)
        return torch.clamp(snr, max=self.snr_gamma) / snr

    def get_input(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Cond, torch.Tensor | None]:
        """Return (z_0, conditions, optional loss weight map); defined by subclasses."""
        raise NotImplementedError

    def shared_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a batch at uniformly drawn timesteps."""
        z, cond, weight = self.get_input(batch)
        t = torch.randint(0, self.num_timesteps, (z.shape[0],), device=self.device).long()
        return self.p_losses(z, cond, t, weight=weight)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, loss_dict = self.shared_step(batch)
        self.log_dict(loss_dict, prog_bar=False, logger=True, on_step=True, on_epoch=True)
        self.log("global_step", float(self.global_step), prog_bar=True, logger=True, on_step=True)
        return loss

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, loss_dict = self.shared_step(batch)
        with self.ema_scope():
            _, loss_dict_ema = self.shared_step(batch)
        loss_dict_ema = {f"{k}_ema": v for k, v in loss_dict_ema.items()}
        self.log_dict(loss_dict, on_step=False, on_epoch=True, sync_dist=True)
        self.log_dict(loss_dict_ema, on_step=False, on_epoch=True, sync_dist=True)

    def update_ema(self) -> None:
        """One EMA step of the UNet wrapper's weights (decay warms up, SPEC 4.6)."""
        if self.use_ema:
            self.model_ema(self.model)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimiser, then the EMA, so a checkpoint saved at batch end holds both."""
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (the UNet here; subclasses add encoders)."""
        return list(self.model.parameters())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.trainable_parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
