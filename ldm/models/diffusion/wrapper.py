"""DiffusionWrapper: how DiffTalk's conditions enter the UNet (part of the checkpoint contract)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ldm.util import instantiate_from_config

Cond = dict[str, torch.Tensor]


class DiffusionWrapper(nn.Module):
    """The one place that knows how conditions enter the UNet (part of the checkpoint contract).

    ``hybrid`` conditioning, as DiffTalk does it (SPEC 4.3): the UNet input is the channel concat
    [noisy latent, masked-frame latent, reference latent] and the cross-attention context is one
    token [audio feature ‖ landmark feature] of shape (B, 1, 128). With ``mouth_sketch`` (the
    demo recipe; not in the original) the 20 mouth-point heatmaps follow the two latents.
    """

    CONCAT_KEYS = ("masked_latent", "reference_latent")
    SKETCH_KEY = "mouth_sketch"  # demo recipe (model.params.mouth_sketch): appended when present
    CONTEXT_KEYS = ("audio_feature", "landmark_feature")

    def __init__(self, diff_model_config: Any, conditioning_key: str = "hybrid") -> None:
        super().__init__()
        if conditioning_key != "hybrid":
            raise ValueError(
                f"DiffTalk conditions with 'hybrid' (concat + crossattn), got {conditioning_key!r}"
            )
        self.diffusion_model = instantiate_from_config(diff_model_config)  # UNetModel
        self.conditioning_key = conditioning_key

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x (B, C, h, w), t (B,), cond with the four keys above -> the UNet's output (B, C, h, w):
        eps, or v under ``parameterization: v`` (DDPM.apply_model converts it to eps)."""
        sketch = [cond[self.SKETCH_KEY]] if self.SKETCH_KEY in cond else []
        x_in = torch.cat([x, *(cond[k] for k in self.CONCAT_KEYS), *sketch], dim=1)  # (B, 3C(+20))
        context = torch.cat([cond[k] for k in self.CONTEXT_KEYS], dim=-1)[:, None]  # (B, 1, 128)
        return self.diffusion_model(x_in, t, context=context)
