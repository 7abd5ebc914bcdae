"""LPIPS (VGG16) perceptual distance, for the first-stage loss; weights come from a local file.

Network as in taming:taming/modules/losses/lpips.py (Zhang et al. 2018, "lin" variant). The VGG16
layers are defined here with torchvision's `features.N` numbering (torchvision is not a dependency).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ldm.util import load_state_dict_file

logger = logging.getLogger(__name__)

# torchvision vgg16 `features` layout: conv widths, "M" = 2x2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# `features` indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_TAPS = (3, 8, 15, 22, 29)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS's ScalingLayer: ImageNet statistics in [-1, 1]
LPIPS_SCALE = (0.458, 0.448, 0.450)
# Keys a weights file may hold that are no parameters here (torchvision head, LPIPS constants).
_IGNORED_PREFIXES = ("classifier.", "scaling_layer.")


class VGG16Features(nn.Module):
    """torchvision-compatible `vgg16().features` up to relu5_3: returns the 5 LPIPS taps."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_ch = item
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised images -> 5 feature maps (B, C_k, H/2^k, W/2^k)."""
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in LPIPS_TAPS:
                taps.append(x)
        return taps


class NetLinLayer(nn.Module):
    """LPIPS's learned channel weights: dropout, then a 1x1 conv to one channel without bias
    (``model.1`` matches the LPIPS key names). The dropout is inactive: LPIPS stays in eval."""

    def __init__(self, chn_in: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn_in, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W)."""
        return self.model(x)


def _unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Normalise features to unit length over channels, (B, C, H, W)."""
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


class LPIPSHead(nn.Module):
    """Frozen LPIPS distance (Zhang et al. 2018, "lin") over the feature taps of a backbone:
    the backbone is ``net`` (forward -> one map per tap), ``channels`` the widths of its taps.

    Shared by the VGG16 loss here and the AlexNet metric (ldm.evaluation.lpips).
    """

    def __init__(self, net: nn.Module, channels: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = net
        for k, width in enumerate(channels):
            self.add_module(f"lin{k}", NetLinLayer(width))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSHead:
        """Stay in eval mode whatever the parent does: this is a fixed metric network."""
        return super().train(False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) distances of (B, 3, H, W) pairs in [-1, 1]: over the taps, the spatial mean of
        the channel-weighted squared difference of unit-normalised features."""
        feats0 = self.net((input - self.shift) / self.scale)
        feats1 = self.net((target - self.shift) / self.scale)
        total = torch.zeros(input.shape[0], device=input.device)
        for k, (f0, f1) in enumerate(zip(feats0, feats1, strict=True)):
            diff = (_unit_normalize(f0) - _unit_normalize(f1)) ** 2
            total = total + getattr(self, f"lin{k}")(diff).mean(dim=(1, 2, 3))
        return total


class LPIPS(LPIPSHead):
    """Frozen VGG16 LPIPS for the first-stage loss: (B, 3, H, W) x2 in [-1, 1] -> (B, 1, 1, 1)."""

    def __init__(self) -> None:
        super().__init__(VGG16Features(), LPIPS_CHANNELS)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Perceptual distance per sample, (B, 1, 1, 1) to broadcast over a loss map."""
        return super().forward(input, target)[:, None, None, None]


def to_lpips_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename LPIPS weights from any known layout to this module's keys.

    Accepts this module's own keys, taming/LDM (`net.sliceS.N.*`, `linK.model.1.weight`, possibly
    under `loss.perceptual_loss.` inside a first-stage checkpoint) and torchvision (`features.N.*`).
    """
    prefix = "loss.perceptual_loss."
    if any(key.startswith(prefix) for key in state_dict):
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    renamed = {}
    for key, value in state_dict.items():
        key = re.sub(r"^net\.slice\d\.", "net.features.", key)
        key = re.sub(r"^features\.", "net.features.", key)
        if not key.startswith(_IGNORED_PREFIXES):
            renamed[key] = value
    return renamed


def load_lpips(path: str | Path) -> LPIPS:
    """Build LPIPS and load VGG16 + lin weights from `path` (a state dict or a checkpoint)."""
    raw = load_state_dict_file(path, allow_pickle=False)
    model = LPIPS()
    state_dict = to_lpips_keys(raw)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"LPIPS weights in {path} do not fit VGG16+LPIPS: missing {missing[:5]} "
            f"({len(missing)} total), unexpected {unexpected[:5]} ({len(unexpected)} total). "
            "Expected torchvision vgg16 `features.*` plus LPIPS `lin0..4.model.1.weight`, "
            "or the `loss.perceptual_loss.*` entries of an LDM first-stage checkpoint."
        )
    logger.info("Loaded LPIPS (VGG16) perceptual weights from %s", path)
    return model
