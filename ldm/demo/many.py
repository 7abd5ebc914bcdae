"""`sh demo.sh --many`: one model for many faces, rendered zero-shot on faces it never saw.

Preprocesses clips of many people, trains one first stage and one talking LDM on all of them
(``talking-many.yaml`` over the demo recipe), renders each held-out clip from its first frame and
its own audio (no training on that person: reference "first", the mouth predictor's per-person
offset from that frame), scores it, and exports the weights (EMA, no optimiser state) to
``{out}/many_speaker/``: the model ``sh demo.sh a.mp4 b.mp4`` adapts from and portrait mode uses.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ldm.config import load_config
from ldm.demo.pipeline import LDM_CONFIGS, RENDER_SAMPLER, Budget, Pipeline
from ldm.demo.steps import Footage, expand_videos
from ldm.inference.checkpoint import (
    EXPORTED_CONFIG,
    EXPORTED_FIRST_STAGE,
    EXPORTED_WEIGHTS,
    load_model,
)
from ldm.video import VideoError, probe

logger = logging.getLogger(__name__)

MANY_CONFIGS = (*LDM_CONFIGS, "configs/latent-diffusion/talking-many.yaml")
MANY = Budget(  # ~2.7 h in all on 2 cores for 30 clips (docs/many-speaker.md)
    ae_epochs=24.0, ae_steps=(8000, 16000), ldm_epochs=40.0, ldm_steps=(10000, 40000),
    ae_minutes=45.0, ldm_minutes=75.0,
)  # fmt: skip
MANY_QUICK = Budget(ae_steps=(40, 40), ldm_steps=(60, 60))  # the test's shortened run
STAGES = (
    "preprocess",
    "first_stage",
    "talking",
    "render",
    "first_stage_only",
    "evaluate",
    "export",
)


class ManyPipeline(Pipeline):
    """The demo's stages for a many-speaker model; every test clip is a person not in training."""

    stages = STAGES

    def preprocess_many(self, videos: list[Path], tests: list[Path]) -> int:
        """Build the dataset (128 px) of every clip, ``tests`` as the test split; returns the
        number of training frames."""
        cmd = ["scripts/preprocess.py", *map(str, [*videos, *tests]), "--out", str(self.data)]
        cmd += ["--size", "128", *self.audio]
        if tests:
            cmd += ["--test-videos", *map(str, tests)]
        self.run("preprocess", cmd)
        return len((self.data.parent / "data_train.txt").read_text().split())

    def first_stage_split(self) -> str:
        """The training frames only: the held-out faces are never seen (zero-shot)."""
        return "data_train.txt"

    def talking(self, n_frames: int, first_stage: Path) -> Path:
        """Train the talking LDM with talking-many.yaml; returns its run directory."""
        extra = self.data_overrides(images=False)
        extra.append(f"model.params.first_stage_config.params.ckpt_path={first_stage}")
        steps = self.budget.talking(n_frames, 16)
        logger.info("talking LDM: %d steps for %d training frames", steps, n_frames)
        return self.train("talking", list(MANY_CONFIGS), steps, extra, self.budget.ldm_minutes)

    def sampling(self) -> list[str]:
        """Zero-shot: the clip's own first frame as the reference, one x_T for every frame,
        stochastic DDIM 20 as the demo (docs/many-speaker.md: fewer blotches than DPM-Solver++)."""
        return [*RENDER_SAMPLER, "--shared-noise", "--reference", "first"]

    def zero_shot(self, run_dir: Path, tests: list[Path]) -> dict[str, dict[str, Path]]:
        """Render and score every held-out clip in ``{out}/zero_shot/{clip}/``."""
        out = {}
        for clip in tests:
            folder = self.out / "zero_shot" / clip.stem
            folder.mkdir(parents=True, exist_ok=True)
            out[clip.stem] = self.render_and_score(
                run_dir, Footage((clip,), clip), folder, f":{clip.stem}"
            )
        return out

    def export(self, run_dir: Path) -> Path:
        """``{out}/many_speaker/``: model.ckpt (EMA weights, no optimiser), config.yaml, and
        model.sha256; what ``sh demo.sh a.mp4 b.mp4`` starts from."""
        folder = self.out / "many_speaker"
        marker = self.out / ".done" / "export"
        if marker.exists():
            logger.info("[stage %d/%d export] already done, skipping", len(STAGES), len(STAGES))
            return folder
        config = sorted((run_dir / "configs").glob("*-project.yaml"))[-1]
        export_weights(run_dir / "checkpoints" / "last.ckpt", config, folder)
        marker.write_text("exported\n")
        return folder


def export_weights(ckpt: Path, config: Path, folder: Path) -> None:
    """Write ``folder``/model.ckpt (the EMA weights as the model's, no EMA or optimiser state,
    the training identities kept), config.yaml (use_ema off, no data or checkpoint paths) and
    model.sha256."""
    cfg = load_config([str(config)])
    model = load_model(cfg, ckpt)
    with model.ema_scope():
        state = {k: v.clone() for k, v in model.state_dict().items() if "model_ema." not in k}
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    entry = {"state_dict": state}
    if "identities" in raw:
        entry["identities"] = raw["identities"]
    cfg.model.params.use_ema = False
    cfg.model.params.first_stage_config.params.ckpt_path = None
    cfg.pop("data", None)  # this machine's dataset paths; rendering does not read them
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(entry, tmp / EXPORTED_WEIGHTS)
    torch.save({"state_dict": model.first_stage_model.state_dict()}, tmp / EXPORTED_FIRST_STAGE)
    OmegaConf.save(cfg, tmp / EXPORTED_CONFIG)
    digest = hashlib.sha256((tmp / EXPORTED_WEIGHTS).read_bytes()).hexdigest()
    (tmp / "model.sha256").write_text(f"{digest}  {EXPORTED_WEIGHTS}\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    logger.info("exported %s (%.1f MB, sha256 %s)", folder / EXPORTED_WEIGHTS,
                (folder / EXPORTED_WEIGHTS).stat().st_size / 1e6, digest[:12])  # fmt: skip


def run_many(videos: list[str], tests: list[str], out: Path, quick: bool) -> dict[str, Path]:
    """The whole --many run: preprocess, train, zero-shot renders of ``tests``, export."""
    train, held = expand_videos(videos), expand_videos(tests) if tests else []
    overlap = set(train) & set(held)
    if overlap:
        raise VideoError(f"held-out clips are also training clips: {sorted(map(str, overlap))}")
    for video in [*train, *held]:
        if not probe(video).has_audio:
            raise VideoError(f"{video}: has no audio track; the demo trains on the clip's speech")
    logger.info("many speakers: %d training clips, %d held out", len(train), len(held))
    pipe = ManyPipeline(out, MANY_QUICK if quick else MANY)
    n_frames = pipe.preprocess_many(train, held)
    run_dir = pipe.talking(n_frames, pipe.first_stage(n_frames))
    reports = pipe.zero_shot(run_dir, held)
    return {"model": pipe.export(run_dir), **{k: v["report"] for k, v in reports.items()}}
