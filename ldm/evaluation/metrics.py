"""Image metrics on uint8 RGB frames: PSNR, SSIM, band-pass sharpness, GMSD, and the lower-face
(mouth) region they use."""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from ldm.data.layout import JAW, MOUTH

MAX_VALUE = 255.0  # uint8 data range
SSIM_SIGMA = 1.5  # Gaussian window of Wang et al. 2004 (11 x 11 after truncation at 3.5 sigma)
SSIM_RADIUS = 5
SSIM_K1, SSIM_K2 = 0.01, 0.03
# iBUG-68 points that bound the lower face: jaw 2..14 (cheek level to chin) and the mouth 48..67
LOWER_FACE_POINTS = np.r_[JAW[2:15], MOUTH]
REGION_MARGIN = 0.1  # box growth on each side, as a fraction of the box width/height
# sharpness band-pass: GaussianBlur(sigma 1) - GaussianBlur(sigma 3) of the luma (detail of ~2-6 px)
SHARP_SIGMA_FINE, SHARP_SIGMA_COARSE = 1.0, 3.0
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma of RGB
GMSD_C = 170.0  # GMSD's stability constant for 8-bit luma and Prewitt/3 gradients (Xue et al.)
PREWITT_X = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0  # horizontal gradient; its transpose: vertical


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean squared error of two same-shape uint8 images, in squared 8-bit levels."""
    diff = pred.astype(np.float64) - gt.astype(np.float64)
    return float(np.mean(diff * diff))


def psnr_from_mse(mse_values: np.ndarray | float) -> np.ndarray | float:
    """PSNR in dB from MSE (elementwise); inf where the MSE is 0."""
    m = np.asarray(mse_values, np.float64)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(MAX_VALUE**2 / m)
    return float(out) if out.ndim == 0 else out


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two same-shape uint8 images (inf when identical)."""
    return psnr_from_mse(mse(pred, gt))


def pooled_psnr(mse_values: np.ndarray) -> float:
    """Clip PSNR from the mean per-frame MSE: inf only if every frame is identical, NaN if none."""
    m = np.asarray(mse_values, np.float64)
    m = m[~np.isnan(m)]
    return psnr_from_mse(float(np.mean(m))) if m.size else float("nan")


def _blur(x: np.ndarray) -> np.ndarray:
    """Gaussian-window local mean of a float64 (H, W) map, SSIM's 11 x 11, sigma 1.5."""
    k = 2 * SSIM_RADIUS + 1
    return cv2.GaussianBlur(x, (k, k), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)


def ssim_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(H, W) per-pixel SSIM, the mean over channels (Wang et al. 2004 Gaussian window), borders
    included; ``ssim`` is its mean without the window's radius at the borders."""
    if pred.ndim == 2:
        pred, gt = pred[..., None], gt[..., None]
    c1, c2 = (SSIM_K1 * MAX_VALUE) ** 2, (SSIM_K2 * MAX_VALUE) ** 2
    if min(pred.shape[:2]) <= 2 * SSIM_RADIUS:
        raise ValueError(
            f"SSIM needs images larger than {2 * SSIM_RADIUS + 1} px, got {pred.shape[:2]}"
        )
    maps = []
    for ch in range(pred.shape[2]):
        x = pred[..., ch].astype(np.float64)
        y = gt[..., ch].astype(np.float64)
        mx, my = _blur(x), _blur(y)
        vx, vy = _blur(x * x) - mx * mx, _blur(y * y) - my * my
        cxy = _blur(x * y) - mx * my
        num = (2 * mx * my + c1) * (2 * cxy + c2)
        maps.append(num / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return np.mean(maps, axis=0)


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean SSIM over channels (Wang et al. 2004 Gaussian window; = skimage gaussian_weights)."""
    r = SSIM_RADIUS
    return float(np.mean(ssim_map(pred, gt)[r:-r, r:-r]))  # skimage crops the border too


def luma(img: np.ndarray) -> np.ndarray:
    """(H, W) float64 BT.601 luma in 8-bit levels of an (H, W, 3) RGB image ((H, W) passes)."""
    x = np.asarray(img, np.float64)
    return x if x.ndim == 2 else x @ LUMA_WEIGHTS


def band_energy(img: np.ndarray) -> float:
    """Mean squared band-pass of an image's luma, in squared 8-bit levels (NaN if empty).

    Band-pass = GaussianBlur(sigma=1) - GaussianBlur(sigma=3) (cv2, ksize (0, 0)): the fine
    detail (teeth, lip edges) that blur removes and noise adds.
    """
    y = luma(img)
    if y.size == 0:
        return float("nan")
    fine = cv2.GaussianBlur(y, (0, 0), SHARP_SIGMA_FINE)
    band = fine - cv2.GaussianBlur(y, (0, 0), SHARP_SIGMA_COARSE)  # (h, w) float64
    return float(np.mean(band * band))


def gradient_magnitude(y: np.ndarray) -> np.ndarray:
    """(H, W) Prewitt gradient magnitude of a float luma map (replicated borders)."""
    gx = cv2.filter2D(y, -1, PREWITT_X, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(y, -1, PREWITT_X.T, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx * gx + gy * gy)


def gmsd(pred: np.ndarray, gt: np.ndarray) -> float:
    """Gradient magnitude similarity deviation (Xue et al. 2014) of two same-shape images: the
    spread over pixels of (2 m_p m_g + c) / (m_p^2 + m_g^2 + c), with m the luma's gradient
    magnitude. 0 = the same edges everywhere; blur (edges lost) and noise (edges added) both
    raise it, so detail that is not the truth's cannot buy a better score. NaN if empty."""
    y_p, y_g = luma(pred), luma(gt)
    if y_p.size == 0:
        return float("nan")
    m_p, m_g = gradient_magnitude(y_p), gradient_magnitude(y_g)
    gms = (2.0 * m_p * m_g + GMSD_C) / (m_p * m_p + m_g * m_g + GMSD_C)
    return float(gms.std())


def sharpness_ratio(energy: np.ndarray, truth_energy: np.ndarray) -> float:
    """Frame-pooled sharpness: mean candidate band energy / mean truth band energy.

    Pooled over the frames where both are finite (not a mean of per-frame ratios): 1 = as sharp
    as the truth, < 1 blurrier, > 1 noisier or over-sharpened; NaN without frames.
    """
    e, g = np.asarray(energy, np.float64), np.asarray(truth_energy, np.float64)
    ok = np.isfinite(e) & np.isfinite(g)
    if not ok.any():
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(e[ok]) / np.mean(g[ok]))


def lower_face_box(lms: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """(x0, y0, x1, y1) int box of the lower face from (68, 2) landmarks; None if no face."""
    pts = lms[LOWER_FACE_POINTS]
    if not np.isfinite(pts).all():
        return None
    lo, hi = pts.min(0), pts.max(0)
    pad = (hi - lo) * REGION_MARGIN
    h, w = shape[:2]
    x0, y0 = np.floor(lo - pad).astype(int)
    x1, y1 = np.ceil(hi + pad).astype(int)
    return np.array([max(0, x0), max(0, y0), min(w, x1), min(h, y1)])


def region_boxes(lms: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """(T, 4) lower-face boxes; faceless frames take the nearest found box; None if no face."""
    boxes = [lower_face_box(frame_lms, shape) for frame_lms in lms]
    found = [i for i, b in enumerate(boxes) if b is not None]
    if not found:
        return None
    idx = np.asarray(found)
    out = np.empty((len(boxes), 4), np.int64)
    for i, b in enumerate(boxes):
        out[i] = b if b is not None else boxes[int(idx[np.argmin(np.abs(idx - i))])]
    return out


def crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The (y0:y1, x0:x1) part of a frame."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return frame[y0:y1, x0:x1]


def image_metrics(
    pred: Iterable[np.ndarray], gt: Iterable[np.ndarray], boxes: np.ndarray | None
) -> dict:
    """Per-frame metrics over the whole frame and the lower-face boxes: dict of (T,) arrays,
    from frame pairs read one at a time.

    Keys: mse, ssim, mse_mouth, ssim_mouth, gmsd_mouth, and the mouth band energies
    (`band_energy`) of the candidate (hf_mouth) and of the truth (hf_mouth_truth); mouth values
    are NaN without boxes.
    """
    keys = ("mse", "ssim", "mse_mouth", "ssim_mouth", "gmsd_mouth", "hf_mouth", "hf_mouth_truth")
    out: dict[str, list[float]] = {k: [] for k in keys}
    for t, (p, g) in enumerate(zip(pred, gt, strict=True)):
        p = np.asarray(p)
        out["mse"].append(mse(p, g))
        out["ssim"].append(ssim(p, g))
        if boxes is None:
            for k in keys[2:]:
                out[k].append(np.nan)
            continue
        pc, gc = crop(p, boxes[t]), crop(g, boxes[t])
        out["mse_mouth"].append(mse(pc, gc))
        out["ssim_mouth"].append(ssim(pc, gc))
        out["gmsd_mouth"].append(gmsd(pc, gc))
        out["hf_mouth"].append(band_energy(pc))
        out["hf_mouth_truth"].append(band_energy(gc))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}
