"""Mouth-matched references (demo recipe; the original draws a random frame, SPEC 2).

With a reference drawn at random, its mouth has nothing to do with the target's, so on one
speaker's minute of footage the UNet learns to ignore it and paints each training frame's lower
face from memory (docs/demo-recipe.md). With ``reference_choice: mouth`` the reference is
one of the frames whose mouth shape is nearest the target's (outside the usual margin in time), so
borrowing its lips and teeth is what lowers the loss; at rendering time
(``ldm.inference.bank.ReferenceBank``) each frame borrows from the training frame whose shape is
nearest the one predicted from the audio.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ldm.data.layout import (
    MOUTH,
    UPPER_FACE_LANDMARKS,
    format_key,
    read_landmarks_file,
    reference_exclusion,
)
from ldm.geometry import mouth_code, shape_template

logger = logging.getLogger(__name__)


def read_landmarks(root: Path, keys: np.ndarray) -> np.ndarray:
    """(N, 68, 2) landmarks of ``{id}_{frame}`` keys (N, 2) from ``root/landmarks``."""
    return np.stack([read_landmarks_file(root, format_key(*k)) for k in keys])


def shape_codes(landmarks: np.ndarray) -> np.ndarray:
    """(N, 68, 2) landmarks -> (N, 40) mouth shape codes, standardised per dimension."""
    lms = torch.from_numpy(landmarks)
    upper, mouth = lms[:, list(UPPER_FACE_LANDMARKS)], lms[:, list(MOUTH)]
    codes = mouth_code(mouth, upper, shape_template(upper)).numpy()
    return (codes - codes.mean(0)) / np.maximum(codes.std(0), 1e-6)


def nearest_mouths(keys: np.ndarray, codes: np.ndarray, margin: int, k: int) -> list[np.ndarray]:
    """Per key, the frames of the same identity with the ``k`` nearest mouth codes, outside
    {frame - margin, ..., frame + margin - 1} (the random rule's margin); fewer when the
    identity has fewer such frames, and every other frame of the identity when it has none."""
    out: list[np.ndarray] = [np.empty(0, np.int64)] * len(keys)
    for vid in np.unique(keys[:, 0]):
        rows = np.flatnonzero(keys[:, 0] == vid)
        frames, c = keys[rows, 1].astype(np.int64), codes[rows]
        dist = ((c[:, None] - c[None]) ** 2).sum(-1)
        lo, hi = reference_exclusion(frames[:, None], margin)
        near = (frames[None] >= lo) & (frames[None] <= hi)
        dist[near] = np.inf
        if len(rows) > 1:
            np.fill_diagonal(dist, np.inf)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        for i, row in enumerate(rows):
            keep = order[i][np.isfinite(dist[i, order[i]])]
            if len(keep) == 0:  # a short clip: any other frame
                keep = np.flatnonzero(frames != frames[i]) if len(rows) > 1 else np.array([i])
            out[row] = frames[keep]
    return out


def mouth_candidates(root: Path, keys: np.ndarray, margin: int, k: int) -> list[np.ndarray]:
    """``nearest_mouths`` of a dataset's keys, from their landmark files."""
    logger.info("mouth-matched references: %d nearest shapes for %d frames", k, len(keys))
    return nearest_mouths(keys, shape_codes(read_landmarks(root, keys)), margin, k)
