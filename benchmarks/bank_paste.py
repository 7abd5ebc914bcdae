"""The retrieval baseline of a demo run: the bank's training frame pasted in, no UNet.

    python benchmarks/bank_paste.py --run outputs/andrew [--out DIR]

Renders the run's held-out clip as the demo does (portrait mode, driven by its own audio, each
frame's reference picked from the run's training frames by ``--reference bank``), but the masked
latent cells get that reference's latent, aligned onto the frame's head pose and colour-matched
exactly as the UNet receives it, instead of a sample: what the UNet adds over the frame it is
lent. scripts/evaluate.py scores the render against the truth the demo scored
(``{run}/report/report.json``) into ``{out}/report/report.md``. Needs a run of the real-speaker
recipe (a model with a MouthPredictor); the built-in sample's has no bank.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ldm.config import load_config
from ldm.demo.steps import latest_run
from ldm.inference.checkpoint import load_model
from ldm.inference.portrait import PortraitJob, render_portrait
from ldm.inference.render import Renderer, RenderOptions
from ldm.models.diffusion.wrapper import Cond

logger = logging.getLogger("bank_paste")
ROOT = Path(__file__).resolve().parents[1]


def pasted(
    model: torch.nn.Module, cond: Cond, x0: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Scaled latent: the frame's ``x0`` where ``mask`` is 1 (known), the condition's (aligned)
    reference latent, brought to the sampling scale, where it is 0."""
    reference = cond["reference_latent"] * (model.scale_factor / model.condition_scale)
    return mask * x0 + (1.0 - mask) * reference


class BankPaste(Renderer):
    """A Renderer that pastes each frame's reference latent where it would sample."""

    def inpaint(
        self, batch: dict[str, Any], cond: Cond, x0: torch.Tensor, mask: torch.Tensor,
        x_T: torch.Tensor, generator: torch.Generator,
    ) -> torch.Tensor:  # fmt: skip
        """The reference's latent in the masked cells (no sampling; noise and batch unused)."""
        return pasted(self.model, cond, x0, mask)


def demo_options(run: Path) -> RenderOptions:
    """The demo's render options for a run in ``run`` (ldm/demo/pipeline.py, render_and_score)."""
    data = run / "data"
    return RenderOptions(
        sampler="dpm", steps=20, shared_noise=True, reference="bank", batch_size=16,
        reference_bank=str(data / "data_train.txt"), bank_root=str(data / "HDTF"), progress=False,
    )  # fmt: skip


def held_out_clip(run: Path) -> Path:
    """The truth the demo scored its render against (the held-out clip, with its audio)."""
    truth = Path(json.loads((run / "report" / "report.json").read_text())["clips"][0]["truth"])
    return truth if truth.is_absolute() else ROOT / truth  # evaluate.py ran in the project root


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished demo's --out folder")
    p.add_argument("--out", type=Path, help="default: {run}/bank_paste")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run = args.run.resolve()
    out = (args.out or run / "bank_paste").resolve()
    talking = latest_run(run / "logs", "talking")
    config = load_config([str(sorted((talking / "configs").glob("*-project.yaml"))[-1])])
    model = load_model(config, talking / "checkpoints" / "last.ckpt")
    truth = held_out_clip(run)
    video = out / "bank_paste.mp4"
    job = PortraitJob(audio=truth, out=video, video=truth)
    render_portrait(model, job, demo_options(run), renderer_class=BankPaste)
    cmd = ["scripts/evaluate.py", "--pred", str(video), "--gt", str(truth)]
    subprocess.run([sys.executable, *cmd, "--out", str(out / "report")], cwd=ROOT, check=True)
    logger.info("wrote %s", out / "report" / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
