"""DiffTalk's dataset (SPEC 2-3): one class, with the original's train/inference quirks as flags."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldm.data import mouth_reference
from ldm.data.layout import (
    AUDIO_SHAPE,
    INFERENCE_MASK_LANDMARK,
    JAW_POLYGON,
    MOUTH,
    REFERENCE_FRAME,
    REFERENCE_MARGIN,
    TRAIN_MASK_LANDMARK,
    UPPER_FACE_LANDMARKS,
    format_key,
    parse_key,
    read_frame_counts,
    read_landmarks_file,
    read_split_keys,
    reference_exclusion,
)
from ldm.util import from_uint8

logger = logging.getLogger(__name__)

REFERENCE_CHOICES = ("random", "mouth")


def sample_reference_frame(
    n_frames: int, frame: int, margin: int = REFERENCE_MARGIN, rng: random.Random | None = None
) -> int:
    """Uniform frame from {1..n_frames-1} minus {frame-margin .. frame+margin-1} (SPEC 2).

    ``n_frames`` is the identity's N in data.txt, read as the original does: an exclusive
    upper bound (ldm.data.layout.FrameCounts). If the clip is too short to keep the margin,
    any other frame is used.
    """
    rng = rng or random
    lo, hi = reference_exclusion(frame, margin)
    lo, hi = max(1, lo), min(n_frames - 1, hi)  # the excluded block inside the clip
    n_excluded = max(0, hi - lo + 1)
    n_candidates = (n_frames - 1) - n_excluded
    if n_candidates <= 0:
        others = [f for f in range(1, max(n_frames, 2)) if f != frame] or [frame]
        return rng.choice(others)
    k = rng.randrange(n_candidates) + 1  # k-th candidate, counting from frame 1
    return k if k < lo else k + n_excluded


def read_keys(path: Path, max_items: int | None = None) -> np.ndarray:
    """Split list of ``{id}_{frame}`` keys -> compact (N, 2) int32 array (SPEC 1.5, bug 16)."""
    keys = [parse_key(key) for key in read_split_keys(path)]
    arr = np.asarray(keys, dtype=np.int32).reshape(-1, 2)
    if max_items is not None and len(arr) > max_items:  # evenly spread subset
        arr = arr[np.linspace(0, len(arr) - 1, max_items).round().astype(int)]
    return arr


def load_image(path: Path, size: int) -> tuple[np.ndarray, float]:
    """RGB image resized (bicubic) to size x size in [-1, 1] (H, W, 3), and the scale s."""
    with Image.open(path) as im:
        width, height = im.size
        if width != height:
            raise ValueError(f"{path}: frames must be square, got {width}x{height}")
        im = im.convert("RGB").resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32)
    return from_uint8(arr), width / size


def jaw_latent_mask(landmarks: np.ndarray, orig_size: int, latent_size: int) -> np.ndarray:
    """Inference latent mask (latent_size, latent_size): 0 inside the jaw polygon, 1 = known.

    As the original: the 0/1 uint8 polygon image resized with PIL bicubic, its values kept (two
    8-bit passes, each rounding to 0 or 1).
    """
    mask = np.ones((orig_size, orig_size), dtype=np.uint8)
    cv2.fillPoly(mask, [landmarks[list(JAW_POLYGON)].astype(np.int32)], 0)
    small = Image.fromarray(mask).resize((latent_size, latent_size), Image.BICUBIC)
    return np.asarray(small).astype(np.float32)


def frame_item(
    image: np.ndarray, lms: np.ndarray, audio: np.ndarray, scale: float, mask_landmark: int
) -> dict[str, Any]:
    """The conditions of one frame, for training and rendering alike (SPEC 2-3): the frame
    (size, size, 3) in [-1, 1] with its rows from ``mask_landmark`` down hidden, the 39 upper-face
    landmarks in its pixels, and its audio windows (8, 16, D). ``lms`` (68, 2) are in crop pixels
    (crop side = scale * size)."""
    size = image.shape[0]
    cut = int(lms[mask_landmark, 1] / scale)  # first masked row in the resized frame
    image_mask = image.copy()
    image_mask[cut:] = -1.0
    inpaint_mask = np.zeros((size, size), dtype=np.float32)
    inpaint_mask[cut:] = 1.0
    return {
        "image": image,  # (H, W, 3) in [-1, 1]
        "image_mask": image_mask,  # rows from the mask landmark down set to -1
        "inpaint_mask": inpaint_mask,  # (H, W): 1 where image_mask hides the frame
        "landmarks": (lms[list(UPPER_FACE_LANDMARKS)] / scale).astype(np.float32),  # (39, 2)
        "audio_smooth": audio.astype(np.float32),  # (8, 16, D)
    }


class TalkBase(Dataset):
    """Frames, references, masked frames, landmarks and audio windows of ``{id}_{frame}`` keys."""

    def __init__(
        self,
        split_file: str,
        root: str = "data/HDTF",
        size: int = 256,
        latent_size: int | None = None,  # inference mask size; default size // 4 (VQ-f4)
        mask_landmark: int = TRAIN_MASK_LANDMARK,
        reference_margin: int = REFERENCE_MARGIN,
        resample_reference: bool = False,  # original: drawn once, in __init__ (SPEC 6, bug 3)
        reference_frame: int | None = None,  # inference: always this frame (original: 1)
        reference_choice: str = "random",  # random (SPEC 2) | mouth: one of the
        # ``mouth_candidates`` frames nearest in mouth shape (ldm/data/mouth_reference.py)
        mouth_candidates: int = 5,
        self_reference: float = 0.0,  # training: this fraction of items is its own reference,
        # drawn per item each time (0: never, the original; docs/demo-recipe.md)
        audio_id: int
        | None = None,  # drive every id with this id's audio (original inference: 105)
        with_inference_mask: bool = False,
        audio_shape: tuple[int, int, int] = AUDIO_SHAPE,  # (smoothing, window, feature dim)
        # the model reads; the config interpolates it from the model's audio configs
        max_items: int | None = None,  # validation subset
    ) -> None:
        self.root = Path(root)
        self.size = size
        self.latent_size = latent_size or size // 4
        self.mask_landmark = mask_landmark
        self.reference_margin = reference_margin
        self.resample_reference = resample_reference
        self.reference_frame = reference_frame
        self.audio_id = audio_id
        self.with_inference_mask = with_inference_mask
        if not (self.root / "images").is_dir():
            raise FileNotFoundError(
                f"data directory {self.root} has no images/ folder; create it with "
                f"`python scripts/preprocess.py VIDEOS --out {self.root}`"
            )
        self.keys = read_keys(Path(split_file), max_items)
        self.frame_counts = read_frame_counts(self.root / "data.txt")
        if reference_choice not in REFERENCE_CHOICES:
            raise ValueError(f"reference_choice {reference_choice!r}: choose {REFERENCE_CHOICES}")
        self.candidates = None
        if reference_choice == "mouth" and reference_frame is None:
            self.candidates = mouth_reference.mouth_candidates(
                self.root, self.keys, reference_margin, mouth_candidates
            )
        self.references = np.asarray([self._draw_reference(i) for i in range(len(self.keys))])
        if not 0.0 <= self_reference <= 1.0:
            raise ValueError(f"self_reference must be a fraction in [0, 1], got {self_reference}")
        self.self_reference = self_reference
        self.check_audio_shape(tuple(audio_shape))

    def __len__(self) -> int:
        return len(self.keys)

    def audio_path(self, vid: int, frame: int) -> Path:
        """``audio_smooth/{id}_{frame}.npy`` of a key (every id reads ``audio_id``'s if set)."""
        return self.root / "audio_smooth" / f"{format_key(self.audio_id or vid, frame)}.npy"

    def check_audio_shape(self, expected: tuple[int, int, int]) -> None:
        """Fail at construction when the first key's audio windows are not what the model reads."""
        if len(self.keys) == 0:
            return
        path = self.audio_path(*(int(v) for v in self.keys[0]))
        shape = np.load(path, mmap_mode="r").shape
        if shape != expected:
            raise ValueError(
                f"{path} holds audio windows of shape {shape}, but the model reads {expected} = "
                "(model.params.audio_attention_config.params.seq_len, "
                "model.params.audio_config.params.win_size, "
                "model.params.audio_config.params.feature_dim): set those to the data's "
                "(and the dataset's audio_shape), or preprocess the audio again"
            )

    def _draw_reference(self, index: int) -> int:
        vid, frame = (int(v) for v in self.keys[index])
        if self.reference_frame is not None:
            return self.reference_frame
        if self.candidates is not None:
            return int(random.choice(self.candidates[index]))
        if vid not in self.frame_counts:
            raise ValueError(f"identity {vid} has no line in {self.root / 'data.txt'}")
        return sample_reference_frame(self.frame_counts[vid], frame, self.reference_margin)

    def __getitem__(self, index: int) -> dict[str, Any]:
        frame = int(self.keys[index][1])
        ref = self._draw_reference(index) if self.resample_reference else self.references[index]
        if self.self_reference and random.random() < self.self_reference:
            ref = frame
        return self.pair_item(index, int(ref))

    def reference_pairs(self) -> list[tuple[int, int]]:
        """Every (index, reference frame) pair ``__getitem__`` can return (what a latent cache
        filled up front encodes): the drawn reference, or with ``resample_reference`` every
        mouth-matched candidate, and the frame itself with ``self_reference``."""
        pairs = []
        for index, (_, frame) in enumerate(self.keys):
            refs = {int(self.references[index])}
            if self.resample_reference:
                if self.candidates is None:
                    raise ValueError(
                        "resample_reference draws from the whole clip: its pairs are not listed; "
                        "use reference_choice 'mouth' (a few candidates) or no resampling"
                    )
                refs = {int(r) for r in self.candidates[index]}
            if self.self_reference:
                refs.add(int(frame))
            pairs += [(index, r) for r in sorted(refs)]
        return pairs

    def pair_item(self, index: int, ref: int) -> dict[str, Any]:
        """The item of key ``index`` with reference frame ``ref``."""
        vid, frame = (int(v) for v in self.keys[index])
        key, ref_key = format_key(vid, frame), format_key(vid, ref)
        image, scale = load_image(self.root / "images" / f"{key}.jpg", self.size)
        reference, _ = load_image(self.root / "images" / f"{ref_key}.jpg", self.size)
        lms, ref_lms = (read_landmarks_file(self.root, k) for k in (key, ref_key))
        audio = np.load(self.audio_path(vid, frame))
        item = frame_item(image, lms, audio, scale, self.mask_landmark)
        item |= {
            "reference_img": reference,
            "reference_landmarks": ref_lms[list(UPPER_FACE_LANDMARKS)] / scale,  # the reference's
            "reference_mouth_landmarks": (ref_lms[list(MOUTH)] / scale).astype(np.float32),
            "mouth_landmarks": lms[list(MOUTH)] / scale,  # (20, 2): read by a MouthPredictor
            "video_id": vid,
            "frame": frame,
            "reference_frame": int(ref),
        }
        if self.with_inference_mask:
            orig = round(scale * self.size)
            item["inference_mask"] = jaw_latent_mask(lms, orig, self.latent_size)[None]
            item["landmarks_all"] = lms / scale
        return item


class TalkTrain(TalkBase):
    """Training split (``data/data_train.txt``), masked below the nose tip (landmark 30)."""

    def __init__(self, split_file: str = "data/data_train.txt", **kwargs: Any) -> None:
        super().__init__(split_file, **kwargs)


class TalkValidation(TalkBase):
    """Validation split (``data/data_test.txt``); ``max_items`` keeps an even subset."""

    def __init__(self, split_file: str = "data/data_test.txt", **kwargs: Any) -> None:
        super().__init__(split_file, **kwargs)


class TalkInference(TalkBase):
    """The original inference set: cut at landmark 33, reference frame 1, jaw latent mask."""

    def __init__(self, split_file: str = "data/data_test.txt", **kwargs: Any) -> None:
        kwargs.setdefault("mask_landmark", INFERENCE_MASK_LANDMARK)
        kwargs.setdefault("reference_frame", REFERENCE_FRAME)
        kwargs.setdefault("with_inference_mask", True)
        super().__init__(split_file, **kwargs)
