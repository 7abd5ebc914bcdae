"""Where a training step of the real-speaker demo recipe spends its time, and what the latent
cache, bf16 autocast and torch.compile change, as figures and ratios within one run.

    python benchmarks/bench_recipe_step.py --run DEMO_OUT [--steps 30] [--warmup 10]

DEMO_OUT is a demo run folder (``data/``, ``first_stage.ckpt``). The talking LDM of
talking-small.yaml + talking-demo.yaml is built on it as training builds it (mouth predictor fitted,
scale_by_std's scale from a batch). Each variant times ``--steps`` optimiser steps after
``--warmup`` by phase: data, conditions (get_input), UNet forward + backward, optimiser + EMA.

1. encode every step: no latent cache, the first stage encodes frames, masked frames and
   references each step (the original's behaviour);
2. the recipe: the latent cache filled first (fill_cache; its time and size are reported);
3. the recipe + bf16 autocast of the UNet's forward and backward;
4. the recipe + torch.compile of the UNet's forward (the method, not the module, so parameter
   names and the EMA's keys stay as they are); a compile failure is logged and skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ldm.config import load_config
from ldm.models.diffusion.latent_cache import FirstStageCache
from ldm.modules.encoders.mouth import fit_on_dataset
from ldm.util import instantiate_from_config

logger = logging.getLogger("bench_recipe_step")
CONFIGS = [f"configs/latent-diffusion/talking-{name}.yaml" for name in ("small", "demo")]
PHASES = ("data", "conditions", "unet fwd+bwd", "optim+EMA")
VARIANTS = {  # name: (latent cache filled, bf16 autocast, torch.compile)
    "1 encode every step": (False, False, False),
    "2 filled latent cache (the recipe)": (True, False, False),
    "3 recipe + bf16 autocast": (True, True, False),
    "4 recipe + torch.compile UNet": (True, False, True),
}


def build(run: Path):
    """The recipe's LatentDiffusion on the run's first stage, ready to train, and its data."""
    data = run / "data"
    overrides = [f"model.params.first_stage_config.params.ckpt_path={run / 'first_stage.ckpt'}"]
    for split, name in (("train", "data_train.txt"), ("validation", "data_test.txt")):
        overrides += [f"data.params.{split}.params.root={data / 'HDTF'}"]
        overrides += [f"data.params.{split}.params.split_file={data / name}"]
    config = load_config(CONFIGS, overrides)
    model = instantiate_from_config(config.model)
    datamodule = instantiate_from_config(config.data)
    datamodule.setup("fit")
    batch = config.data.params.batch_size
    model.learning_rate = config.model.base_learning_rate * batch  # main.py's --scale_lr, 1 device
    dataset = datamodule.datasets["train"]
    fit_on_dataset(model.mouth_model, dataset)  # as LatentDiffusion.on_fit_start
    loader = datamodule.train_dataloader()
    with torch.no_grad():  # as on_train_batch_start: 1 / std of the first batch's latents
        model.scale_factor.fill_(1.0 / model.encode_batch_images(next(iter(loader))["image"]).std())
    model.train()
    return model, dataset, loader


def run_variant(model, batches: Iterator[dict], steps: int, warmup: int, bf16: bool) -> dict:
    """Seconds per step by phase over ``steps`` steps after ``warmup``."""
    opt = model.configure_optimizers()
    totals = dict.fromkeys(PHASES, 0.0)
    autocast = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            logger.info("warm-up: %d steps in %.1f s", warmup, time.perf_counter() - start)
        marks = [time.perf_counter()]
        batch = next(batches)
        marks.append(time.perf_counter())
        z, cond, weight = model.get_input(batch)
        t = torch.randint(0, model.num_timesteps, (len(z),))
        marks.append(time.perf_counter())
        with autocast:
            loss, _ = model.p_losses(z, cond, t, weight=weight)
        loss.backward()
        marks.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_ema()
        marks.append(time.perf_counter())
        if i >= warmup:
            for name, a, b in zip(PHASES, marks, marks[1:], strict=False):
                totals[name] += b - a
    return {name: total / steps for name, total in totals.items()}


@contextlib.contextmanager
def compiled_unet(model) -> Iterator[None]:
    """torch.compile the UNet's forward call only: the module, its parameter names and so the
    EMA's keys stay as they are (compiling the module renames them ``_orig_mod.*``)."""
    unet = model.model.diffusion_model
    unet.forward = torch.compile(unet.forward)
    try:
        yield
    finally:
        del unet.forward  # back to the class's forward
        torch._dynamo.reset()


def report(results: dict[str, dict]) -> None:
    """The table: s/step, steps/s, speed-up over variants 1 and 2, and seconds by phase."""
    base = [sum(results[n].values()) for n in list(VARIANTS)[:2]]
    head = f"{'variant':35} {'s/step':>6} {'steps/s':>7} {'vs 1':>6} {'vs 2':>6}"
    logger.info("%s%s", head, "".join(f"{p:>13}" for p in PHASES))
    for name in VARIANTS:
        if name not in results:
            logger.info("%-35s skipped (see the warning above)", name)
            continue
        t = sum(results[name].values())
        row = f"{name:35} {t:6.3f} {1 / t:7.2f} {base[0] / t:5.2f}x {base[1] / t:5.2f}x"
        logger.info("%s%s", row, "".join(f"{results[name][p]:13.3f}" for p in PHASES))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a demo run folder (its --out)")
    p.add_argument("--steps", type=int, default=30, help="timed optimiser steps per variant")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(0)
    model, dataset, loader = build(args.run)
    logger.info("%d training items, %d threads", len(dataset), torch.get_num_threads())
    batches, results = itertools.chain.from_iterable(itertools.repeat(loader)), {}  # epochs
    model.latent_cache = None  # variant 1: the first stage encodes every step
    for name, (cached, bf16, compiled) in VARIANTS.items():
        logger.info("variant %s", name)
        if cached and model.latent_cache is None:  # filled as the recipe does before step 1
            model.latent_cache, start = FirstStageCache(), time.perf_counter()
            model.fill_latent_cache(dataset)
            sec, n = time.perf_counter() - start, len(model.latent_cache)
            logger.info("cache filled: %d latents, %.1f s (%.1f ms each)", n, sec, 1e3 * sec / n)
        try:
            with compiled_unet(model) if compiled else contextlib.nullcontext():
                results[name] = run_variant(model, batches, args.steps, args.warmup, bf16)
        except Exception as exc:  # only a compiler or backend failure skips a variant
            if not compiled:
                raise
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            logger.warning("torch.compile failed, skipped: %s: %s", type(exc).__name__, reason)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
