"""scripts/download_hdtf.py: HDTF's annotation formats, and yt-dlp downloading a served mp4
through its generic extractor, cut at the annotated times into clips with audio."""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from ldm.download.hdtf import AnnotationError, Crop, load_annotations, parse_time
from ldm.preprocessing import synthetic
from ldm.video import load_audio, probe, read_frames

from conftest import FileServer, load_script

dh = load_script("download_hdtf")

FPS, SECONDS, SR = 25, 4, 16000
BARS = 7  # frame i shows the bits of i as 7 black/white bars


def numbered_frames(n: int, size: int = 56) -> np.ndarray:
    """(n, size, size, 3) frames whose bars spell the frame index in binary."""
    frames = np.zeros((n, size, size, 3), np.uint8)
    w = size // BARS
    for i in range(n):
        for b in range(BARS):
            if (i >> b) & 1:
                frames[i, :, b * w : (b + 1) * w] = 255
    return frames


def frame_numbers(frames: np.ndarray) -> list[int]:
    """Indices read back from numbered frames."""
    w = frames.shape[2] // BARS
    bars = frames[:, 8:-8, :, :].mean((1, 3))  # (T, W)
    return [
        sum(1 << b for b in range(BARS) if row[b * w + 2 : (b + 1) * w - 2].mean() > 128)
        for row in bars
    ]


@pytest.fixture
def hdtf(file_server: FileServer, tmp_path: Path) -> dict:
    """A served 4 s numbered clip with audio and an RD annotation folder listing it (two clips)
    and a second video whose URL is gone."""
    audio = synthetic.speech_like_audio(SECONDS, SR)
    synthetic.encode(file_server.folder / "radio1.mp4", numbered_frames(FPS * SECONDS), FPS, audio)
    ann = tmp_path / "HDTF_dataset"
    ann.mkdir()
    files = {
        "RD_video_url.txt": f"Radio1 {file_server.url('radio1.mp4')}\n"
        f"Radio2 {file_server.url('removed.mp4')}\n",
        "RD_resolution.txt": "Radio1.mp4 56\nRadio2.mp4 720\n",
        "RD_annotion_time.txt": "Radio1.mp4 00:00-00:01 00:02-00:03 \nRadio2.mp4 00:01-00:02\n",
        "RD_crop_wh.txt": "Radio1_0.mp4 4 48 0 48\nRadio1_1.mp4 8 40 2 40\n",
        "RD_crop_ratio.txt": "Radio1_0.mp4 1.2\nRadio1_1.mp4 0.9\n",
    }
    for name, text in files.items():
        (ann / name).write_text(text)
    return {"ann": ann, "out": tmp_path / "raw", "audio": audio, "server": file_server}


def run(hdtf: dict, *extra: str) -> int:
    """download_hdtf's exit code on the fixture."""
    return dh.main(["--annotations", str(hdtf["ann"]), "--out", str(hdtf["out"]), *extra])


def test_clips_are_cut_at_the_annotated_frames_with_audio(hdtf: dict, caplog) -> None:
    caplog.set_level(logging.INFO)
    assert run(hdtf, "--subset", "RD", "--jobs", "2") == 0
    out = hdtf["out"]
    assert sorted(p.name for p in out.iterdir()) == ["Radio1_0.mp4", "Radio1_1.mp4", "manifest.csv"]
    for k, start in enumerate((0, 2)):
        clip = out / f"Radio1_{k}.mp4"
        assert frame_numbers(read_frames(clip)) == list(range(start * FPS, (start + 1) * FPS))
        info = probe(clip)
        assert info.has_audio and info.height == 56
        got = load_audio(clip, SR)
        want = hdtf["audio"][start * SR : (start + 1) * SR]
        assert abs(len(got) - SR) < SR // 20
        n = min(len(got), len(want))
        assert np.corrcoef(got[:n], want[:n])[0, 1] > 0.9  # the same second of sound, in sync
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["clip"] for r in rows] == ["Radio1_0.mp4", "Radio1_1.mp4"]
    assert [(r["start"], r["end"], r["frames"]) for r in rows] == [
        ("0.000", "1.000", "25"),
        ("2.000", "3.000", "25"),
    ]
    assert rows[1]["sha256"] == hashlib.sha256((out / "Radio1_1.mp4").read_bytes()).hexdigest()
    assert rows[0]["url"] == hdtf["server"].url("radio1.mp4")
    # the gone video is in the summary, not a crash
    assert "1 videos unavailable" in caplog.text
    assert "unavailable: RD/Radio2" in caplog.text and "404" in caplog.text


def test_rerun_skips_finished_clips_and_redoes_only_missing_ones(hdtf: dict) -> None:
    server, out = hdtf["server"], hdtf["out"]
    assert run(hdtf) == 0
    n_requests = len(server.requests)
    first = (out / "Radio1_0.mp4").stat().st_mtime_ns
    assert run(hdtf) == 0
    assert not any(r[1] == "radio1.mp4" for r in server.requests[n_requests:])  # nothing fetched
    (out / "Radio1_1.mp4").unlink()
    (out / ".Radio1_1.999.part.mp4").write_bytes(b"half a clip")  # left by a killed run
    assert run(hdtf) == 0
    assert (out / "Radio1_0.mp4").stat().st_mtime_ns == first
    assert frame_numbers(read_frames(out / "Radio1_1.mp4"))[0] == 2 * FPS
    with open(out / "manifest.csv", newline="") as fh:
        assert [r["clip"] for r in csv.DictReader(fh)] == ["Radio1_0.mp4", "Radio1_1.mp4"]


def test_an_unreadable_video_fails_alone_with_exit_code_1(hdtf: dict, caplog) -> None:
    (hdtf["server"].folder / "broken.mp4").write_bytes(b"\x00not a video" * 5000)
    with open(hdtf["ann"] / "RD_video_url.txt", "a") as fh:
        fh.write(f"Radio3 {hdtf['server'].url('broken.mp4')}\n")
    with open(hdtf["ann"] / "RD_annotion_time.txt", "a") as fh:
        fh.write("Radio3.mp4 00:00-00:01\n")
    assert run(hdtf) == 1
    assert "FAILED: RD/Radio3" in caplog.text and "not a readable media file" in caplog.text
    assert not (hdtf["out"] / "_raw").exists()  # the unreadable download is not kept
    assert sorted(p.name for p in hdtf["out"].glob("*.mp4")) == ["Radio1_0.mp4", "Radio1_1.mp4"]


def test_a_cut_connection_is_resumed_by_yt_dlp(hdtf: dict) -> None:
    server = hdtf["server"]
    server.cut["radio1.mp4"] = 2  # the extractor's probe and the download end halfway
    assert run(hdtf) == 0
    gets = [r for r in server.requests if r[:2] == ("GET", "radio1.mp4")]
    assert [r[2] for r in gets][:2] == [None, None]  # probe, download (both cut)
    assert any(r[2] and r[2] != "bytes=0-" for r in gets[2:]), gets  # resumed from an offset
    assert frame_numbers(read_frames(hdtf["out"] / "Radio1_1.mp4")) == list(range(50, 75))


def test_a_clip_without_a_manifest_row_is_listed_not_recut(hdtf: dict) -> None:
    out = hdtf["out"]
    assert run(hdtf) == 0
    (out / "manifest.csv").unlink()  # as if the run died between renaming a clip and the manifest
    n_requests = len(hdtf["server"].requests)
    assert run(hdtf) == 0
    assert not any(r[1] == "radio1.mp4" for r in hdtf["server"].requests[n_requests:])
    with open(out / "manifest.csv", newline="") as fh:
        assert [r["frames"] for r in csv.DictReader(fh)] == ["25", "25"]


def test_annotations_in_hdtf_formats(tmp_path: Path) -> None:
    (tmp_path / "WRA_video_url.txt").write_text("Kasich https://youtu.be/x\nNoTimes https://y\n")
    (tmp_path / "WRA_annotion_time.txt").write_text(
        "Kasich.mp4 00:20-01:12 01:55-02:40 \n\n"  # trailing space and blank line, as in HDTF
    )
    (tmp_path / "WRA_crop_wh.txt").write_text("Kasich_1.mp4 412 599 0 599\n")
    (videos,) = [load_annotations(tmp_path, ("WRA",))]
    assert len(videos) == 1  # a video without times is skipped
    v = videos[0]
    assert (v.name, v.height, v.intervals) == ("Kasich", None, [(20.0, 72.0), (115.0, 160.0)])
    assert v.crops == {1: Crop(412, 599, 0, 599)} and v.ratios == {}
    assert parse_time("1:02:03") == 3723.0 and parse_time("00:05.5") == 5.5


@pytest.mark.parametrize(
    "line, message",
    [
        ("Kasich.mp4 00:20-0x:12", r"WRA_annotion_time.txt:1: bad time stamps"),
        ("Kasich.mp4 01:20-00:12", r"WRA_annotion_time.txt:1: .*ends before it starts"),
        ("Kasich.mp4", r"WRA_annotion_time.txt:1: expected a name and 1\+ fields"),
    ],
)
def test_bad_annotation_lines_name_file_and_line(tmp_path: Path, line, message, caplog) -> None:
    (tmp_path / "WRA_video_url.txt").write_text("Kasich https://youtu.be/x\n")
    (tmp_path / "WRA_annotion_time.txt").write_text(line + "\n")
    with pytest.raises(AnnotationError, match=message):
        load_annotations(tmp_path, ("WRA",))
    code = dh.main(["--annotations", str(tmp_path), "--subset", "WRA", "--out", str(tmp_path)])
    assert code == 2 and "WRA_annotion_time.txt:1" in caplog.text


def test_missing_annotation_folder_is_a_clear_error(tmp_path: Path, caplog) -> None:
    assert dh.main(["--annotations", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "RD_video_url.txt: annotation file not found" in caplog.text
