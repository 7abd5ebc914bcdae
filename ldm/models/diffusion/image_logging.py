"""Images that LatentDiffusion.log_images shows in the ImageLogger grids (ldm's, slimmed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ldm.models.diffusion.ddim import DDIMSampler

if TYPE_CHECKING:
    from ldm.models.diffusion.ddpm import LatentDiffusion

SAMPLE_SEED = 0  # fixed noise: grids of successive steps are comparable; training RNG untouched


def latent_known_mask(inpaint_mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Pixel mask (B, H, W), 1 = hidden -> latent mask (B, 1, h, w), 1 = known.

    A latent cell is unknown (regenerated) if any pixel it covers is hidden.
    """
    hidden = F.interpolate(inpaint_mask[:, None].float(), size=latent_size, mode="area")
    return (hidden <= 0).float()


def _bchw(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Batch images (B, H, W, 3) in [-1, 1] -> (B, 3, H, W) float on ``device``."""
    return images.permute(0, 3, 1, 2).float().to(device)


@torch.no_grad()
def log_talking_images(
    model: LatentDiffusion, batch: dict[str, Any], n: int = 4, ddim_steps: int = 50
) -> dict[str, torch.Tensor]:
    """{inputs, masked, reference, reconstruction, samples_inpaint}: (n, 3, H, W) in [-1, 1].

    ``samples_inpaint`` is a ``ddim_steps`` DDIM (eta 0) sample with the EMA UNet, keeping the
    latent of the visible region and regenerating the cells under ``inpaint_mask``, as the
    original's inference does.
    """
    batch = {k: v[:n] for k, v in batch.items()}
    z = model.scale_factor * model.encode_frames(batch, "image", "frame")  # (n, C, h, w)
    cond = model.get_learned_conditioning(batch)
    known = latent_known_mask(batch["inpaint_mask"].to(model.device), tuple(z.shape[-2:]))
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    corners = model.window_corners(batch)
    with model.ema_scope("log_images"):
        sample = model.sample_inpaint(
            DDIMSampler(model), ddim_steps, cond, z, known, corners, eta=0.0, generator=generator
        )
    return {
        "inputs": _bchw(batch["image"], model.device),
        "masked": _bchw(batch["image_mask"], model.device),
        "reference": _bchw(batch["reference_img"], model.device),
        "reconstruction": model.decode_first_stage(z),
        "samples_inpaint": model.decode_first_stage(sample),
    }
