"""Render long clips chunk by chunk: each chunk is encoded to its own mp4 segment and committed,
so memory stays flat in the clip's length and a killed render resumes from its last finished
chunk; the outputs appear (segments joined, audio muxed) only once every chunk is done."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from ldm.inference.render import Renderer, RenderOptions
from ldm.video import PathLike, VideoEncoder, concat_videos

logger = logging.getLogger(__name__)

CHUNK_FRAMES = 250  # frames per resumable chunk (10 s at 25 fps)
PROGRESS_FILE = "progress.json"

# emit(frame index, generated crop (H, W, 3) uint8, one encoder per output) writes a frame
Emit = Callable[[int, np.ndarray, Sequence[VideoEncoder]], None]


def chunk_dir(out: Path) -> Path:
    """Where the chunks of a render of ``out`` wait: a hidden folder beside it."""
    return out.with_name(f".{out.name}.chunks")


def write_image(path: Path, rgb: np.ndarray) -> None:
    """Save an (H, W, 3) uint8 RGB image (format from the suffix), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), rgb[..., ::-1]):
        raise OSError(f"cannot write {path}")


def model_fingerprint(model: torch.nn.Module) -> str:
    """Short hash of the model's weights (names, shapes and sums), to tell checkpoints apart."""
    h = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}{float(tensor.double().sum()):.12g}".encode())
    return h.hexdigest()[:16]


def file_stamp(path: PathLike | None) -> list | None:
    """[path, size, mtime] of an input file, so a changed input restarts a render."""
    if path is None:
        return None
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def render_signature(model: torch.nn.Module, opts: RenderOptions, **inputs: Any) -> dict:
    """What a render's frames depend on: weights, sampling options (not the progress bar) and
    the caller's inputs; chunks of a render with another signature are not reused."""
    options = {k: v for k, v in asdict(opts).items() if k != "progress"}
    sizes = {k: getattr(model, k) for k in ("frame_size", "image_size", "mouth_window")}
    scales = {k: float(getattr(model, k)) for k in ("scale_factor", "condition_scale")}
    model_id = {"weights": model_fingerprint(model), **sizes, **scales}  # weights alike, sizes not
    return {"model": model_id, "options": options, **inputs}


class ChunkStore:
    """Finished chunks of one render in ``work``: segment ``{k:05d}_{i}.mp4`` per chunk k and
    output i, the reference after chunk k (``{k:05d}_ref.npy``), and ``progress.json`` (the
    signature and the count of committed chunks, rewritten atomically after each chunk)."""

    def __init__(
        self, outputs: Sequence[Path], work: Path, signature: dict, fps: float,
        chunk_frames: int = CHUNK_FRAMES,
    ) -> None:  # fmt: skip
        self.outputs, self.work, self.fps = [Path(o) for o in outputs], Path(work), fps
        self.chunk_frames = chunk_frames
        signature = {**signature, "fps": fps, "chunk_frames": chunk_frames}
        self.signature = json.loads(json.dumps(signature))  # as it reads back from disk
        self.done = self._resume()

    def _resume(self) -> int:
        """Chunks already committed by an earlier run with the same signature (else start over)."""
        progress = self.work / PROGRESS_FILE
        if progress.is_file():
            saved = json.loads(progress.read_text())
            if saved.get("signature") == self.signature:
                logger.info("%s: resuming after %d finished chunk(s)", self.work, saved["done"])
                return int(saved["done"])
            logger.info("%s: earlier chunks are of another render: starting over", self.work)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        return 0

    def segment(self, k: int, i: int) -> Path:
        """Segment of chunk k for output i."""
        return self.work / f"{k:05d}_{i}.mp4"

    def reference(self, default: np.ndarray) -> np.ndarray:
        """The reference of the first chunk not yet done: ``default`` or the one saved."""
        if self.done == 0:
            return default
        return np.load(self.work / f"{self.done - 1:05d}_ref.npy")

    def encoders(self, k: int, stack: ExitStack) -> list[VideoEncoder]:
        """One encoder per output for chunk k, entered on ``stack`` (closed when it exits)."""
        return [
            stack.enter_context(VideoEncoder(self.segment(k, i), self.fps))
            for i in range(len(self.outputs))
        ]

    def commit(self, k: int, reference: np.ndarray) -> None:
        """Record chunk k (its segments are closed) as finished."""
        np.save(self.work / f"{k:05d}_ref.npy", reference)
        tmp = self.work / f".{PROGRESS_FILE}"
        tmp.write_text(json.dumps({"signature": self.signature, "done": k + 1}))
        os.replace(tmp, self.work / PROGRESS_FILE)
        self.done = k + 1

    def finish(self, audio: Sequence[PathLike | None]) -> list[Path]:
        """Join every output's segments (+ its audio) into the output; remove the chunks."""
        outs = [
            concat_videos([self.segment(k, i) for k in range(self.done)], out, sound)
            for i, (out, sound) in enumerate(zip(self.outputs, audio, strict=True))
        ]
        shutil.rmtree(self.work)
        return outs


def render_chunks(
    renderer: Renderer,
    items: Sequence[dict[str, Any]],
    reference: np.ndarray,
    store: ChunkStore,
    emit: Emit,
) -> None:
    """Render the chunks of ``items`` that ``store`` lacks; each frame goes through ``emit``.
    ``reference`` is the first frame's; the progress bar shows frames done, frames per second
    and the time left."""
    n, o, chunk_frames = len(items), renderer.opts, store.chunk_frames
    n_chunks = -(-n // chunk_frames)
    start, reference = store.done * chunk_frames, store.reference(reference)
    desc = f"{o.sampler}-{o.steps}"
    with tqdm(total=n, initial=start, desc=desc, unit="fr", disable=not o.progress) as bar:
        for k in range(store.done, n_chunks):
            stop = min(n, (k + 1) * chunk_frames)
            with ExitStack() as stack:
                encoders = store.encoders(k, stack)
                for batch in renderer.frames(items, reference, k * chunk_frames, stop):
                    for j, crop in enumerate(batch.frames):
                        emit(batch.start + j, crop, encoders)
                    reference = batch.reference
                    bar.update(len(batch.frames))
            store.commit(k, reference)
            logger.debug("chunk %d/%d done (frames up to %d)", k + 1, n_chunks, stop)
