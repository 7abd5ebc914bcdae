"""Frames of a preprocessed portrait clip as TalkInference-style items, and length matching."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ldm.data.layout import (
    FPS,
    MOUTH,
    SAMPLE_RATE,
    UPPER_FACE_LANDMARKS,
    format_key,
    read_landmarks_file,
)
from ldm.data.talk import (
    INFERENCE_MASK_LANDMARK,
    frame_item,
    jaw_latent_mask,
    load_image,
)
from ldm.preprocessing.audio_features import SmoothedWindows, extract_features
from ldm.preprocessing.dataset import ClipMeta

logger = logging.getLogger(__name__)

LOOP_MODES = ("pingpong", "loop")


class AudioTooShortError(ValueError):
    """The driving audio is shorter than one video frame."""


def frame_indices(n_source: int, n_out: int, mode: str = "pingpong") -> np.ndarray:
    """(n_out,) 0-based source frame per output frame: the first n_out frames when the source is
    long enough, else the source repeated ('loop': 0..n-1, 0..; 'pingpong': 0..n-1, n-2..1, 0..)."""
    if n_source < 1 or n_out < 0:
        raise ValueError(f"need at least one source frame, got {n_source}")
    if mode not in LOOP_MODES:
        raise ValueError(f"unknown loop mode {mode!r}; choose from {LOOP_MODES}")
    k = np.arange(n_out)
    if mode == "loop" or n_source == 1:
        return k % n_source
    period = 2 * (n_source - 1)
    phase = k % period
    return np.where(phase < n_source, phase, period - phase)


def n_video_frames(n_samples: int, sr: int = SAMPLE_RATE, fps: float = FPS) -> int:
    """Whole video frames within an audio of n_samples at sr (the mp4 muxer's -shortest would
    drop a last frame that outlasts the audio)."""
    n = int(n_samples * fps / sr + 1e-6)
    if n < 1:
        raise AudioTooShortError(
            f"the audio lasts {n_samples / sr * 1000:.1f} ms, shorter than one video frame "
            f"({1000 / fps:.0f} ms at {fps:g} fps)"
        )
    return n


def driving_audio(
    wav: np.ndarray, kind: str = "logmel", model_path: str | None = None
) -> SmoothedWindows:
    """(n_frames,) lazy (8, 16, D) smoothed audio windows of 16 kHz speech, one per 25 fps
    frame (only the 50 Hz features are held, whatever the speech's length)."""
    feats = extract_features(wav, SAMPLE_RATE, kind=kind, model_path=model_path)
    return SmoothedWindows(feats, n_video_frames(len(wav)))


def make_item(
    image: np.ndarray,
    lms: np.ndarray,
    audio: np.ndarray,
    scale: float,
    latent_size: int,
    mask_landmark: int = INFERENCE_MASK_LANDMARK,
) -> dict[str, Any]:
    """One TalkInference item (SPEC 3): talk.frame_item plus the jaw latent mask."""
    item = frame_item(image, lms, audio, scale, mask_landmark)
    item["inference_mask"] = jaw_latent_mask(lms, round(scale * image.shape[0]), latent_size)[None]
    return item


@dataclass
class PortraitClip:
    """A portrait preprocessed into ``root`` as clip ``vid`` (images/, landmarks/, crops/)."""

    root: Path
    meta: ClipMeta

    @property
    def n_frames(self) -> int:
        """Frames 1..n_frames exist."""
        return self.meta.n_frames

    def image(self, frame: int, size: int) -> tuple[np.ndarray, float]:
        """0-based frame's crop resized to size (size, size, 3) in [-1, 1], and crop/size scale."""
        return load_image(self.root / "images" / f"{format_key(self.meta.id, frame + 1)}.jpg", size)

    def landmarks(self, frame: int) -> np.ndarray:
        """(68, 2) landmarks of a 0-based frame in crop pixels (crop side = meta.size)."""
        return read_landmarks_file(self.root, format_key(self.meta.id, frame + 1))

    def box(self, frame: int) -> list[int]:
        """(x0, y0, side) crop box of a 0-based frame in source pixels."""
        return self.meta.box_for(frame + 1)


class PortraitItems(Sequence):
    """Lazy TalkInference items: output frame k shows source frame ``indices[k]`` driven by
    audio window ``audio[k]``."""

    def __init__(
        self,
        clip: PortraitClip,
        indices: np.ndarray,
        audio: Sequence[np.ndarray],
        size: int,
        latent_size: int,
        mask_landmark: int = INFERENCE_MASK_LANDMARK,
    ) -> None:
        if len(indices) != len(audio):
            raise ValueError(f"{len(indices)} frame indices for {len(audio)} audio windows")
        self.clip, self.indices, self.audio = clip, indices, audio
        self.size, self.latent_size, self.mask_landmark = size, latent_size, mask_landmark

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        src = int(self.indices[k])
        image, scale = self.clip.image(src, self.size)
        lms = self.clip.landmarks(src)
        item = make_item(image, lms, self.audio[k], scale, self.latent_size, self.mask_landmark)
        item["reference_img"] = self.reference()  # for models that align it per frame
        item["reference_landmarks"] = self.reference_landmarks
        item["reference_mouth_landmarks"] = self.reference_mouth
        return item

    def reference(self) -> np.ndarray:
        """The clip's first frame (size, size, 3) in [-1, 1], the original's reference choice."""
        if not hasattr(self, "_reference"):
            image, scale = self.clip.image(0, self.size)
            lms = self.clip.landmarks(0) / scale
            self._reference = image
            self.reference_landmarks = lms[list(UPPER_FACE_LANDMARKS)].astype(np.float32)
            self.reference_mouth = lms[list(MOUTH)].astype(np.float32)
        return self._reference
