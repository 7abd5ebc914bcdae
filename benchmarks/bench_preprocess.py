"""Throughput of each preprocessing stage (frames/s) on one video.

Example:
    python benchmarks/bench_preprocess.py ../shared/data/hdtf/RD_Radio34_000.mp4 --frames 200
Without a video argument a synthetic 512x512 clip is made. Machines are shared and noisy:
compare the numbers of one run as ratios.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ldm.data.layout import FPS, SAMPLE_RATE
from ldm.preprocessing.audio_features import extract_features, frame_windows, smooth_windows
from ldm.preprocessing.crop import crop_frame, fill_gaps, plan_crop
from ldm.preprocessing.landmarks import make_landmarker
from ldm.preprocessing.synthetic import make_face_video
from ldm.video import load_audio, read_frames

log = logging.getLogger("bench_preprocess")


def timed(fn, *args, **kw):
    """(result, seconds) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def bench(video: Path, n_frames: int, kinds: list[str]) -> dict[str, float]:
    """Frames per second of decode, landmark tracking, crop+JPEG and each audio feature kind."""
    rates = {}
    frames, dt = timed(read_frames, video, FPS, n_frames)
    rates["decode 25 fps"] = len(frames) / dt
    lm = make_landmarker("dlib")
    lms, dt = timed(lm.track, frames)
    rates["landmarks (dlib, tracked)"] = len(frames) / dt
    _, dt = timed(lambda: [lm.detect(f) for f in frames[:25]])
    rates["landmarks (dlib, detect every frame)"] = min(25, len(frames)) / dt
    filled, _, _ = fill_gaps(lms, 12)
    boxes = plan_crop(filled, frames.shape[2], frames.shape[1])
    with tempfile.TemporaryDirectory() as tmp:
        params = [cv2.IMWRITE_JPEG_QUALITY, 95]
        t = time.perf_counter()
        for i, (f, b) in enumerate(zip(frames, boxes, strict=True)):
            cv2.imwrite(f"{tmp}/{i}.jpg", crop_frame(f, b, 256)[..., ::-1], params)
        rates["crop + 256 px JPEG"] = len(frames) / (time.perf_counter() - t)
    wav = load_audio(video)[: int(len(frames) / FPS * SAMPLE_RATE)]
    for kind in kinds:
        extract_features(wav[:SAMPLE_RATE], SAMPLE_RATE, kind=kind)  # warm-up (imports, model load)
        feats, dt = timed(extract_features, wav, SAMPLE_RATE, kind=kind)
        smooth_windows(frame_windows(feats, len(frames)))
        rates[f"audio {kind} ({feats.shape[1]}-d)"] = len(frames) / dt
    return rates


def main(argv: list[str] | None = None) -> int:
    """Print frames/s per stage."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("video", nargs="?")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--audio", nargs="+", default=["logmel", "whisper"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        video = (
            Path(args.video)
            if args.video
            else make_face_video(
                Path(tmp) / "bench.mp4",
                seconds=args.frames / 25,
                width=512,
                height=512,
                face_px=200,
            )
        )
        rates = bench(video, args.frames, args.audio)
    log.info("%s, %d frames", video, args.frames)
    for stage, fps in rates.items():
        log.info("  %-40s %8.1f frames/s", stage, fps)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
