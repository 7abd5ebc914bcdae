"""Square face crop per clip (HDTF-like framing), landmark gap filling and coordinate mapping."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

# HDTF 512 px clips frame the face with a side of ~1.8-2.0x the 68-landmark extent, centred
# ~0.2 extents above the landmark centre (landmarks stop at the brows); measured on the
# shared HDTF/30 fps/224 px clips.
CROP_SCALE = 1.8
CROP_SHIFT_UP = 0.2


@dataclass(frozen=True)
class Gap:
    """A run of frames [start, end) (0-based) without a detected face."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """Number of frames in the gap."""
        return self.end - self.start


def find_gaps(missing: np.ndarray) -> list[Gap]:
    """Runs of True in a boolean (T,) array."""
    padded = np.concatenate([[False], np.asarray(missing, bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [Gap(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def fill_gaps(lms: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray, list[Gap]]:
    """Fill NaN frames of (T, 68, 2) landmarks: linear interpolation inside gaps of at most
    `max_gap` frames, nearest-frame hold elsewhere. Returns (filled, invalid mask (T,), long gaps)
    where `invalid` marks frames of longer gaps (kept in the clip, left out of the lists)."""
    lms = np.asarray(lms, np.float32)
    missing = np.isnan(lms).any(axis=(1, 2))
    if missing.all():
        raise ValueError("no face detected in any frame")
    t = np.arange(len(lms))
    flat = lms.reshape(len(lms), -1)
    filled = np.stack(
        [np.interp(t, t[~missing], flat[~missing, j]) for j in range(flat.shape[1])], axis=1
    )
    gaps = find_gaps(missing)
    long_gaps = [g for g in gaps if g.length > max_gap]
    invalid = np.zeros(len(lms), bool)
    for g in long_gaps:
        invalid[g.start : g.end] = True
    return filled.reshape(lms.shape).astype(np.float32), invalid, long_gaps


def _face_extent(lms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame landmark box centre (T, 2) and extent max(w, h) (T,)."""
    lo, hi = lms.min(axis=1), lms.max(axis=1)
    return (lo + hi) / 2, (hi - lo).max(axis=1)


def _gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 with edge replication."""
    if sigma <= 0 or len(x) < 2:
        return x
    radius = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(x, [(radius, radius)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    return np.stack([np.convolve(padded[:, j], k, mode="valid") for j in range(x.shape[1])], axis=1)


def plan_crop(
    lms: np.ndarray,
    width: int,
    height: int,
    mode: str = "fixed",
    scale: float = CROP_SCALE,
    shift_up: float = CROP_SHIFT_UP,
    smooth_frames: float = 12.5,
) -> np.ndarray:
    """(T, 3) int square crop boxes (x0, y0, side) in source pixels from (T, 68, 2) landmarks.

    'fixed': one box for the whole clip that holds the face at every frame (HDTF style);
    'track': a constant side whose centre follows the face, Gaussian-smoothed over time.
    Boxes are clamped inside the frame (side at most the frame's short side).
    """
    centre, extent = _face_extent(np.asarray(lms, np.float64))
    ext = float(np.percentile(extent, 95))
    side = scale * ext
    if mode == "fixed":
        lo, hi = np.percentile(centre, 1, axis=0), np.percentile(centre, 99, axis=0)
        side = max(side, float((hi - lo).max()) + 1.25 * ext)
        centres = np.repeat(((lo + hi) / 2)[None], len(lms), axis=0)
    elif mode == "track":
        centres = _gaussian_smooth(centre, smooth_frames)
    else:
        raise ValueError(f"unknown crop mode {mode!r}; choose 'fixed' or 'track'")
    side = int(round(min(side, width, height)))
    cx = centres[:, 0]
    cy = centres[:, 1] - shift_up * ext
    x0 = np.clip(np.round(cx - side / 2), 0, width - side).astype(int)
    y0 = np.clip(np.round(cy - side / 2), 0, height - side).astype(int)
    return np.stack([x0, y0, np.full_like(x0, side)], axis=1)


def window_box(
    window: tuple[int, int, int, int], width: int, height: int, n: int, scale: float = 1.0
) -> np.ndarray:
    """(n, 3) constant box from a fixed (x, y, w, h) window such as HDTF's crop_wh, in pixels
    multiplied by `scale` (frame height / the height the window was drawn at), squared to
    side max(w, h) around its centre and clamped inside the frame."""
    x, y, w, h = (v * scale for v in window)
    side = int(round(min(max(w, h), width, height)))
    x0 = int(np.clip(round(x + w / 2 - side / 2), 0, width - side))
    y0 = int(np.clip(round(y + h / 2 - side / 2), 0, height - side))
    return np.tile(np.array([x0, y0, side]), (n, 1))


def crop_frame(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Cut the square box (x0, y0, side) out of an (H, W, 3) frame and resize to size x size."""
    x0, y0, side = (int(v) for v in box)
    patch = frame[y0 : y0 + side, x0 : x0 + side]
    if side == size:
        return np.ascontiguousarray(patch)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp)


def to_crop_coords(lms: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Map (68, 2) source-pixel landmarks into the size x size crop (pixel-centre convention)."""
    x0, y0, side = (float(v) for v in box)
    s = size / side
    return ((lms - np.array([x0, y0], np.float32) + 0.5) * s - 0.5).astype(np.float32)


def to_source_coords(pts: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Inverse of `to_crop_coords`: crop pixels back to source-frame pixels."""
    x0, y0, side = (float(v) for v in box)
    s = side / size
    return ((pts + 0.5) * s - 0.5 + np.array([x0, y0], np.float32)).astype(np.float32)
