"""Frame-to-frame face tracking for the dlib landmarker: search near the last face, else detect."""

from __future__ import annotations

import logging

import numpy as np

from ldm.data.layout import N_LANDMARKS
from ldm.preprocessing.landmarks import (
    DlibLandmarker,
    _box_center,
    _to_gray,
    _Tracker,
)

log = logging.getLogger(__name__)


class DlibTracker(_Tracker):
    """Track one face through a clip.

    Each frame is first searched in a window around the previous face, rescaled so the face is
    about `face_px` wide (cheap, and keeps following the same person); when that fails the whole
    frame is searched on a downscaled copy (then at twice that scale for small faces). The first
    search, and a whole-frame scan every `scan_every` frames, use the finer scale so that other
    faces are noticed. Among several faces the one nearest the last tracked face is kept, or the
    largest if there is none yet.
    """

    def __init__(
        self, lm: DlibLandmarker, window: float = 3.0, keep_lost: int = 5, scan_every: int = 50
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
        gray = _to_gray(frame_rgb)
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
