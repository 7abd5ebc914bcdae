"""Diagonal Gaussian posterior of AutoencoderKL (ldm:ldm/modules/distributions/distributions.py)."""

from __future__ import annotations

import torch


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) from `parameters` (B, 2C, H, W) = [mean | logvar] along dim 1."""

    def __init__(self, parameters: torch.Tensor) -> None:
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # (B, C, H, W) each
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self) -> torch.Tensor:
        """Reparameterised sample (B, C, H, W)."""
        return self.mean + self.std * torch.randn_like(self.mean)

    def mode(self) -> torch.Tensor:
        """The mean (B, C, H, W)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over C, H, W: (B,) in nats."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
