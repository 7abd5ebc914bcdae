"""Render a clip: batch its conditions, sample latents with latent inpainting, decode to frames.

One item per output frame, in the layout of ``ldm.data.talk.TalkInference``: ``image`` (the frame
whose upper face/background is kept), ``image_mask`` (the frame cut below landmark 33),
``landmarks`` (39, 2), ``audio_smooth`` (8, 16, D) and ``inference_mask`` (1, h, w; 1 = known).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import default_collate

from ldm.inference.bank import ReferenceBank
from ldm.models.diffusion.ddim import DDIMSampler, make_ddim_timesteps, randn
from ldm.models.diffusion.dpm_solver import DPMSolverSampler, ddim_start
from ldm.models.diffusion.wrapper import Cond
from ldm.util import to_uint8

logger = logging.getLogger(__name__)

SAMPLERS = ("ddim", "dpm")
DEFAULT_STEPS = {"ddim": 200, "dpm": 20}  # DDIM-200: the paper protocol (SPEC 5.2)
# Portrait mode and the web app render, unless told otherwise, as the demo does: DDIM 20 steps
# with a new noise each step (eta 1) and one x_T for the whole clip; DPM-Solver++ stays an ODE
# (eta 0), its better setting. Measured: docs/rendering.md#sampling-and-references. The split mode
# keeps the paper protocol (RenderOptions' defaults: DDIM 200, eta 0, a new x_T per frame).
PORTRAIT_SAMPLER, PORTRAIT_STEPS = "ddim", 20
PORTRAIT_ETA = {"ddim": 1.0, "dpm": 0.0}
CLIP_REFERENCE_MODES = ("first", "progressive")  # from the clip itself
REFERENCE_MODES = (*CLIP_REFERENCE_MODES, "bank")  # bank: from training frames (bank.py)
INITIAL_NOISE, STEP_NOISE = 1, 2  # noise streams of ``seeded``: x_T per frame, sampler per batch


class RenderedBatch(NamedTuple):
    """Consecutive rendered frames and the reference of the frame after them."""

    start: int  # index of the first frame
    frames: np.ndarray  # (B, H, W, 3) uint8
    reference: np.ndarray  # (H, W, 3) float in [-1, 1]


@dataclass
class RenderOptions:
    """How frames are sampled (the defaults are the paper protocol: DDIM 200, eta 0)."""

    sampler: str = "ddim"  # ddim | dpm (DPM-Solver++(2M))
    steps: int | None = None  # None: 200 for ddim, 20 for dpm
    eta: float = 0.0
    reference: str = "first"  # first: the clip's reference for every frame; progressive: the
    # previous generated frame is the next frame's reference (the paper's progressive inference);
    # bank: per frame, the frame of ``reference_bank`` whose mouth matches the audio (bank.py)
    reference_bank: str | None = None  # split list of training frames, e.g. data/data_train.txt
    bank_root: str = "data/HDTF"  # the dataset the bank's keys are in
    shared_noise: bool = False  # one initial noise for every frame of a clip
    batch_size: int = 8
    seed: int = 0
    progress: bool = True
    reference_speech: bool = False  # the driving speech is the reference frame's own (a clip
    # driven by its own audio): a per-speaker MouthPredictor takes the person's mean mouth from
    # the reference less the motion its audio predicts (else the reference is taken at rest)
    first_stage_only: bool = False  # no sampling: decode the frame's own latent (the ceiling a
    # rendered frame cannot pass: the truth through the first stage, pasted back the same way)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose from {SAMPLERS}")
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"unknown reference mode {self.reference!r}; choose {REFERENCE_MODES}")
        if (self.reference == "bank") != (self.reference_bank is not None):
            raise ValueError("reference mode 'bank' and a reference_bank go together")
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
    if name == "ddim":
        return DDIMSampler(model)
    return DPMSolverSampler(model, t_start=max(ddim_start(model.num_timesteps), steps))


def to_frames(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return to_uint8(images.permute(0, 2, 3, 1)).cpu().numpy()


class Renderer:
    """Sample frames of one clip at a time with the model's EMA weights."""

    def __init__(self, model: torch.nn.Module, opts: RenderOptions) -> None:
        self.model = prepare_model(model)
        self.opts = opts
        self.sampler = make_sampler(model, opts.sampler, opts.steps)
        self.bank = None
        self.offset: torch.Tensor | None = None  # per clip (person_offset)
        if opts.reference == "bank":
            self.bank = ReferenceBank(self.model, opts.reference_bank, opts.bank_root)

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
        x0 = m.scale_factor * m.encode_batch_images(batch["image"])  # (B, C, h, w)
        if o.first_stage_only:  # needs no conditioning: no reference is picked or encoded
            return m.decode_first_stage(x0).clamp(-1.0, 1.0)
        # per-frame references: the bank's, or pose-aligned ones (progressive keeps the previous
        # frame as it is)
        if self.bank is not None:
            self.bank.apply(batch)
        elif self.offset is not None:  # a per-speaker mouth predictor on this clip's face
            batch["mouth_code"] = m.mouth_model(batch["audio_smooth"].to(m.device)) + self.offset
        per_frame = self.bank is not None or (
            m.align_reference and o.reference == "first" and "reference_img" in batch
        )
        cond = m.get_learned_conditioning(batch, None if per_frame else reference_latent)
        mask = batch["inference_mask"].to(m.device, torch.float32)  # (B, 1, h, w), 1 = known
        z = self.inpaint(batch, cond, x0, mask, x_T, generator)
        return m.decode_first_stage(z).clamp(-1.0, 1.0)

    def inpaint(
        self, batch: dict[str, Any], cond: Cond, x0: torch.Tensor, mask: torch.Tensor,
        x_T: torch.Tensor, generator: torch.Generator,
    ) -> torch.Tensor:  # fmt: skip
        """Scaled latent (B, C, h, w): the cells of ``x0`` where ``mask`` is 0 sampled anew."""
        m, o = self.model, self.opts
        corners = m.window_corners(batch)
        return m.sample_inpaint(
            self.sampler, o.steps, cond, x0, mask, corners, eta=o.eta, x_T=x_T, generator=generator
        )

    def initial_noise(self, index: int) -> torch.Tensor:
        """(1, C, h, w) x_T of frame ``index`` (of every frame with shared_noise)."""
        key = () if self.opts.shared_noise else (INITIAL_NOISE, index)
        return randn((1, *self.latent_shape), seeded(self.opts.seed, *key), self.model.device)

    def frames(
        self, items: Sequence[dict[str, Any]], reference: np.ndarray, start: int = 0,
        stop: int | None = None,
    ) -> Iterator[RenderedBatch]:  # fmt: skip
        """Render ``items[start:stop]`` batch by batch. ``reference`` (H, W, 3) in [-1, 1] is the
        reference of frame ``start`` (with reference='first', of every frame). Each frame's noise
        depends only on the seed and its index, so any range renders as it would in a full run
        (with the same batch size, counted from ``start``)."""
        o, m = self.opts, self.model
        stop = len(items) if stop is None else stop
        batch_size = 1 if o.reference == "progressive" else o.batch_size
        with m.ema_scope("rendering"), torch.inference_mode():
            ref_latent = self.encode_reference(torch.as_tensor(reference))
            self.offset = self.person_offset(items[0])
            for first in range(start, stop, batch_size):
                index = range(first, min(stop, first + batch_size))
                batch = default_collate([items[i] for i in index])
                x_T = torch.cat([self.initial_noise(i) for i in index])  # (B, C, h, w)
                images = self.sample_batch(
                    batch, ref_latent, x_T, seeded(o.seed, STEP_NOISE, first)
                )
                if o.reference == "progressive":  # this frame is the next one's reference
                    reference = images[-1].permute(1, 2, 0).cpu().numpy()
                    ref_latent = self.encode_reference(torch.as_tensor(reference))
                yield RenderedBatch(first, to_frames(images), reference)

    def person_offset(self, item: dict[str, Any]) -> torch.Tensor | None:
        """(40,) a per-speaker MouthPredictor's shift to this clip's mean mouth (rendering
        without a bank), from the clip's reference frame in ``item`` (its landmarks, and its
        audio with ``reference_speech``); None for other models."""
        predictor = getattr(self.model, "mouth_model", None)
        if self.bank is not None or predictor is None or not predictor.per_speaker:
            return None
        upper, mouth = (
            torch.as_tensor(np.asarray(item[k]), dtype=torch.float32)[None]
            for k in ("reference_landmarks", "reference_mouth_landmarks")
        )
        audio = None
        if self.opts.reference_speech:
            audio = torch.as_tensor(np.asarray(item["audio_smooth"]), dtype=torch.float32)
        return predictor.person_offset(predictor.code(mouth, upper)[0], audio)

    def render(self, items: Sequence[dict[str, Any]], reference: np.ndarray) -> np.ndarray:
        """All frames (T, H, W, 3) uint8 of a short clip in memory (see ``frames``)."""
        return np.concatenate([b.frames for b in self.frames(items, reference)])


def seeded(seed: int, *key: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``seed`` and ``key`` (e.g. a frame index)."""
    state = np.random.SeedSequence([seed, *key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
