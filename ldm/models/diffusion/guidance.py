"""Classifier-free guidance on the speech (not in the original; measured, not in the demo recipe).

Training with ``model.params.condition_drop`` p replaces, for a random fraction p of the samples,
what the speech says (the audio feature and, with ``mouth_sketch``, the mouth heatmaps) by zeros,
so the UNet also learns the frame without the speech. Sampling with a guidance scale w > 1 then
moves each step's prediction away from that: eps = eps_null + w (eps - eps_null) (Ho & Salimans
2022), which makes the mouth follow the speech more than the conditional mean does. The masked
frame, the reference and the upper-face landmarks are kept in both.
"""

from __future__ import annotations

from typing import Any

import torch

from ldm.models.diffusion.wrapper import Cond, DiffusionWrapper

SPEECH_KEYS = ("audio_feature", DiffusionWrapper.SKETCH_KEY)  # zeroed in the null condition


def drop_speech(cond: Cond, p: float, generator: torch.Generator | None = None) -> Cond:
    """``cond`` with the speech zeroed for each sample independently with probability p."""
    return keep_speech(cond, torch.rand(batch_size(cond), generator=generator) >= p)  # on CPU


def null_speech(cond: Cond) -> Cond:
    """``cond`` with the speech zeroed for every sample."""
    return keep_speech(cond, torch.zeros(batch_size(cond), dtype=torch.bool))


def keep_speech(cond: Cond, keep: torch.Tensor) -> Cond:
    """``cond`` with the speech zeroed in the samples where ``keep`` (B,) is False."""

    def masked(v: torch.Tensor) -> torch.Tensor:
        return torch.where(keep.to(v.device).view(-1, *([1] * (v.dim() - 1))), v, 0.0)

    return {k: masked(v) if k in SPEECH_KEYS else v for k, v in cond.items()}


def batch_size(cond: Cond) -> int:
    """B of a condition dict (every entry has it first)."""
    return len(next(iter(cond.values())))


class GuidedModel:
    """What a sampler needs of a DDPM (its schedule, device and ``apply_model``), with
    ``apply_model`` guided at ``scale``: one UNet call on the conditional and null halves."""

    def __init__(self, model: Any, scale: float) -> None:
        if not getattr(model, "condition_drop", 0.0):
            raise ValueError(
                f"guidance {scale} needs a model trained with model.params.condition_drop > 0 "
                "(it has never seen the null condition)"
            )
        self.model, self.scale = model, scale

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.model.alphas_cumprod

    @property
    def num_timesteps(self) -> int:
        return self.model.num_timesteps

    @property
    def device(self) -> torch.device:
        return self.model.device

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """eps_null + scale (eps - eps_null) of x (B, C, h, w) at t (B,)."""
        null = null_speech(cond)
        both = {k: torch.cat([v, null[k]]) for k, v in cond.items()}
        eps, eps_null = self.model.apply_model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return eps_null + self.scale * (eps - eps_null)
