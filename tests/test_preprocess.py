"""End-to-end preprocessing: CLI on synthetic and real videos, bad inputs, reruns, checks."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ldm.preprocessing import pipeline
from ldm.preprocessing.audio_features import frame_windows, smooth_windows
from ldm.preprocessing.check import check_dataset
from ldm.preprocessing.dataset import ClipMeta, read_registry
from ldm.preprocessing.landmarks import make_landmarker
from ldm.preprocessing.pipeline import PreprocessOptions, process_video
from ldm.preprocessing.synthetic import encode, face_frames, make_face_video, speech_like_audio

from conftest import ROOT, SHARED_DATA, load_script

SHARED = SHARED_DATA


preprocess_cli = load_script("preprocess")
check_cli = load_script("check_dataset")

GOOD = {"good_30fps.mp4": 2.0, "good.webm": 1.6, "two_faces.mp4": 1.2}


class Records(logging.Handler):
    """Collects log records (module-scoped fixtures cannot use caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, level: int) -> str:
        return "\n".join(r.getMessage() for r in self.records if r.levelno >= level)


def _run_cli(argv: list[str]) -> tuple[int, Records]:
    handler = Records()
    logging.getLogger().addHandler(handler)
    try:
        return preprocess_cli.main(argv), handler
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    small = dict(width=200, height=160, face_px=70)
    make_face_video(d / "good_30fps.mp4", seconds=2.0, fps=30, **small)
    make_face_video(d / "good.webm", seconds=1.6, **small)
    make_face_video(d / "two_faces.mp4", seconds=1.2, faces=2, width=320, height=200, face_px=70)
    make_face_video(d / "silent.mov", seconds=1.0, audio=False, **small)
    make_face_video(d / "noface.mp4", seconds=1.0, faces=0, **small)
    (d / "empty.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(os.urandom(4000))
    return d


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    """One CLI run over good and bad inputs: (dataset root, exit code, log records)."""
    root = tmp_path_factory.mktemp("ds") / "HDTF"
    names = [
        "good_30fps.mp4",
        "empty.mp4",
        "good.webm",
        "corrupt.mp4",
        "silent.mov",
        "noface.mp4",
        "two_faces.mp4",
    ]
    code, logs = _run_cli([str(inputs / n) for n in names] + ["--out", str(root)])
    return root, code, logs


def _ids(root: Path) -> dict[str, int]:
    return {Path(e.source).name: e.id for e in read_registry(root).values()}


def test_bad_inputs_fail_cleanly_while_good_ones_finish(built, inputs):
    root, code, logs = built
    assert code == 1
    errors = logs.text(logging.ERROR)
    for name, cause in [
        ("empty.mp4", "empty"),
        ("corrupt.mp4", "not a readable media file"),
        ("silent.mov", "no audio track"),
        ("noface.mp4", "no face"),
    ]:
        assert any(str(inputs / name) in ln and cause in ln for ln in errors.splitlines()), name
    assert any(
        "two_faces.mp4" in ln and "more than one face" in ln
        for ln in logs.text(logging.WARNING).splitlines()
    )
    # ids in argument order, failures take none
    assert _ids(root) == {"good_30fps.mp4": 1, "good.webm": 2, "two_faces.mp4": 3}
    assert not (root / ".tmp").exists()


def test_layout_counts_and_shapes(built):
    root, _, _ = built
    lines = (root / "data.txt").read_text().splitlines()
    assert len(lines) == 3
    for name, vid in _ids(root).items():
        n = int(lines[vid - 1].split()[1])
        assert lines[vid - 1].split()[0] == str(vid)
        assert abs(n - GOOD[name] * 25) <= 1
        assert len(list((root / "images").glob(f"{vid}_*.jpg"))) == n
        for f in (1, n):
            img = cv2.imread(str(root / "images" / f"{vid}_{f}.jpg"))
            assert img.shape == (256, 256, 3)
            assert np.loadtxt(root / "landmarks" / f"{vid}_{f}.lms").shape == (68, 2)
            arr = np.load(root / "audio_smooth" / f"{vid}_{f}.npy")
            assert arr.shape == (8, 16, 29) and arr.dtype == np.float32
        assert not (root / "images" / f"{vid}_0.jpg").exists()
        assert not (root / "images" / f"{vid}_{n + 1}.jpg").exists()
        meta = ClipMeta.load(root / "crops" / f"{vid}.json")
        assert (
            meta.n_frames == n and len(meta.box) == 3 and (root / "audio" / f"{vid}.wav").exists()
        )


def test_lists_split_by_video(built):
    root, _, _ = built
    train = (root.parent / "data_train.txt").read_text().split()
    test = (root.parent / "data_test.txt").read_text().split()
    assert {k.split("_")[0] for k in test} == {"3"}  # highest id goes to test
    assert {k.split("_")[0] for k in train} == {"1", "2"}
    for key in train + test:
        assert (root / "images" / f"{key}.jpg").is_file()
    assert check_dataset(root, [root.parent / "data_train.txt", root.parent / "data_test.txt"]).ok


def test_saved_landmarks_match_a_fresh_detection_on_the_saved_frame(built):
    root, _, _ = built
    lm = make_landmarker()
    for vid in (1, 2, 3):
        for f in (1, 10):
            img = cv2.imread(str(root / "images" / f"{vid}_{f}.jpg"))[..., ::-1]
            saved = np.loadtxt(root / "landmarks" / f"{vid}_{f}.lms")
            mouth = saved[48:68]
            assert (mouth >= 0).all() and (mouth < 256).all()
            fresh = lm.detect(img)
            assert fresh is not None
            assert np.abs(fresh - saved).mean() < 4.0, (vid, f)


def test_audio_windows_follow_the_speech_envelope(built):
    root, _, _ = built
    vid = _ids(root)["good.webm"]
    feats = np.load(root / "features" / f"{vid}.npy")
    n = len(list((root / "audio_smooth").glob(f"{vid}_*.npy")))
    expect = smooth_windows(frame_windows(feats, n))
    for f in (1, n // 2, n):
        np.testing.assert_array_equal(
            np.load(root / "audio_smooth" / f"{vid}_{f}.npy"), expect[f - 1]
        )
    # the middle rows of frame f's own window (index 4 of 8) describe time f/25 s: their
    # loudness follows the synthetic voice envelope best at zero lag
    own = np.array(
        [np.load(root / "audio_smooth" / f"{vid}_{f}.npy")[4, 7:9].mean() for f in range(1, n + 1)]
    )
    phase = np.random.default_rng(0).uniform(0, 6)  # as in speech_like_audio(seed=0)

    def lagged_corr(lag: int) -> float:
        t = (np.arange(n) + lag) / 25.0
        env = np.clip(np.sin(2 * np.pi * 3.0 * t + phase), 0, None) ** 2
        return np.corrcoef(own, np.log(env + 1e-3))[0, 1]

    corrs = {lag: lagged_corr(lag) for lag in range(-3, 4)}
    assert max(corrs, key=corrs.get) == 0 and corrs[0] > 0.8, corrs


def test_rerun_is_a_noop(built, inputs):
    root, _, _ = built
    files = sorted(p for p in root.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    code, logs = _run_cli([str(inputs / n) for n in GOOD] + ["--out", str(root)])
    assert code == 0
    assert "3 already done" in logs.text(logging.INFO)
    after = {p: p.stat().st_mtime_ns for p in sorted(q for q in root.rglob("*") if q.is_file())}
    assert after == before


def test_parallel_workers_give_the_same_dataset(built, inputs, tmp_path):
    root, _, _ = built
    other = tmp_path / "HDTF"
    code, _ = _run_cli([str(inputs / n) for n in GOOD] + ["--out", str(other), "--workers", "2"])
    assert code == 0
    assert _ids(other) == _ids(root)
    for vid in (1, 2, 3):
        for f in (1, 5):
            a = (root / "landmarks" / f"{vid}_{f}.lms").read_text()
            assert a == (other / "landmarks" / f"{vid}_{f}.lms").read_text()


@pytest.mark.slow
def test_killed_run_leaves_no_half_video_and_resumes(inputs, tmp_path):
    video = make_face_video(tmp_path / "long.mp4", seconds=6.0, width=200, height=160, face_px=70)
    root = tmp_path / "HDTF"
    cmd = [sys.executable, str(ROOT / "scripts" / "preprocess.py"), str(video), "--out", str(root)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(root.glob(".tmp/*/images/*.jpg")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(root.glob(".tmp/*/images/*.jpg")), "the run finished before it could be killed"
    assert not list(root.glob("images/*")) and not list(root.glob("crops/*"))
    code, _ = _run_cli([str(video), "--out", str(root)])
    assert code == 0 and len(list(root.glob("images/1_*.jpg"))) == 150
    assert not (root / ".tmp").exists()


def test_failure_midway_writes_nothing(inputs, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline, "_write_audio", boom)
    root = tmp_path / "HDTF"
    code, logs = _run_cli([str(inputs / "good.webm"), "--out", str(root)])
    assert code == 1 and "disk on fire" in logs.text(logging.ERROR)
    assert not [p for p in root.rglob("*") if p.is_file() and p.suffix in (".jpg", ".lms", ".npy")]


def test_start_id_and_id_map_follow_the_original_numbering(inputs, tmp_path):
    root = tmp_path / "HDTF"
    idmap = tmp_path / "ids.tsv"
    idmap.write_text(f"105\t{inputs / 'good.webm'}\n")
    argv = [
        str(inputs / "good_30fps.mp4"),
        str(inputs / "good.webm"),
        "--out",
        str(root),
        "--start-id",
        "100",
        "--id-map",
        str(idmap),
        "--test-ids",
        "105",
    ]
    assert _run_cli(argv)[0] == 0
    assert _ids(root) == {"good_30fps.mp4": 100, "good.webm": 105}
    lines = (root / "data.txt").read_text().splitlines()
    assert len(lines) == 105 and lines[0] == "1 0" and lines[99] == "100 50"
    assert (root.parent / "data_test.txt").read_text().split()[0] == "105_1"
    assert (root / "images" / "105_1.jpg").is_file()  # the original inference's reference key
    assert _run_cli(["--lists-only", "--out", str(root), "--test-videos", "good_30fps"])[0] == 0
    assert (root.parent / "data_test.txt").read_text().split()[0] == "100_1"


def test_missing_models_fail_fast_with_instructions(inputs, tmp_path):
    root = tmp_path / "HDTF"
    code, logs = _run_cli(
        [
            str(inputs / "good.webm"),
            "--out",
            str(root),
            "--audio-features",
            "hubert",
            "--audio-model",
            str(tmp_path),
        ]
    )
    assert code == 2 and "config.json" in logs.text(logging.ERROR)
    code, logs = _run_cli(
        [
            str(inputs / "good.webm"),
            "--out",
            str(root),
            "--landmarker",
            "fan",
            "--fan-model-dir",
            str(tmp_path),
        ]
    )
    assert code == 2 and "face-alignment" in logs.text(logging.ERROR)
    assert not root.exists()


def test_process_video_for_a_portrait_without_audio(inputs, tmp_path):
    result = process_video(
        inputs / "silent.mov",
        tmp_path,
        7,
        PreprocessOptions(audio_features=None, crop_mode="track", progress=False),
    )
    meta = ClipMeta.load(tmp_path / "crops" / "7.json")
    assert result.n_frames == meta.n_frames == 25 and meta.source_size == (200, 160)
    assert meta.boxes is not None and len(meta.box_for(25)) == 3
    assert not list(tmp_path.glob("audio_smooth/*"))
    assert len(list(tmp_path.glob("images/7_*.jpg"))) == 25


def test_faceless_gaps_are_filled_or_left_out_of_the_lists(tmp_path):
    frames = face_frames(100, 200, 160, face_px=70)
    frames[20:24] = frames[0, :, :1]  # 4 frames without a face: interpolated
    frames[40:55] = frames[0, :, :1]  # 15 frames (> --max-gap 12): kept, not listed
    video = encode(tmp_path / "gaps.mp4", frames, audio=speech_like_audio(4.0))
    code, logs = _run_cli([str(video), "--out", str(tmp_path / "HDTF"), "--test-fraction", "0"])
    assert code == 0 and "frames 41-55" in logs.text(logging.WARNING)
    meta = ClipMeta.load(tmp_path / "HDTF" / "crops" / "1.json")
    assert meta.n_frames == 100 and meta.invalid_frames == [[41, 55]]
    keys = set((tmp_path / "data_train.txt").read_text().split())
    assert len(keys) == 85 and "1_40" in keys and "1_41" not in keys and "1_56" in keys
    lms = np.stack(
        [np.loadtxt(tmp_path / "HDTF" / "landmarks" / f"1_{f}.lms") for f in range(19, 27)]
    )
    assert np.isfinite(lms).all()
    nose = lms[:, 30]
    assert np.abs(np.diff(nose, axis=0)).max() < 5  # smooth through the short gap


def test_portrait_1080x1920_with_a_small_face(tmp_path):
    video = make_face_video(tmp_path / "p.mp4", seconds=1.0, width=1080, height=1920, face_px=150)
    result = process_video(video, tmp_path / "HDTF", 1, PreprocessOptions(progress=False))
    x0, y0, side = result.meta.box
    assert result.n_frames == 25 and 250 < side < 400  # the crop holds the face, not the frame
    assert 300 < x0 + side / 2 < 780 and 760 < y0 + side / 2 < 1160
    mouth = np.loadtxt(tmp_path / "HDTF" / "landmarks" / "1_13.lms")[48:68]
    assert (mouth > 64).all() and (mouth < 224).all()


def test_deepspeech_arrays_are_imported(inputs, tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((81, 29)).astype(np.float32)  # 1.6 s at 50 Hz
    (tmp_path / "ds").mkdir()
    np.save(tmp_path / "ds" / "good.npy", frame_windows(logits, 41))  # AD-NeRF aud.npy layout
    opts = PreprocessOptions(
        audio_features="deepspeech", features_dir=str(tmp_path / "ds"), progress=False
    )
    result = process_video(inputs / "good.webm", tmp_path / "HDTF", 1, opts)
    n = result.n_frames
    expect = smooth_windows(frame_windows(logits, n))
    got = np.load(tmp_path / "HDTF" / "audio_smooth" / f"1_{n // 2}.npy")
    np.testing.assert_array_equal(got, expect[n // 2 - 1])


def test_check_dataset_reports_problems(built, tmp_path):
    src, _, _ = built
    root = tmp_path / "HDTF"
    shutil.copytree(src, root)
    for name in ("data_train.txt", "data_test.txt"):
        shutil.copy(src.parent / name, tmp_path / name)
    assert check_cli.main([str(root)]) == 0
    (root / "images" / "1_7.jpg").unlink()
    np.savetxt(root / "landmarks" / "2_3.lms", np.zeros((68, 2)) - 100)
    np.save(root / "audio_smooth" / "2_4.npy", np.zeros((16, 29), np.float32))
    with open(tmp_path / "data_test.txt", "a") as fh:
        fh.write("3_999\n1_1\n")
    report = check_dataset(root, [tmp_path / "data_train.txt", tmp_path / "data_test.txt"])
    text = "\n".join(report.errors)
    assert "id 1: 1 of 50 images files missing" in text
    assert "2_3.lms" in text and "2_4.npy: shape (16, 29)" in text
    assert "3_999" in text and "share ids [1]" in text
    assert check_cli.main([str(root)]) == 1
