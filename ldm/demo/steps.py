"""Pieces of the demo pipeline that are not another script: clips in, side-by-side and grid out."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import cv2
import numpy as np

from ldm.demo.sample import make_demo_clip
from ldm.preprocessing.video import VideoError, ffmpeg_exe, probe, read_frames, write_video

logger = logging.getLogger(__name__)
TRAIN_FRACTION = 0.8


def cut(src: Path, dst: Path, start: float, duration: float | None) -> Path:
    """Re-encode ``src`` from ``start`` seconds (for ``duration``) into ``dst`` (frame-exact)."""
    if dst.exists():
        return dst
    tmp = dst.with_name(f".{dst.name}.tmp.mp4")
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-y", "-ss", f"{start:.3f}", "-i", str(src)]
    if duration is not None:
        cmd += ["-t", f"{duration:.3f}"]
    cmd += ["-c:v", "libx264", "-crf", "16", "-pix_fmt", "yuv420p", "-c:a", "aac", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise VideoError(f"{src}: cutting failed: {proc.stderr.decode(errors='replace')[-300:]}")
    tmp.replace(dst)
    return dst


def prepare_clips(video: str | None, folder: Path, seconds: float) -> tuple[Path, Path]:
    """(training clip, test clip): the user's video split 80/20, or the built-in sample."""
    folder.mkdir(parents=True, exist_ok=True)
    train, test = folder / "train.mp4", folder / "test.mp4"
    if video is None:
        if not train.exists():
            make_demo_clip(train, seconds=TRAIN_FRACTION * seconds, seed=0)
        if not test.exists():
            make_demo_clip(test, seconds=(1 - TRAIN_FRACTION) * seconds, seed=1)
        return train, test
    info = probe(video)
    if not info.has_audio:
        raise VideoError(f"{video}: has no audio track; the demo renders from the clip's speech")
    split = TRAIN_FRACTION * info.duration
    logger.info(
        "%s: %.1f s; training on [0, %.1f) s, rendering the rest", video, info.duration, split
    )
    return cut(Path(video), train, 0.0, split), cut(Path(video), test, split, None)


def latest_run(logdir: Path, name: str) -> Path:
    """The newest ``{time}_{name}`` run directory under ``logdir``."""
    runs = sorted(logdir.glob(f"*_{name}"))
    if not runs:
        raise FileNotFoundError(f"no run named {name!r} under {logdir}")
    return runs[-1]


def side_by_side(result: Path, truth: Path, out: Path) -> Path:
    """[rendered | truth] mp4 with the rendered clip's sound."""
    pred, gt = read_frames(result), read_frames(truth)
    n = min(len(pred), len(gt))
    h = gt.shape[1]
    pred = np.stack([cv2.resize(f, (round(f.shape[1] * h / f.shape[0]), h)) for f in pred[:n]])
    wav = out.with_suffix(".wav")
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(result), "-ac", "1", str(wav)],
                   check=True)  # fmt: skip
    write_video(out, np.concatenate([pred, gt[:n]], axis=2), 25.0, audio_path=wav)
    wav.unlink()
    return out


def frame_grid(result: Path, truth: Path, out: Path, n: int = 6) -> Path:
    """PNG: n evenly spaced frames, rendered (top row) over truth (bottom row)."""
    pred, gt = read_frames(result), read_frames(truth)
    idx = np.linspace(0, min(len(pred), len(gt)) - 1, n).astype(int)
    size = 192
    rows = [
        np.concatenate([cv2.resize(clip[i], (size, size)) for i in idx], axis=1)
        for clip in (pred, gt)
    ]
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return out
