"""DiffTalk end to end on a CPU: preprocess -> first stage -> talking LDM -> render -> evaluate.

    python scripts/demo.py                 # the built-in sample (no download)
    python scripts/demo.py my_clip.mp4     # first ~80% trains, last ~20% is rendered and scored
    python scripts/demo.py --quick         # a shortened run (the test suite's version)

Each finished step leaves a marker in ``{out}/.done/``, so a rerun continues where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ldm.demo.steps import frame_grid, latest_run, prepare_clips, side_by_side

logger = logging.getLogger("demo")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Budget:
    """Sizes of one demo run."""

    seconds: float  # built-in sample length
    ae_steps: int
    ldm_steps: int


FULL = Budget(seconds=60.0, ae_steps=500, ldm_steps=1500)
QUICK = Budget(seconds=30.0, ae_steps=300, ldm_steps=1000)


def run(step: str, cmd: list[str], out: Path) -> None:
    """Run one pipeline step as a subprocess once; a marker file makes reruns skip it."""
    marker = out / ".done" / step
    if marker.exists():
        logger.info("[%s] already done, skipping", step)
        return
    logger.info("[%s] %s", step, " ".join(cmd))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"demo step '{step}' failed (exit {proc.returncode}); see the log above")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{time.perf_counter() - start:.1f} s\n")
    logger.info("[%s] done in %.0f s", step, time.perf_counter() - start)


def data_overrides(data: Path) -> list[str]:
    """Point a config's train/validation datasets at the demo dataset."""
    lists = {"train": data.parent / "data_train.txt", "validation": data.parent / "data_test.txt"}
    out = []
    for split, split_file in lists.items():
        out.append(f"data.params.{split}.params.split_file={split_file}")
    return out


def train_first_stage(out: Path, data: Path, budget: Budget) -> Path:
    """Train the small VQ-f4 on the training frames; returns its checkpoint."""
    cmd = [
        "main.py",
        "--base",
        "configs/autoencoder/vq_f4_small.yaml",
        "-t",
        "-l",
        str(out / "logs"),
    ]
    cmd += ["-n", "first_stage", "--max_steps", str(budget.ae_steps), "--accelerator", "cpu"]
    cmd += data_overrides(data)
    cmd += [f"data.params.{s}.params.root={data / 'images'}" for s in ("train", "validation")]
    cmd += ["data.params.train.params.crop_size=64", "data.params.batch_size=8"]  # 4x cheaper
    run("first_stage", cmd, out)
    ckpt = out / "first_stage.ckpt"
    if not ckpt.exists():
        shutil.copy(latest_run(out / "logs", "first_stage") / "checkpoints" / "last.ckpt", ckpt)
    return ckpt


def train_talking(out: Path, data: Path, first_stage: Path, budget: Budget) -> Path:
    """Train the small talking LDM with the demo recipe; returns the run directory."""
    cmd = ["main.py", "--base", "configs/latent-diffusion/talking-small.yaml"]
    cmd += ["configs/latent-diffusion/talking-demo.yaml", "-t", "-l", str(out / "logs")]
    cmd += ["-n", "talking", "--max_steps", str(budget.ldm_steps), "--accelerator", "cpu"]
    cmd += data_overrides(data)
    cmd += [f"data.params.{s}.params.root={data}" for s in ("train", "validation")]
    cmd += [f"model.params.first_stage_config.params.ckpt_path={first_stage}"]
    run("talking", cmd, out)
    return latest_run(out / "logs", "talking")


def render_and_score(out: Path, run_dir: Path, test_clip: Path) -> dict:
    """Render the test clip from its own audio, then evaluate against the truth."""
    config = sorted((run_dir / "configs").glob("*-project.yaml"))[-1]
    result = out / "result.mp4"
    cmd = ["scripts/inference.py", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt")]
    cmd += ["--config", str(config), "--video", str(test_clip), "--audio", str(test_clip)]
    cmd += ["--out", str(result), "--sampler", "dpm", "--steps", "20", "--seed", "0"]
    cmd += ["--batch-size", "16"]
    run("render", cmd, out)
    report = out / "report"
    cmd = ["scripts/evaluate.py", "--pred", str(result), "--gt", str(test_clip)]
    cmd += ["--baselines", "--out", str(report)]
    run("evaluate", cmd, out)
    side = side_by_side(result, test_clip, out / "side_by_side.mp4")
    grid = frame_grid(result, test_clip, out / "frames.png")
    return {"result": result, "side_by_side": side, "report": report / "report.md",
            "plot": next(report.glob("*.png")), "grid": grid}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("video", nargs="?", help="a talking-head clip (default: the built-in sample)")
    p.add_argument("--out", default="outputs/demo", help="where everything goes")
    p.add_argument("--quick", action="store_true", help="a shortened run (minutes)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    budget = QUICK if args.quick else FULL
    out = Path(args.out).resolve()
    start = time.perf_counter()
    train_clip, test_clip = prepare_clips(args.video, out / "clips", budget.seconds)
    data = out / "data" / "HDTF"
    cmd = ["scripts/preprocess.py", str(train_clip), str(test_clip), "--out", str(data)]
    cmd += ["--size", "128", "--test-videos", str(test_clip)]
    run("preprocess", cmd, out)
    first_stage = train_first_stage(out, data, budget)
    run_dir = train_talking(out, data, first_stage, budget)
    paths = render_and_score(out, run_dir, test_clip)
    logger.info("finished in %.1f min", (time.perf_counter() - start) / 60)
    for name, path in paths.items():
        logger.info("%-13s %s", name, path)
    logger.info("report:\n%s", Path(paths["report"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
