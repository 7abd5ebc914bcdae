"""The mouth window: a square of latent cells around the mouth that the UNet works on.

DiffTalk's UNet denoises the whole latent although only the lower face is ever generated; the
rest is known (masked frame) and replaced at every sampling step. With ``mouth_window: W`` the
UNet sees only a W x W window per sample, placed from the nose tip (an upper-face landmark, so
known at inference): horizontally centred on it, its top ``NOSE_ROWS_ABOVE`` cells above it,
clamped inside the latent. Training and sampling both crop the latent and its conditions to the
window; the sample is pasted back into the frame's full latent before decoding. The UNet is
convolutional and its one-token cross-attention is position-free, so the same weights serve any
window size; a 20 x 20 window of a 32 x 32 latent costs 0.39 of the full UNet.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ldm.data import layout
from ldm.models.diffusion.wrapper import DiffusionWrapper

logger = logging.getLogger(__name__)

NOSE_TIP = layout.upper_face_index(layout.NOSE_TIP)  # within a batch's 39 upper-face landmarks
NOSE_ROWS_ABOVE = 6  # window top, in latent cells above the nose tip (keeps the nose in view)
LATENT_KEYS = (*DiffusionWrapper.CONCAT_KEYS, DiffusionWrapper.SKETCH_KEY)  # spatial conditions


def window_corners(
    landmarks: torch.Tensor, image_size: int, latent_size: int, window: int
) -> torch.Tensor:
    """(B, 2) int (top, left) latent cells of each sample's window, from its (B, 39, 2)
    upper-face landmarks in pixels of the image_size x image_size frame."""
    nose = landmarks[:, NOSE_TIP].float() * (latent_size / image_size)  # (B, 2): x, y in cells
    top = torch.round(nose[:, 1]) - NOSE_ROWS_ABOVE
    left = torch.round(nose[:, 0]) - window // 2
    corners = torch.stack([top, left], dim=1).long()
    return corners.clamp(0, latent_size - window)


def crop(x: torch.Tensor, corners: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, window, window) at each sample's (top, left) corner."""
    return torch.stack(
        [
            xi[:, t : t + window, s : s + window]
            for xi, (t, s) in zip(x, corners.tolist(), strict=True)
        ]
    )


def paste(full: torch.Tensor, part: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Copy of ``full`` (B, C, h, w) with each window ``part`` (B, C, W, W) written back."""
    out = full.clone()
    window = part.shape[-1]
    for i, (t, s) in enumerate(corners.tolist()):
        out[i, :, t : t + window, s : s + window] = part[i]
    return out


def crop_condition(cond: dict[str, torch.Tensor], corners: torch.Tensor, window: int) -> dict:
    """The condition dict with its latent entries cropped to the windows (features as they are)."""
    return {k: crop(v, corners, window) if k in LATENT_KEYS else v for k, v in cond.items()}


def sample_inpaint(
    sampler: Any, steps: int, cond: dict, x0: torch.Tensor, known: torch.Tensor,
    corners: torch.Tensor | None, window: int | None, **kwargs: Any,
) -> torch.Tensor:  # fmt: skip
    """``sampler.sample`` (DDIM/DPM) on the whole latent x0 (B, C, h, w), or on its windows at
    ``corners`` pasted back into x0; ``known`` (B, 1, h, w) is 1 where x0 is kept."""
    if corners is None:
        return sampler.sample(steps, cond, tuple(x0.shape), x0=x0, mask=known, **kwargs)
    outside = int((known == 0).sum() - (crop(known, corners, window) == 0).sum())
    if outside:  # such cells keep the frame's own latent: widen the window if this shows up
        logger.warning("%d masked latent cells lie outside the mouth windows", outside)
    x0_w, known_w = crop(x0, corners, window), crop(known, corners, window)
    cond_w = crop_condition(cond, corners, window)
    z = sampler.sample(steps, cond_w, tuple(x0_w.shape), x0=x0_w, mask=known_w, **kwargs)
    return paste(x0, z, corners)
