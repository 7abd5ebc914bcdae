"""Landmark metrics on iBUG-68 tracks: LMD after upper-face alignment, mouth opening, corr."""

from __future__ import annotations

import numpy as np

from ldm.data import layout

# brows 17-26, nose 27-35, eyes 36-47: rigid enough to align heads
UPPER_FACE = np.r_[layout.BROWS, layout.NOSE, layout.EYES]
MOUTH = np.r_[layout.MOUTH]  # the 20 mouth points LMD is measured on
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # (upper, lower) inner-lip points
LEFT_EYE, RIGHT_EYE = np.r_[36:42], np.r_[42:48]
OUTER_EYE_CORNERS = (36, 45)  # inter-ocular distance, as in the 300-W normalisation
MIN_CORR_FRAMES = 3
CONSTANT_SPREAD = 1e-9  # a series varying less than this is constant (float rounding, not motion)


def valid_frames(lms: np.ndarray) -> np.ndarray:
    """(T,) bool: frames whose 68 landmarks are all finite (a face was found)."""
    return np.isfinite(lms).all(axis=(1, 2))


def inter_ocular(lms: np.ndarray) -> np.ndarray:
    """(T,) distance between the outer eye corners, pixels (NaN where no face)."""
    a, b = OUTER_EYE_CORNERS
    return np.linalg.norm(lms[:, b] - lms[:, a], axis=-1)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) per frame: src (T,N,2) -> dst; returns s, R, t."""
    mu_s, mu_d = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    xs, xd = src - mu_s, dst - mu_d  # (T, N, 2)
    cov = np.einsum("tni,tnj->tij", xd, xs) / src.shape[1]  # (T, 2, 2)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones_like(sv)
    d[:, 1] = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    rot = u @ (d[:, :, None] * vt)  # (T, 2, 2)
    var_s = np.mean(np.sum(xs * xs, axis=-1), axis=1)  # (T,)
    scale = np.sum(sv * d, axis=1) / var_s
    shift = mu_d[:, 0] - scale[:, None] * np.einsum("tij,tj->ti", rot, mu_s[:, 0])
    return scale, rot, shift


def apply_similarity(pts: np.ndarray, scale: np.ndarray, rot: np.ndarray, shift: np.ndarray):
    """Map (T, N, 2) points by per-frame s * R @ p + t."""
    return scale[:, None, None] * np.einsum("tij,tnj->tni", rot, pts) + shift[:, None]


def lmd(pred_lms: np.ndarray, gt_lms: np.ndarray) -> np.ndarray:
    """(T,) mean mouth-landmark distance in truth pixels after aligning the upper faces.

    Each predicted face is mapped onto the truth by the similarity fitted on points 17-47, so
    head pose and scale differences do not count; frames without a face in either are NaN.
    """
    out = np.full(len(gt_lms), np.nan)
    ok = valid_frames(pred_lms) & valid_frames(gt_lms)
    if not ok.any():
        return out
    p, g = pred_lms[ok].astype(np.float64), gt_lms[ok].astype(np.float64)
    s, r, t = fit_similarity(p[:, UPPER_FACE], g[:, UPPER_FACE])
    mouth = apply_similarity(p[:, MOUTH], s, r, t)
    out[ok] = np.linalg.norm(mouth - g[:, MOUTH], axis=-1).mean(1)
    return out


def mouth_opening(lms: np.ndarray) -> np.ndarray:
    """(T,) inner-lip gap along the face's vertical axis, in inter-ocular distances (NaN = no face).

    The vertical axis is perpendicular to the line through the eye centres, so head roll does
    not shrink the gap; overlapping lips give a small negative value.
    """
    lms = lms.astype(np.float64)
    eye = lms[:, RIGHT_EYE].mean(1) - lms[:, LEFT_EYE].mean(1)  # (T, 2), image x to the right
    eye /= np.linalg.norm(eye, axis=-1, keepdims=True)
    down = np.stack([-eye[:, 1], eye[:, 0]], axis=-1)  # eye axis turned 90 degrees, (T, 2)
    gaps = [np.sum((lms[:, lo] - lms[:, up]) * down, axis=-1) for up, lo in INNER_LIP_PAIRS]
    return np.mean(gaps, axis=0) / inter_ocular(lms)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over frames where both are finite; NaN if fewer than 3 or constant
    (within CONSTANT_SPREAD: a still mouth moved by a similarity keeps its opening, but for
    rounding)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < MIN_CORR_FRAMES:
        return float("nan")
    if np.ptp(a[ok]) <= CONSTANT_SPREAD or np.ptp(b[ok]) <= CONSTANT_SPREAD:
        return float("nan")
    x, y = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    return float(np.clip(np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y)), -1.0, 1.0))
