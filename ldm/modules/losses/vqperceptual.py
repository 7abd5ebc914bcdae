"""First-stage training loss for both VQ and KL autoencoders (taming VQLPIPSWithDiscriminator, ldm
LPIPSWithDiscriminator): L1 (+ LPIPS) reconstruction, weighted regularisers, PatchGAN hinge loss.

Deliberate simplification for KL: the reconstruction term is the per-pixel mean used by the VQ loss,
not LDM's per-sample sum divided by a learned `logvar`; `kl_weight` is relative to that mean.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ldm.modules.losses.discriminator import NLayerDiscriminator, hinge_d_loss
from ldm.modules.losses.lpips import LPIPS, load_lpips

logger = logging.getLogger(__name__)

ADAPTIVE_WEIGHT_EPS = 1e-4
ADAPTIVE_WEIGHT_MAX = 1e4


def _perceptual_network(weight: float, path: str | Path | None) -> LPIPS | None:
    """LPIPS loaded from `path`, or None (with one warning saying why) when it cannot be used."""
    if weight <= 0:
        return None
    if path is None:
        reason = "no perceptual_weights_path was given"
    elif not Path(path).is_file():
        reason = f"perceptual_weights_path {path} does not exist"
    else:
        return load_lpips(path)
    logger.warning(
        "Perceptual (LPIPS) loss is OFF: %s. Training uses L1 + GAN only. Provide VGG16+LPIPS "
        "weights (e.g. an LDM first-stage checkpoint with loss.perceptual_loss.* entries).",
        reason,
    )
    return None


class LPIPSWithDiscriminator(nn.Module):
    """Autoencoder loss + discriminator loss; see `generator_loss` and `discriminator_loss`."""

    def __init__(
        self,
        disc_start: int,  # training batch from which the GAN terms are on
        codebook_weight: float = 1.0,  # weight of the VQ codebook/commitment loss
        kl_weight: float = 1.0e-6,  # weight of the KL term (AutoencoderKL)
        perceptual_weight: float = 1.0,  # LPIPS weight; forced to 0 without weights
        perceptual_weights_path: str | None = None,  # VGG16+LPIPS weights file
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_ndf: int = 64,
        disc_factor: float = 1.0,  # GAN factor once active
        disc_weight: float = 1.0,  # multiplies the adaptive GAN weight
    ) -> None:
        super().__init__()
        self.disc_start = disc_start
        self.reg_weights = {"codebook": codebook_weight, "kl": kl_weight}
        self.perceptual_loss = _perceptual_network(perceptual_weight, perceptual_weights_path)
        self.perceptual_weight = perceptual_weight if self.perceptual_loss is not None else 0.0
        self.discriminator = NLayerDiscriminator(disc_in_channels, disc_ndf, disc_num_layers)
        self.disc_factor = disc_factor
        self.disc_weight = disc_weight

    def disc_factor_at(self, step: int) -> float:
        """GAN factor at training batch `step`: 0 before `disc_start`."""
        return self.disc_factor if step >= self.disc_start else 0.0

    def adaptive_weight(
        self, nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
    ) -> torch.Tensor:
        """Balance GAN vs reconstruction by their gradient norms at the decoder's last layer."""
        if not (torch.is_grad_enabled() and last_layer.requires_grad):
            return torch.zeros((), device=nll_loss.device)  # validation: no GAN term, as in LDM
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = nll_grads.norm() / (g_grads.norm() + ADAPTIVE_WEIGHT_EPS)
        return d_weight.clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach() * self.disc_weight

    def generator_loss(
        self,
        regularizers: Mapping[str, torch.Tensor],  # {"codebook": scalar} or {"kl": scalar}
        inputs: torch.Tensor,  # (B, 3, H, W) in [-1, 1]
        reconstructions: torch.Tensor,  # (B, 3, H, W)
        step: int,  # training batch index
        last_layer: torch.Tensor,  # decoder.conv_out.weight
        split: str,  # "train" / "val", prefixes the log keys
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Scalar autoencoder loss and a log dict of its detached terms."""
        rec_loss = (inputs - reconstructions).abs()  # (B, 3, H, W)
        logs: dict[str, torch.Tensor | float] = {f"{split}/l1_loss": rec_loss.detach().mean()}
        if self.perceptual_loss is not None:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            rec_loss = rec_loss + self.perceptual_weight * p_loss  # (B, 1, 1, 1) broadcast
            logs[f"{split}/p_loss"] = p_loss.detach().mean()
        nll_loss = rec_loss.mean()
        loss = nll_loss
        for name, value in regularizers.items():
            loss = loss + self.reg_weights[name] * value
            logs[f"{split}/{name}_loss"] = value.detach()
        disc_factor = self.disc_factor_at(step)
        if disc_factor > 0:
            g_loss = -self.discriminator(reconstructions.contiguous()).mean()
            d_weight = self.adaptive_weight(nll_loss, g_loss, last_layer)
            loss = loss + d_weight * disc_factor * g_loss
            logs[f"{split}/g_loss"] = g_loss.detach()
            logs[f"{split}/d_weight"] = d_weight
        logs[f"{split}/rec_loss"] = nll_loss.detach()
        logs[f"{split}/disc_factor"] = disc_factor
        return loss, logs

    def discriminator_loss(
        self, inputs: torch.Tensor, reconstructions: torch.Tensor, step: int, split: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar hinge loss of the PatchGAN on real `inputs` vs detached `reconstructions`."""
        logits_real = self.discriminator(inputs.contiguous().detach())
        logits_fake = self.discriminator(reconstructions.contiguous().detach())
        d_loss = self.disc_factor_at(step) * hinge_d_loss(logits_real, logits_fake)
        logs = {
            f"{split}/logits_real": logits_real.detach().mean(),
            f"{split}/logits_fake": logits_fake.detach().mean(),
        }
        return d_loss, logs
