"""Clips the evaluation tests score: a synthetic talking face (a photo whose mouth opens by a
known design) and a real HDTF segment, with dlib landmarks, and the degradations applied to them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ldm.evaluation.clips import read_clip

from conftest import SHARED_DATA

REAL_CLIP = SHARED_DATA / "hdtf" / "RD_Radio34_000.mp4"
N_SYNTH, N_REAL = 40, 40
N_SHORT = 10  # frames of the sharpness / first-stage tests


def open_mouth(img: np.ndarray, gap: float, lms: np.ndarray) -> np.ndarray:
    """Drop the lower lip and jaw by `gap` px below the lip line, filling the gap dark."""
    h, w = img.shape[:2]
    cx = lms[48:68, 0].mean()
    split = (lms[62, 1] + lms[66, 1]) / 2
    half_w, chin = (lms[54, 0] - lms[48, 0]) / 2, lms[8, 1]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wx = np.sqrt(np.clip(1 - ((xx - cx) / (half_w * 1.2)) ** 2, 0, 1))
    ramp = np.clip(1 - (yy - chin) / (0.6 * (chin - split)), 0, 1)
    d = np.where(yy >= split, gap * wx * ramp, 0).astype(np.float32)
    out = cv2.remap(img, xx, yy - d, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out[(yy >= split) & (yy - d < split) & (wx > 0.2)] = (60, 15, 20)
    return out


def design(n: int, seed: int = 0) -> np.ndarray:
    """A smooth, non-palindromic opening pattern in [0, 1] (speech-like bursts)."""
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.random(n + 6), np.ones(4) / 4, mode="valid")[:n]
    return (x - x.min()) / np.ptp(x)


def synthetic_clip(landmarker) -> dict:
    """40 frames, 256 px, of a real face photo whose mouth opens as `design`; slight head sway:
    {"frames", "design", "lms"}."""
    from skimage import data

    face = cv2.resize(data.astronaut()[40:232, 130:322], (256, 256), interpolation=cv2.INTER_CUBIC)
    lms0 = landmarker.detect(face)
    assert lms0 is not None, "dlib no longer finds the astronaut's face"
    opening = design(N_SYNTH)
    frames = []
    for t, g in enumerate(opening):
        f = open_mouth(face, 14.0 * g, lms0)
        shift = np.float32([[1, 0, 1.5 * np.sin(t / 5)], [0, 1, np.cos(t / 7)]])
        frames.append(cv2.warpAffine(f, shift, (256, 256), borderMode=cv2.BORDER_REFLECT))
    frames = np.stack(frames)
    return {"frames": frames, "design": opening, "lms": landmarker.track(frames)}


def real_clip() -> dict:
    """The first 40 frames of a real HDTF clip, {"frames"} (skips the test when absent)."""
    if not REAL_CLIP.exists():
        pytest.skip(f"{REAL_CLIP} is absent (tests read ../shared/data beside the project root)")
    frames = read_clip(REAL_CLIP, max_frames=N_REAL)
    return {"frames": frames}


def lip_box(lms: np.ndarray, pad: int = 6) -> tuple[slice, slice]:
    """Rows/cols around the lips (points 48-67) of one frame."""
    lo, hi = lms[48:68].min(0).astype(int) - pad, lms[48:68].max(0).astype(int) + pad
    return slice(lo[1], hi[1]), slice(lo[0], hi[0])


def noisy(frames: np.ndarray, sigma: float = 3.0, seed: int = 1) -> np.ndarray:
    """A mildly degraded copy over the whole frame (a stand-in for a decent generator)."""
    noise = np.random.default_rng(seed).normal(0, sigma, frames.shape)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def blur_mouth(frames: np.ndarray, lms: np.ndarray) -> np.ndarray:
    """Copy with a strong blur on the lips of every frame."""
    out = frames.copy()
    for t in range(len(out)):
        ys, xs = lip_box(lms[t])
        out[t, ys, xs] = cv2.GaussianBlur(out[t, ys, xs], (0, 0), 5)
    return out


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Whole-frame Gaussian blur of every frame."""
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])
