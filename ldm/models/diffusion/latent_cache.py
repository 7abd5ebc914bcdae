"""FirstStageCache: latents of training frames, kept because the first stage is frozen."""

from __future__ import annotations

from collections.abc import Callable

import torch

Key = tuple[int, int, str]


class FirstStageCache:
    """Latents by (identity, frame, kind), stored on the CPU.

    The frozen first stage maps a frame to the same latent every time (VQ: the pre-quantisation
    latent; KL: the mode), so encoding each training frame once is exact. Costs
    frames x kinds x C x h x w floats: 37 MB for 1,500 frames at 32x32x3, two kinds.
    """

    def __init__(self) -> None:
        self.store: dict[Key, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.store)

    def encode(
        self,
        encode: Callable[[torch.Tensor], torch.Tensor],  # (n,) batch indices -> (n, C, h, w)
        ids: torch.Tensor,  # (B,) identity of each sample
        frames: torch.Tensor,  # (B,) frame of each sample
        kind: str,
        device: torch.device,
    ) -> torch.Tensor:
        """Latents (B, C, h, w) of the batch, encoding only the frames not seen before."""
        keys = [(int(i), int(f), kind) for i, f in zip(ids, frames, strict=True)]
        missing = [j for j, k in enumerate(keys) if k not in self.store]
        if missing:
            fresh = encode(torch.tensor(missing))
            for j, z in zip(missing, fresh, strict=True):
                self.store[keys[j]] = z.detach().cpu()
        return torch.stack([self.store[k] for k in keys]).to(device)
