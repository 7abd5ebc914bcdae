"""LatentDiffusion for talking heads, on DDPM (ldm/models/diffusion/gaussian.py, re-exported here
as LDM has it: configs and readers find `ldm.models.diffusion.ddpm.DDPM`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ldm.geometry import N_MOUTH
from ldm.models.diffusion import mouth_window as mw
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.gaussian import DDPM
from ldm.models.diffusion.identities import checkpoint_identities, training_identities
from ldm.models.diffusion.latent_cache import FirstStageCache
from ldm.models.diffusion.latents import FirstStageLatents, to_bchw
from ldm.models.diffusion.sizes import check_sizes
from ldm.models.diffusion.wrapper import Cond, DiffusionWrapper
from ldm.modules.diffusionmodules.util import extract_into_tensor
from ldm.modules.encoders.modules import encode_audio
from ldm.modules.encoders.mouth import fit_on_dataset, mouth_heatmaps
from ldm.preprocessing.identity import CHECKPOINT_KEY, Identities
from ldm.util import instantiate_from_config, load_checkpoint_file, state_dict_of

logger = logging.getLogger(__name__)

SAMPLE_SEED = 0  # log_images' fixed noise: successive grids compare; training RNG untouched


class LatentDiffusion(FirstStageLatents, DDPM):
    """DiffTalk: diffusion in a frozen first stage's latent space, conditioned on audio,
    landmarks, a masked target frame and a reference frame.

    Module names (``first_stage_model``, ``cond_stage_model_for_audio``,
    ``cond_stage_model_for_audio_smooth``, ``cond_stage_model_for_ldm``) are the original's
    checkpoint keys. With ``mouth_config`` a ``mouth_model`` takes the two audio networks' place:
    they are neither built nor saved.
    """

    def __init__(
        self,
        first_stage_config: Any,
        audio_config: Any,  # AudioNet: one window -> 64-d (not built with mouth_config)
        audio_attention_config: Any,  # AudioAttNet: 8 windows -> one 64-d feature (ditto)
        landmark_config: Any,  # LdmNet: 39 landmarks -> 64-d
        scale_factor: float = 1.0,
        scale_condition_latents: bool = False,  # original: masked/reference latents unscaled
        mask_loss_weight: float = 1.0,  # original: 1 (uniform); >1 weights the masked region
        cache_first_stage: bool = False,  # keep latents of training frames (small datasets)
        fill_cache: bool = False,  # and encode them all before the first step (False: as the
        # first epochs meet them; ldm/models/diffusion/latents.py)
        scale_by_std: bool = False,  # LDM: scale_factor = 1 / std of the first batch's latents
        align_reference: bool = False,  # warp the reference onto the target's head pose
        # (original: as it is; ldm/models/diffusion/reference_align.py)
        match_reference_colours: bool = False,  # and map its colours onto the target's face
        mouth_window: int | None = None,  # UNet on a W x W latent window at the mouth (None:
        # the whole latent, as the original; ldm/models/diffusion/mouth_window.py)
        mouth_config: Any = None,  # MouthPredictor: the mouth's shape predicted from the audio
        # replaces the audio feature (None: AudioNet + AudioAttNet, the original; encoders/mouth.py)
        mouth_sketch: bool = False,  # and, as heatmaps, join the UNet's input (needs mouth_config)
        reference_prior: bool = False,  # v relative to the aligned reference, so the
        # untrained UNet copies it where noise hides the frame (False: the original's plain v/eps)
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
        if fill_cache and not cache_first_stage:
            raise ValueError("model.params.fill_cache needs cache_first_stage")
        self.fill_cache = fill_cache
        if mouth_window is not None and not 0 < mouth_window <= self.image_size:
            raise ValueError(
                f"model.params.mouth_window {mouth_window} must be within the latent size "
                f"{self.image_size} (model.params.image_size)"
            )
        self.mouth_window = mouth_window
        self.align_reference = align_reference
        if match_reference_colours and not align_reference:
            raise ValueError("model.params.match_reference_colours needs align_reference")
        self.match_reference_colours = match_reference_colours
        self.first_stage_model = instantiate_from_config(first_stage_config).eval()
        self.first_stage_model.requires_grad_(False)
        self.build_encoders(audio_config, audio_attention_config, landmark_config, mouth_config)
        if mouth_sketch and self.mouth_model is None:
            raise ValueError("model.params.mouth_sketch needs model.params.mouth_config")
        self.mouth_sketch = mouth_sketch
        if reference_prior and self.parameterization != "v":
            raise ValueError("model.params.reference_prior needs parameterization: v")
        self.reference_prior = reference_prior
        mouth = self.mouth_model is not None
        check_sizes(
            self.model.diffusion_model,
            self.first_stage_model,
            self.mouth_model if mouth else self.cond_stage_model_for_audio,
            None if mouth else self.cond_stage_model_for_audio_smooth,
            self.cond_stage_model_for_ldm,
            channels=self.channels,
            sketch_channels=N_MOUTH if mouth_sketch else 0,
        )
        # the faces it was trained on (ldm/models/diffusion/identities.py): checkpoint entry,
        # not state dict; recorded once a run starts training (a resumed run has them)
        self.identities: Identities | None = None
        self.identities_recorded = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys)

    def build_encoders(
        self, audio_config: Any, attention_config: Any, landmark_config: Any, mouth_config: Any
    ) -> None:
        """The condition encoders: LdmNet, and AudioNet + AudioAttNet, or with ``mouth_config``
        the MouthPredictor in their place (the audio reaches the UNet as the mouth's shape)."""
        mouth = mouth_config is not None
        self.cond_stage_model_for_audio = None if mouth else instantiate_from_config(audio_config)
        self.cond_stage_model_for_audio_smooth = (
            None if mouth else instantiate_from_config(attention_config)
        )
        self.cond_stage_model_for_ldm = instantiate_from_config(landmark_config)
        self.mouth_model = instantiate_from_config(mouth_config) if mouth else None

    @property
    def audio_feature_dim(self) -> int:
        """Width D of the audio features (B, 8, 16, D) the model reads."""
        audio = self.cond_stage_model_for_audio if self.mouth_model is None else self.mouth_model
        return audio.feature_dim

    def init_from_ckpt(self, path: str | Path, ignore_keys: tuple[str, ...] = ()) -> None:
        """Load a DiffTalk checkpoint non-strictly (as ``--resume2`` did), logging what differs;
        its identities are kept, and this run's training ones join them."""
        ckpt = load_checkpoint_file(path)
        self.identities = checkpoint_identities(ckpt, path)
        sd = state_dict_of(ckpt, path)
        sd = {k: v for k, v in sd.items() if not k.startswith(tuple(ignore_keys))}
        missing, unexpected = self.load_state_dict(sd, strict=False)
        self.scale_measured = True
        logger.info(
            "restored %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected)
        )

    def on_fit_start(self) -> None:
        """Fit the MouthPredictor on the training frames and record their identities, once (a
        resumed run has both); with ``fill_cache``, encode the training latents."""
        if self.mouth_model is not None and not bool(self.mouth_model.fitted):
            fit_on_dataset(self.mouth_model, self.trainer.datamodule.datasets["train"])
        if not self.identities_recorded:
            self.identities = training_identities(self.trainer, self.identities)
            self.identities_recorded = True
        if self.fill_cache:
            self.fill_latent_cache(self.trainer.datamodule.datasets["train"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the training identities in the checkpoint, outside the state dict."""
        if self.identities is not None:
            checkpoint[CHECKPOINT_KEY] = self.identities.to_entry()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the training identities of a resumed run (None in older checkpoints)."""
        self.identities = checkpoint_identities(checkpoint, "the resumed checkpoint")
        self.identities_recorded = self.identities is not None

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

    @property
    def condition_scale(self) -> float:
        """Factor of the masked/reference latents (original: 1, they are never scaled)."""
        return self.scale_factor if self.scale_condition_latents else 1.0

    def unet_output(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The UNet's v; with ``reference_prior`` taken relative to the reference latent r:
        v = out - sqrt(1 - abar) r, so that z_0's estimate sqrt(abar) z_t - sqrt(1 - abar) v is
        sqrt(abar) z_t + (1 - abar) r - sqrt(1 - abar) out. With out = 0 that is the posterior
        mean of z_0 ~ N(r, I) given z_t: the reference where the noise hides the frame, the
        frame where it does not. The UNet learns only how the target differs from its reference,
        so a matching reference's lips and teeth are kept, not redrawn."""
        out = self.model(x_noisy, t, cond)
        if not self.reference_prior:
            return out
        s = extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_noisy.shape)
        reference = cond["reference_latent"] * (self.scale_factor / self.condition_scale)
        return out - s * reference

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
        landmarks = batch["landmarks"].to(self.device, torch.float32)
        return {
            "masked_latent": masked,
            "reference_latent": reference,
            "landmark_feature": self.cond_stage_model_for_ldm(landmarks),
            **self.audio_condition(batch, audio),
        }

    def audio_condition(self, batch: dict[str, Any], audio: torch.Tensor) -> Cond:
        """``audio_feature`` (B, dim_aud); with a MouthPredictor the feature of the mouth's
        shape (``mouth_code``), and with ``mouth_sketch`` that shape's points drawn as
        ``mouth_sketch`` heatmaps (B, 20, h, w) on the target's face."""
        if self.mouth_model is None:
            return {
                "audio_feature": encode_audio(
                    self.cond_stage_model_for_audio, self.cond_stage_model_for_audio_smooth, audio
                )
            }
        code = self.mouth_code(batch, audio)
        cond = {"audio_feature": self.mouth_model.feature(code)}
        if self.mouth_sketch:
            points = self.mouth_model.points(code, batch["landmarks"].to(self.device))
            sketch = mouth_heatmaps(points, self.frame_size, self.image_size)
            cond[DiffusionWrapper.SKETCH_KEY] = sketch
        return cond

    def audio_feature(self, batch: dict[str, Any], audio: torch.Tensor) -> torch.Tensor:
        """(B, dim_aud) audio feature of a batch (``audio_condition``)."""
        return self.audio_condition(batch, audio)["audio_feature"]

    def mouth_code(self, batch: dict[str, Any], audio: torch.Tensor) -> torch.Tensor:
        """(B, 40) mouth-shape code: the target's own plus ``code_noise`` when training, the
        prediction from the audio otherwise (the bank's ``mouth_code`` when it has picked)."""
        if self.training:
            lms = batch["landmarks"].to(self.device)
            code = self.mouth_model.code(batch["mouth_landmarks"].to(self.device), lms)
            return self.mouth_model.add_noise(code)
        if "mouth_code" in batch:  # predicted already (the reference bank picks with it)
            return batch["mouth_code"].to(self.device)
        return self.mouth_model(audio)

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
        corners = self.window_corners(batch)
        if corners is None:
            return z, cond, weight
        w = self.mouth_window
        weight = None if weight is None else mw.crop(weight, corners, w)
        return mw.crop(z, corners, w), mw.crop_condition(cond, corners, w), weight

    @property
    def frame_size(self) -> int:
        """Side in pixels of the frames: latent size x the first stage's downsampling."""
        return self.image_size * self.first_stage_model.factor

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

    @torch.no_grad()
    def log_images(
        self, batch: dict[str, Any], n: int = 4, ddim_steps: int = 50, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Images for the ImageLogger, (n, 3, H, W) in [-1, 1]: inputs, masked, reference,
        reconstruction, and ``samples_inpaint``: a ``ddim_steps`` DDIM (eta 0) sample with the EMA
        UNet that keeps the latent of the visible region and regenerates the cells under
        ``inpaint_mask``, as the original's inference does."""
        batch = {k: v[:n] for k, v in batch.items()}
        z = self.scale_factor * self.encode_frames(batch, "image", "frame")  # (n, C, h, w)
        cond = self.get_learned_conditioning(batch)
        known = latent_known_mask(batch["inpaint_mask"].to(self.device), tuple(z.shape[-2:]))
        generator = torch.Generator().manual_seed(SAMPLE_SEED)
        corners = self.window_corners(batch)
        with self.ema_scope("log_images"):
            sample = self.sample_inpaint(
                DDIMSampler(self), ddim_steps, cond, z, known, corners, eta=0.0, generator=generator
            )
        return {
            "inputs": to_bchw(batch["image"]).to(self.device),
            "masked": to_bchw(batch["image_mask"]).to(self.device),
            "reference": to_bchw(batch["reference_img"]).to(self.device),
            "reconstruction": self.decode_first_stage(z),
            "samples_inpaint": self.decode_first_stage(sample),
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        """UNet plus the condition encoders (trained jointly, SPEC 4.7)."""
        encoders = (
            self.cond_stage_model_for_audio,
            self.cond_stage_model_for_audio_smooth,
            self.cond_stage_model_for_ldm,
            self.mouth_model,
        )
        params = [p for m in encoders if m is not None for p in m.parameters() if p.requires_grad]
        return super().trainable_parameters() + params


def latent_known_mask(inpaint_mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Pixel mask (B, H, W), 1 = hidden -> latent mask (B, 1, h, w), 1 = known: a latent cell is
    unknown (regenerated) if any pixel it covers is hidden."""
    hidden = F.interpolate(inpaint_mask[:, None].float(), size=latent_size, mode="area")
    return (hidden <= 0).float()
