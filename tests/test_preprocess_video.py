"""Video/audio I/O through the packaged ffmpeg: probing, 25 fps decoding, audio, errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from ldm.preprocessing.synthetic import encode, face_frames, make_face_video, speech_like_audio
from ldm.video import (
    VideoError,
    extract_audio,
    ffmpeg_exe,
    load_audio,
    probe,
    read_frames,
    write_video,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Small synthetic inputs in several containers/codecs/frame rates."""
    d = tmp_path_factory.mktemp("video")
    return {
        "mp4_30fps": make_face_video(
            d / "a.mp4", seconds=2.0, fps=30, width=160, height=120, face_px=45
        ),
        "webm_vp9": make_face_video(d / "b.webm", seconds=1.2, width=160, height=120, face_px=45),
        "mkv_hevc": make_face_video(d / "c.mkv", seconds=1.2, width=160, height=120, face_px=45),
        "mov_silent": make_face_video(
            d / "d.mov", seconds=1.0, width=160, height=120, face_px=45, audio=False
        ),
        "vfr": make_face_video(
            d / "vfr.mkv",
            seconds=2.0,
            fps=30,
            width=160,
            height=120,
            face_px=45,
            vfr_slowdown_after=30,
        ),
    }


def test_probe_reports_native_rate_and_audio(clips):
    info = probe(clips["mp4_30fps"])
    assert (info.width, info.height, info.fps) == (160, 120, 30.0)
    assert info.has_audio and info.has_video
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert not probe(clips["mov_silent"]).has_audio


@pytest.mark.parametrize(
    ("name", "seconds"),
    [("mp4_30fps", 2.0), ("webm_vp9", 1.2), ("mkv_hevc", 1.2), ("mov_silent", 1.0)],
)
def test_read_frames_resamples_to_25fps(clips, name, seconds):
    frames = read_frames(clips[name])
    assert frames.dtype == np.uint8 and frames.shape[1:] == (120, 160, 3)
    assert abs(len(frames) - seconds * 25) <= 1


def test_native_rate_and_max_frames(clips):
    assert len(read_frames(clips["mp4_30fps"], fps=None)) == 60
    assert len(read_frames(clips["mp4_30fps"], max_frames=7)) == 7


def test_variable_frame_rate_input_gives_constant_25fps(clips):
    # 30 frames at 30 fps (1 s) then 30 frames shown twice as long (2 s): 3 s in total
    frames = read_frames(clips["vfr"])
    assert abs(len(frames) - 75) <= 1
    # the slowed-down part repeats frames: fewer distinct frames in the second half
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert (diffs[30:] < 0.01).sum() > (diffs[:24] < 0.01).sum()


def test_read_frames_is_rgb(tmp_path):
    red = np.zeros((5, 32, 32, 3), np.uint8)
    red[..., 0] = 220
    path = encode(tmp_path / "red.mp4", red)
    mean = read_frames(path).reshape(-1, 3).mean(axis=0)
    assert mean[0] > 180 and mean[1] < 40 and mean[2] < 40


def test_rotation_metadata_swaps_displayed_size(clips, tmp_path):
    rotated = tmp_path / "rot.mp4"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-display_rotation",
            "90",
            "-i",
            str(clips["mp4_30fps"]),
            "-c",
            "copy",
            str(rotated),
        ],
        check=True,
    )
    info = probe(rotated)
    assert (info.width, info.height, info.rotation) == (120, 160, 90)
    assert read_frames(rotated, max_frames=2).shape == (2, 160, 120, 3)


def test_load_audio_is_mono_16k_float(clips, tmp_path):
    wav = load_audio(clips["mp4_30fps"])
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) == pytest.approx(2.0 * 16000, abs=1600)
    assert 0.05 < np.abs(wav).max() <= 1.0
    out = extract_audio(clips["webm_vp9"], tmp_path / "x.wav")
    assert probe(out).has_audio and len(load_audio(out, sr=8000)) == pytest.approx(9600, abs=1000)


def test_load_audio_matches_the_source_signal(tmp_path):
    sig = speech_like_audio(1.0)
    path = encode(tmp_path / "s.mkv", face_frames(25, 64, 64, face_px=20), audio=sig)
    wav = load_audio(path)[: len(sig)]
    corr = np.corrcoef(wav[2000:14000], sig[2000:14000])[0, 1]
    assert corr > 0.9  # AAC is lossy, but the waveform survives


def test_write_video_roundtrip_with_audio(tmp_path, clips):
    frames = face_frames(20, 96, 64, face_px=30)
    wav = extract_audio(clips["mp4_30fps"], tmp_path / "a.wav")
    out = write_video(tmp_path / "out" / "v.mp4", frames, fps=25, audio_path=wav)
    info = probe(out)
    assert (info.width, info.height, info.has_audio) == (96, 64, True)
    back = read_frames(out)
    assert len(back) == 20 and np.abs(back.astype(int) - frames).mean() < 6
    assert not list(out.parent.glob(".*tmp*"))


def test_write_video_odd_size_and_bad_input(tmp_path):
    out = write_video(tmp_path / "odd.mp4", np.zeros((3, 33, 35, 3), np.uint8))
    assert probe(out).width in (35, 36)
    with pytest.raises(VideoError, match="bad.mp4"):
        write_video(tmp_path / "bad.mp4", np.zeros((3, 32, 32), np.uint8))
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.parametrize(
    ("content", "cause"),
    [(b"", "empty"), (b"\x00\x01garbage" * 300, "not a readable media file"), (None, "not found")],
)
def test_bad_files_raise_video_error_naming_file_and_cause(tmp_path, content, cause):
    path = tmp_path / "broken.mp4"
    if content is not None:
        path.write_bytes(content)
    for fn in (probe, read_frames, load_audio):
        with pytest.raises(VideoError, match=cause) as err:
            fn(path)
        assert str(path) in str(err.value)


def test_no_audio_track_is_reported(clips):
    with pytest.raises(VideoError, match="no audio track"):
        load_audio(clips["mov_silent"])


def test_truncated_file_is_reported(clips, tmp_path):
    fast = tmp_path / "fast.mp4"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(clips["mp4_30fps"]),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            str(fast),
        ],
        check=True,
    )
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fast.read_bytes()[: fast.stat().st_size * 2 // 3])
    with pytest.raises(VideoError, match="truncated or corrupt"):
        read_frames(cut)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real clips not found at {SHARED}")
def test_real_30fps_clip_duration():
    path = SHARED / "clips" / "KristiNoem_30fps.mp4"
    info = probe(path)
    assert info.fps == 30.0
    n = sum(1 for _ in read_frames(path, max_frames=None))
    assert abs(n - info.duration * 25) <= 1
