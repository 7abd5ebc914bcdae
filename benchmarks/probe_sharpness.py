"""Where the mouth's sharpness is lost: on a demo run's held-out frames, the UNet's one-step x0
estimate at several noise levels, several samplers, and the EMA against the raw weights, each
scored against the truth beside the first stage's own reconstruction (the ceiling).

    python benchmarks/probe_sharpness.py --run outputs/andrew [--frames 48] [--out DIR]

Every row is decoded at the model's resolution with the known latent cells kept, as rendering
does, and scored inside the lower-face box (ldm/evaluation/metrics.py): SSIM and GMSD against
the truth, and the band-pass sharpness over the truth's. Conditions are the demo's (the bank's
reference and the mouth code predicted from the audio). Writes ``probe.md`` and ``probe.png``
(lower faces of the widest-open frames, one row per method) into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Subset, default_collate

from ldm.config import load_config
from ldm.evaluation import landmark_metrics as lm
from ldm.evaluation.metrics import band_energy, crop, gmsd, lower_face_box, ssim
from ldm.inference.checkpoint import load_model
from ldm.inference.render import Renderer, RenderOptions, seeded, to_frames
from ldm.inference.testlist import SplitJob, inference_dataset, truth_frame
from ldm.models.diffusion import mouth_window as mw

logger = logging.getLogger("probe_sharpness")
NOISE_LEVELS = (50, 150, 300, 500, 700, 900)
SAMPLERS = {  # label: RenderOptions fields (shared noise and bank references throughout)
    "DDIM 20, eta 1 (the demo)": {"sampler": "ddim", "steps": 20, "eta": 1.0},
    "DPM-Solver++ 20 (the demo until 2026-12-07)": {"sampler": "dpm", "steps": 20},
    "DPM-Solver++ 50": {"sampler": "dpm", "steps": 50},
    "DPM-Solver++ 20, SDE (eta 1)": {"sampler": "dpm", "steps": 20, "eta": 1.0},
    "DDIM 50, eta 1": {"sampler": "ddim", "steps": 50, "eta": 1.0},
    "DDIM 250, eta 1 (ancestral)": {"sampler": "ddim", "steps": 250, "eta": 1.0},
}
BATCH = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a demo's --out folder")
    p.add_argument("--frames", type=int, default=48, help="held-out frames, evenly spaced")
    p.add_argument("--out", type=Path, help="default: {run}/probe")
    p.add_argument("--fast", action="store_true", help="only the demo's sampler and x0 rows")
    return p.parse_args(argv)


def load_run(run: Path) -> tuple[torch.nn.Module, Subset, RenderOptions]:
    """The run's talking model (EMA inside), its held-out frames and the demo's render options."""
    talking = sorted((run / "logs").glob("*_talking"))[-1]
    config = load_config([str(sorted((talking / "configs").glob("*-project.yaml"))[-1])])
    model = load_model(config, talking / "checkpoints" / "last.ckpt")
    data = run / "data"
    job = SplitJob(split=data / "data_test.txt", outdir=run / "probe", root=data / "HDTF")
    dataset = inference_dataset(config, job, model.image_size)
    opts = RenderOptions(
        sampler="ddim", steps=20, eta=1.0, shared_noise=True, reference="bank", batch_size=BATCH,
        reference_bank=str(data / "data_train.txt"), bank_root=str(data / "HDTF"), progress=False,
    )  # fmt: skip
    return model, dataset, opts


def x0_estimates(renderer: Renderer, items: Subset, t: int) -> np.ndarray:
    """(N, H, W, 3) uint8: the UNet's one-step x0 estimate from the truth noised to ``t``,
    known cells kept, decoded (EMA weights, the demo's conditions)."""
    m, out = renderer.model, []
    with m.ema_scope(), torch.inference_mode():
        for first in range(0, len(items), BATCH):
            batch = default_collate(
                [items[i] for i in range(first, min(len(items), first + BATCH))]
            )
            x0 = m.scale_factor * m.encode_batch_images(batch["image"])  # (B, C, h, w)
            renderer.bank.apply(batch)
            cond = m.get_learned_conditioning(batch)
            known = batch["inference_mask"].to(m.device, torch.float32)
            corners = m.window_corners(batch)
            z, k = mw.crop(x0, corners, m.mouth_window), mw.crop(known, corners, m.mouth_window)
            tt = torch.full((len(z),), t, dtype=torch.long)
            noise = torch.randn(z.shape, generator=seeded(0, t, first))
            z_t = m.q_sample(z, tt, noise)
            eps = m.apply_model(z_t, tt, mw.crop_condition(cond, corners, m.mouth_window))
            a, s = m.sqrt_alphas_cumprod[t], m.sqrt_one_minus_alphas_cumprod[t]
            estimate = k * z + (1.0 - k) * (z_t - s * eps) / a
            out.append(to_frames(m.decode_first_stage(mw.paste(x0, estimate, corners))))
    return np.concatenate(out)


def first_stage(renderer: Renderer, items: Subset) -> np.ndarray:
    """(N, H, W, 3) uint8: the truth through the first stage (the ceiling)."""
    opts = RenderOptions(first_stage_only=True, batch_size=BATCH, progress=False)
    return Renderer(renderer.model, opts).render(items, items[0]["reference_img"])


def sampled(renderer: Renderer, items: Subset, fields: dict, ema: bool = True) -> np.ndarray:
    """(N, H, W, 3) uint8 rendered with the demo's options changed by ``fields``."""
    m = renderer.model
    fields = {**renderer.opts.__dict__, "steps": None, **fields}
    use_ema, m.use_ema = m.use_ema, m.use_ema and ema
    try:
        return Renderer(m, RenderOptions(**fields)).render(items, items[0]["reference_img"])
    finally:
        m.use_ema = use_ema


def scores(frames: np.ndarray, truth: np.ndarray, boxes: np.ndarray) -> dict[str, float]:
    """Lower-face SSIM, GMSD and sharpness (pooled band energy over the truth's)."""
    pairs = [(crop(f, b), crop(g, b)) for f, g, b in zip(frames, truth, boxes, strict=True)]
    energy = np.mean([band_energy(p) for p, _ in pairs]) / np.mean(
        [band_energy(g) for _, g in pairs]
    )
    return {
        "SSIM": float(np.mean([ssim(p, g) for p, g in pairs])),
        "GMSD": float(np.mean([gmsd(p, g) for p, g in pairs])),
        "sharpness": float(energy),
    }


def figure(
    rows: dict[str, np.ndarray], truth: np.ndarray, lms: np.ndarray, boxes: np.ndarray, out: Path
) -> None:
    """PNG of the lower faces of the 8 widest-open truth frames (``lms`` (N, 68, 2)), one row
    per method."""
    opening = lm.mouth_opening(lms)
    idx = np.sort(np.argsort(-np.nan_to_num(opening, nan=-1.0))[:8])
    side = 96
    lines = []
    for label, frames in {"truth": truth, **rows}.items():
        tiles = [cv2.resize(crop(frames[i], boxes[i]), (side, side)) for i in idx]
        line = np.concatenate(tiles, axis=1)
        cv2.putText(line, label[:40], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1)
        lines.append(line)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(lines, axis=0), cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_grad_enabled(False)
    model, dataset, opts = load_run(args.run)
    out = args.out or args.run / "probe"
    out.mkdir(parents=True, exist_ok=True)
    picks = np.linspace(0, len(dataset) - 1, args.frames).round().astype(int)
    items = Subset(dataset, picks.tolist())
    truth = np.stack([truth_frame(items[i]) for i in range(len(items))])
    lms = np.stack([items[i]["landmarks_all"] for i in range(len(items))])  # (N, 68, 2)
    boxes = np.stack([lower_face_box(p, truth.shape[1:]) for p in lms])
    renderer = Renderer(model, opts)
    jobs: dict[str, Callable[[], np.ndarray]] = {
        "first stage only": lambda: first_stage(renderer, items)
    }
    jobs |= {
        f"x0 estimate, t = {t}": (lambda t=t: x0_estimates(renderer, items, t))
        for t in NOISE_LEVELS
    }
    samplers = dict(list(SAMPLERS.items())[:1]) if args.fast else SAMPLERS
    jobs |= {label: (lambda f=f: sampled(renderer, items, f)) for label, f in samplers.items()}
    if not args.fast:
        jobs["DDIM 20, eta 1, raw weights (no EMA)"] = lambda: sampled(
            renderer, items, {}, ema=False
        )
    rows, lines = {}, ["| method | SSIM | GMSD | sharpness |", "|---|---|---|---|"]
    for label, job in jobs.items():
        rows[label] = job()
        s = scores(rows[label], truth, boxes)
        lines.append(f"| {label} | {s['SSIM']:.4f} | {s['GMSD']:.4f} | {s['sharpness']:.3f} |")
        logger.info("%s", lines[-1])
    (out / "probe.md").write_text("\n".join(lines) + "\n")
    figure(rows, truth, lms, boxes, out / "probe.png")
    logger.info("wrote %s and %s", out / "probe.md", out / "probe.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
