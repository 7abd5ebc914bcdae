"""What the web page does, without Gradio: load the model, check uploads, render, score.

Rendering is ``ldm.inference.portrait.render_portrait``, the function scripts/inference.py calls;
scoring is ``ldm.evaluation`` (as scripts/evaluate.py), used when a portrait video drives itself.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from ldm.config import load_config
from ldm.data.layout import FPS, SAMPLE_RATE
from ldm.evaluation.clips import IMAGE_EXTS, ClipFrames, match_sources
from ldm.inference.bank import has_fitted_mouth, training_bank
from ldm.inference.checkpoint import CheckpointError, default_model, load_model, model_config
from ldm.inference.clip import n_video_frames
from ldm.inference.portrait import PortraitJob, render_portrait
from ldm.inference.render import (
    PORTRAIT_ETA,
    PORTRAIT_SAMPLER,
    PORTRAIT_STEPS,
    RenderOptions,
    make_sampler,
)
from ldm.preprocessing.runner import VIDEO_EXTS
from ldm.video import load_audio, probe

logger = logging.getLogger(__name__)

DEMO_LOGS = Path("outputs/demo/logs")  # where `python scripts/demo.py` trains its model
SILENCE_DBFS = -50.0  # speech whose loudest 50 ms stays below this is called silent
LOUDNESS_WINDOW = 0.05  # seconds
MAX_SECONDS = 60.0  # longest speech the page renders (CPU time grows with every frame)

NO_CHECKPOINT_HELP = (
    "**No DiffTalk checkpoint is loaded.** Get one, then restart the app:\n"
    "- the many-speaker model: `sh demo.sh --many <folder of clips of many people>` "
    "(about 3 hours), then copy its `many_speaker/` to `models/many_speaker/`;\n"
    "- the CPU demo trains a small model from a clip: `python scripts/demo.py --quick` "
    "(then `python scripts/app.py` finds `outputs/demo/logs/*_talking/checkpoints/last.ckpt`);\n"
    "- or train your own with `python main.py --base configs/latent-diffusion/talking.yaml -t` "
    "and start `python scripts/app.py --ckpt logs/<run>/checkpoints/last.ckpt`."
)
NO_MODEL = "No usable DiffTalk checkpoint is loaded: the note at the top says how to get one."

StageCallback = Callable[[str, float], None]  # (what is happening, fraction done)


class InputError(ValueError):
    """An upload, setting or checkpoint the page cannot use; the message is for the user."""


@dataclass
class AppSettings:
    """How the app was started (scripts/app.py's options)."""

    ckpt: Path | None = None  # None: models/many_speaker, else the newest demo checkpoint
    config: list[Path] | None = None  # None: the checkpoint's own (model_config)
    device: str = "cpu"
    outdir: Path = Path("outputs/app")
    batch_size: int = 8
    max_seconds: float = MAX_SECONDS
    audio_features: str | None = None  # what the model was trained on (None: by its width)
    audio_model: str | None = None  # local model folder for wav2vec2/hubert/whisper features


@dataclass
class RenderRequest:
    """One press of the render button: a portrait, speech (None: the video's own), options."""

    video: Path | None = None
    image: Path | None = None
    audio: Path | None = None
    sampler: str = PORTRAIT_SAMPLER  # the demo's render, as portrait mode (render.py)
    steps: int = PORTRAIT_STEPS
    eta: float = PORTRAIT_ETA[PORTRAIT_SAMPLER]
    reference: str = "first"
    shared_noise: bool = True
    seed: int = 0


@dataclass
class RenderResult:
    """The rendered mp4 and, for a self-driven video, the evaluation plot and summary table."""

    video: Path
    n_frames: int
    seconds: float  # wall-clock render time
    plot: Path | None = None
    summary: str = ""  # markdown
    notes: list[str] = field(default_factory=list)
    identity_warning: str = ""  # the model was not trained on this face and is not meant for it


def find_demo_checkpoint(logs: Path = DEMO_LOGS) -> Path | None:
    """The newest ``*_talking/checkpoints/last.ckpt`` the demo wrote, or None."""
    found = sorted(logs.glob("*_talking/checkpoints/last.ckpt"))
    return found[-1] if found else None


def model_bank(model: torch.nn.Module, config: DictConfig) -> tuple[str, str] | None:
    """(split list, root) of the training frames a model with a fitted mouth predictor borrows
    mouths from (``--reference bank``), or None: no predictor, or its frames are not here."""
    if not has_fitted_mouth(model):
        return None
    try:
        return training_bank(config)
    except ValueError as exc:
        logger.info("%s", exc)
        return None


def loudest_dbfs(wav: np.ndarray, sr: int = SAMPLE_RATE, window: float = LOUDNESS_WINDOW) -> float:
    """RMS level (dB full scale) of the loudest ``window``-second stretch of mono audio."""
    n = max(1, int(window * sr))
    usable = len(wav) // n * n
    frames = wav[:usable].reshape(-1, n) if usable else wav[None]
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)).max()
    return float(20 * np.log10(max(rms, 1e-10)))


def check_speech(path: Path, max_seconds: float = MAX_SECONDS) -> tuple[float, int]:
    """(seconds, video frames) of usable driving speech; InputError when it is silent or too
    long, AudioTooShortError when shorter than one video frame."""
    wav = load_audio(path, SAMPLE_RATE)
    n_frames = n_video_frames(len(wav))
    seconds = len(wav) / SAMPLE_RATE
    level = loudest_dbfs(wav)
    if level < SILENCE_DBFS:
        how = f"loudest {level:.0f} dBFS" if np.any(wav) else "every sample is zero"
        raise InputError(f"{path.name}: the audio is silent ({how}); upload or record speech")
    if seconds > max_seconds:
        raise InputError(
            f"{path.name}: the speech lasts {seconds:.1f} s; this app renders at most "
            f"{max_seconds:g} s (start it with --max-seconds to change that)"
        )
    return seconds, n_frames


def check_portrait(req: RenderRequest) -> tuple[Path | None, Path | None]:
    """(video, image): the one portrait of a request, routed by its file type (a photo dropped
    in the video box is a photo); a video needs its own sound when no speech is given."""
    if (req.video is None) == (req.image is None):
        raise InputError("upload one portrait: a video or a photo")
    path = req.video if req.video is not None else req.image
    suffix = path.suffix.lower()
    if suffix not in VIDEO_EXTS | IMAGE_EXTS:
        kinds = ", ".join(sorted(s.lstrip(".") for s in VIDEO_EXTS | IMAGE_EXTS))
        raise InputError(f"{path.name}: unsupported file type; upload one of {kinds}")
    if suffix in IMAGE_EXTS:
        return None, path
    info = probe(path)
    if not info.has_video:
        raise InputError(f"{path.name}: no picture in this file; upload a video or a photo")
    if req.audio is None and not info.has_audio:
        raise InputError(f"{path.name} has no sound: upload or record the driving speech")
    return path, None


def evaluate_self_driven(
    result: Path, portrait: Path, report_dir: Path, first_stage: Path | None = None
) -> tuple[Path, str, list[str]]:
    """Score a render of a video driven by its own speech against that video (with baselines
    and, given its render, the "first stage only" ceiling); returns the plot, the markdown
    summary table and the notes."""
    from ldm.evaluation.evaluate import FIRST_STAGE, Scorers, baseline_label, evaluate_clip
    from ldm.evaluation.report import markdown_tables, write_report
    from ldm.preprocessing.pipeline import cached_landmarker

    pred = ClipFrames(result)
    gt = ClipFrames(portrait, max_frames=len(pred))
    pred, gt, notes = match_sources(pred, gt, "result", "portrait")
    extra = []
    if first_stage is not None:  # rendered from the same frames: same length and size
        ceiling = ClipFrames(first_stage).limited(len(gt))
        extra.append((FIRST_STAGE, baseline_label(FIRST_STAGE), ceiling))
    scorers = Scorers(cached_landmarker("dlib"))
    clip = evaluate_clip(
        pred, gt, scorers, name=portrait.stem, baselines=True, notes=notes, extra_rows=extra
    )
    settings = {"fps": FPS, "landmarker": "dlib", "baselines": True}
    paths = write_report([clip], report_dir, settings, clip.notes)
    table, _ = markdown_tables([clip])
    return paths[f"plot:{clip.name}"], table, clip.notes


def readable(exc: Exception, req: RenderRequest) -> str:
    """The exception's message with upload paths shortened to their file names; a temporary
    media file left in it (a photo is preprocessed as a one-frame video) becomes the portrait's."""
    text = str(exc)
    for path in filter(None, (req.video, req.image, req.audio)):
        text = text.replace(str(path), path.name)
    portrait = req.video or req.image
    if portrait is not None:
        temp = re.escape(tempfile.gettempdir())
        text = re.sub(rf"{temp}/\S+?\.(?:mp4|wav|png|jpg)\b", portrait.name, text)
    return text


class Studio:
    """The loaded model and the render entry point behind the page (one render at a time)."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.model: torch.nn.Module | None = None
        self.ckpt: Path | None = None
        self.bank: tuple[str, str] | None = None  # the model's training frames, when on disk
        self.status = NO_CHECKPOINT_HELP
        self._lock = threading.Lock()

    def load(self) -> bool:
        """Load the checkpoint; on failure ``status`` says why and how to get a usable one."""
        s = self.settings
        ckpt = s.ckpt or default_model() or find_demo_checkpoint()
        if ckpt is None:
            logger.warning("no checkpoint: %s", NO_CHECKPOINT_HELP.replace("**", ""))
            return False
        config = s.config or model_config(ckpt)
        try:
            merged = load_config(config)
            self.model = load_model(merged, ckpt, s.device)
        except (CheckpointError, FileNotFoundError) as exc:
            self.status = f"**The checkpoint cannot be used:** {exc}\n\n" + NO_CHECKPOINT_HELP
            logger.error("%s", exc)
            return False
        self.ckpt = ckpt
        self.bank = model_bank(self.model, merged)
        names = ", ".join(p.name for p in config)
        self.status = f"Checkpoint `{ckpt}` (config {names}) on {s.device}."
        return True

    def render(self, req: RenderRequest, stage: StageCallback | None = None) -> RenderResult:
        """Render a request into ``outdir``; InputError with a readable message when it can't.
        ``stage(description, fraction)`` hears of each step (the tqdm bars tell the rest)."""
        if self.model is None:
            raise InputError(NO_MODEL)
        try:
            with self._lock:
                return self._render(req, stage or (lambda desc, fraction: None))
        except InputError:
            raise
        except (ValueError, RuntimeError, OSError) as exc:  # VideoError, ClipError, FeatureError...
            logger.warning("render failed: %s", exc)
            raise InputError(readable(exc, req)) from exc

    def _render(self, req: RenderRequest, stage: StageCallback) -> RenderResult:
        """Check the inputs, render with render_portrait, score a self-driven video."""
        start = time.perf_counter()
        stage("checking the uploads", 0.0)
        video, image = check_portrait(req)
        speech = req.audio if req.audio is not None else video
        seconds, n_frames = check_speech(speech, self.settings.max_seconds)
        if req.reference == "bank" and self.bank is None:
            raise InputError("this model has no reference bank: pick another reference")
        split, root = self.bank if req.reference == "bank" else (None, "")
        opts = RenderOptions(
            sampler=req.sampler,
            steps=int(req.steps),
            eta=float(req.eta),
            reference=req.reference,
            reference_bank=split,
            bank_root=root,
            shared_noise=bool(req.shared_noise),
            batch_size=self.settings.batch_size,
            seed=int(req.seed),
            progress=True,  # tqdm bars, which the page turns into its progress bar
        )
        make_sampler(self.model, opts.sampler, opts.steps)  # refuse bad step counts up front
        out = self.output_path((video or image).stem)
        job = PortraitJob(
            audio=speech,
            out=out,
            video=video,
            image=image,
            audio_features=self.settings.audio_features,
            audio_model=self.settings.audio_model,
        )
        logger.info("rendering %.2f s of speech onto %s: %s", seconds, video or image, opts)
        stage("rendering", 0.05)
        rendered = render_portrait(self.model, job, opts)
        result = RenderResult(out, n_frames, 0.0)
        if rendered.identity is not None and rendered.identity.warn:
            result.identity_warning = rendered.identity.message
        if video is not None and req.audio is None:  # the video drives itself: score it
            stage("scoring the result against the portrait", 0.95)
            report = out.with_name(f"{out.stem}_report")
            ceiling = replace(job, out=out.with_name(f"{out.stem}_first_stage_only.mp4"))
            try:
                render_portrait(self.model, ceiling, replace(opts, first_stage_only=True))
                result.plot, result.summary, result.notes = evaluate_self_driven(
                    out, video, report, ceiling.out
                )
            except (ValueError, RuntimeError, OSError) as exc:  # keep the video regardless
                logger.warning("evaluation failed: %s", exc)
                result.notes = [f"evaluation failed: {readable(exc, req)}"]
        result.seconds = time.perf_counter() - start
        logger.info("done in %.1f s: %s", result.seconds, out)
        return result

    def output_path(self, stem: str) -> Path:
        """A new ``{outdir}/{time}_{stem}.mp4``."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "portrait"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = self.settings.outdir / f"{stamp}_{safe}.mp4"
        k = 1
        while out.exists():
            k += 1
            out = self.settings.outdir / f"{stamp}_{safe}_{k}.mp4"
        return out
