"""Fetch an HDTF video with yt-dlp and cut it into progressive H.264/AAC mp4 clips.

Every file is written under a temporary name and renamed when complete, so a clip under its final
name is always whole: a rerun skips it, and anything else is redone.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ldm.download.hdtf import Video
from ldm.download.http import sha256_file
from ldm.video import VideoError, ffmpeg_exe, ffmpeg_reason, probe

log = logging.getLogger(__name__)

MANIFEST_FIELDS = ("clip", "url", "start", "end", "frames", "sha256", "height")


class VideoUnavailable(RuntimeError):
    """yt-dlp could not get the video (removed, private, geo-blocked, network)."""


@dataclass
class ClipRow:
    """One manifest line: a finished clip and what it holds."""

    clip: str
    url: str
    start: float
    end: float
    frames: int
    sha256: str
    height: int

    def as_dict(self) -> dict[str, str]:
        """Strings for csv.DictWriter."""
        return {k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in vars(self).items()}


def format_selector(height: int | None) -> str:
    """yt-dlp format: the listed height (best video + best audio, or one file with both), else
    the best at most that high, else the best there is."""
    if height is None:
        return "bv*+ba/b"
    exact, at_most = f"[height={height}]", f"[height<=?{height}]"
    return f"bv*{exact}+ba/b{exact}/bv*{at_most}+ba/b{at_most}/b"


def fetch_video(video: Video, raw_dir: Path, retries: int = 3) -> Path:
    """Download the video with yt-dlp's Python API to raw_dir/{name}.{ext}; its path.

    Raises VideoUnavailable with yt-dlp's reason when the video cannot be downloaded.
    """
    import yt_dlp

    raw_dir.mkdir(parents=True, exist_ok=True)
    opts = {
        "format": format_selector(video.height),
        "outtmpl": str(raw_dir / f"{video.name}.%(ext)s"),
        "merge_output_format": "mp4",
        "ffmpeg_location": ffmpeg_exe(),
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "noplaylist": True,
        "retries": retries,
        "continuedl": True,  # resume a .part file left by an interrupted run
        "logger": _YtdlpLog(),
    }
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(video.url, download=True)
            path = Path(info["requested_downloads"][0]["filepath"])
    except (yt_dlp.utils.DownloadError, yt_dlp.utils.ExtractorError) as err:
        reason = re.sub(r"^ERROR: ", "", str(err)).strip()
        raise VideoUnavailable(f"{video.subset}/{video.name} ({video.url}): {reason}") from err
    if not path.is_file():
        raise VideoUnavailable(f"{video.subset}/{video.name}: yt-dlp reported no file")
    return path


class _YtdlpLog:
    """Route yt-dlp's messages to this module's logger (errors are raised, so only debug)."""

    def debug(self, msg: str) -> None:
        """yt-dlp's debug and info lines."""
        log.debug("yt-dlp: %s", msg)

    info = debug

    def warning(self, msg: str) -> None:
        """yt-dlp's warnings (shown with -v)."""
        log.debug("yt-dlp warning: %s", msg)

    def error(self, msg: str) -> None:
        """yt-dlp's error lines; the error itself is raised and reported."""
        log.debug("yt-dlp error: %s", msg)


def cut_clip(raw: Path, dest: Path, start: float, end: float) -> None:
    """Re-encode [start, end) of `raw` as a progressive (deinterlaced, faststart) H.264 + AAC mp4
    at the source frame rate; written to a temp name, then renamed to dest."""
    tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.part.mp4")
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-y", "-ss", f"{start:.3f}", "-i", str(raw)]
    cmd += ["-t", f"{end - start:.3f}", "-map", "0:v:0", "-map", "0:a:0?"]
    cmd += ["-vf", "yadif=deint=interlaced", "-c:v", "libx264", "-crf", "18", "-preset", "medium"]
    cmd += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "160k", "-movflags", "+faststart"]
    try:
        proc = subprocess.run([*cmd, str(tmp)], capture_output=True)
        if proc.returncode != 0:
            raise VideoError(f"{raw}: cutting {dest.name} failed: {ffmpeg_reason(proc.stderr)}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def count_frames(path: Path) -> int:
    """Exact number of video frames (stream copy through ffmpeg's null muxer)."""
    cmd = [ffmpeg_exe(), "-nostdin", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null"]
    proc = subprocess.run([*cmd, "-"], capture_output=True)
    found = re.findall(rb"frame=\s*(\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        raise VideoError(f"{path}: cannot count frames: {ffmpeg_reason(proc.stderr)}")
    return int(found[-1])


def clip_row(video: Video, k: int, path: Path) -> ClipRow:
    """The manifest row of a finished clip file."""
    start, end = video.intervals[k]
    info = probe(path)
    return ClipRow(path.name, video.url, start, end, count_frames(path), sha256_file(path),
                   info.height)  # fmt: skip


def process_video(video: Video, out: Path, done: set[str], keep_raw: bool = False) -> list[ClipRow]:
    """Download `video` (unless all its clips are in `done`) and cut its missing clips; rows of
    the clips made now. Raises VideoUnavailable, or VideoError when ffmpeg fails."""
    todo = [k for k in range(len(video.intervals)) if video.clip_name(k) not in done]
    if not todo:
        return []
    raw_dir = out / "_raw"
    raw = fetch_video(video, raw_dir)
    try:
        info = probe(raw)
    except VideoError:
        raw.unlink()  # unreadable: fetch it afresh next run
        raise
    if video.height is not None and info.height != video.height:
        log.warning("%s: got %dp, HDTF lists %dp (crop windows are in listed pixels)",
                    video.name, info.height, video.height)  # fmt: skip
    if not info.has_audio:
        log.warning("%s: the downloaded video has no audio track", video.name)
    rows = []
    for k in todo:
        start, end = video.intervals[k]
        if start >= info.duration:
            log.warning("%s: clip %d starts at %.0f s, after the video's end (%.1f s); skipped",
                        video.name, k, start, info.duration)  # fmt: skip
            continue
        dest = out / video.clip_name(k)
        cut_clip(raw, dest, start, end)
        rows.append(clip_row(video, k, dest))
    if not keep_raw:
        raw.unlink()
    return rows
