"""Drive any portrait (video or photo) with any speech: preprocess, render, paste back, mux."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ldm.data.layout import FPS, SAMPLE_RATE
from ldm.inference.clip import PortraitClip, PortraitItems, driving_audio, frame_indices
from ldm.inference.identity import IdentityCheck, check_portrait
from ldm.inference.paste import paste_face, paste_mask
from ldm.inference.render import Renderer, RenderOptions
from ldm.inference.source import SourceFrames
from ldm.inference.stream import (
    CHUNK_FRAMES,
    ChunkStore,
    Emit,
    chunk_dir,
    file_stamp,
    render_chunks,
    render_signature,
    write_image,
)
from ldm.preprocessing.audio_features import SmoothedWindows, kind_for_dim
from ldm.preprocessing.pipeline import PreprocessOptions, process_video
from ldm.video import VideoEncoder, VideoError, load_audio, write_video

logger = logging.getLogger(__name__)

PORTRAIT_ID = 1  # id of the portrait inside its temporary dataset root
MASK_CACHE = 4  # paste masks kept (a photo or a still source reuses one)


@dataclass
class PortraitJob:
    """Inputs and output of one portrait rendering."""

    audio: Path  # any file ffmpeg can decode (wav, mp3, m4a, flac, ogg, a video with sound, ...)
    out: Path  # result .mp4
    video: Path | None = None  # portrait video ...
    image: Path | None = None  # ... or a single photo
    frames_dir: Path | None = None  # also write the full-resolution frames here as PNG
    loop: str = "pingpong"  # pingpong | loop, when the speech outlasts the portrait video
    audio_features: str | None = None  # what the model was trained on (None: by its width)
    audio_model: str | None = None  # local model folder for wav2vec2/hubert/whisper features
    landmarker: str = "dlib"
    crop: str = "fixed"  # fixed | track
    crop_scale: float = 1.8
    chunk_frames: int = CHUNK_FRAMES  # frames per resumable chunk

    def __post_init__(self) -> None:
        if (self.video is None) == (self.image is None):
            raise ValueError("give exactly one portrait: a video or an image")


@dataclass
class PortraitResult:
    """What ``render_portrait`` made: the mp4 and how the portrait's face compares with the
    faces the model was trained on (None for renders that do not sample)."""

    out: Path
    identity: IdentityCheck | None = None


def read_photo(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo, EXIF rotation applied."""
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable image ({exc})") from exc


def portrait_source(job: PortraitJob, work: Path) -> tuple[Path, Sequence[np.ndarray] | None]:
    """The video to preprocess and, for a photo, its pasting canvas (the photo itself, so
    pixels away from the face stay exactly as they were; it becomes a one-frame video for the
    preprocessing). A video's frames are read while pasting (``SourceFrames``)."""
    if job.image is None:
        return Path(job.video), None
    photo = read_photo(Path(job.image))
    return write_video(work / "portrait.mp4", photo[None], FPS), [photo]


def preprocess_portrait(
    video: Path, root: Path, size: int, n_max: int, job: PortraitJob, progress: bool
) -> PortraitClip:
    """Crop and landmark the portrait with the preprocessing pipeline (no audio needed)."""
    opts = PreprocessOptions(
        size=size,
        landmarker=job.landmarker,
        audio_features=None,
        crop_mode=job.crop,
        crop_scale=job.crop_scale,
        max_frames=n_max,
        progress=progress,
    )
    result = process_video(video, root, PORTRAIT_ID, opts)
    return PortraitClip(root, result.meta)


def paste_emitter(
    clip: PortraitClip, source: Sequence[np.ndarray], indices: np.ndarray, frames_dir: Path | None
) -> Emit:
    """Emit that pastes output frame k's crop into source frame ``indices[k]``, encodes it and
    saves it as {frames_dir}/{k + 1:05d}.png when asked."""

    @lru_cache(maxsize=MASK_CACHE)
    def mask(src: int) -> np.ndarray:
        return paste_mask(clip.landmarks(src), clip.meta.size, int(clip.box(src)[2]))

    def emit(k: int, crop: np.ndarray, encoders: Sequence[VideoEncoder]) -> None:
        src = int(indices[k])
        frame = paste_face(source[src], crop, clip.box(src), mask(src))
        encoders[0].write(frame)
        if frames_dir is not None:
            write_image(frames_dir / f"{k + 1:05d}.png", frame)

    return emit


def job_inputs(job: PortraitJob, n_frames: int) -> dict:
    """What of the job a render's frames depend on (for resuming)."""
    stamps = {key: file_stamp(getattr(job, key)) for key in ("audio", "video", "image")}
    keys = ("loop", "audio_features", "audio_model", "landmarker", "crop", "crop_scale")
    frames_dir = None if job.frames_dir is None else str(job.frames_dir)
    return {**stamps, **{k: getattr(job, k) for k in keys}, "frames_dir": frames_dir, "n": n_frames}


def load_speech(job: PortraitJob, model: torch.nn.Module) -> SmoothedWindows:
    """(n_frames,) lazy (8, 16, D) windows of the driving speech, checked against the model."""
    wav = load_audio(job.audio, SAMPLE_RATE)
    kind = job.audio_features or kind_for_dim(model.audio_feature_dim)
    audio = driving_audio(wav, kind, job.audio_model)
    if audio.dim != model.audio_feature_dim:
        raise ValueError(
            f"--audio-features {kind} gives {audio.dim}-d features, but the "
            f"model was trained on {model.audio_feature_dim}-d ones"
        )
    logger.info("%s: %.2f s of speech -> %d frames", job.audio, len(wav) / SAMPLE_RATE, len(audio))
    return audio


def source_landmarks(clip: PortraitClip, frame: int) -> np.ndarray:
    """(68, 2) landmarks of a 0-based frame in source-frame pixels (from its crop's)."""
    x0, y0, side = clip.box(frame)
    return clip.landmarks(frame) * (side / clip.meta.size) + np.array([x0, y0], np.float32)


def identity_check(
    model: torch.nn.Module, clip: PortraitClip, source: Sequence[np.ndarray], opts: RenderOptions
) -> IdentityCheck | None:
    """Compare the portrait's reference frame (its first) with the model's training identities
    (logged; a WARNING for a model of few speakers driving someone else). None when nothing is
    sampled (first stage only)."""
    if opts.first_stage_only:
        return None
    identities = getattr(model, "identities", None)
    return check_portrait(identities, np.asarray(source[0]), source_landmarks(clip, 0))


def render_portrait(
    model: torch.nn.Module, job: PortraitJob, opts: RenderOptions,
    renderer_class: type[Renderer] = Renderer,
) -> PortraitResult:  # fmt: skip
    """Render ``job.out`` (mp4 with the driving audio) chunk by chunk, after checking the
    portrait's face against the model's training identities. A run killed before the end
    resumes from its last finished chunk when started again. ``renderer_class`` makes the
    frames (a benchmark's baseline: benchmarks/bank_paste.py)."""
    audio = load_speech(job, model)
    n_out, size, out = len(audio), model.frame_size, Path(job.out)
    with tempfile.TemporaryDirectory(prefix="difftalk-portrait-") as tmp:
        work = Path(tmp)
        video, photo = portrait_source(job, work)
        clip = preprocess_portrait(video, work / "clip", size, n_out, job, opts.progress)
        source = photo or SourceFrames(video, clip.n_frames, FPS)
        identity = identity_check(model, clip, source, opts)
        indices = frame_indices(clip.n_frames, n_out, job.loop)
        if clip.n_frames < n_out:
            logger.info(
                "portrait has %d frames for %d of speech: %s", clip.n_frames, n_out, job.loop
            )
        items = PortraitItems(clip, indices, audio, size, model.image_size)
        signature = render_signature(model, opts, **job_inputs(job, n_out))
        store = ChunkStore([out], chunk_dir(out), signature, FPS, job.chunk_frames)
        frames_dir = None if job.frames_dir is None else Path(job.frames_dir)
        emit = paste_emitter(clip, source, indices, frames_dir)
        render_chunks(renderer_class(model, opts), items, items.reference(), store, emit)
    store.finish([job.audio])
    logger.info("wrote %s (%d frames)", out, n_out)
    if identity is not None and identity.warn:  # again, after the render's progress lines
        identity.log()
    return PortraitResult(out, identity)
