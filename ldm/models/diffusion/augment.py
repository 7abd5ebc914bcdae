"""Training-only augmentation of a talking batch's latents (demo recipe; off by default).

One speaker's minute of footage is a few hundred frames: a UNet can learn each frame's lower
face from its upper face instead of drawing the mouth from the audio and the reference. Both
augmentations take that lookup away and leave the task the same:

- ``window_jitter`` J: the mouth window moves by up to J latent cells per sample, so the mouth
  is not always at the same place in the UNet's input.
- ``appearance_jitter`` s: one random per-channel gain (1 + s N(0, 1)) and offset (s N(0, 1))
  per sample, applied alike to the target latent and to the masked and reference latents, so
  the colour of the lips and teeth has to be read from the conditions, not remembered.
"""

from __future__ import annotations

import torch

from ldm.models.diffusion.wrapper import DiffusionWrapper

CONDITION_LATENTS = DiffusionWrapper.CONCAT_KEYS  # the masked and reference latents


def jitter_corners(corners: torch.Tensor, jitter: int, limit: int) -> torch.Tensor:
    """(B, 2) window corners moved by uniform integers in [-jitter, jitter], kept in [0, limit]."""
    shift = torch.randint_like(corners, -jitter, jitter + 1)
    return (corners + shift).clamp(0, limit)


def jitter_appearance(
    z: torch.Tensor, cond: dict[str, torch.Tensor], strength: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The same random per-sample, per-channel affine map on z (B, C, h, w) and the condition
    latents of ``cond`` (all on one scale)."""
    shape = (z.shape[0], z.shape[1], 1, 1)
    gain = 1.0 + strength * torch.randn(shape, device=z.device, dtype=z.dtype)
    offset = strength * torch.randn(shape, device=z.device, dtype=z.dtype)
    out = {k: v * gain + offset if k in CONDITION_LATENTS else v for k, v in cond.items()}
    return z * gain + offset, out
