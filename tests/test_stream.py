"""Streaming renders: source frames by index, chunk resume after a kill (-9), identical results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from subprocess import DEVNULL

import numpy as np
import pytest
import soundfile as sf

from ldm.inference import render as render_mod
from ldm.inference.clip import frame_indices
from ldm.inference.source import SourceFrames
from ldm.inference.stream import ChunkStore, chunk_dir, write_image
from ldm.preprocessing import synthetic
from ldm.video import VideoEncoder, VideoError, read_frames

from conftest import ROOT, load_script, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")
INFERENCE = load_script("inference")


class Killed(Exception):
    """Stands for a kill -9 in the middle of a render."""


def test_source_frames_in_pingpong_order_match_a_full_read(tmp_path):
    video = synthetic.make_face_video(tmp_path / "portrait.mp4", seconds=1.0)  # 25 frames
    full = read_frames(video)
    source = SourceFrames(video, len(full), 25.0, window=4)
    for k in frame_indices(len(full), 70, "pingpong"):  # forward, back, forward again
        assert np.array_equal(source[int(k)], full[k])
    assert len(source._frames) <= 4
    with pytest.raises(VideoError, match="preprocessing found 30"):
        SourceFrames(video, 30, 25.0, window=4)[27]


def test_chunks_of_another_render_are_not_reused(tmp_path):
    out = tmp_path / "a.mp4"
    store = ChunkStore([out], chunk_dir(out), {"seed": 1}, 25.0, chunk_frames=2)
    with VideoEncoder(store.segment(0, 0)) as enc:
        enc.write(np.zeros((8, 8, 3), np.uint8))
    store.commit(0, np.zeros((4, 4, 3), np.float32))
    assert ChunkStore([out], chunk_dir(out), {"seed": 1}, 25.0, chunk_frames=2).done == 1
    assert ChunkStore([out], chunk_dir(out), {"seed": 2}, 25.0, chunk_frames=2).done == 0
    assert not store.segment(0, 0).exists()


def portrait_argv(tiny, tmp_path, out, speech: float = 1.2) -> list[str]:
    video = tmp_path / "portrait.mp4"
    if not video.exists():
        synthetic.make_face_video(video, seconds=0.6)  # 15 frames for 30: a ping-pong
        sf.write(tmp_path / "speech.wav", synthetic.speech_like_audio(speech), 16000)
    args = ["--ckpt", tiny["ckpt"], "--config", tiny["config"], "--video", video]
    args += ["--audio", tmp_path / "speech.wav", "--out", out, "--chunk-frames", "8"]
    args += ["--steps", "4", "--eta", "0.5", "--reference", "progressive", "--seed", "5"]
    return [str(a) for a in args]


@pytest.mark.slow
def test_killed_render_resumes_and_matches_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    whole, resumed = tmp_path / "whole.mp4", tmp_path / "resumed.mp4"
    assert INFERENCE.main(portrait_argv(tiny, tmp_path, whole)) == 0
    write = VideoEncoder.write
    calls = {"n": 0}

    def dies_at_frame_20(self, frame):
        calls["n"] += 1
        if calls["n"] == 20:  # in the middle of the third chunk (frames 16..23)
            raise Killed
        write(self, frame)

    monkeypatch.setattr(VideoEncoder, "write", dies_at_frame_20)
    with pytest.raises(Killed):
        INFERENCE.main(portrait_argv(tiny, tmp_path, resumed))
    monkeypatch.setattr(VideoEncoder, "write", write)
    assert not resumed.exists()  # no mp4 before every chunk is done
    progress = json.loads((chunk_dir(resumed) / "progress.json").read_text())
    assert progress["done"] == 2

    starts = []
    frames = render_mod.Renderer.frames

    def recording(self, items, reference, start=0, stop=None):
        starts.append(start)
        return frames(self, items, reference, start, stop)

    monkeypatch.setattr(render_mod.Renderer, "frames", recording)
    assert INFERENCE.main(portrait_argv(tiny, tmp_path, resumed)) == 0
    assert starts == [16, 24]  # only the chunks that were not finished
    a, b = read_frames(whole, fps=None), read_frames(resumed, fps=None)
    assert len(a) == 30 and np.array_equal(a, b)
    assert not chunk_dir(resumed).exists()


def start_inference(argv: list[str]) -> subprocess.Popen:
    """scripts/inference.py in its own process, one thread, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "scripts" / "inference.py"), *argv]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_render_killed_by_sigkill_resumes_and_matches_an_uninterrupted_run(tiny, tmp_path):
    """A real kill -9 of scripts/inference.py after two finished chunks of 8: no mp4 is left,
    and the rerun gives the frames of a run that was never interrupted (each run is its own
    process, as a user's are)."""
    whole, resumed = tmp_path / "whole.mp4", tmp_path / "resumed.mp4"
    argv = portrait_argv(tiny, tmp_path, resumed, speech=2.4)  # 60 frames, chunks of 8
    first = start_inference(portrait_argv(tiny, tmp_path, whole))
    assert first.communicate() and first.returncode == 0
    progress = chunk_dir(resumed) / "progress.json"

    def chunks_done() -> int:
        try:
            return int(json.loads(progress.read_text())["done"])
        except (OSError, ValueError, KeyError):
            return 0

    proc = start_inference(argv)
    wait_for(lambda: chunks_done() >= 2, proc, "two finished chunks", poll=0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = chunks_done()
    assert not resumed.exists() and 2 <= killed_at < 8
    rerun = start_inference(argv)
    log = rerun.communicate()[1].decode()
    assert rerun.returncode == 0 and f"resuming after {killed_at} finished chunk" in log, log
    a, b = read_frames(whole, fps=None), read_frames(resumed, fps=None)
    assert len(a) == 60 and np.array_equal(a, b)
    assert not chunk_dir(resumed).exists()


def test_split_mode_resumes_per_clip(tiny, tmp_path, monkeypatch):
    argv = ["--ckpt", tiny["ckpt"], "--config", tiny["config"], "--root", tiny["data"]]
    argv += ["--split", tiny["root"] / "data_test.txt", "--steps", "4", "--chunk-frames", "3"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert INFERENCE.main([str(a) for a in [*argv, "--outdir", whole]]) == 0
    commit = ChunkStore.commit

    def dies_after_chunk_1(self, k, reference):
        if k == 1:
            raise Killed
        commit(self, k, reference)

    monkeypatch.setattr(ChunkStore, "commit", dies_after_chunk_1)
    with pytest.raises(Killed):
        INFERENCE.main([str(a) for a in [*argv, "--outdir", resumed]])
    monkeypatch.setattr(ChunkStore, "commit", commit)
    assert not (resumed / "2.mp4").exists() and not (resumed / "2_side_by_side.mp4").exists()
    assert INFERENCE.main([str(a) for a in [*argv, "--outdir", resumed]]) == 0
    for name in ("2.mp4", "2_truth.mp4", "2_side_by_side.mp4"):
        a, b = read_frames(whole / name, fps=None), read_frames(resumed / name, fps=None)
        assert len(a) == 8 and np.array_equal(a, b)


def test_encoder_failure_names_the_file_and_leaves_nothing(tmp_path):
    out = tmp_path / "bad.mp4"
    with pytest.raises(VideoError, match=r"bad\.mp4: frame 1 is"), VideoEncoder(out) as enc:
        enc.write(np.zeros((8, 8, 3), np.uint8))
        enc.write(np.zeros((8, 10, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_evaluation_read_frame_by_frame_equals_in_memory(tmp_path):
    from ldm.evaluation.clips import ClipFrames, read_clip
    from ldm.evaluation.evaluate import Scorers, evaluate_clip
    from ldm.preprocessing.pipeline import cached_landmarker

    video = synthetic.make_face_video(tmp_path / "truth.mp4", seconds=1.2)  # 30 frames
    folder = tmp_path / "pred"
    for k, frame in enumerate(read_clip(video)[::-1], 1):  # reversed time, as images
        write_image(folder / f"{k}.png", frame)
    scorers = Scorers(cached_landmarker("dlib"))
    kw = dict(baselines=True, shift=10)
    streamed = evaluate_clip(ClipFrames(folder), ClipFrames(video), scorers, **kw)
    in_memory = evaluate_clip(read_clip(folder), read_clip(video), scorers, **kw)
    assert [r.key for r in streamed.rows] == [r.key for r in in_memory.rows]
    assert len(streamed.rows) == 5 and streamed.n_frames == 30
    for a, b in zip(streamed.rows, in_memory.rows, strict=True):
        assert a.per_frame.keys() == b.per_frame.keys()
        for key in a.per_frame:
            np.testing.assert_array_equal(a.per_frame[key], b.per_frame[key])
    shifted = {r.key: r for r in streamed.rows}["shifted_truth"].per_frame["mse"]
    assert np.isfinite(shifted).all() and (shifted > 0).all()
