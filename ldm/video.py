"""Video and audio I/O through the ffmpeg binary packaged by imageio-ffmpeg (no system install)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldm.data.layout import FPS, SAMPLE_RATE

log = logging.getLogger(__name__)

PathLike = str | Path


class VideoError(ValueError):
    """A video or audio file cannot be read or written; the message names the file and cause."""


@dataclass(frozen=True)
class VideoInfo:
    """Stream facts of a media file; width/height are as displayed (after rotation metadata)."""

    width: int
    height: int
    fps: float  # native (average) frame rate; 0.0 for audio-only files
    duration: float  # seconds
    n_frames: int  # estimated native frame count, round(duration * fps)
    has_audio: bool
    has_video: bool = True
    rotation: int = 0  # degrees of display rotation that ffmpeg applies when decoding


def ffmpeg_exe() -> str:
    """Path of the packaged ffmpeg binary."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(cmd: list[str], path: PathLike, what: str) -> subprocess.CompletedProcess:
    """Run ffmpeg; raise VideoError naming the file and ffmpeg's last error lines on failure."""
    proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise VideoError(f"{path}: {what} failed: {ffmpeg_reason(proc.stderr)}")
    return proc


def ffmpeg_reason(stderr: bytes) -> str:
    """The most informative last lines of ffmpeg's stderr, without '[ctx @ 0x..]' prefixes."""
    lines = []
    for ln in stderr.decode("utf-8", "replace").splitlines():
        ln = re.sub(r"^(\[[^\]]*\]\s*)+", "", ln.strip())
        if ln and not ln.startswith(("Press [q]", "ffmpeg version")) and ln not in lines:
            lines.append(ln)
    return " | ".join(lines[-3:]) if lines else "unknown ffmpeg error"


def _check_file(path: PathLike) -> Path:
    """Resolve path and reject missing or empty files with a clear message."""
    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{path}: file not found")
    if p.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")
    return p


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VSTREAM = re.compile(r"Stream #\S+.*?: Video: (.*)")
_SIZE = re.compile(r"\b(\d{2,5})x(\d{2,5})\b")
_FPS = re.compile(r"([\d.]+)(k?) (fps|tbr)\b")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")


def probe(path: PathLike) -> VideoInfo:
    """Read size, frame rate, duration and audio presence of a media file (parses `ffmpeg -i`)."""
    p = _check_file(path)
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", str(p)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    text = proc.stderr.decode("utf-8", "replace")
    if "Stream #" not in text:
        raise VideoError(f"{path}: not a readable media file ({ffmpeg_reason(proc.stderr)})")
    has_audio = re.search(r"Stream #\S+.*?: Audio:", text) is not None
    m = _DURATION.search(text)
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else 0.0
    vm = _VSTREAM.search(text)
    if vm is None:
        return VideoInfo(0, 0, 0.0, duration, 0, has_audio, has_video=False)
    size, fps = _SIZE.search(vm[1]), _parse_fps(vm[1])
    if size is None:
        raise VideoError(f"{path}: cannot determine the video frame size")
    width, height = int(size[1]), int(size[2])
    rm = _ROTATION.search(text[vm.start() :])
    rotation = int(round(float(rm[1]))) % 360 if rm else 0
    if rotation in (90, 270):
        width, height = height, width
    n = int(round(duration * fps))
    return VideoInfo(width, height, fps, duration, n, has_audio, True, rotation)


def _parse_fps(stream_desc: str) -> float:
    """Frame rate from a stream description: prefer 'fps', fall back to 'tbr'."""
    found = {kind: float(v) * (1000 if k else 1) for v, k, kind in _FPS.findall(stream_desc)}
    return found.get("fps") or found.get("tbr") or 0.0


def iter_frames(
    path: PathLike,
    fps: float | None = FPS,
    max_frames: int | None = None,
    info: VideoInfo | None = None,
    start: int = 0,
) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 RGB frames resampled to a constant `fps` (None = native rate),
    from frame `start` on (the earlier frames are decoded and dropped inside ffmpeg, so frame
    `start` is exactly the one a read from the beginning gives)."""
    info = info or probe(path)
    if not info.has_video:
        raise VideoError(f"{path}: no video stream")
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v:0"]
    filters = [f"fps={fps:g}"] if fps is not None else []
    if start > 0:
        filters.append(f"trim=start_frame={start},setpts=PTS-STARTPTS")
    if filters:
        cmd += ["-vf", ",".join(filters)]
    if max_frames is not None:
        cmd += ["-frames:v", str(int(max_frames))]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    expected = int(round(info.duration * (fps or info.fps))) - start
    if max_frames is not None:
        expected = min(expected, int(max_frames))
    yield from _pipe_frames(cmd, path, info.width, info.height, expected)


def _pipe_frames(
    cmd: list[str], path: PathLike, w: int, h: int, expected: int = 0
) -> Iterator[np.ndarray]:
    """Run an ffmpeg rawvideo command and yield its frames; raise VideoError if it fails or
    stops well short of the `expected` frame count while reporting errors (truncated file)."""
    nbytes, n = w * h * 3, 0
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        try:
            while True:
                buf = proc.stdout.read(nbytes)
                if len(buf) < nbytes:
                    break
                n += 1
                yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
        err.seek(0)
        stderr = err.read()
    if code != 0:
        raise VideoError(f"{path}: decoding failed: {ffmpeg_reason(stderr)}")
    if stderr.strip() and n < expected - max(2, 0.02 * expected):
        raise VideoError(
            f"{path}: decoding stopped after {n} of ~{expected} frames, file truncated or "
            f"corrupt ({ffmpeg_reason(stderr)})"
        )
    if stderr.strip():
        log.warning("%s: the decoder reported errors: %s", path, ffmpeg_reason(stderr))


def read_frames(
    path: PathLike, fps: float | None = FPS, max_frames: int | None = None
) -> np.ndarray:
    """Decode a video to a (T, H, W, 3) uint8 RGB array at constant `fps` (None = native)."""
    frames = list(iter_frames(path, fps=fps, max_frames=max_frames))
    if not frames:
        raise VideoError(f"{path}: no frames could be decoded")
    return np.stack(frames)


def extract_audio(path: PathLike, wav_path: PathLike, sr: int = SAMPLE_RATE) -> Path:
    """Write the first audio stream of `path` as a mono 16-bit PCM wav at `sr` Hz (atomic)."""
    p = _check_file(path)
    info = probe(p)
    if not info.has_audio:
        raise VideoError(f"{path}: no audio track")
    out = Path(wav_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.wav")
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-y", "-i", str(p), "-map", "0:a:0"]
    cmd += ["-ac", "1", "-ar", str(sr), "-c:a", "pcm_s16le", "-f", "wav", str(tmp)]
    try:
        _run(cmd, path, "audio extraction")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def load_audio(path: PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any media file to float32 mono in [-1, 1] at `sr` Hz."""
    p = _check_file(path)
    if not probe(p).has_audio:
        raise VideoError(f"{path}: no audio track")
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(p), "-map", "0:a:0"]
    cmd += ["-ac", "1", "-ar", str(sr), "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"]
    proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise VideoError(f"{path}: audio decoding failed: {ffmpeg_reason(proc.stderr)}")
    wav = np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0
    if wav.size == 0:
        raise VideoError(f"{path}: audio track is empty")
    return wav


def _encode_cmd(width: int, height: int, fps: float, audio_path: PathLike | None, out: Path):
    """ffmpeg command encoding rgb24 frames from stdin as H.264 yuv420p mp4 (+AAC audio)."""
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    cmd += ["-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "pipe:0"]
    if audio_path is not None:
        cmd += ["-i", str(_check_file(audio_path)), "-map", "0:v:0", "-map", "1:a:0"]
        cmd += ["-c:a", "aac", "-b:a", "128k", "-shortest"]
    # yuv420p needs even sizes: pad by one pixel with edge replication if odd
    cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
    cmd += ["-bf", "0"]  # no B-frames: no start delay, so segments join exactly (concat_videos)
    return cmd + ["-crf", "18", "-preset", "medium", "-movflags", "+faststart", str(out)]


def temp_path(out: Path) -> Path:
    """A hidden sibling of ``out`` to write into before the rename that publishes it."""
    return out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix or '.mp4'}")


class VideoEncoder:
    """Encode (H, W, 3) uint8 RGB frames to an H.264 mp4 through an ffmpeg pipe as they come;
    the file appears at ``path`` only when ``close`` succeeds (temp, then rename).

    Use as a context manager: an exception inside the block discards the partial file.
    """

    def __init__(self, path: PathLike, fps: float = FPS, audio_path: PathLike | None = None):
        self.path, self.fps, self.audio_path = Path(path), fps, audio_path
        self.tmp = temp_path(self.path)
        self.n_frames, self.shape = 0, None
        self._proc: subprocess.Popen | None = None
        self._err = tempfile.TemporaryFile()

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame; every frame must have the first one's size."""
        if frame.ndim != 3 or frame.shape[-1] != 3 or 0 in frame.shape:
            raise VideoError(f"{self.path}: expected (H, W, 3) frames, got shape {frame.shape}")
        if self._proc is None:
            self.shape = frame.shape
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cmd = _encode_cmd(frame.shape[1], frame.shape[0], self.fps, self.audio_path, self.tmp)
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._err)
        elif frame.shape != self.shape:
            raise VideoError(
                f"{self.path}: frame {self.n_frames} is {frame.shape}, not {self.shape}"
            )
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
        except BrokenPipeError:
            self._failed()
        self.n_frames += 1

    def _failed(self) -> None:
        """Raise VideoError with ffmpeg's reason."""
        self._err.seek(0)
        raise VideoError(f"{self.path}: encoding failed: {ffmpeg_reason(self._err.read())}")

    def close(self) -> Path:
        """Finish encoding and publish the file; returns its path."""
        if self._proc is None:
            raise VideoError(f"{self.path}: no frames to encode")
        with contextlib.suppress(BrokenPipeError):  # ffmpeg failed: its reason follows
            self._proc.stdin.close()
        if self._proc.wait() != 0:
            self.tmp.unlink(missing_ok=True)
            self._failed()
        os.replace(self.tmp, self.path)
        self._err.close()
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file."""
        if self._proc is not None:
            self._proc.kill()
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
            self._proc.wait()
        self.tmp.unlink(missing_ok=True)
        self._err.close()

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(
    path: PathLike,
    frames: np.ndarray,
    fps: float = FPS,
    audio_path: PathLike | None = None,
) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 yuv420p mp4 (+AAC audio), temp then rename."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise VideoError(f"{path}: expected (T, H, W, 3) frames, got shape {frames.shape}")
    with VideoEncoder(path, fps, audio_path) as enc:
        for frame in frames:
            enc.write(frame)
    return enc.path


def concat_videos(parts: list[Path], path: PathLike, audio_path: PathLike | None = None) -> Path:
    """Join mp4 segments encoded alike into ``path`` without re-encoding (+AAC audio, cut to the
    shorter stream), temp then rename."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    listing = out.with_name(f".{out.stem}.{os.getpid()}.concat.txt")
    listing.write_text("".join(f"file '{p.resolve()}'\n" for p in parts))
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-y", "-f", "concat", "-safe", "0"]
    cmd += ["-i", str(listing)]
    if audio_path is not None:
        cmd += ["-i", str(_check_file(audio_path)), "-map", "0:v:0", "-map", "1:a:0"]
        cmd += ["-c:a", "aac", "-b:a", "128k", "-shortest"]
    cmd += ["-c:v", "copy", "-movflags", "+faststart", str(tmp)]
    try:
        _run(cmd, out, "joining the video chunks")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        listing.unlink(missing_ok=True)
    return out
