"""The latents of a batch for LatentDiffusion: the frozen first stage, the latent cache of the
training frames and the pose-aligned reference latents.

A mixin of ``LatentDiffusion`` (ldm/models/diffusion/ddpm.py), which owns the attributes it reads:
``first_stage_model``, ``scale_factor``, ``latent_cache``, ``align_reference`` and
``match_reference_colours``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from einops import rearrange
from torch.utils.data import Dataset, default_collate

from ldm.models.diffusion.reference_align import align_references, match_colours
from ldm.modules.distributions import DiagonalGaussianDistribution

logger = logging.getLogger(__name__)

REFERENCE_KEY = 2**20  # cache key of an aligned reference: target frame x 2**20 + reference frame
FILL_BATCH = 32  # pairs encoded at a time when the cache is filled up front
FILL_LOG_EVERY = 100  # batches between progress lines of the fill


class FirstStageLatents:
    """Encoding and decoding through the frozen first stage, with the training-latent cache."""

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> unscaled latent (B, C, h, w) (VQ: pre-quantisation)."""
        out = self.first_stage_model.encode(x)
        return out.mode() if isinstance(out, DiagonalGaussianDistribution) else out  # KL: mean

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent (B, C, h, w) -> image (B, 3, H, W); call under no_grad when sampling."""
        return self.first_stage_model.decode(z / self.scale_factor)

    def encode_batch_images(self, images: torch.Tensor) -> torch.Tensor:
        """Batch images (B, H, W, 3) in [-1, 1] -> unscaled latents (B, C, h, w) on our device."""
        return self.encode_first_stage(to_bchw(images).to(self.device))

    def encode_frames(self, batch: dict[str, Any], key: str, frame_key: str) -> torch.Tensor:
        """Latents of ``batch[key]``; from the cache for training batches when it is on."""
        if self.latent_cache is None or not self.training:
            return self.encode_batch_images(batch[key])
        kind = "image_mask" if key == "image_mask" else "image"  # a reference is a plain frame
        return self.latent_cache.encode(
            lambda idx: self.encode_batch_images(batch[key][idx]),
            batch["video_id"],
            batch[frame_key],
            kind,
            self.device,
        )

    def aligned_references(self, batch: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        """Unscaled latents of the references of items ``idx``, warped onto their targets' head
        pose (and colours, with ``match_reference_colours``)."""
        ref = to_bchw(batch["reference_img"][idx]).to(self.device)
        ref_lms, lms = (batch[k][idx].to(self.device) for k in ("reference_landmarks", "landmarks"))
        ref = align_references(ref, ref_lms, lms)
        if self.match_reference_colours:
            ref = match_colours(ref, to_bchw(batch["image_mask"][idx]).to(self.device), lms)
        return self.encode_first_stage(ref)

    def reference_latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """Unscaled latents of the batch's references, pose-aligned with ``align_reference``.

        An aligned reference depends on its target too, so the cache keys it by both frames; a
        frame that is its own reference is already aligned: its cached latent serves.
        """
        if not self.align_reference:
            return self.encode_frames(batch, "reference_img", "reference_frame")
        if self.latent_cache is None or not self.training:
            return self.aligned_references(batch, torch.arange(len(batch["landmarks"])))
        out = self.encode_frames(batch, "image", "frame").clone()
        others = torch.nonzero(batch["reference_frame"] != batch["frame"])[:, 0]
        if len(others):
            pair = batch["frame"][others] * REFERENCE_KEY + batch["reference_frame"][others]
            out[others] = self.latent_cache.encode(
                lambda j: self.aligned_references(batch, others[j]), batch["video_id"][others],
                pair, "aligned_reference", self.device,
            )  # fmt: skip
        return out

    @torch.no_grad()
    def fill_latent_cache(self, dataset: Dataset) -> None:
        """Encode every training frame, masked frame and reference pair the dataset can return
        (``reference_pairs``) before the first step, in batches and in bf16 (the latents differ
        from fp32 ones by about 0.3% of their spread), instead of during the first epochs."""
        start, pairs = time.perf_counter(), dataset.reference_pairs()
        self.first_stage_model.to(memory_format=torch.channels_last)
        mode = self.training
        self.train()  # the cache serves training batches only
        for n, i in enumerate(range(0, len(pairs), FILL_BATCH)):
            items = [dataset.pair_item(j, r) for j, r in pairs[i : i + FILL_BATCH]]
            batch = default_collate(items)
            with torch.autocast(self.device.type, torch.bfloat16):
                self.encode_frames(batch, "image", "frame")
                self.encode_frames(batch, "image_mask", "frame")
                self.reference_latents(batch)
            if n % FILL_LOG_EVERY == 0:
                logger.info("latent cache: %d/%d frame-reference pairs", i, len(pairs))
        self.train(mode)
        logger.info(
            "latent cache: %d pairs, %d latents in %.0f s",
            len(pairs), len(self.latent_cache), time.perf_counter() - start,
        )  # fmt: skip


def to_bchw(images: torch.Tensor) -> torch.Tensor:
    """LDM batch layout (B, H, W, C) -> contiguous float (B, C, H, W)."""
    return rearrange(images, "b h w c -> b c h w").contiguous().float()
