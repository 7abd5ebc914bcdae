"""Load prediction/truth clips (video or frames folder), match them, and build the baselines."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np

from ldm.preprocessing.video import VideoError, load_audio, probe, read_frames

log = logging.getLogger(__name__)

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
REFERENCE_FRAME = 0  # DiffTalk's inference takes the first frame as the reference
_TRAILING_INT = re.compile(r"(\d+)(?!.*\d)")


class ClipError(ValueError):
    """An input clip cannot be read or used; the message names the file and the cause."""


def natural_key(path: Path) -> tuple[int, str]:
    """Sort key: the last integer in the file name (frame_2 < frame_10), then the name."""
    m = _TRAILING_INT.search(path.stem)
    return (int(m[1]) if m else -1, path.name)


def read_frames_dir(folder: Path, max_frames: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB from the images of a folder, in natural order of their names."""
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=natural_key)
    if not files:
        raise ClipError(f"{folder}: folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    files = files[:max_frames] if max_frames is not None else files
    frames = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise ClipError(f"{f}: cannot read image")
        if frames and img.shape != frames[0].shape:
            raise ClipError(f"{f}: size {img.shape[1]}x{img.shape[0]} differs from the first frame")
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def read_clip(path: str | Path, fps: float = 25.0, max_frames: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of a video (resampled to `fps`) or of a frames folder."""
    p = Path(path)
    if p.is_dir():
        return read_frames_dir(p, max_frames)
    if not p.exists():
        raise ClipError(f"{path}: no such file or folder")
    try:
        return read_frames(p, fps=fps, max_frames=max_frames)
    except VideoError as err:
        raise ClipError(str(err)) from err


def read_audio(path: str | Path, sr: int = 16000) -> np.ndarray | None:
    """Mono float32 audio of a media file at `sr` Hz, or None for folders and silent videos."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTS:
        return None
    try:
        if not probe(p).has_audio:
            return None
        return load_audio(p, sr=sr)
    except VideoError as err:
        raise ClipError(str(err)) from err


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize every frame to (height, width): area filter when shrinking, cubic when enlarging."""
    shrink = height * width < frames.shape[1] * frames.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in frames])


def match_clips(
    pred: np.ndarray, gt: np.ndarray, pred_name: str = "prediction", gt_name: str = "truth"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Truncate both to the shorter length and resize the prediction to the truth's size.

    Returns (pred, gt, notes); every change is logged and listed in the notes.
    """
    notes = []
    if len(pred) != len(gt):
        n = min(len(pred), len(gt))
        notes.append(
            f"lengths differ ({pred_name}: {len(pred)} frames, {gt_name}: {len(gt)}): "
            f"both truncated to the first {n}"
        )
        pred, gt = pred[:n], gt[:n]
    if pred.shape[1:3] != gt.shape[1:3]:
        (ph, pw), (gh, gw) = pred.shape[1:3], gt.shape[1:3]
        notes.append(f"{pred_name} is {pw}x{ph}, resized to the truth's {gw}x{gh}")
        pred = resize_frames(pred, gh, gw)
    for note in notes:
        log.warning(note)
    return pred, gt, notes


def copy_reference(gt: np.ndarray, index: int = REFERENCE_FRAME) -> np.ndarray:
    """Baseline without lip motion: every frame is the truth's reference frame (read-only view)."""
    return np.broadcast_to(gt[index], gt.shape)


def time_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """Circularly shift along time so output[t] = x[t + shift] (right person, wrong timing)."""
    return np.roll(x, -shift, axis=0)


def shift_frames_for(n_frames: int, shift: int) -> int:
    """The baseline shift to use: `shift`, or half the clip when the clip is not longer than it."""
    return shift if n_frames > shift else max(1, n_frames // 2)
