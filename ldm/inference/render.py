"""Render a clip: batch its conditions, sample latents with latent inpainting, decode to frames.

One item per output frame, in the layout of ``ldm.data.talk.TalkInference``: ``image`` (the frame
whose upper face/background is kept), ``image_mask`` (the frame cut below landmark 33),
``landmarks`` (39, 2), ``audio_smooth`` (8, 16, D) and ``inference_mask`` (1, h, w; 1 = known).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from ldm.models.diffusion.ddim import DDIMSampler, make_ddim_timesteps, randn
from ldm.models.diffusion.dpm_solver import DPMSolverSampler

logger = logging.getLogger(__name__)

SAMPLERS = ("ddim", "dpm")
DEFAULT_STEPS = {"ddim": 200, "dpm": 20}  # DDIM-200: the paper protocol (SPEC 5.2)
REFERENCE_MODES = ("first", "progressive")


@dataclass
class RenderOptions:
    """How frames are sampled (the defaults are the paper protocol: DDIM 200, eta 0)."""

    sampler: str = "ddim"  # ddim | dpm (DPM-Solver++(2M))
    steps: int | None = None  # None: 200 for ddim, 20 for dpm
    eta: float = 0.0
    reference: str = "first"  # first: the clip's reference for every frame; progressive: the
    # previous generated frame is the next frame's reference (the paper's progressive inference)
    shared_noise: bool = False  # one initial noise for every frame of a clip
    batch_size: int = 8
    seed: int = 0
    progress: bool = True
    first_stage_only: bool = False  # no sampling: decode the frame's own latent (the ceiling a
    # rendered frame cannot pass: the truth through the first stage, pasted back the same way)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {SAMPLERS}")
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"unknown reference mode {self.reference!r}; choose {REFERENCE_MODES}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.steps is None:
            self.steps = DEFAULT_STEPS[self.sampler]


def prepare_model(model: torch.nn.Module) -> torch.nn.Module:
    """Put every conv weight in channels-last layout: on CPU under inference_mode the paper UNet
    runs up to 2x faster, the first stage ~15% (benchmarks/bench_sampler.py)."""
    return model.to(memory_format=torch.channels_last)


def make_sampler(model: torch.nn.Module, name: str, steps: int) -> DDIMSampler | DPMSolverSampler:
    """DDIMSampler or DPMSolverSampler for ``model``; checks the step count up front."""
    make_ddim_timesteps(steps, model.num_timesteps)  # raises on a count out of range
    return DPMSolverSampler(model) if name == "dpm" else DDIMSampler(model)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((images.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class Renderer:
    """Sample frames of one clip at a time with the model's EMA weights."""

    def __init__(self, model: torch.nn.Module, opts: RenderOptions) -> None:
        self.model = prepare_model(model)
        self.opts = opts
        self.sampler = make_sampler(model, opts.sampler, opts.steps)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of what the UNet denoises: the latent, or its mouth window."""
        side = self.model.mouth_window or self.model.image_size
        return (self.model.channels, side, side)

    def encode_reference(self, image: torch.Tensor) -> torch.Tensor:
        """Reference image (H, W, 3) in [-1, 1] -> its condition latent (1, C, h, w)."""
        return self.model.condition_scale * self.model.encode_batch_images(image[None])

    def sample_batch(
        self,
        batch: dict[str, Any],
        reference_latent: torch.Tensor,
        x_T: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Inpaint the masked latent region of a batch; returns decoded images (B, 3, H, W)."""
        m, o = self.model, self.opts
        # per-frame pose-aligned references (progressive mode keeps the previous frame as is)
        aligned = m.align_reference and o.reference == "first" and "reference_img" in batch
        cond = m.get_learned_conditioning(batch, None if aligned else reference_latent)
        x0 = m.scale_factor * m.encode_batch_images(batch["image"])  # (B, C, h, w)
        mask = batch["inference_mask"].to(m.device, torch.float32)  # (B, 1, h, w), 1 = known
        if o.first_stage_only:
            return m.decode_first_stage(x0).clamp(-1.0, 1.0)
        corners = m.window_corners(batch)
        z = m.sample_inpaint(
            self.sampler, o.steps, cond, x0, mask, corners, eta=o.eta, x_T=x_T, generator=generator
        )
        return m.decode_first_stage(z).clamp(-1.0, 1.0)

    def render(self, items: Sequence[dict[str, Any]], reference: np.ndarray) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 for ``items``; ``reference`` (H, W, 3) in [-1, 1] is the
        first (or, with reference='first', every) frame's reference."""
        o, n = self.opts, len(items)
        generator = torch.Generator().manual_seed(o.seed)
        shared = randn((1, *self.latent_shape), generator, self.model.device)
        batch_size = 1 if o.reference == "progressive" else o.batch_size
        if batch_size < o.batch_size:
            logger.info("progressive reference: frames are rendered one after the other")
        out: list[np.ndarray] = []
        with self.model.ema_scope("rendering"), torch.inference_mode():
            ref_latent = self.encode_reference(torch.as_tensor(reference))
            bar = tqdm(total=n, desc=f"{o.sampler}-{o.steps}", unit="fr", disable=not o.progress)
            for start in range(0, n, batch_size):
                batch = default_collate(
                    [items[i] for i in range(start, min(n, start + batch_size))]
                )
                b = len(batch["image"])
                x_T = shared.expand(b, -1, -1, -1) if o.shared_noise else None
                if x_T is None:
                    x_T = randn((b, *self.latent_shape), generator, self.model.device)
                images = self.sample_batch(batch, ref_latent, x_T, generator)
                if o.reference == "progressive":  # this frame is the next one's reference
                    ref_latent = self.encode_reference(images[-1].permute(1, 2, 0))
                out.append(to_uint8(images))
                bar.update(b)
            bar.close()
        return np.concatenate(out)
