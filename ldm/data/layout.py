"""The dataset contract (SPEC 1-3), defined once: rates, audio windows, landmark index sets,
mask landmarks, the reference rule, ``{id}_{frame}`` keys, split lists and data.txt.

Everything that reads or writes a DiffTalk dataset imports these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- time and audio
FPS = 25.0  # video frames per second
SAMPLE_RATE = 16000  # audio samples per second
FEATURE_RATE = 50  # audio feature steps per second (DeepSpeech's rate)
STEPS_PER_FRAME = FEATURE_RATE // int(FPS)  # 2 feature steps per video frame
AUDIO_WINDOW = 16  # feature steps per window (0.32 s), one window per video frame
AUDIO_SMOOTHING = 8  # windows stacked per frame (AD-NeRF smo_size): frames f-4 .. f+3
FEATURE_DIM = 29  # DeepSpeech's 29 character logits; the default log-mel has 29 bands too
AUDIO_SHAPE = (AUDIO_SMOOTHING, AUDIO_WINDOW, FEATURE_DIM)  # one audio_smooth/{key}.npy

# ----------------------------------------------------------------------------- iBUG-68 landmarks
N_LANDMARKS = 68
JAW = range(0, 17)
BROWS = range(17, 27)
NOSE = range(27, 36)
EYES = range(36, 48)
MOUTH = range(48, 68)
NOSE_TIP = 30  # training mask: rows from it down are hidden
SUBNASALE = 33  # the original's inference mask cut (SPEC 6, bug 1)
TRAIN_MASK_LANDMARK = NOSE_TIP
INFERENCE_MASK_LANDMARK = SUBNASALE
UPPER_FACE_LANDMARKS = (*JAW[:4], *JAW[13:], *BROWS, *NOSE, *EYES)  # the 39 the model sees
JAW_POLYGON = (*JAW[2:15], SUBNASALE)  # inference latent mask: jaw 2..14 closed at the nose base


def upper_face_index(landmark: int) -> int:
    """Position of iBUG landmark ``landmark`` within the 39 UPPER_FACE_LANDMARKS of a batch."""
    return UPPER_FACE_LANDMARKS.index(landmark)


# ----------------------------------------------------------------------------- reference frames
REFERENCE_FRAME = 1  # the original's inference reference: every identity's first frame
REFERENCE_MARGIN = 60  # training references lie outside {f - 60, ..., f + 59}
MIN_FRAMES_FOR_REFERENCE = 2 * REFERENCE_MARGIN + 2  # shorter clips have frames with none


def reference_exclusion(frame: Any, margin: int = REFERENCE_MARGIN) -> tuple[Any, Any]:
    """(lo, hi): the frames lo..hi (inclusive) too close to ``frame`` (an int or an array) to be
    its training reference, the original's {frame - margin, ..., frame + margin - 1}."""
    return frame - margin, frame + margin - 1


# ----------------------------------------------------------------------------- keys and lists
KEY_PATTERN = re.compile(r"^(\d+)_(\d+)$")  # "{id}_{frame}", decimal, no padding, from 1


def format_key(vid: int, frame: int) -> str:
    """The sample key ``{id}_{frame}`` (file stem under images/, landmarks/, audio_smooth/)."""
    return f"{vid}_{frame}"


def read_landmarks_file(root: Path, key: str) -> np.ndarray:
    """(68, 2) float32 landmarks of frame ``key`` ("{id}_{frame}") of the dataset at ``root``, in
    the pixels of its preprocessed crop: ``{root}/landmarks/{key}.lms``."""
    return np.loadtxt(Path(root) / "landmarks" / f"{key}.lms", dtype=np.float32)


def parse_key(key: str) -> tuple[int, int]:
    """``"{id}_{frame}"`` -> (id, frame); ValueError for anything else."""
    match = KEY_PATTERN.match(key.strip())
    if match is None:
        raise ValueError(f"expected a '<id>_<frame>' key, got {key!r}")
    return int(match[1]), int(match[2])


def read_split_keys(split_file: str | Path) -> list[str]:
    """Non-empty stripped lines of a split list, e.g. data/data_train.txt (`{id}_{frame}` keys)."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise FileNotFoundError(
            f"split list {split_file} not found (one '<id>_<frame>' key per line)"
        )
    return [line.strip() for line in split_file.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- data.txt
@dataclass
class FrameCounts:
    """data.txt parsed: ``counts[id] = N`` and the problems of the lines that were skipped.

    Line i (from 1) belongs to identity i; its token [0] is ignored and token [1] is N, the
    identity's frame count (frames 1..N exist; scripts/preprocess.py writes ``{id} {N}``). The
    original reads N as the exclusive end of the reference candidates, ``range(1, N)``: frames
    1..N-1, so an identity's last frame is never a reference (kept for fidelity, SPEC 1.4).
    """

    counts: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # lines without an integer token [1]
    warnings: list[str] = field(default_factory=list)  # token [0] other than the line's id


def format_data_txt(counts: dict[int, int]) -> str:
    """data.txt text: one ``{id} {N}`` line for each id 1..max(counts), N = 0 for absent ids."""
    return "".join(f"{vid} {counts.get(vid, 0)}\n" for vid in range(1, max(counts, default=0) + 1))


def read_data_txt(path: Path) -> FrameCounts:
    """Parse data.txt (FrameCounts), collecting rather than raising the problems of its lines."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: it lists '<id> <n_frames>' per identity")
    parsed = FrameCounts()
    for vid, line in enumerate(path.read_text().splitlines(), 1):
        tokens = line.split()
        if len(tokens) < 2 or not tokens[1].isdigit():
            parsed.errors.append(f"{path}:{vid}: expected '<id> <n_frames>', got {line!r}")
            continue
        if tokens[0] != str(vid):
            parsed.warnings.append(f"{path}:{vid}: first token {tokens[0]!r} (line of id {vid})")
        parsed.counts[vid] = int(tokens[1])
    return parsed


def read_frame_counts(path: Path) -> dict[int, int]:
    """id -> N of data.txt (FrameCounts); ValueError at its first bad line."""
    parsed = read_data_txt(path)
    if parsed.errors:
        raise ValueError(parsed.errors[0])
    return parsed.counts
