"""Pieces of the demo pipeline that are not another script: clips in, side-by-side and grid out."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ldm.data.layout import FPS
from ldm.demo.sample import make_demo_clip
from ldm.video import VideoError, ffmpeg_exe, probe, read_frames, write_video

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


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


@dataclass(frozen=True)
class Footage:
    """The clips the demo preprocesses: ``clips`` (training clips and the test clip) and which
    one of them is held out (``test``: rendered from its own audio and scored)."""

    clips: tuple[Path, ...]
    test: Path


def expand_videos(inputs: list[str]) -> list[Path]:
    """Video files from paths and folders (a folder: its videos, sorted by name)."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise VideoError(f"{item}: folder holds no video ({', '.join(VIDEO_SUFFIXES)})")
            out += found
        elif item.is_file():
            out.append(item)
        else:
            raise VideoError(f"{item}: no such file or folder")
    return list(dict.fromkeys(p.resolve() for p in out))


def split_footage(videos: list[Path], test: Path | None, folder: Path) -> Footage:
    """Which clip is held out: ``test`` if given, else the last of several, else the last 20% of
    a single clip (cut into ``folder``)."""
    for video in [*videos, *([test] if test else [])]:
        if not probe(video).has_audio:
            raise VideoError(f"{video}: has no audio track; the demo trains on the clip's speech")
    if test is not None:
        train = [v for v in videos if v != test.resolve()]
        return Footage((*train, test.resolve()), test.resolve())
    if len(videos) > 1:
        return Footage(tuple(videos), videos[-1])
    info = probe(videos[0])
    split = TRAIN_FRACTION * info.duration
    logger.info(
        "%s: %.1f s; training on [0, %.1f) s, rendering the rest", videos[0], info.duration, split
    )
    folder.mkdir(parents=True, exist_ok=True)
    train = cut(videos[0], folder / "train.mp4", 0.0, split)
    return Footage((train, cut(videos[0], folder / "test.mp4", split, None)), folder / "test.mp4")


def prepare_footage(inputs: list[str], test: str | None, folder: Path, seconds: float) -> Footage:
    """The user's clips (paths or folders; ``test`` held out), or the built-in sample."""
    if inputs or test:
        videos = expand_videos(inputs)
        if not videos and test:
            raise VideoError("--test needs training clips too: give at least one other video")
        return split_footage(videos, Path(test) if test else None, folder)
    folder.mkdir(parents=True, exist_ok=True)
    train, test_clip = folder / "train.mp4", folder / "test.mp4"
    if not train.exists():
        make_demo_clip(train, seconds=TRAIN_FRACTION * seconds, seed=0)
    if not test_clip.exists():
        make_demo_clip(test_clip, seconds=(1 - TRAIN_FRACTION) * seconds, seed=1)
    return Footage((train, test_clip), test_clip)


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
    write_video(out, np.concatenate([pred, gt[:n]], axis=2), FPS, audio_path=wav)
    wav.unlink()
    return out


def grid_frames(opening: np.ndarray, n: int = 8, gap: int = 25) -> np.ndarray:
    """Frame indices for the grid: half the widest-open mouths of the truth (``opening`` per
    frame, at least ``gap`` frames apart), half evenly spaced over the clip; sorted."""
    opening = np.nan_to_num(np.asarray(opening, np.float64), nan=-1.0)
    wide: list[int] = []
    for i in np.argsort(-opening):
        if len(wide) == n // 2:
            break
        if all(abs(int(i) - j) >= gap for j in wide):
            wide.append(int(i))
    even = np.linspace(0, len(opening) - 1, n - len(wide)).astype(int)
    return np.unique(np.concatenate([even, wide]))


def frame_grid(result: Path, truth: Path, out: Path, indices: np.ndarray | None = None) -> Path:
    """PNG: the frames at ``indices`` (default 6 evenly spaced), rendered (top row) over truth."""
    pred, gt = read_frames(result), read_frames(truth)
    n = min(len(pred), len(gt))
    idx = np.linspace(0, n - 1, 6).astype(int) if indices is None else indices[indices < n]
    size = 192
    rows = [
        np.concatenate([cv2.resize(clip[i], (size, size)) for i in idx], axis=1)
        for clip in (pred, gt)
    ]
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return out
