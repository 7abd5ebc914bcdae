"""Feathered paste-back of a generated face crop into the full-resolution source frame."""

from __future__ import annotations

import cv2
import numpy as np

from ldm.data.talk import JAW_POLYGON
from ldm.preprocessing.crop import to_source_coords

DILATE = 0.02  # grow the synthesised (jaw) region by this fraction of the crop side
FEATHER = 0.02  # Gaussian sigma of the blend edge, as a fraction of the crop side


def paste_mask(
    lms: np.ndarray, crop_size: int, side: int, dilate: float = DILATE, feather: float = FEATHER
) -> np.ndarray:
    """(side, side) float32 blend weights in [0, 1] over a crop box of ``side`` source pixels:
    1 on the lower face the model synthesises (landmarks 2..14 closed at 33, grown by ``dilate``),
    falling smoothly to exactly 0 at a distance of about 3 ``feather``.

    ``lms`` (68, 2) are landmarks in the pixels of the preprocessed crop (crop_size x crop_size).
    """
    box = np.array([0, 0, side])
    pts = to_source_coords(lms[list(JAW_POLYGON)], box, crop_size)  # (14, 2) in box pixels
    mask = np.zeros((side, side), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    radius = max(1, int(round(dilate * side)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    mask = cv2.dilate(mask, kernel).astype(np.float32) / 255.0
    sigma = max(0.5, feather * side)
    ksize = 2 * int(np.ceil(3 * sigma)) + 1
    mask = cv2.GaussianBlur(mask, (ksize, ksize), sigma, borderType=cv2.BORDER_CONSTANT)
    mask[mask > 0.999] = 1.0  # the kernel sums to 1 - 1e-7: make the inside fully generated
    return mask


def paste_face(
    frame: np.ndarray,
    generated: np.ndarray,
    box: list[int] | np.ndarray,
    mask: np.ndarray,
) -> np.ndarray:
    """Copy of ``frame`` (H, W, 3) uint8 with the generated crop (S, S, 3) uint8 resized to the box
    (x0, y0, side) and blended in with ``mask`` (side, side); pixels where mask is 0 stay as
    they are, bit for bit."""
    x0, y0, side = (int(v) for v in box)
    s = generated.shape[0]
    interp = cv2.INTER_CUBIC if side > s else cv2.INTER_AREA
    gen = generated if side == s else cv2.resize(generated, (side, side), interpolation=interp)
    h, w = frame.shape[:2]
    x1, y1 = min(w, x0 + side), min(h, y0 + side)  # the box may overhang an odd-sized frame
    out = frame.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    m = mask[: y1 - y0, : x1 - x0, None]
    blended = region * (1.0 - m) + gen[: y1 - y0, : x1 - x0].astype(np.float32) * m
    out[y0:y1, x0:x1] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out
