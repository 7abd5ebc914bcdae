"""Score a predicted clip (and the baselines) against the truth: per-frame values and summaries."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from ldm.data.layout import FPS
from ldm.evaluation import landmark_metrics as lm
from ldm.evaluation.clips import ClipFrames, shift_frames_for, time_shift
from ldm.evaluation.lpips import LPIPS, lpips_frames
from ldm.evaluation.metrics import image_metrics, pooled_psnr, region_boxes, sharpness_ratio
from ldm.evaluation.pose_aligned import mapped_landmarks, pose_transforms, warped_frames
from ldm.evaluation.syncnet import SyncNet, lse
from ldm.preprocessing.landmarks import Landmarker

log = logging.getLogger(__name__)

PREDICTION = "prediction"
BASELINES = ("copy_reference", "copy_reference_aligned", "shifted_truth", "truth")
FIRST_STAGE = "first_stage"  # optional row: the truth through the first-stage autoencoder
SHIFT_FRAMES = int(FPS)  # the "audio shifted by 1 s" baseline
FOLLOWS_SPEECH_CORR = 0.2  # a render whose mouth-opening corr is below this does not follow
# the speech, whatever its LMD and PSNR say (a still or blurred mouth can score well on both)


@dataclass
class Scorers:
    """The models a run uses; lpips/syncnet are None when their weights were not given."""

    landmarker: Landmarker
    lpips: LPIPS | None = None
    syncnet: SyncNet | None = None


@dataclass
class Row:
    """One method on one clip: per-frame arrays (T,) and clip-level scores (SyncNet)."""

    key: str
    label: str
    per_frame: dict[str, np.ndarray]
    scores: dict[str, float] = field(default_factory=dict)
    n_noface: int = 0


@dataclass
class ClipResult:
    """All rows of one clip, the truth's mouth opening, and notes on what was changed or skipped."""

    name: str
    pred_path: str
    gt_path: str
    n_frames: int
    gt_opening: np.ndarray
    n_noface_gt: int
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    plot_path: str | None = None


def baseline_label(key: str, shift: int = SHIFT_FRAMES, fps: float = FPS) -> str:
    """Human-readable row name of a known row key (shift/fps name the shifted-truth row)."""
    return {
        PREDICTION: "prediction",
        FIRST_STAGE: "first stage only (truth encoded + decoded, pasted back)",
        "copy_reference": "baseline: copy reference frame",
        "copy_reference_aligned": "baseline: copy reference frame, pose-aligned",
        "shifted_truth": f"baseline: truth shifted {shift} frames ({shift / fps:g} s)",
        "truth": "truth itself (upper bound)",
    }[key]


Frames = Callable[[], Iterable[np.ndarray]]  # starts a new pass over a candidate's frames
Clip = np.ndarray | ClipFrames  # (T, H, W, 3) uint8 RGB, in memory or read frame by frame


def score_row(
    key: str,
    label: str,
    frames: Frames,
    lms: np.ndarray,
    gt: ClipFrames,
    gt_lms: np.ndarray,
    boxes: np.ndarray | None,
    scorers: Scorers,
    audio: np.ndarray | None,
) -> Row:
    """Every metric of one candidate frame sequence against the truth, frame by frame."""
    start = time.perf_counter()
    per = image_metrics(frames(), gt.frames(), boxes)
    per["lmd"] = lm.lmd(lms, gt_lms)
    per["lmd_iod"] = per["lmd"] / lm.inter_ocular(gt_lms)
    per["opening"] = lm.mouth_opening(lms)
    if scorers.lpips is not None:
        per["lpips"] = lpips_frames(scorers.lpips, frames(), gt.frames())
    scores = {}
    if scorers.syncnet is not None and audio is not None:
        scores = lse(scorers.syncnet, frames(), lms, audio)
    n_noface = int((~lm.valid_frames(lms)).sum())
    log.info("scored %-40s in %.1f s", label, time.perf_counter() - start)
    return Row(key, label, per, scores, n_noface)


def baseline_candidates(
    gt: ClipFrames, gt_lms: np.ndarray, shift: int, fps: float
) -> list[tuple[str, str, Frames, np.ndarray]]:
    """Copy-reference (as it is, and warped onto each frame's head pose), shifted-truth and
    truth rows; their landmarks are the truth's (the aligned copy's: the first frame's, moved by
    the same warp), as their frames are the truth's frames."""
    n, first = len(gt_lms), gt.first()
    ref_lms = np.broadcast_to(gt_lms[0], gt_lms.shape)
    poses = pose_transforms(gt_lms[0], gt_lms)  # (T, 2, 3)
    return [
        ("copy_reference", baseline_label("copy_reference", shift, fps),
         lambda: itertools.repeat(first, n), ref_lms),
        ("copy_reference_aligned", baseline_label("copy_reference_aligned", shift, fps),
         lambda: warped_frames(first, poses), mapped_landmarks(gt_lms[0], poses)),
        ("shifted_truth", baseline_label("shifted_truth", shift, fps),
         lambda: itertools.chain(gt.frames(shift), itertools.islice(gt.frames(), shift)),
         time_shift(gt_lms, shift)),
        ("truth", baseline_label("truth", shift, fps), gt.frames, gt_lms),
    ]  # fmt: skip


def evaluate_clip(
    pred: Clip,
    gt: Clip,
    scorers: Scorers,
    *,
    name: str = "clip",
    paths: tuple[str, str] = ("", ""),
    baselines: bool = False,
    shift: int = SHIFT_FRAMES,
    fps: float = FPS,
    audio: np.ndarray | None = None,
    gt_lms: np.ndarray | None = None,
    notes: list[str] | None = None,
    extra_rows: list[tuple[str, str, Clip]] | None = None,
) -> ClipResult:
    """Score matched clips of uint8 RGB frames; `audio` (16 kHz) enables SyncNet scores. Clips
    are arrays or ``ClipFrames``; the frames are read pass by pass, one at a time.

    `extra_rows` are further (key, label, frames) candidates shaped like `gt` (e.g. FIRST_STAGE),
    tracked and scored like the prediction and listed right after it.
    """
    notes = list(notes or [])
    pred, gt = as_clip(pred), as_clip(gt)
    extra = _extra_candidates(extra_rows or [], gt, scorers)
    gt_lms = scorers.landmarker.track(gt.frames()) if gt_lms is None else gt_lms
    pred_lms = scorers.landmarker.track(pred.frames())
    boxes = region_boxes(gt_lms, gt.first().shape)
    if boxes is None:
        notes.append("no face found in the truth: mouth-region and landmark metrics are n/a")
    k = shift_frames_for(len(gt_lms), shift)
    if baselines and k != shift:
        notes.append(f"clip has only {len(gt_lms)} frames: the shifted-truth baseline uses {k}")
    candidates = [(PREDICTION, baseline_label(PREDICTION), pred.frames, pred_lms), *extra]
    if baselines:
        candidates += baseline_candidates(gt, gt_lms, k, fps)
    rows = [
        score_row(key, label, f, f_lms, gt, gt_lms, boxes, scorers, audio)
        for key, label, f, f_lms in candidates
    ]
    n_noface_gt = int((~lm.valid_frames(gt_lms)).sum())
    gt_opening = lm.mouth_opening(gt_lms)
    return ClipResult(name, *paths, len(gt_lms), gt_opening, n_noface_gt, rows, notes)


def as_clip(frames: Clip) -> ClipFrames:
    """ClipFrames of an array (or the ClipFrames itself)."""
    return frames if isinstance(frames, ClipFrames) else ClipFrames(np.asarray(frames))


def _extra_candidates(
    extra_rows: list[tuple[str, str, Clip]], gt: ClipFrames, scorers: Scorers
) -> list[tuple[str, str, Frames, np.ndarray]]:
    """(key, label, frames, landmarks) of caller-supplied rows, checked, then tracked."""
    seen = {PREDICTION, *BASELINES}
    out = []
    for key, label, frames in extra_rows:
        if key in seen:
            raise ValueError(f"extra row key {key!r} is already a row of the evaluation")
        clip = as_clip(frames)
        shapes = [(len(c), *c.first().shape) for c in (clip, gt)]
        if shapes[0] != shapes[1]:
            raise ValueError(f"extra row {key!r}: frames {shapes[0]}, truth {shapes[1]}")
        seen.add(key)
        out.append((key, label, clip.frames, scorers.landmarker.track(clip.frames())))
    return out


def _pooled(per: dict[str, np.ndarray]) -> dict[str, float]:
    """Frame-pooled summaries: PSNR from the mean MSE, mouth sharpness as the ratio of the mean
    band energies (candidate / truth), other metrics as means over frames."""
    out = {"psnr": pooled_psnr(per["mse"]), "psnr_mouth": pooled_psnr(per["mse_mouth"])}
    out["sharpness_mouth"] = sharpness_ratio(per["hf_mouth"], per["hf_mouth_truth"])
    for key in ("ssim", "ssim_mouth", "gmsd_mouth", "lmd", "lmd_iod", "lpips"):
        v = per.get(key)
        ok = v is not None and np.isfinite(v).any()
        out[key] = float(np.nanmean(v)) if ok else float("nan")
    return out


def follows_speech(corr: float, gt_opening: np.ndarray) -> bool | None:
    """Whether a render's mouth follows the speech: its mouth-opening corr reaches
    FOLLOWS_SPEECH_CORR. An undefined corr (a mouth that never moves, or no face found) does
    not follow a truth whose mouth moves; None when the truth's does not (nothing to follow)."""
    if np.isfinite(corr):
        return bool(corr >= FOLLOWS_SPEECH_CORR)
    ok = np.isfinite(gt_opening)
    if ok.sum() >= lm.MIN_CORR_FRAMES and np.ptp(gt_opening[ok]) > lm.CONSTANT_SPREAD:
        return False
    return None


def summarize_row(row: Row, gt_opening: np.ndarray) -> dict[str, float | bool | None]:
    """Clip-level numbers of one row; methods (not the baselines) also get ``follows_speech``."""
    out = _pooled(row.per_frame)
    out["mouth_corr"] = lm.correlation(row.per_frame["opening"], gt_opening)
    err = np.abs(row.per_frame["opening"] - gt_opening)
    out["opening_mae"] = float(np.nanmean(err)) if np.isfinite(err).any() else float("nan")
    out.update(row.scores)
    if row.key not in BASELINES:
        out["follows_speech"] = follows_speech(out["mouth_corr"], gt_opening)
    return out


def summarize_overall(clips: list[ClipResult]) -> dict[str, dict[str, float | bool | None]]:
    """Per row key: frames pooled over clips, correlation and SyncNet scores averaged over clips."""
    out = {}
    for key in dict.fromkeys(r.key for c in clips for r in c.rows):
        rows = [(c, r) for c in clips for r in c.rows if r.key == key]
        names = set().union(*(r.per_frame for _, r in rows))
        per = {
            n: np.concatenate([r.per_frame.get(n, np.full(c.n_frames, np.nan)) for c, r in rows])
            for n in names
        }
        summary = _pooled(per)
        clip_sums = [summarize_row(r, c.gt_opening) for c, r in rows]
        for name in ("mouth_corr", "opening_mae", "lse_d", "lse_c"):
            vals = np.array([s.get(name, np.nan) for s in clip_sums], np.float64)
            summary[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        if key not in BASELINES:
            verdicts = [s["follows_speech"] for s in clip_sums]
            summary["follows_speech"] = overall_follows(summary["mouth_corr"], verdicts)
        out[key] = summary
    return out


def overall_follows(mean_corr: float, verdicts: list[bool | None]) -> bool | None:
    """``follows_speech`` over clips: from the clips' mean corr, else False if any clip does not
    follow, else None."""
    if np.isfinite(mean_corr):
        return bool(mean_corr >= FOLLOWS_SPEECH_CORR)
    return False if False in verdicts else None
