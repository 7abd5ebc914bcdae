"""Seconds per frame of DDIM-200, DDIM-50 and DPM-Solver++-20, and their error against DDIM-200.

    python benchmarks/bench_sampler.py [--threads 1] [--ckpt last.ckpt --config a.yaml b.yaml]

Small config: rendered end to end (conditions, sampling with the latent inpainting mask, decoding;
EMA weights, channels-last UNet, inference_mode), by default with a model trained here for a few
minutes on synthetic frames (a random UNet predicts eps = 0, which every sampler integrates
exactly), or with ``--ckpt``. The error is the RMS latent difference to DDIM-200 from the same
x_T and conditions without the inpainting mask (whose fresh noise per step differs between step
counts), relative to the RMS of the DDIM-200 latent. Paper config: one UNet step and one frame's
first-stage work are timed and extrapolated to each step count (random weights, no error).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from ldm.config import load_config
from ldm.data.layout import UPPER_FACE_LANDMARKS
from ldm.inference.checkpoint import load_model
from ldm.inference.render import Renderer, RenderOptions, prepare_model
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.util import instantiate_from_config

logger = logging.getLogger("bench_sampler")
RUNS = (("ddim", 200), ("ddim", 50), ("dpm", 20))
# DPM-Solver design choices, error only: the default (uniform in t from DDIM-200's first timestep)
# against uniform-in-logSNR spacing and a start at T - 1.
DPM_VARIANTS = {
    "dpm-20 logsnr": {"spacing": "logsnr"},
    "dpm-20 t=999": {"t_start": 999},
    "dpm-20 logsnr t=999": {"spacing": "logsnr", "t_start": 999},
}
SMALL = "configs/latent-diffusion/talking-small.yaml"
PAPER = "configs/latent-diffusion/talking.yaml"


def synthetic_items(n: int, size: int, feature_dim: int, seed: int = 0) -> list[dict]:
    """Frames of a face-like ellipse whose dark mouth opens with a constant audio feature."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    face = (xx - 0.5) ** 2 / 0.35**2 + (yy - 0.5) ** 2 / 0.45**2 < 1
    n_points = len(UPPER_FACE_LANDMARKS)
    landmarks = rng.uniform(0.2, 0.8, (n_points, 2)).astype(np.float32) * size
    items: list[dict] = []
    for opening in np.linspace(0.0, 1.0, n):
        mouth = (xx - 0.5) ** 2 / 0.12**2 + (yy - 0.72) ** 2 / (0.01 + 0.07 * opening) ** 2 < 1
        gray = np.where(face, 0.4, -0.6) - 1.2 * mouth * face
        image = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
        masked = image.copy()
        masked[int(0.6 * size) :] = -1.0
        latent_mask = np.ones((1, size // 4, size // 4), np.float32)
        latent_mask[:, int(0.6 * size) // 4 :] = 0.0
        audio = np.full((8, 16, feature_dim), opening, np.float32)
        reference = items[0]["image"] if items else image  # the clip's first frame
        items.append(
            {"image": image, "image_mask": masked, "reference_img": reference,
             "landmarks": landmarks, "audio_smooth": audio, "inference_mask": latent_mask}
        )  # fmt: skip
    return items


def stack(items: list[dict], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Batch of the given keys."""
    return {k: torch.as_tensor(np.stack([it[k] for it in items])) for k in keys}


def train_small(steps: int, n: int = 8) -> torch.nn.Module:
    """The small config (random first stage) trained ``steps`` steps on synthetic frames."""
    torch.manual_seed(0)
    cfg = load_config([SMALL])
    cfg.model.params.first_stage_config.params.ckpt_path = None
    model = instantiate_from_config(cfg.model)
    model.learning_rate = 2e-3
    items = synthetic_items(n, 128, cfg.model.params.audio_config.params.feature_dim)
    batch = stack(items, ("image", "image_mask", "reference_img", "landmarks", "audio_smooth"))
    opt = model.configure_optimizers()
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = model.shared_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_ema()
    logger.info("trained the small model %d steps in %.0f s (loss %.3f)", steps,
                time.perf_counter() - start, loss.item())  # fmt: skip
    return model.eval().requires_grad_(False)


def latent_errors(model: torch.nn.Module, items: list[dict]) -> dict:
    """Relative RMS latent difference of each run to DDIM-200 (same x_T, no inpainting mask)."""
    batch = stack(items, ("image_mask", "reference_img", "landmarks", "audio_smooth"))
    shape = (len(items), model.channels, model.image_size, model.image_size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = {}
    with model.ema_scope(), torch.inference_mode():
        cond = model.get_learned_conditioning(batch)
        for name, steps in RUNS:
            sampler = DPMSolverSampler(model) if name == "dpm" else DDIMSampler(model)
            out[name, steps] = sampler.sample(steps, cond, shape, x_T=x_T)
        for label, kw in DPM_VARIANTS.items():
            out[label] = DPMSolverSampler(model, **kw).sample(20, cond, shape, x_T=x_T)
    ref = out["ddim", 200]
    rms = ref.pow(2).mean().sqrt()
    return {k: float((v - ref).pow(2).mean().sqrt() / rms) for k, v in out.items()}


def seconds_per_frame(model: torch.nn.Module, items: list[dict], name: str, steps: int) -> float:
    """Wall time of Renderer.render over the items, per frame."""
    opts = RenderOptions(sampler=name, steps=steps, batch_size=len(items), progress=False)
    renderer = Renderer(model, opts)
    start = time.perf_counter()
    renderer.render(items, items[0]["reference_img"])
    return (time.perf_counter() - start) / len(items)


def bench_small(args: argparse.Namespace) -> None:
    """Time and compare the three runs on the small config (or --ckpt)."""
    if args.ckpt:
        model = prepare_model(load_model(load_config(args.config), args.ckpt))
    else:
        model = prepare_model(train_small(args.train_steps))
    size = model.image_size * 4
    dim = model.audio_feature_dim
    items = synthetic_items(args.frames, size, dim, seed=1)
    errors = latent_errors(model, items)
    what = args.ckpt or "small config"
    logger.info("%s, %d px, %d frames per batch, %d thread(s)", what, size, args.frames,
                torch.get_num_threads())  # fmt: skip
    logger.info("%-20s %10s %24s", "sampler", "s / frame", "rel. error vs DDIM-200")
    for name, steps in RUNS:
        sec = seconds_per_frame(model, items, name, steps)
        logger.info("%-20s %10.3f %24.4f", f"{name}-{steps}", sec, errors[name, steps])
    for label in DPM_VARIANTS:
        logger.info("%-20s %10s %24.4f", label, "", errors[label])


def time_call(fn, repeats: int = 2) -> float:
    """Best-of-``repeats`` seconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_paper(repeats: int) -> None:
    """One paper-config UNet step (batch 1) and one frame's first-stage work, extrapolated."""
    cfg = OmegaConf.load(PAPER).model.params
    cfg.unet_config.params.use_checkpoint = False
    unet = instantiate_from_config(cfg.unet_config).eval()
    first_stage = instantiate_from_config(
        OmegaConf.merge(cfg.first_stage_config, {"params": {"ckpt_path": None}})
    ).eval()
    x, t, ctx = torch.randn(1, 9, 64, 64), torch.tensor([500]), torch.randn(1, 1, 128)
    image = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        step_plain = time_call(lambda: unet(x, t, ctx), repeats)
        unet.to(memory_format=torch.channels_last)
        first_stage.to(memory_format=torch.channels_last)
        step = time_call(lambda: unet(x, t, ctx), repeats)
        codec = time_call(lambda: first_stage.decode(first_stage.encode(image)[:1]), repeats)
    logger.info("paper config, 256 px, batch 1, %d thread(s): UNet step %.2f s (%.2f s without "
                "channels-last), encode x2 + decode %.2f s per frame", torch.get_num_threads(),
                step, step_plain, codec)  # fmt: skip
    logger.info("%-20s %10s", "sampler", "s / frame (extrapolated)")
    for name, steps in RUNS:
        logger.info("%-20s %10.1f", f"{name}-{steps}", steps * step + codec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--frames", type=int, default=4, help="frames per batch (small config)")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--ckpt", help="use this checkpoint instead of training the small model")
    parser.add_argument("--config", nargs="+", default=[SMALL])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_small(args)
    if not args.skip_paper:
        bench_paper(args.repeats)


if __name__ == "__main__":
    main()
