"""DDPM (schedule, noising, eps loss, EMA, optimiser) and LatentDiffusion for talking heads."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm.models.diffusion import augment
from ldm.models.diffusion import mouth_window as mw
from ldm.models.diffusion.image_logging import log_talking_images
from ldm.models.diffusion.latent_cache import FirstStageCache
from ldm.models.diffusion.reference_align import align_references
from ldm.models.diffusion.sizes import check_sizes
from ldm.models.diffusion.wrapper import Cond, DiffusionWrapper
from ldm.modules.diffusionmodules.util import extract_into_tensor, make_beta_schedule
from ldm.modules.distributions import DiagonalGaussianDistribution
from ldm.modules.ema import LitEma
from ldm.modules.encoders.modules import encode_audio
from ldm.util import default, instantiate_from_config, load_state_dict_file, mean_flat

logger = logging.getLogger(__name__)

REFERENCE_KEY = 2**20  # cache key of an aligned reference: target frame x 2**20 + reference frame


class DDPM(pl.LightningModule):
    """Gaussian diffusion with eps prediction on whatever ``get_input`` returns (LDM's DDPM)."""

    def __init__(
        self,
        unet_config: Any,
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        parameterization: str = "eps",  # the only one: the DDIM and DPM-Solver samplers assume it
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
        if parameterization != "eps":
            raise ValueError(
                f"model.params.parameterization must be 'eps' (the samplers predict noise), "
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
        """Run the denoiser on (B, C, h, w) latents at timesteps t (B,)."""
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


class LatentDiffusion(DDPM):
    """DiffTalk: diffusion in a frozen first stage's latent space, conditioned on audio,
    landmarks, a masked target frame and a reference frame.

    Module names (``first_stage_model``, ``cond_stage_model_for_audio``,
    ``cond_stage_model_for_audio_smooth``, ``cond_stage_model_for_ldm``) are the original's
    checkpoint keys.
    """

    def __init__(
        self,
        first_stage_config: Any,
        audio_config: Any,  # AudioNet: one window -> 64-d
        audio_attention_config: Any,  # AudioAttNet: 8 windows -> one 64-d feature
        landmark_config: Any,  # LdmNet: 39 landmarks -> 64-d
        scale_factor: float = 1.0,
        scale_condition_latents: bool = False,  # original: masked/reference latents unscaled
        mask_loss_weight: float = 1.0,  # original: 1 (uniform); >1 weights the masked region
        cache_first_stage: bool = False,  # keep latents of training frames (small datasets)
        scale_by_std: bool = False,  # LDM: scale_factor = 1 / std of the first batch's latents
        align_reference: bool = False,  # warp the reference onto the target's head pose
        # (original: as it is; ldm/models/diffusion/reference_align.py)
        mouth_window: int | None = None,  # UNet on a W x W latent window at the mouth (None:
        # the whole latent, as the original; ldm/models/diffusion/mouth_window.py)
        window_jitter: int = 0,  # training augmentations (ldm/models/diffusion/augment.py):
        appearance_jitter: float = 0.0,  # window moves / colour changes; 0 = off (original)
        ckpt_path: str | None = None,
        ignore_keys: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.scale_by_std = scale_by_std
        if scale_by_std:  # a buffer, so checkpoints carry the measured value
            self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        else:
            self.scale_factor = scale_factor
        self.scale_measured = False  # set by scale_by_std or a restored checkpoint
        self.scale_condition_latents = scale_condition_latents
        self.mask_loss_weight = mask_loss_weight
        self.latent_cache = FirstStageCache() if cache_first_stage else None
        if mouth_window is not None and not 0 < mouth_window <= self.image_size:
            raise ValueError(
                f"model.params.mouth_window {mouth_window} must be within the latent size "
                f"{self.image_size} (model.params.image_size)"
            )
        self.mouth_window = mouth_window
        self.window_jitter = window_jitter
        self.appearance_jitter = appearance_jitter
        self.align_reference = align_reference
        self.first_stage_model = instantiate_from_config(first_stage_config).eval()
        self.first_stage_model.requires_grad_(False)
        self.cond_stage_model_for_audio = instantiate_from_config(audio_config)
        self.cond_stage_model_for_audio_smooth = instantiate_from_config(audio_attention_config)
        self.cond_stage_model_for_ldm = instantiate_from_config(landmark_config)
        check_sizes(
            self.model.diffusion_model,
            self.first_stage_model,
            self.cond_stage_model_for_audio,
            self.cond_stage_model_for_audio_smooth,
            self.cond_stage_model_for_ldm,
            channels=self.channels,
        )
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys)

    def init_from_ckpt(self, path: str | Path, ignore_keys: tuple[str, ...] = ()) -> None:
        """Load a DiffTalk checkpoint non-strictly (as ``--resume2`` did), logging what differs."""
        sd = load_state_dict_file(path)
        sd = {k: v for k, v in sd.items() if not k.startswith(tuple(ignore_keys))}
        missing, unexpected = self.load_state_dict(sd, strict=False)
        self.scale_measured = True
        logger.info(
            "restored %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected)
        )

    @torch.no_grad()
    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        """With ``scale_by_std``, set scale_factor from the very first training batch (LDM);
        rank 0's value is broadcast so every DDP process scales alike."""
        if not self.scale_by_std or self.global_step > 0 or self.scale_measured:
            return
        z = self.encode_batch_images(batch["image"])
        scale = self.trainer.strategy.broadcast(1.0 / z.flatten().std(), src=0)
        self.scale_factor.fill_(float(scale))
        self.scale_measured = True  # once per run
        logger.info("scale_by_std: scale_factor = %.6g (1 / latent std)", float(scale))

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Keep the frozen first stage in eval mode whatever Lightning asks."""
        super().train(mode)
        self.first_stage_model.eval()
        return self

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> unscaled latent (B, C, h, w) (VQ: pre-quantisation)."""
        out = self.first_stage_model.encode(x)
        return out.mode() if isinstance(out, DiagonalGaussianDistribution) else out  # KL: mean

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent (B, C, h, w) -> image (B, 3, H, W); call under no_grad when sampling."""
        return self.first_stage_model.decode(z / self.scale_factor)

    def encode_batch_images(self, images: torch.Tensor) -> torch.Tensor:
        """Batch images (B, H, W, 3) in [-1, 1] -> unscaled latents (B, C, h, w) on our device."""
        return self.encode_first_stage(to_bchw(images).to(self.device))

    def encode_frames(self, batch: dict[str, Any], key: str, frame_key: str) -> torch.Tensor:
        """Latents of ``batch[key]``; from the cache for training batches when it is on."""
        if self.latent_cache is None or not self.training:
            return self.encode_batch_images(batch[key])
        kind = "image_mask" if key == "image_mask" else "image"  # a reference is a plain frame
        return self.latent_cache.encode(
            lambda idx: self.encode_batch_images(batch[key][idx]),
            batch["frame_id"],
            batch[frame_key],
            kind,
            self.device,
        )

    def reference_latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """Unscaled latents of the batch's references, pose-aligned with ``align_reference``.

        An aligned reference depends on its target too, so the cache keys it by both frames.
        """
        if not self.align_reference:
            return self.encode_frames(batch, "reference_img", "reference_frame")

        def encode(idx: torch.Tensor) -> torch.Tensor:
            ref = to_bchw(batch["reference_img"][idx]).to(self.device)
            lms = (batch[k][idx].to(self.device) for k in ("reference_landmarks", "landmarks"))
            return self.encode_first_stage(align_references(ref, *lms))

        if self.latent_cache is None or not self.training:
            return encode(torch.arange(len(batch["landmarks"])))
        pair = batch["frame"] * REFERENCE_KEY + batch["reference_frame"]  # frames < 2**20
        return self.latent_cache.encode(
            encode, batch["frame_id"], pair, "aligned_reference", self.device
        )

    @property
    def condition_scale(self) -> float:
        """Factor of the masked/reference latents (original: 1, they are never scaled)."""
        return self.scale_factor if self.scale_condition_latents else 1.0

    def get_learned_conditioning(
        self, batch: dict[str, Any], reference_latent: torch.Tensor | None = None
    ) -> Cond:
        """Encode the four conditions of a batch into the dict the DiffusionWrapper reads.

        ``reference_latent`` (1, C, h, w), already scaled, replaces encoding the batch's
        reference images (a renderer encodes a clip's reference once).
        """
        audio = batch["audio_smooth"].to(self.device, torch.float32)  # (B, 8, 16, D)
        masked = self.condition_scale * self.encode_frames(batch, "image_mask", "frame")
        if reference_latent is None:
            reference = self.condition_scale * self.reference_latents(batch)
        else:
            reference = reference_latent.expand(len(masked), -1, -1, -1)
        return {
            "masked_latent": masked,
            "reference_latent": reference,
            "audio_feature": encode_audio(
                self.cond_stage_model_for_audio, self.cond_stage_model_for_audio_smooth, audio
            ),
            "landmark_feature": self.cond_stage_model_for_ldm(
                batch["landmarks"].to(self.device, torch.float32)
            ),
        }

    def get_input(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Cond, torch.Tensor | None]:
        """Batch -> (z_0 (B, C, h, w), conditions, loss weight map or None)."""
        z = self.scale_factor * self.encode_frames(batch, "image", "frame")
        weight = None
        if self.mask_loss_weight != 1.0 and "inpaint_mask" in batch:
            region = F.interpolate(
                batch["inpaint_mask"][:, None].to(z), size=z.shape[-2:], mode="area"
            )  # (B, 1, h, w): 1 where the frame is masked
            weight = 1.0 + (self.mask_loss_weight - 1.0) * region
        cond = self.get_learned_conditioning(batch)
        if self.training and self.appearance_jitter:
            if not self.scale_condition_latents:
                raise ValueError("model.params.appearance_jitter needs scale_condition_latents")
            z, cond = augment.jitter_appearance(z, cond, self.appearance_jitter)
        corners = self.window_corners(batch)
        if corners is None:
            return z, cond, weight
        w = self.mouth_window
        if self.training and self.window_jitter:
            corners = augment.jitter_corners(corners, self.window_jitter, self.image_size - w)
        weight = None if weight is None else mw.crop(weight, corners, w)
        return mw.crop(z, corners, w), mw.crop_condition(cond, corners, w), weight

    @property
    def frame_size(self) -> int:
        """Side in pixels of the frames: latent size x the first stage's downsampling."""
        return self.image_size * 2 ** (self.first_stage_model.encoder.num_resolutions - 1)

    def window_corners(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """(B, 2) mouth-window corners of a batch, or None without ``mouth_window``."""
        if self.mouth_window is None:
            return None
        lms = batch["landmarks"].to(self.device)
        return mw.window_corners(lms, self.frame_size, self.image_size, self.mouth_window)

    def sample_inpaint(
        self, sampler: Any, steps: int, cond: Cond, x0: torch.Tensor, known: torch.Tensor,
        corners: torch.Tensor | None, **kwargs: Any,
    ) -> torch.Tensor:  # fmt: skip
        """Regenerate the unknown cells (known == 0) of x0 (B, C, h, w) with ``sampler`` (kwargs:
        eta, x_T, generator), in the mouth windows at ``corners`` if given: the full latent."""
        return mw.sample_inpaint(
            sampler, steps, cond, x0, known, corners, self.mouth_window, **kwargs
        )

    def log_images(
        self, batch: dict[str, Any], n: int = 4, ddim_steps: int = 50, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Images for the ImageLogger: inputs, masked, reference, reconstruction, DDIM sample."""
        return log_talking_images(self, batch, n, ddim_steps)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """UNet plus the three condition encoders (trained jointly, SPEC 4.7)."""
        encoders = (
            self.cond_stage_model_for_audio,
            self.cond_stage_model_for_audio_smooth,
            self.cond_stage_model_for_ldm,
        )
        return super().trainable_parameters() + [p for m in encoders for p in m.parameters()]


def to_bchw(images: torch.Tensor) -> torch.Tensor:
    """LDM batch layout (B, H, W, C) -> contiguous float (B, C, H, W)."""
    return rearrange(images, "b h w c -> b c h w").contiguous().float()
