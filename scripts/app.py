"""A web page for driving a portrait with speech (Gradio, on 127.0.0.1, offline).

    pip install -r requirements-app.txt
    python scripts/app.py --ckpt logs/<run>/checkpoints/last.ckpt [--port 7860]

Without --ckpt the app uses the newest model of `python scripts/demo.py`; with none, the page says
how to get one. --config defaults to the run's saved config (logs/<run>/configs/*-project.yaml),
else to scripts/inference.py's default. Results are kept in --outdir. Analytics, update checks
and share links are off. Exit code 0 when the server stops, 1 when Gradio is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from ldm.app import INSTALL_HINT
from ldm.app.studio import MAX_SECONDS, AppSettings, Studio
from ldm.preprocessing.audio_features import FEATURE_KINDS

log = logging.getLogger("app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", type=Path, help="DiffTalk checkpoint (default: the demo's newest)")
    p.add_argument("--config", type=Path, nargs="+", help="YAMLs merged in order")
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1")
    p.add_argument("--outdir", type=Path, default=Path("outputs/app"), help="results go here")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8, help="frames sampled together")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS, help="longest speech")
    p.add_argument(
        "--audio-features",
        choices=FEATURE_KINDS,
        help="what the model was trained on (default: by its feature width, 29 log-mel, "
        "384 whisper)",
    )
    p.add_argument("--audio-model", help="local model folder for wav2vec2/hubert/whisper")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load the model, then serve the page until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        from ldm.app.ui import build_ui, serve
    except ImportError as exc:
        log.error("the app needs Gradio (%s); install it with: %s", exc, INSTALL_HINT)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = AppSettings(
        ckpt=args.ckpt,
        config=args.config,
        device=args.device,
        outdir=args.outdir.resolve(),
        batch_size=args.batch_size,
        max_seconds=args.max_seconds,
        audio_features=args.audio_features,
        audio_model=args.audio_model,
    )
    settings.outdir.mkdir(parents=True, exist_ok=True)
    studio = Studio(settings)
    studio.load()
    log.info("serving on http://127.0.0.1:%d (Ctrl+C stops)", args.port)
    serve(build_ui(studio), args.port, settings.outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
