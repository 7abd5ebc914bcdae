"""Peak RSS and seconds per frame of long renders: 30 s and 4 min of speech over a 1080x1920
portrait (scripts/inference.py) and over a dataset clip as long (inference.sh), and the ratio of
the peak RSS of the longest to the shortest.

    python benchmarks/bench_long.py [--seconds 30 240] [--modes cli sh] [--steps 2]

The model is the small config with random weights, built here (rendering cost does not depend on
the weights), by default shrunk to 64 px frames so that minutes of speech render in minutes on a
2-core CPU; --frame 128 keeps its own size. The portrait is a 2 s synthetic 1080x1920 video, so
longer speech ping-pongs over it. Every render runs in its own process, started from a small
launcher; its peak RSS is the kernel's ru_maxrss of the launcher's children, i.e. of the largest
of the rendering Python process and its ffmpeg encoders. The sh mode runs inference.sh, which
sets up .venv on first use (scripts/setup_env.sh).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from omegaconf import OmegaConf

from ldm.config import load_config
from ldm.data.layout import FPS, SAMPLE_RATE
from ldm.inference.clip import driving_audio
from ldm.preprocessing import synthetic
from ldm.preprocessing.pipeline import PreprocessOptions, process_video
from ldm.util import instantiate_from_config

logger = logging.getLogger("bench_long")
ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "configs/latent-diffusion/talking-small.yaml"
PORTRAIT = (1080, 1920, 2.0)  # width, height, seconds
CLIP_ID = 1


def build_model(work: Path, frame: int) -> tuple[Path, Path]:
    """The small config at ``frame`` px frames with random weights, saved as a checkpoint and
    its config."""
    cfg = load_config([str(SMALL)])
    cfg.model.params.first_stage_config.params.ckpt_path = None
    latent = frame // 4  # the f4 first stage
    cfg.model.params.image_size = cfg.model.params.unet_config.params.image_size = latent
    cfg.model.params.first_stage_config.params.ddconfig.resolution = frame
    for split in ("train", "validation"):
        cfg.data.params[split].params.size = frame
    torch.manual_seed(0)
    model = instantiate_from_config(cfg.model)
    ckpt, config = work / "model.ckpt", work / "model.yaml"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    OmegaConf.save(cfg, config)
    return ckpt, config


def make_speech(work: Path, seconds: float) -> Path:
    """Speech-like 16 kHz audio of ``seconds``."""
    path = work / f"speech_{seconds:g}s.wav"
    sf.write(path, synthetic.speech_like_audio(seconds), SAMPLE_RATE)
    return path


def make_split(work: Path, speech: Path, size: int, portrait: Path) -> Path:
    """A dataset clip as long as ``speech``: the preprocessed portrait's frames repeated, the
    speech's audio windows; returns its split list (the root is its folder's HDTF/)."""
    root = work / f"data_{speech.stem}" / "HDTF"
    opts = PreprocessOptions(size=size, audio_features=None, progress=False)
    meta = process_video(portrait, root, CLIP_ID, opts).meta
    windows = driving_audio(sf.read(speech, dtype="float32")[0])
    (root / "audio").mkdir(exist_ok=True)
    os.link(speech, root / "audio" / f"{CLIP_ID}.wav")
    (root / "audio_smooth").mkdir(exist_ok=True)
    for frame in range(1, len(windows) + 1):
        src = (frame - 1) % meta.n_frames + 1
        for sub, ext in (("images", "jpg"), ("landmarks", "lms")):
            link = root / sub / f"{CLIP_ID}_{frame}.{ext}"
            if frame != src:
                os.link(root / sub / f"{CLIP_ID}_{src}.{ext}", link)
        np.save(root / "audio_smooth" / f"{CLIP_ID}_{frame}.npy", windows[frame - 1])
    (root / "data.txt").write_text(f"{CLIP_ID} {len(windows)}\n")
    split = root.parent / "split.txt"
    split.write_text("".join(f"{CLIP_ID}_{f}\n" for f in range(1, len(windows) + 1)))
    return split


# Run a command and print its peak RSS. A child forked from this (large) process would start
# with this process's high-water mark; one forked from this small launcher starts clean.
LAUNCHER = (
    "import resource, subprocess, sys; "
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a command run to completion."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd], cwd=ROOT, env=env, capture_output=True, text=True
    )
    code, maxrss_kb = (int(v) for v in out.stdout.split())
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {code}: {out.stderr[-2000:]}")
    return time.perf_counter() - start, maxrss_kb / 1024


def commands(mode: str, work: Path, speech: Path, model: tuple[Path, Path], args) -> list[str]:
    """The command line of one render: the CLI on the portrait, or inference.sh on a split."""
    ckpt, config = model
    sampling = ["--sampler", "dpm", "--steps", str(args.steps)]
    if mode == "cli":
        out = work / f"{speech.stem}.mp4"
        portrait = ["--video", work / "portrait.mp4", "--audio", speech, "--out", out]
        return [sys.executable, "scripts/inference.py", "--ckpt", ckpt, "--config", config,
                *portrait, *sampling]  # fmt: skip
    size = OmegaConf.load(config).data.params.validation.params.size
    split = make_split(work, speech, size, work / "portrait.mp4")
    out = work / f"out_{speech.stem}"
    return ["sh", "inference.sh", ckpt, config, split, out, "--", "--root", split.parent / "HDTF",
            *sampling]  # fmt: skip


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, nargs="+", default=[30.0, 240.0])
    p.add_argument("--modes", nargs="+", choices=("cli", "sh"), default=["cli", "sh"])
    p.add_argument("--steps", type=int, default=2, help="DPM-Solver steps per frame")
    p.add_argument("--frame", type=int, default=64, help="model frame side (small config: 128)")
    p.add_argument("--workdir", type=Path, help="keep the inputs and results here")
    return p.parse_args()


def main() -> None:
    """Render each length in each mode; log RSS, seconds per frame and the RSS ratio."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-long-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_model(work, args.frame)
        w, h, seconds = PORTRAIT
        synthetic.make_face_video(work / "portrait.mp4", seconds, width=w, height=h, face_px=400)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code
        for mode in args.modes:
            runs = []  # (frames, wall seconds, peak RSS MB)
            for length in args.seconds:
                speech = make_speech(work, length)
                cmd = [str(c) for c in commands(mode, work, speech, model, args)]
                wall, rss = measure(cmd, env)
                runs.append((int(length * FPS), wall, rss))
                logger.info("%-3s %6.0f s speech: %5d frames, peak RSS %7.0f MB, %.3f s/frame",
                            mode, length, runs[-1][0], rss, wall / runs[-1][0])  # fmt: skip
            (n0, t0, r0), (n1, t1, r1) = runs[0], runs[-1]
            logger.info("%s: peak RSS %g s / %g s = %.3f; %.3f s per extra frame (startup "
                        "excluded)", mode, args.seconds[-1], args.seconds[0], r1 / r0,
                        (t1 - t0) / max(1, n1 - n0))  # fmt: skip


if __name__ == "__main__":
    main()
