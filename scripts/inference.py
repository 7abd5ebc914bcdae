"""Render DiffTalk videos with sound.

Drive any portrait with any speech (video or photo; audio in any format ffmpeg reads):
    python scripts/inference.py --video portrait.mp4 --audio speech.wav --out result.mp4 \\
        [--ckpt logs/run/checkpoints/last.ckpt]
Without --ckpt it uses the many-speaker model in models/many_speaker/ (`sh demo.sh --many`); a
checkpoint's config is found beside it (an exported config.yaml or the run's configs/). It
samples as the demo renders (DDIM 20 steps, eta 1, one initial noise for the clip) unless
--sampler, --steps, --eta or --no-shared-noise say otherwise.

Rendering streams chunk by chunk (--chunk-frames); a killed render run again with the same
arguments resumes after its last finished chunk, and the mp4 appears only when complete.

The paper protocol over a split list (what inference.sh runs): per clip, frames, an mp4 with the
clip's audio, the ground truth as an mp4 (for scripts/evaluate.py --gt) and side by side:
    python scripts/inference.py --ckpt last.ckpt --split data/data_test.txt --outdir logs/inference
It samples as the paper's protocol (DDIM 200 steps, eta 0, a new initial noise per frame).

Exit code 0 on success, 1 when an input or the checkpoint is unusable (the message says why; no
partial mp4 is left behind), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from ldm.config import load_config
from ldm.inference.bank import training_bank
from ldm.inference.checkpoint import (
    DEFAULT_CONFIG,
    CheckpointError,
    default_model,
    load_model,
    model_config,
)
from ldm.inference.clip import LOOP_MODES
from ldm.inference.portrait import PortraitJob, render_portrait
from ldm.inference.render import (
    PORTRAIT_ETA,
    PORTRAIT_SAMPLER,
    PORTRAIT_STEPS,
    REFERENCE_MODES,
    SAMPLERS,
    RenderOptions,
)
from ldm.inference.stream import CHUNK_FRAMES
from ldm.inference.testlist import SplitJob, render_split
from ldm.preprocessing.audio_features import FEATURE_KINDS
from ldm.preprocessing.dataset import parse_id_spec

log = logging.getLogger("inference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--ckpt",
        type=Path,
        help="DiffTalk checkpoint (Lightning .ckpt or an exported model.ckpt; portrait mode's "
        "default: models/many_speaker/model.ckpt)",
    )
    p.add_argument(
        "--config",
        nargs="+",
        help="YAMLs merged in order (default: portrait mode, the checkpoint's own: an exported "
        "folder's config.yaml or a run's configs/*-project.yaml; else the paper config with "
        "talking-inference.yaml)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g = p.add_argument_group("portrait mode")
    g.add_argument("--video", type=Path, help="portrait video to animate")
    g.add_argument("--image", type=Path, help="... or a single photo")
    g.add_argument("--audio", type=Path, help="driving speech (wav, mp3, m4a, flac, a video, ...)")
    g.add_argument("--out", type=Path, help="result .mp4")
    g.add_argument("--frames-dir", type=Path, help="also save the full-size frames as PNG here")
    g.add_argument("--loop", choices=LOOP_MODES, default="pingpong", help="when speech is longer")
    g.add_argument(
        "--audio-features",
        choices=FEATURE_KINDS,
        help="what the model was trained on (default: by its feature width, 29 log-mel, "
        "384 whisper)",
    )
    g.add_argument("--audio-model", help="local model folder for wav2vec2/hubert/whisper")
    g.add_argument("--landmarker", choices=("dlib", "fan"), default="dlib")
    g.add_argument("--crop", choices=("fixed", "track"), default="fixed")
    g.add_argument("--crop-scale", type=float, default=1.8)
    g = p.add_argument_group("test-list mode (the paper protocol)")
    g.add_argument("--split", type=Path, help="key list, e.g. data/data_test.txt")
    g.add_argument("--outdir", type=Path, default=Path("logs/inference"))
    g.add_argument("--root", type=Path, help="dataset root (default: the config's)")
    g.add_argument("--audio-id", type=int, help="drive every clip with this id's audio")
    g.add_argument("--ids", help="only these clip ids, e.g. 100-110,120")
    g.add_argument("--max-frames", type=int, help="at most N frames per clip")
    g.add_argument("--image-format", choices=("png", "jpg"), default="png")
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--sampler",
        choices=SAMPLERS,
        help=f"default: {PORTRAIT_SAMPLER} (portrait mode, as the demo renders), ddim (split mode)",
    )
    g.add_argument(
        "--steps",
        type=int,
        help=f"default: {PORTRAIT_STEPS} in portrait mode; split mode 200 (ddim), 20 (dpm)",
    )
    g.add_argument(
        "--eta",
        type=float,
        help="noise added at each step; default: portrait mode "
        + ", ".join(f"{e:g} ({s})" for s, e in PORTRAIT_ETA.items())
        + "; split mode 0",
    )
    g.add_argument("--reference", choices=REFERENCE_MODES, default="first")
    g.add_argument(
        "--reference-bank",
        help="with --reference bank: split list of training frames to borrow mouths from "
        "(default: the model's own, from its config)",
    )
    g.add_argument("--bank-root", default="data/HDTF", help="dataset of the bank's keys")
    g.add_argument(
        "--shared-noise",
        action=argparse.BooleanOptionalAction,
        help="one initial noise for all frames (default: on in portrait mode, off in split mode)",
    )
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--chunk-frames",
        type=int,
        default=CHUNK_FRAMES,
        help="frames per chunk: a killed render started again resumes after its last chunk",
    )
    g.add_argument(
        "--first-stage-only",
        action="store_true",
        help="no sampling: each frame through the first stage only (the model's ceiling)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    portrait = args.video is not None or args.image is not None
    if portrait == (args.split is not None):
        p.error("give either --video/--image (with --audio, --out) or --split")
    if args.video is not None and args.image is not None:
        p.error("--video and --image are exclusive")
    if portrait and (args.audio is None or args.out is None):
        p.error("portrait mode needs --audio and --out")
    if args.ckpt is None:
        args.ckpt = default_model() if portrait else None
        if args.ckpt is None:
            p.error("--ckpt is required (no many-speaker model in models/many_speaker/)")
    own = model_config(args.ckpt) if portrait else DEFAULT_CONFIG
    args.config = args.config or list(map(str, own))
    return sampling_defaults(args, portrait)


def sampling_defaults(args: argparse.Namespace, portrait: bool) -> argparse.Namespace:
    """The sampling options left unset: portrait mode renders as the demo does (DDIM 20, eta 1,
    one x_T for the clip), the split mode as the paper (DDIM 200, eta 0, a new x_T per frame)."""
    if portrait:
        args.sampler = args.sampler or PORTRAIT_SAMPLER
        args.steps = PORTRAIT_STEPS if args.steps is None else args.steps
        args.eta = PORTRAIT_ETA[args.sampler] if args.eta is None else args.eta
        args.shared_noise = True if args.shared_noise is None else args.shared_noise
    else:
        args.sampler = args.sampler or "ddim"
        args.eta = args.eta or 0.0
        args.shared_noise = bool(args.shared_noise)
    return args


def render_options(args: argparse.Namespace) -> RenderOptions:
    """RenderOptions from the command line."""
    return RenderOptions(
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        reference=args.reference,
        reference_bank=args.reference_bank,
        bank_root=args.bank_root,
        shared_noise=args.shared_noise,
        batch_size=args.batch_size,
        seed=args.seed,
        first_stage_only=args.first_stage_only,
        reference_speech=own_speech(args),
        progress=sys.stderr.isatty(),
    )


def own_speech(args: argparse.Namespace) -> bool:
    """Whether the driving speech is the portrait's own (the video drives itself) or, in split
    mode, each clip's own audio: then its reference frame's speech is known."""
    if args.split is not None:
        return args.audio_id is None
    return args.video is not None and args.video.resolve() == args.audio.resolve()


def run(args: argparse.Namespace) -> None:
    """Load the model and render in the chosen mode."""
    config = load_config(args.config)
    if args.reference == "bank" and args.reference_bank is None:  # the model's training frames
        args.reference_bank, args.bank_root = training_bank(config)
    opts = render_options(args)
    model = load_model(config, args.ckpt, args.device)
    if opts.first_stage_only:
        log.info("no sampling: first stage only")
    else:
        log.info(
            "sampler %s, %d steps, eta %g, reference %s%s, seed %d",
            opts.sampler,
            opts.steps,
            opts.eta,
            opts.reference,
            ", shared noise" if opts.shared_noise else "",
            opts.seed,
        )
    if args.split is not None:
        job = SplitJob(
            split=args.split,
            outdir=args.outdir,
            root=args.root,
            audio_id=args.audio_id,
            ids=parse_id_spec(args.ids) or None,
            max_frames=args.max_frames,
            image_format=args.image_format,
            chunk_frames=args.chunk_frames,
        )
        render_split(model, config, job, opts)
        return
    job = PortraitJob(
        audio=args.audio,
        out=args.out,
        video=args.video,
        image=args.image,
        frames_dir=args.frames_dir,
        loop=args.loop,
        audio_features=args.audio_features,
        audio_model=args.audio_model,
        landmarker=args.landmarker,
        crop=args.crop,
        crop_scale=args.crop_scale,
        chunk_frames=args.chunk_frames,
    )
    render_portrait(model, job, opts)


def main(argv: list[str] | None = None) -> int:
    """Render; 0 on success, 1 on an unusable input or checkpoint, 2 on bad usage."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        run(args)
    except (CheckpointError, ValueError, RuntimeError, OSError) as exc:  # Video/Clip/Feature...
        log.error("%s", exc, exc_info=args.verbose)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
