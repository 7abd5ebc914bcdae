"""Training throughput of configs/latent-diffusion/talking-small.yaml on CPU through main.py:
1 process (2 threads, then 1 thread), then 2 DDP processes (gloo, 1 thread each). With --memory,
the paper UNet's training-step memory with and without gradient checkpointing (about a minute
per batch size on 2 cores, up to ~7 GB of RAM at batch 4).

    python benchmarks/bench_train.py [--steps 20] [--warmup 5] [--memory [--no-throughput]]

The data are synthetic (tests/conftest.py make_tiny_dataset at 128 px); the first stage is random
(ckpt_path=null), which costs the same as a trained one. Steps/s comes from the TrainReport
callback's per-batch end times after the warm-up; validation and image logging are off.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "configs/latent-diffusion/talking-small.yaml"
PAPER = ROOT / "configs/latent-diffusion/talking.yaml"
logger = logging.getLogger("bench_train")


def make_dataset(root: Path, size: int = 128) -> None:
    """HDTF-layout synthetic data (3 ids x 100 frames) written by the tests' generator."""
    spec = importlib.util.spec_from_file_location("bench_conftest", ROOT / "tests/conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_tiny_dataset(root, n_ids=3, n_frames=100, size=size)


def train_args(root: Path, logs: Path, steps: int, batch: int) -> list[str]:
    """main.py arguments: the small config on the synthetic data, no val/images/checkpoints."""
    report = logs.parent / "report.yaml"
    report.write_text("lightning:\n  callbacks:\n    r:\n      target: ldm.callbacks.TrainReport\n")
    args = ["--base", str(SMALL), str(report), "-t", "--max_steps", str(steps), "-l", str(logs)]
    for split, lst in (("train", "data_train.txt"), ("validation", "data_test.txt")):
        args += [f"data.params.{split}.params.root={root / 'HDTF'}"]
        args += [f"data.params.{split}.params.split_file={root / lst}"]
    return args + [
        "model.params.first_stage_config.params.ckpt_path=null",
        f"data.params.batch_size={batch}",
        "data.params.num_workers=0",
        "lightning.trainer.limit_val_batches=0",
        "lightning.trainer.enable_progress_bar=false",
        "lightning.trainer.enable_model_summary=false",
        "lightning.callbacks.image_logger.params.disabled=true",
        "lightning.last_checkpoint.params.every_n_train_steps=100000",
    ]


def steps_per_second(args: list[str], logs: Path, warmup: int, threads: int) -> float:
    """Run main.py to completion and time the batches after ``warmup`` on rank 0."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(ROOT / "main.py"), *args]
    res = subprocess.run(cmd, capture_output=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.decode()[-3000:])
    (report,) = logs.glob("*/reports/rank0.json")
    times = json.loads(report.read_text())["step_end_times"][warmup:]
    return (len(times) - 1) / (times[-1] - times[0])


def bench_throughput(steps: int, warmup: int, batch: int) -> None:
    """Print steps/s and samples/s for 1 process and for 2 DDP processes."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root / "data")
        one, ddp = ["--devices", "1"], ["--devices", "2", "--strategy", "ddp"]
        runs = [("1 process, 2 threads", one, 1, 2), ("1 process, 1 thread", one, 1, 1)]
        runs += [("2 DDP processes, 1 thread each", ddp, 2, 1)]
        for i, (name, extra, world, threads) in enumerate(runs):
            logs = root / f"logs{i}"
            args = train_args(root / "data", logs, steps, batch) + ["--accelerator", "cpu", *extra]
            rate = steps_per_second(args, logs, warmup, threads)
            logger.info(
                "%-31s batch %d/process: %.3f steps/s, %.2f samples/s",
                name,
                batch,
                rate,
                rate * batch * world,
            )


def rss_gb() -> float:
    """Resident memory of this process, GB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e9


def unet_step_memory(use_checkpoint: bool, batch: int) -> None:
    """Child process: peak RSS of one forward+backward of the paper UNet, above its weights."""
    import torch
    from omegaconf import OmegaConf

    from ldm.models.diffusion.ddpm import DiffusionWrapper

    unet_cfg = OmegaConf.load(PAPER).model.params.unet_config
    unet_cfg.params.use_checkpoint = use_checkpoint
    model = DiffusionWrapper(unet_cfg).train()
    n = sum(p.numel() for p in model.parameters())
    cond = {
        "masked_latent": torch.randn(batch, 3, 64, 64),
        "reference_latent": torch.randn(batch, 3, 64, 64),
        "audio_feature": torch.randn(batch, 64),
        "landmark_feature": torch.randn(batch, 64),
    }
    x, t = torch.randn(batch, 3, 64, 64), torch.randint(0, 1000, (batch,))
    base = rss_gb()
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_gb())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    model(x, t, cond).square().mean().backward()
    seconds = time.perf_counter() - start
    done.set()
    print(json.dumps({"params": n, "weights_gb": base, "peak_gb": peak[0], "seconds": seconds}))


def bench_memory(batch: int) -> None:
    """Paper UNet: activation+gradient memory of one step, with and without checkpointing."""
    for use_checkpoint in (True, False):
        child = ["--memory-child", str(int(use_checkpoint)), "--memory-batch", str(batch)]
        res = subprocess.run([sys.executable, __file__, *child], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-3000:])
        r = json.loads(res.stdout.strip().splitlines()[-1])
        params_gb = r["params"] * 4 / 1e9
        logger.info(
            "paper UNet %.0fM params (%.2f GB fp32), batch %d, gradient checkpointing %s: "
            "forward+backward %.0f s, peak %.2f GB = %.2f GB above the weights "
            "(%.2f GB gradients + %.2f GB activations)",
            r["params"] / 1e6,
            params_gb,
            batch,
            "on " if use_checkpoint else "off",
            r["seconds"],
            r["peak_gb"],
            r["peak_gb"] - r["weights_gb"],
            params_gb,
            r["peak_gb"] - r["weights_gb"] - params_gb,
        )


def main() -> None:
    """Parse the flags and run the benchmarks."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="training steps per run")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    p.add_argument("--batch", type=int, default=8, help="per process (talking-small.yaml: 8)")
    p.add_argument("--memory", action="store_true", help="also measure the paper UNet memory")
    p.add_argument(
        "--throughput", action=argparse.BooleanOptionalAction, default=True, help="steps/s runs"
    )
    p.add_argument("--memory-batch", type=int, default=1)
    p.add_argument("--memory-child", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child is not None:  # a fresh process per measurement: clean peak RSS
        return unet_step_memory(bool(args.memory_child), args.memory_batch)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.throughput:
        bench_throughput(args.steps, args.warmup, args.batch)
    if args.memory:
        bench_memory(args.memory_batch)


if __name__ == "__main__":
    main()
