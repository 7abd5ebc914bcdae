"""The built-in demo sample: a real face photo that talks, with a known audio-to-mouth relation.

The face is scikit-image's ``astronaut()`` photo. A speech-like voice is synthesised whose
loudness and brightness follow a random syllable envelope, and the lower face is warped so that
the mouth opens with the same envelope. So the mouth follows the audio by construction, and a
model that learns lip sync must reproduce the envelope from the sound alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from ldm.data.layout import FPS, MOUTH, SAMPLE_RATE
from ldm.video import write_video

logger = logging.getLogger(__name__)

FACE_BOX = (130, 40, 322, 232)  # (x0, y0, x1, y1): the astronaut's face with margin
MAX_GAP = 0.075  # mouth opening at envelope 1, as a fraction of the frame height


def syllable_envelope(n_frames: int, seed: int = 0, rate: float = 4.0) -> np.ndarray:
    """Speech-like opening per video frame in [0, 1]: random syllables at ~rate Hz, with pauses."""
    rng = np.random.default_rng(seed)
    n_knots = int(n_frames / FPS * rate) + 2
    peaks = rng.uniform(0.25, 1.0, n_knots) * (rng.random(n_knots) > 0.2)  # 20% pauses
    knots = np.linspace(0, n_frames - 1, n_knots)
    x = np.interp(np.arange(n_frames), knots, peaks)
    kernel = np.hanning(7) / np.hanning(7).sum()
    x = np.convolve(np.pad(x, 3, mode="edge"), kernel, mode="valid")
    return np.clip(x, 0.0, 1.0)


def voice(envelope: np.ndarray, seed: int = 0) -> np.ndarray:
    """Float32 16 kHz 'voice' whose loudness and number of harmonics follow the envelope."""
    rng = np.random.default_rng(seed + 1)
    n = int(len(envelope) * SAMPLE_RATE / FPS)
    t = np.arange(n) / SAMPLE_RATE
    env = np.interp(t * FPS, np.arange(len(envelope)), envelope)
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    out = np.zeros(n)
    for k in range(1, 16):  # an open mouth is louder and brighter
        out += np.sin(k * phase) / k * np.clip(env * 16 - k + 1, 0, 1)
    out = 0.25 * env * out + 0.002 * rng.standard_normal(n)
    return out.astype(np.float32)


def mouth_landmarks(face: np.ndarray) -> np.ndarray:
    """68 landmarks of the neutral face (dlib, offline)."""
    from ldm.preprocessing.landmarks import make_landmarker

    lms = make_landmarker("dlib").detect(face)
    if lms is None:
        raise RuntimeError("dlib found no face in the demo photo")
    return lms


def open_mouth(face: np.ndarray, gap: float, lms: np.ndarray) -> np.ndarray:
    """Lower the lower lip and jaw smoothly by ``gap`` px below the lip line; the gap is dark."""
    h, w = face.shape[:2]
    cx = lms[MOUTH, 0].mean()
    split = (lms[62, 1] + lms[66, 1]) / 2  # between the inner lips
    half_w, chin = (lms[54, 0] - lms[48, 0]) / 2, lms[8, 1]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wx = np.sqrt(np.clip(1 - ((xx - cx) / (half_w * 1.3)) ** 2, 0, 1))  # lip-shaped profile
    ramp = np.clip(1 - (yy - chin) / (0.8 * (chin - split)), 0, 1)  # fades below the chin
    d = np.where(yy >= split, gap * wx * ramp, 0).astype(np.float32)
    out = cv2.remap(face, xx, yy - d, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    inside = (yy >= split) & (yy - d < split) & (wx > 0.15)
    out[inside] = (70, 20, 25)
    return out


def demo_frames(envelope: np.ndarray, size: int = 256, sway: float = 2.0) -> np.ndarray:
    """(T, size, size, 3) uint8 frames: the face, mouth opened by the envelope, slight head sway."""
    from skimage import data

    x0, y0, x1, y1 = FACE_BOX
    face = cv2.resize(data.astronaut()[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
    lms = mouth_landmarks(face)
    frames = np.empty((len(envelope), size, size, 3), np.uint8)
    for t, e in enumerate(envelope):
        f = open_mouth(face, MAX_GAP * size * float(e), lms)
        shift = np.float32([[1, 0, sway * np.sin(t / 23)], [0, 1, sway * np.cos(t / 31)]])
        frames[t] = cv2.warpAffine(f, shift, (size, size), borderMode=cv2.BORDER_REFLECT)
    return frames


def make_demo_clip(path: str | Path, seconds: float = 60.0, size: int = 256, seed: int = 0) -> Path:
    """Write the demo clip (mp4, 25 fps, AAC) and its envelope next to it (``.envelope.npy``)."""
    path = Path(path)
    envelope = syllable_envelope(int(seconds * FPS), seed)
    frames = demo_frames(envelope, size)
    wav = path.with_suffix(".wav")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(wav, voice(envelope, seed), SAMPLE_RATE)
    write_video(path, frames, FPS, audio_path=wav)
    np.save(path.with_suffix(".envelope.npy"), envelope)
    logger.info("demo clip %s: %d frames, %.0f s", path, len(frames), seconds)
    return path
