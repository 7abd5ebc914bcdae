"""Per-clip face tracking: the tracker base and its stats, and the dlib tracker that searches
near the last face, else detects on the whole frame."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from ldm.data.layout import N_LANDMARKS

log = logging.getLogger(__name__)


@dataclass
class TrackStats:
    """What happened while tracking one clip."""

    n_frames: int = 0
    n_missing: int = 0  # frames with no face
    n_multi: int = 0  # frames where the detector saw more than one face
    first_multi: int = -1  # first such frame (0-based), -1 if none
    last_multi: int = -1  # last such frame (0-based), -1 if none
    n_full_searches: int = 0  # frames that needed a whole-frame detection
    notes: list[str] = field(default_factory=list)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grayscale view of an RGB or gray frame."""
    if frame.ndim == 2:
        return np.ascontiguousarray(frame, np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(frame, np.uint8), cv2.COLOR_RGB2GRAY)


def _box_center(box: np.ndarray) -> np.ndarray:
    """Centre (x, y) of an (x0, y0, x1, y1) box."""
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


class Tracker:
    """Stateful per-clip tracking; `stats` describes what happened."""

    def __init__(self) -> None:
        self.stats = TrackStats()

    def update(self, frame_rgb: np.ndarray) -> np.ndarray:
        """(68, 2) float32 landmarks for the next frame, all NaN if no face."""
        raise NotImplementedError


class FaceFinder(Protocol):
    """What DlibTracker uses of its landmarker (landmarks.DlibLandmarker)."""

    det_size: int  # longest side of the whole-frame detection image
    face_px: int  # face width the search window is rescaled to

    def find_faces(self, gray: np.ndarray, scale: float | None = None) -> np.ndarray:
        """(N, 5) boxes (x0, y0, x1, y1, score) in `gray` pixels, detected at `scale`."""

    def shape(self, gray: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(68, 2) float32 landmarks inside a face box."""


class DlibTracker(Tracker):
    """Track one face through a clip.

    Each frame is first searched in a window around the previous face, rescaled so the face is
    about `face_px` wide (cheap, and keeps following the same person); when that fails the whole
    frame is searched on a downscaled copy (then at twice that scale for small faces). The first
    search, and a whole-frame scan every `scan_every` frames, use the finer scale so that other
    faces are noticed. Among several faces the one nearest the last tracked face is kept, or the
    largest if there is none yet.
    """

    def __init__(
        self, lm: FaceFinder, window: float = 3.0, keep_lost: int = 5, scan_every: int = 50
    ) -> None:
        super().__init__()
        self.lm = lm
        self.window = window  # search window side, in face widths
        self.keep_lost = keep_lost  # frames a lost track still seeds the local search
        self.scan_every = scan_every
        self.prev: np.ndarray | None = None  # last face box (x0, y0, x1, y1), full-res pixels
        self.lost = 0

    def update(self, frame_rgb: np.ndarray) -> np.ndarray:
        """(68, 2) float32 landmarks in full-resolution pixels, all NaN when no face."""
        gray = to_gray(frame_rgb)
        index = self.stats.n_frames
        self.stats.n_frames += 1
        box = None
        if self.prev is not None and self.lost <= self.keep_lost:
            box = self._search_near(gray, index)
            if box is not None and index % self.scan_every == 0:
                self._scan(gray, index)
        if box is None:
            box = self._search_full(gray, index)
        if box is None:
            self.stats.n_missing += 1
            self.lost += 1
            return np.full((N_LANDMARKS, 2), np.nan, np.float32)
        self.prev, self.lost = box, 0
        return self.lm.shape(gray, box)

    def _search_near(self, gray: np.ndarray, index: int) -> np.ndarray | None:
        """Detect inside a window around the previous face box; None if nothing plausible."""
        h, w = gray.shape
        c, side = _box_center(self.prev), max(self.prev[2] - self.prev[0], 8.0)
        half = side * self.window / 2
        x0, y0 = int(max(0, c[0] - half)), int(max(0, c[1] - half))
        x1, y1 = int(min(w, c[0] + half)), int(min(h, c[1] + half))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        scale = float(np.clip(self.lm.face_px / side, 0.05, 2.5))
        boxes = self.lm.find_faces(gray[y0:y1, x0:x1], scale=scale)
        if len(boxes) == 0:
            return None
        boxes[:, [0, 2]] += x0
        boxes[:, [1, 3]] += y0
        widths = boxes[:, 2] - boxes[:, 0]
        boxes = boxes[(widths > 0.5 * side) & (widths < 2.0 * side)]
        return self._pick(boxes, index) if len(boxes) else None

    def _search_full(self, gray: np.ndarray, index: int) -> np.ndarray | None:
        """Detect on the whole (downscaled) frame, then at twice that scale for small faces;
        the very first search goes straight to the finer scale to see every face."""
        self.stats.n_full_searches += 1
        base = min(1.0, self.lm.det_size / max(gray.shape))
        boxes = self.lm.find_faces(gray, scale=base) if self.prev is not None else []
        if len(boxes) == 0:
            boxes = self.lm.find_faces(gray, scale=2 * base)
        return self._pick(boxes, index) if len(boxes) else None

    def _scan(self, gray: np.ndarray, index: int) -> None:
        """Whole-frame check (finer scale) that only counts faces, to report other people."""
        base = min(1.0, self.lm.det_size / max(gray.shape))
        self._count(len(self.lm.find_faces(gray, scale=2 * base)), index)

    def _count(self, n_faces: int, index: int) -> None:
        """Record a frame with more than one face (once per frame)."""
        if n_faces > 1 and self.stats.last_multi != index:
            self.stats.n_multi += 1
            self.stats.last_multi = index
            if self.stats.first_multi < 0:
                self.stats.first_multi = index

    def _pick(self, boxes: np.ndarray, index: int) -> np.ndarray:
        """Choose one face: nearest the last tracked face, else the largest; count ambiguities."""
        self._count(len(boxes), index)
        if self.prev is not None:
            dist = np.linalg.norm(
                np.stack([_box_center(b) for b in boxes]) - _box_center(self.prev), axis=1
            )
            return boxes[int(np.argmin(dist))]
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[int(np.argmax(areas))]
