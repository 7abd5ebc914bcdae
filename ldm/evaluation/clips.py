"""Load prediction/truth clips (video or frames folder), match them, and build the baselines."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ldm.data.layout import FPS, SAMPLE_RATE
from ldm.video import VideoError, iter_frames, load_audio, probe

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


def image_files(folder: Path) -> list[Path]:
    """The images of a folder in natural order of their names."""
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=natural_key)
    if not files:
        raise ClipError(f"{folder}: folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    return files


def read_image(path: Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB image; ClipError if unreadable or not of ``shape``."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ClipError(f"{path}: cannot read image")
    if shape is not None and img.shape != shape:
        raise ClipError(f"{path}: size {img.shape[1]}x{img.shape[0]} differs from the first frame")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ClipFrames:
    """The frames of a clip, decoded again on every pass so that only one is held at a time: a
    video (resampled to ``fps``), a folder of images (natural order) or a (T, H, W, 3) array;
    at most ``max_frames``, each resized to ``size`` (height, width) when given."""

    def __init__(
        self, source: str | Path | np.ndarray, fps: float = FPS, max_frames: int | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        self.source, self.fps, self.max_frames, self.size = source, fps, max_frames, size
        self._len: int | None = None
        self.files: list[Path] | None = None  # a folder's images
        if isinstance(source, np.ndarray):
            return
        path = Path(source)
        if not path.exists():
            raise ClipError(f"{source}: no such file or folder")
        self.files = image_files(path)[:max_frames] if path.is_dir() else None

    def frames(self, start: int = 0) -> Iterator[np.ndarray]:
        """Yield (H, W, 3) uint8 RGB frames from index ``start`` on."""
        for frame in self._raw(start):
            if self.size is not None and frame.shape[:2] != self.size:
                frame = resize_frame(frame, *self.size)
            yield frame

    def _raw(self, start: int) -> Iterator[np.ndarray]:
        """Frames as stored, from ``start``."""
        if isinstance(self.source, np.ndarray):
            yield from self.source[start : self.max_frames]
        elif self.files is not None:
            shape = read_image(self.files[0]).shape
            yield from (read_image(f, shape) for f in self.files[start:])
        else:
            n = None if self.max_frames is None else max(0, self.max_frames - start)
            try:
                yield from iter_frames(self.source, self.fps, max_frames=n, start=start)
            except VideoError as err:
                raise ClipError(str(err)) from err

    def __len__(self) -> int:
        """Number of frames (counted by one decoding pass for a video)."""
        if self._len is None:
            self._len = sum(1 for _ in self._raw(0))
        return self._len

    def first(self) -> np.ndarray:
        """Frame 0."""
        frame = next(self.frames(), None)
        if frame is None:
            raise ClipError(f"{self.source}: no frames could be decoded")
        return frame

    def limited(self, n: int) -> ClipFrames:
        """The first ``n`` frames."""
        clip = ClipFrames(self.source, self.fps, n, self.size)
        clip._len = min(n, len(self))
        return clip


def read_clip(path: str | Path, fps: float = FPS, max_frames: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of a video (resampled to `fps`) or of a frames folder."""
    frames = list(ClipFrames(path, fps, max_frames).frames())
    if not frames:
        raise ClipError(f"{path}: no frames could be decoded")
    return np.stack(frames)


def read_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray | None:
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


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a frame to (height, width): area filter when shrinking, cubic when enlarging."""
    shrink = height * width < frame.shape[0] * frame.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return cv2.resize(frame, (width, height), interpolation=interp)


def match_notes(
    lengths: tuple[int, int], sizes: tuple[tuple, tuple], names: tuple[str, str]
) -> list[str]:
    """What matching a prediction to its truth changes: (pred, truth) lengths and (h, w)."""
    (n_pred, n_gt), ((ph, pw), (gh, gw)) = lengths, sizes
    notes = []
    if n_pred != n_gt:
        n = min(n_pred, n_gt)
        notes.append(
            f"lengths differ ({names[0]}: {n_pred} frames, {names[1]}: {n_gt}): "
            f"both truncated to the first {n}"
        )
    if (ph, pw) != (gh, gw):
        notes.append(f"{names[0]} is {pw}x{ph}, resized to the truth's {gw}x{gh}")
    for note in notes:
        log.warning(note)
    return notes


def match_clips(
    pred: np.ndarray, gt: np.ndarray, pred_name: str = "prediction", gt_name: str = "truth"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Truncate both to the shorter length and resize the prediction to the truth's size.

    Returns (pred, gt, notes); every change is logged and listed in the notes.
    """
    notes = match_notes(
        (len(pred), len(gt)), (pred.shape[1:3], gt.shape[1:3]), (pred_name, gt_name)
    )
    n = min(len(pred), len(gt))
    pred, gt = pred[:n], gt[:n]
    if pred.shape[1:3] != gt.shape[1:3]:
        pred = np.stack([resize_frame(f, *gt.shape[1:3]) for f in pred])
    return pred, gt, notes


def match_sources(
    pred: ClipFrames, gt: ClipFrames, pred_name: str = "prediction", gt_name: str = "truth"
) -> tuple[ClipFrames, ClipFrames, list[str]]:
    """``match_clips`` for clips read frame by frame (the prediction is resized as it is read)."""
    size = gt.first().shape[:2]
    sizes = (pred.first().shape[:2], size)
    notes = match_notes((len(pred), len(gt)), sizes, (pred_name, gt_name))
    n = min(len(pred), len(gt))
    pred = pred.limited(n)
    pred.size = size
    return pred, gt.limited(n), notes


def time_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """Circularly shift along time so output[t] = x[t + shift] (right person, wrong timing)."""
    return np.roll(x, -shift, axis=0)


def shift_frames_for(n_frames: int, shift: int) -> int:
    """The baseline shift to use: `shift`, or half the clip when the clip is not longer than it."""
    return shift if n_frames > shift else max(1, n_frames // 2)
