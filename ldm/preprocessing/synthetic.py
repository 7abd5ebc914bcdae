"""Small synthetic talking-head videos for tests and demos (a real face photo, moving, + audio).

The face is scikit-image's `astronaut()` photo, which dlib's detector finds reliably.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ldm.data.layout import FPS, SAMPLE_RATE
from ldm.video import VideoError, ffmpeg_exe, ffmpeg_reason

HEAD_BOX = (90, 30, 360, 300)  # (x0, y0, x1, y1) head-and-shoulders square in astronaut()
HEAD_FACE_PX = 87  # dlib face box width inside that square

CODECS = {  # container suffix -> (video codec args, audio codec args)
    ".mp4": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"]),
    ".mov": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"]),
    ".mkv": (
        [
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-x265-params",
            "log-level=error",
        ],
        ["-c:a", "aac"],
    ),
    ".webm": (
        ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"],
        ["-c:a", "libopus"],
    ),
}


def head_image() -> np.ndarray:
    """(270, 270, 3) uint8 RGB head-and-shoulders photo (astronaut)."""
    from skimage import data

    x0, y0, x1, y1 = HEAD_BOX
    return np.ascontiguousarray(data.astronaut()[y0:y1, x0:x1])


def speech_like_audio(seconds: float, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Float32 mono 'voice': harmonics of a 140 Hz pitch with a syllable-rate loudness envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = np.clip(np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)), 0, None) ** 2
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12))
    return (0.3 * env * voice / 3 + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def face_frames(
    n: int,
    width: int = 320,
    height: int = 240,
    face_px: int = 90,
    faces: int = 1,
    motion: float = 6.0,
    second_scale: float = 0.7,
) -> np.ndarray:
    """(n, H, W, 3) uint8 frames with `faces` (0-2) copies of the head, gently moving."""
    frames = np.empty((n, height, width, 3), np.uint8)
    frames[:] = np.linspace(40, 120, width, dtype=np.uint8)[None, :, None]
    head = head_image()
    side = int(round(head.shape[0] * face_px / HEAD_FACE_PX))
    heads = [cv2.resize(head, (side, side), interpolation=cv2.INTER_AREA)]
    if faces > 1:
        s2 = int(side * second_scale)
        heads.append(cv2.resize(head, (s2, s2), interpolation=cv2.INTER_AREA))
    anchors = [(0.5, 0.5)] if faces == 1 else [(0.3, 0.5), (0.75, 0.5)]
    for t in range(n):
        dx = motion * np.sin(2 * np.pi * t / 40)
        dy = motion * 0.5 * np.sin(2 * np.pi * t / 55)
        for img, (ax, ay) in list(zip(heads, anchors, strict=False))[:faces]:
            _paste(
                frames[t],
                img,
                int(ax * width - img.shape[1] / 2 + dx),
                int(ay * height - img.shape[0] / 2 + dy),
            )
    return frames


def _paste(canvas: np.ndarray, img: np.ndarray, x: int, y: int) -> None:
    """Paste img at (x, y) into canvas, clipped to the canvas."""
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + img.shape[1], w), min(y + img.shape[0], h)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = img[y0 - y : y1 - y, x0 - x : x1 - x]


def encode(
    path: str | Path,
    frames: np.ndarray,
    fps: float = FPS,
    audio: np.ndarray | None = None,
    sr: int = SAMPLE_RATE,
    vfr_slowdown_after: int | None = None,
) -> Path:
    """Encode frames (+ optional mono audio) with the codec implied by the suffix.

    `vfr_slowdown_after=k` makes a variable-frame-rate file: frames after k are shown twice as long.
    """
    import soundfile as sf

    out = Path(path)
    vcodec, acodec = CODECS.get(out.suffix.lower(), CODECS[".mp4"])
    t, h, w, _ = frames.shape
    cmd = [
        ffmpeg_exe(),
        "-v",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        f"{fps:g}",
        "-i",
        "pipe:0",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if audio is not None:
            wav = Path(tmp) / "a.wav"
            sf.write(wav, audio, sr)
            cmd += ["-i", str(wav), "-map", "0:v", "-map", "1:a", *acodec, "-shortest"]
        if vfr_slowdown_after is not None:
            k = vfr_slowdown_after
            cmd += ["-vf", f"setpts='if(lt(N,{k}),N,{k}+2*(N-{k}))/{fps:g}/TB'"]
            cmd += ["-fps_mode", "passthrough"]
        cmd += [*vcodec, str(out)]
        proc = subprocess.run(
            cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True
        )
    if proc.returncode != 0:
        raise VideoError(f"{out}: synthetic encode failed: {ffmpeg_reason(proc.stderr)}")
    return out


def make_face_video(
    path: str | Path,
    seconds: float = 2.0,
    fps: float = FPS,
    width: int = 320,
    height: int = 240,
    face_px: int = 90,
    faces: int = 1,
    audio: bool = True,
    vfr_slowdown_after: int | None = None,
) -> Path:
    """Write a synthetic talking-head clip; faces=0 makes a clip without any face."""
    n = int(round(seconds * fps))
    frames = face_frames(n, width, height, face_px, faces)
    duration = seconds if vfr_slowdown_after is None else (2 * n - vfr_slowdown_after) / fps
    sound = speech_like_audio(duration) if audio else None
    return encode(path, frames, fps, sound, vfr_slowdown_after=vfr_slowdown_after)
