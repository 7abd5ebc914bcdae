"""The pose-aligned copy-reference baseline: the truth's first frame warped onto each frame's head
pose, so that a still reference in the wrong pose is not what a render is compared with.

Each frame's warp is the least-squares similarity (scale, rotation, shift) that maps the first
frame's stable landmarks (nose and eyes, iBUG 27-47, never the mouth) onto that frame's, as
``align_reference`` does for the model's reference (ldm/models/diffusion/reference_align.py);
here in numpy/cv2, with the same pixel-centre convention. Its landmarks are the first frame's
mapped by the same similarity. LMD aligns each face's points 17-47 by a similarity before
measuring the mouth, so this row's LMD equals the plain copy's: what the alignment changes is
where the mouth lies in the image (mouth PSNR, SSIM, LPIPS), not its shape.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from ldm.data.layout import EYES, NOSE
from ldm.evaluation import landmark_metrics as lm

STABLE_POINTS = np.r_[NOSE, EYES]  # iBUG 27-35 and 36-47


def pose_transforms(first_lms: np.ndarray, lms: np.ndarray) -> np.ndarray:
    """(T, 2, 3) similarity per frame mapping ``first_lms`` (68, 2) onto ``lms`` (T, 68, 2) by
    their stable points; the identity where either has no face."""
    out = np.zeros((len(lms), 2, 3))
    out[:, 0, 0] = out[:, 1, 1] = 1.0
    ok = lm.valid_frames(lms) & bool(np.isfinite(first_lms).all())
    if not ok.any():
        return out
    src = np.broadcast_to(first_lms[STABLE_POINTS], (int(ok.sum()), len(STABLE_POINTS), 2))
    scale, rot, shift = lm.fit_similarity(src.astype(np.float64), lms[ok][:, STABLE_POINTS])
    out[ok, :, :2] = scale[:, None, None] * rot
    out[ok, :, 2] = shift
    return out


def mapped_landmarks(first_lms: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """(T, 68, 2) the first frame's landmarks moved by each frame's transform (T, 2, 3)."""
    pts = first_lms.astype(np.float64)
    return np.einsum("tij,nj->tni", transforms[:, :, :2], pts) + transforms[:, None, :, 2]


def warped_frames(first: np.ndarray, transforms: np.ndarray) -> Iterator[np.ndarray]:
    """The first frame (H, W, 3) warped by each transform (T, 2, 3), one frame at a time
    (bilinear, edge pixels repeated beyond the border, as align_references)."""
    h, w = first.shape[:2]
    for a in transforms:
        yield cv2.warpAffine(
            first, a, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
