"""Vector quantiser vendored from taming-transformers' `VectorQuantizer2` (no git dependency).

Kept behaviour: nearest-code lookup by squared Euclidean distance, straight-through gradient, and
the "legacy" loss ``||sg[z_q] - z||^2 + beta * ||z_q - sg[z]||^2`` that the LDM first stages were
trained with (taming:taming/modules/vqvae/quantize.py VectorQuantizer2, legacy=True).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook of `n_e` vectors of size `e_dim` (key `embedding.weight`)."""

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.embedding = nn.Embedding(n_e, e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)

    def code_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for every position: (B, e_dim, H, W) -> (B, H, W) int64."""
        b, _, h, w = z.shape
        z_flat = rearrange(z, "b c h w -> (b h w) c")
        codes = self.embedding.weight  # (n_e, e_dim)
        dist = (
            z_flat.pow(2).sum(dim=1, keepdim=True)
            + codes.pow(2).sum(dim=1)
            - 2 * torch.einsum("bd,dn->bn", z_flat, rearrange(codes, "n d -> d n"))
        )  # (BHW, n_e), same expansion as taming so ties break identically
        return dist.argmin(dim=1).reshape(b, h, w)

    def forward(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, None, torch.Tensor]]:
        """Quantise (B, e_dim, H, W) -> (z_q, loss, (perplexity, None, indices (B, H, W))).

        `z_q` has z's shape and passes gradients straight through to `z`; `loss` is the scalar
        codebook + commitment loss. The `None` stands where taming returns one-hot encodings.
        """
        indices = self.code_indices(z)  # (B, H, W)
        z_q = rearrange(self.embedding(indices), "b h w c -> b c h w")
        loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        return z_q, loss, (self.perplexity(indices), None, indices)

    def perplexity(self, indices: torch.Tensor) -> torch.Tensor:
        """exp(entropy) of the code histogram of `indices` (any shape); n_e if all used equally."""
        counts = torch.bincount(indices.flatten(), minlength=self.n_e).float()
        probs = counts / counts.sum()
        return torch.exp(-torch.sum(probs * torch.log(probs + 1e-10)))
