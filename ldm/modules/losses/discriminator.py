"""PatchGAN discriminator and hinge loss (taming:taming/modules/discriminator/model.py, pix2pix)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL_SIZE = 4
PADDING = 1
LEAKY_SLOPE = 0.2
MAX_CHANNEL_MULT = 8


def weights_init(module: nn.Module) -> None:
    """pix2pix init: conv weights ~ N(0, 0.02); BatchNorm weights ~ N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: (B, input_nc, H, W) -> real/fake logits per patch (B, 1, H/2^n - 2, W/2^n - 2)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, KERNEL_SIZE, stride=2, padding=PADDING),
            nn.LeakyReLU(LEAKY_SLOPE, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, MAX_CHANNEL_MULT)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(
                    ndf * prev, ndf * mult, KERNEL_SIZE, stride=stride, padding=PADDING, bias=False
                ),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(LEAKY_SLOPE, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, KERNEL_SIZE, stride=1, padding=PADDING))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [-1, 1] -> (B, 1, h, w) patch logits."""
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss, scalar: 0.5 * (E[relu(1 - real)] + E[relu(1 + fake)])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
