"""The paper protocol over a split list (SPEC 3, 5.2): every clip's frames, mp4 and side-by-side.

The original re-renders the lower face of each test frame (masked frame cut at landmark 33,
reference = frame 1, jaw-polygon latent mask, EMA weights, DDIM 200, eta 0) and drives every
identity with identity 105's audio; here each clip is driven by its own audio unless
``audio_id`` is given.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset

from ldm.data.layout import FPS
from ldm.inference.render import Renderer, RenderOptions
from ldm.inference.stream import (
    CHUNK_FRAMES,
    ChunkStore,
    chunk_dir,
    file_stamp,
    render_chunks,
    render_signature,
    write_image,
)
from ldm.util import instantiate_from_config, to_uint8
from ldm.video import VideoEncoder

logger = logging.getLogger(__name__)

INFERENCE_TARGET = "ldm.data.talk.TalkInference"
TRAIN_ONLY_PARAMS = ("max_items", "mask_landmark", "reference_frame", "resample_reference")


@dataclass
class SplitJob:
    """Which clips to render and where."""

    split: Path  # list of {id}_{frame} keys (data/data_test.txt)
    outdir: Path
    root: Path | None = None  # dataset root; default: the config's validation root
    audio_id: int | None = None  # drive every clip with this id's audio (the original: 105)
    ids: set[int] | None = None  # only these clip ids
    max_frames: int | None = None  # at most this many frames per clip
    image_format: str = "png"  # png | jpg
    chunk_frames: int = CHUNK_FRAMES  # frames per resumable chunk


def inference_dataset(config: DictConfig, job: SplitJob, latent_size: int) -> Any:
    """TalkInference over ``job.split`` with the config's validation params (SPEC 3)."""
    val = config.get("data", {}).get("params", {}).get("validation", {})
    params = OmegaConf.to_container(val.get("params", {}) or {}, resolve=True)
    if val.get("target") != INFERENCE_TARGET:  # e.g. talking.yaml alone: use SPEC 3's defaults
        params = {k: v for k, v in params.items() if k not in TRAIN_ONLY_PARAMS}
    params.update(
        split_file=str(job.split),
        latent_size=latent_size,
        audio_id=job.audio_id,
        max_items=None,
    )
    if job.root is not None:
        params["root"] = str(job.root)
    return instantiate_from_config({"target": INFERENCE_TARGET, "params": params})


def clips_of(dataset: Any, job: SplitJob) -> dict[int, list[int]]:
    """Clip id -> dataset indices in frame order (at most ``job.max_frames``)."""
    clips: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for index, (vid, frame) in enumerate(dataset.keys):
        if job.ids is None or int(vid) in job.ids:
            clips[int(vid)].append((int(frame), index))
    return {
        vid: [i for _, i in sorted(pairs)][: job.max_frames] for vid, pairs in sorted(clips.items())
    }


def check_audio(dataset: Any, clips: dict[int, list[int]]) -> None:
    """Fail before rendering when an audio window is missing (e.g. --audio-id clip too short)."""
    for vid, indices in clips.items():
        for index in indices:
            frame = int(dataset.keys[index][1])
            path = dataset.root / "audio_smooth" / f"{dataset.audio_id or vid}_{frame}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"clip {vid} frame {frame}: no audio window {path}")


def audio_segment(root: Path, audio_vid: int, frames: list[int], folder: Path) -> Path | None:
    """The clip's preprocessed speech (audio/{id}.wav) cut to its frames, or None if absent."""
    import soundfile as sf

    path = root / "audio" / f"{audio_vid}.wav"
    if not path.is_file():
        logger.warning("%s not found: the mp4s of clip frames %s have no sound", path, frames[:1])
        return None
    if frames != list(range(frames[0], frames[-1] + 1)):
        logger.warning("the split skips frames of clip %d: its video and audio drift", audio_vid)
    wav, sr = sf.read(path, dtype="float32")
    start, stop = round((frames[0] - 1) * sr / FPS), round(frames[-1] * sr / FPS)
    if start >= len(wav):
        logger.warning("%s ends before frame %d: no sound", path, frames[0])
        return None
    out = folder / f"{audio_vid}_{frames[0]}_{frames[-1]}.wav"
    sf.write(out, wav[start:stop], sr)
    return out


def truth_frame(item: dict[str, Any]) -> np.ndarray:
    """(H, W, 3) uint8 ground-truth frame of a dataset item."""
    return to_uint8(item["image"])


def render_clip(
    renderer: Renderer, dataset: Any, job: SplitJob, vid: int, indices: list[int], signature: dict
) -> None:
    """{outdir}/{vid}/frames/{frame:05d}.png, {vid}.mp4, {vid}_truth.mp4 (the same frames of
    the dataset, for scripts/evaluate.py --gt) and {vid}_side_by_side.mp4 (truth | generated),
    rendered chunk by chunk and resumable."""
    items = Subset(dataset, indices)
    frames = [int(dataset.keys[i][1]) for i in indices]
    logger.info("clip %d: %d frames (%d..%d)", vid, len(frames), frames[0], frames[-1])
    folder = job.outdir / str(vid) / "frames"
    outs = [job.outdir / f"{vid}{suffix}.mp4" for suffix in ("", "_truth", "_side_by_side")]
    signature = {**signature, "clip": vid, "frames": frames}
    store = ChunkStore(outs, chunk_dir(outs[0]), signature, FPS, job.chunk_frames)

    def emit(k: int, fake: np.ndarray, encoders: Sequence[VideoEncoder]) -> None:
        write_image(folder / f"{frames[k]:05d}.{job.image_format}", fake)
        real = truth_frame(items[k])
        for encoder, frame in zip(
            encoders, (fake, real, np.concatenate([real, fake], 1)), strict=True
        ):
            encoder.write(frame)

    render_chunks(renderer, items, items[0]["reference_img"], store, emit)
    with tempfile.TemporaryDirectory(prefix="difftalk-audio-") as tmp:
        audio = audio_segment(dataset.root, job.audio_id or vid, frames, Path(tmp))
        store.finish([audio] * len(outs))


def render_split(model: Any, config: DictConfig, job: SplitJob, opts: RenderOptions) -> list[int]:
    """Render every clip of the split; returns the clip ids written."""
    dataset = inference_dataset(config, job, model.image_size)
    clips = clips_of(dataset, job)
    if not clips:
        raise ValueError(f"{job.split}: no keys to render (ids filter: {job.ids})")
    check_audio(dataset, clips)
    renderer = Renderer(model, opts)
    signature = render_signature(
        model, opts, root=str(Path(dataset.root).resolve()), audio_id=job.audio_id,
        image_format=job.image_format, split=file_stamp(job.split),
        dataset=file_stamp(Path(dataset.root) / "data.txt"),
    )  # fmt: skip
    for vid, indices in clips.items():
        render_clip(renderer, dataset, job, vid, indices, signature)
    logger.info("wrote %d clip(s) to %s", len(clips), job.outdir)
    return list(clips)
