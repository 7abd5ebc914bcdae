"""Schedules and small building blocks of the denoising UNet (ldm diffusionmodules/util.py)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def make_beta_schedule(
    n_timestep: int, linear_start: float = 1e-4, linear_end: float = 2e-2
) -> np.ndarray:
    """LDM's "linear" beta schedule, the one DiffTalk uses, as float64 (T,): the squares of a
    linspace of square roots."""
    return np.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=np.float64) ** 2


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): first half cos, second half sin (LDM order)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps[:, None].float() * freqs[None]  # (B, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's normalisation layer: GroupNorm with 32 groups."""
    return GroupNorm32(32, channels)


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """Gather ``a[t]`` for a batch of timesteps and reshape to broadcast over ``x_shape``."""
    out = a.gather(-1, t)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))
