"""Drive any portrait (video or photo) with any speech: preprocess, render, paste back, mux."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from ldm.inference.clip import PortraitClip, PortraitItems, driving_audio, frame_indices
from ldm.inference.paste import paste_face, paste_mask
from ldm.inference.render import Renderer, RenderOptions
from ldm.preprocessing.audio_features import SAMPLE_RATE
from ldm.preprocessing.pipeline import PreprocessOptions, process_video
from ldm.preprocessing.video import VideoError, load_audio, read_frames, write_video

logger = logging.getLogger(__name__)

FPS = 25.0
PORTRAIT_ID = 1  # id of the portrait inside its temporary dataset root


@dataclass
class PortraitJob:
    """Inputs and output of one portrait rendering."""

    audio: Path  # any file ffmpeg can decode (wav, mp3, m4a, flac, ogg, a video with sound, ...)
    out: Path  # result .mp4
    video: Path | None = None  # portrait video ...
    image: Path | None = None  # ... or a single photo
    frames_dir: Path | None = None  # also write the full-resolution frames here as PNG
    loop: str = "pingpong"  # pingpong | loop, when the speech outlasts the portrait video
    audio_features: str = "logmel"  # must be what the model was trained on
    audio_model: str | None = None  # local model folder for wav2vec2/hubert/whisper features
    landmarker: str = "dlib"
    crop: str = "fixed"  # fixed | track
    crop_scale: float = 1.8

    def __post_init__(self) -> None:
        if (self.video is None) == (self.image is None):
            raise ValueError("give exactly one portrait: a video or an image")


def model_audio_dim(model: torch.nn.Module) -> int:
    """Audio feature dimension D the model's AudioNet expects."""
    return model.cond_stage_model_for_audio.encoder_conv[0].in_channels


def read_photo(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo, EXIF rotation applied."""
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable image ({exc})") from exc


def source_frames(job: PortraitJob, work: Path, n_max: int) -> tuple[Path, np.ndarray]:
    """The video to preprocess and its full-resolution 25 fps frames (T, H, W, 3) uint8.

    A photo becomes a one-frame video for the preprocessing; its pasting canvas is the photo
    itself, so pixels away from the face stay exactly as they were.
    """
    if job.image is not None:
        photo = read_photo(Path(job.image))
        return write_video(work / "portrait.mp4", photo[None], FPS), photo[None]
    return Path(job.video), read_frames(job.video, fps=FPS, max_frames=n_max)


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


def paste_all(
    clip: PortraitClip, frames: np.ndarray, crops: np.ndarray, indices: np.ndarray, progress: bool
) -> np.ndarray:
    """Full frames (T_out, H, W, 3) with each generated crop pasted into its source frame."""
    out = np.empty((len(indices), *frames.shape[1:]), np.uint8)
    masks: dict[int, np.ndarray] = {}
    for k in tqdm(range(len(indices)), desc="paste", unit="fr", disable=not progress):
        src = int(indices[k])
        box = clip.box(src)
        if src not in masks:
            masks[src] = paste_mask(clip.landmarks(src), clip.meta.size, int(box[2]))
        out[k] = paste_face(frames[src], crops[k], box, masks[src])
    return out


def save_frames(frames: np.ndarray, folder: Path) -> None:
    """Write frames as {folder}/{k:05d}.png, k from 1."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(frames, 1):
        if not cv2.imwrite(str(folder / f"{k:05d}.png"), frame[..., ::-1]):
            raise OSError(f"cannot write {folder / f'{k:05d}.png'}")


def load_speech(job: PortraitJob, model: torch.nn.Module) -> np.ndarray:
    """(n_frames, 8, 16, D) audio windows of the driving speech, checked against the model."""
    wav = load_audio(job.audio, SAMPLE_RATE)
    audio = driving_audio(wav, job.audio_features, job.audio_model)
    if audio.shape[-1] != model_audio_dim(model):
        raise ValueError(
            f"--audio-features {job.audio_features} gives {audio.shape[-1]}-d features, but the "
            f"model was trained on {model_audio_dim(model)}-d ones"
        )
    logger.info("%s: %.2f s of speech -> %d frames", job.audio, len(wav) / SAMPLE_RATE, len(audio))
    return audio


def render_portrait(model: torch.nn.Module, job: PortraitJob, opts: RenderOptions) -> Path:
    """Render ``job.out`` (mp4 with the driving audio); returns its path."""
    audio = load_speech(job, model)
    n_out, size = len(audio), model.frame_size
    with tempfile.TemporaryDirectory(prefix="difftalk-portrait-") as tmp:
        work = Path(tmp)
        video, frames = source_frames(job, work, n_out)
        clip = preprocess_portrait(video, work / "clip", size, n_out, job, opts.progress)
        n_src = min(clip.n_frames, len(frames))
        indices = frame_indices(n_src, n_out, job.loop)
        if n_src < n_out:
            logger.info("portrait has %d frames for %d of speech: %s", n_src, n_out, job.loop)
        items = PortraitItems(clip, indices, audio, size, model.image_size)
        crops = Renderer(model, opts).render(items, items.reference())
        result = paste_all(clip, frames, crops, indices, opts.progress)
    if job.frames_dir is not None:
        save_frames(result, Path(job.frames_dir))
    out = write_video(job.out, result, FPS, audio_path=job.audio)
    logger.info("wrote %s (%d frames, %dx%d)", out, len(result), result.shape[2], result.shape[1])
    return out
