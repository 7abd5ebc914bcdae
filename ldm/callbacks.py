"""Training callbacks (out of ldm main.py): log-dir setup, last.ckpt with signal saves, image grids,
and a per-rank training report."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from ldm.train_utils import remove_partial_checkpoints

logger = logging.getLogger(__name__)


class SetupCallback(Callback):
    """Rank 0, before fitting: create the log dir layout and dump the merged config to configs/."""

    def __init__(self, now: str, logdir: str | Path, config: DictConfig, resume: bool) -> None:
        self.now = now
        self.logdir = Path(logdir)
        self.config = config
        self.resume = resume

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for sub in ("checkpoints", "configs", "images"):
            (self.logdir / sub).mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(self.logdir / "checkpoints")
        path = self.logdir / "configs" / f"{self.now}-project.yaml"
        OmegaConf.save(self.config, path)
        logger.info(
            "%s run in %s; config saved to %s",
            "Resumed" if self.resume else "New",
            self.logdir,
            path,
        )


class LastCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt only, written every ``every_n_train_steps``, at the end of training,
    after the batch in which SIGUSR1 arrived (training goes on) and on SIGTERM (training stops).
    Lightning turns SIGTERM into a SIGTERMException after the current batch; it is saved there."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 500, **kwargs: Any) -> None:
        kwargs.update(save_top_k=0, save_last=True, monitor=None, enable_version_counter=False)
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, **kwargs)
        self._signal_requested = False
        self._previous_handler: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGUSR1, self._on_sigusr1)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._previous_handler = None

    def _on_sigusr1(self, signum: int, frame: Any) -> None:
        """Signal handler: only sets a flag; the save happens at the end of the batch."""
        self._signal_requested = True
        if callable(self._previous_handler):  # e.g. Lightning's SLURM requeue handler
            self._previous_handler(signum, frame)

    def save_last_now(self, trainer: pl.Trainer, reason: str) -> None:
        """Write last.ckpt for the current state (collective: every rank must call it)."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = trainer.global_step
        if trainer.is_global_zero:
            logger.info(
                "%s: saved %s at global step %d", reason, self.last_model_path, trainer.global_step
            )

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        requested = self._signal_requested
        if trainer.world_size > 1:  # the signal reaches one process; all must save together
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            self._signal_requested = False
            self.save_last_now(trainer, "SIGUSR1")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step and not trainer.fast_dev_run:
            self.save_last_now(trainer, "end of training")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) and not trainer.sanity_checking:
            self.save_last_now(trainer, "SIGTERM")


# ----------------------------------------------------------------------------- image grids


def make_grid(images: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> one (C, H', W') grid with ``nrow`` images per row."""
    b = images.shape[0]
    ncol = max(1, min(nrow, b))
    nrows = math.ceil(b / ncol)
    if nrows * ncol > b:
        images = torch.cat([images, images.new_zeros(nrows * ncol - b, *images.shape[1:])])
    images = F.pad(images, (padding // 2,) * 4, value=1.0)  # white frame around each image
    return rearrange(images, "(r c) ch h w -> ch (r h) (c w)", c=ncol)


def to_unit_range(images: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """[-1, 1] float (B, C, H, W) -> [0, 1] with 3 channels (1-channel maps are repeated)."""
    images = images.detach().float().cpu()
    if clamp:
        images = images.clamp(-1.0, 1.0)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return (images + 1.0) / 2.0


def save_png(grid: torch.Tensor, path: Path) -> None:
    """(3, H, W) in [0, 1] -> 8-bit PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (rearrange(grid, "c h w -> h w c").clamp(0, 1).numpy() * 255).round()
    Image.fromarray(array.astype(np.uint8)).save(path)


def take(batch: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` samples of every tensor, array or list in a batch."""
    out = {}
    for key, value in batch.items():
        sliceable = isinstance(value, torch.Tensor | np.ndarray | list | tuple)
        out[key] = value[:n] if sliceable else value
    return out


class ImageLogger(Callback):
    """Rank 0: PNG grids of ``pl_module.log_images(batch, n=, ddim_steps=)`` under
    ``<logdir>/images/{train,val}/`` and in TensorBoard, every ``batch_frequency`` training batches
    (and at 1, 2, 4, ... before that when ``increase_log_steps``), and for the first validation
    batch of each validation run. One PNG per key, one row per key in ``overview_*.png``."""

    def __init__(
        self,
        batch_frequency: int,
        max_images: int,
        ddim_steps: int = 50,
        clamp: bool = True,
        increase_log_steps: bool = True,
        log_first_step: bool = False,
        log_val: bool = True,
        disabled: bool = False,
    ) -> None:
        if batch_frequency < 1:
            raise ValueError(f"ImageLogger batch_frequency must be >= 1, got {batch_frequency}")
        self.batch_freq = batch_frequency
        self.max_images = max_images
        self.ddim_steps = ddim_steps
        self.clamp = clamp
        self.log_first_step = log_first_step
        self.log_val = log_val
        self.disabled = disabled
        n_log = int(math.log2(batch_frequency)) + 1 if increase_log_steps else 0
        self.log_steps = {2**i for i in range(n_log)}
        self._warned = False

    def check_frequency(self, step: int) -> bool:
        """Log at ``step`` (batches done): multiples of the frequency and the early powers of 2."""
        if step == 0:
            return self.log_first_step
        return step % self.batch_freq == 0 or step in self.log_steps

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.fit_loop.total_batch_idx + 1
        if not self.disabled and trainer.is_global_zero and self.check_frequency(step):
            self.log_img(trainer, pl_module, batch, batch_idx, "train")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        first = batch_idx == 0 and dataloader_idx == 0
        if self.disabled or not self.log_val or not first or not trainer.is_global_zero:
            return
        if trainer.sanity_checking or trainer.global_step == 0:
            return
        self.log_img(trainer, pl_module, batch, batch_idx, "val")

    def log_img(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        split: str,
    ) -> None:
        """Run the module's ``log_images`` in eval mode and write the grids."""
        log_images = getattr(pl_module, "log_images", None)
        if not callable(log_images):
            if not self._warned:
                logger.warning("%s has no log_images(): no image grids", type(pl_module).__name__)
                self._warned = True
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                images = log_images(
                    take(batch, self.max_images), n=self.max_images, ddim_steps=self.ddim_steps
                )
        finally:
            pl_module.train(was_training)
        grids = {
            k: make_grid(to_unit_range(v, self.clamp), self.max_images) for k, v in images.items()
        }
        self.write(trainer, grids, split, batch_idx)

    def write(
        self, trainer: pl.Trainer, grids: dict[str, torch.Tensor], split: str, batch_idx: int
    ) -> None:
        """Save one PNG per key plus an overview (keys as rows) and add them to TensorBoard."""
        root = Path(trainer.default_root_dir) / "images" / split
        suffix = f"gs-{trainer.global_step:06}_e-{trainer.current_epoch:06}_b-{batch_idx:06}.png"
        for key, grid in grids.items():
            save_png(grid, root / f"{key}_{suffix}")
        shapes = {tuple(g.shape) for g in grids.values()}
        if len(shapes) == 1:
            save_png(torch.cat(list(grids.values()), dim=1), root / f"overview_{suffix}")
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                for key, grid in grids.items():
                    lg.experiment.add_image(f"{split}/{key}", grid, trainer.global_step)
        logger.info("image grids %s (%s) -> %s", suffix, ", ".join(grids), root)


# ----------------------------------------------------------------------------- training report


def tree_digest(obj: Any) -> str:
    """SHA-256 of nested dicts/lists of tensors and scalars, independent of dict order."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, Mapping):
            for key in sorted(x, key=str):
                h.update(f"k:{key};".encode())
                feed(x[key])
        elif isinstance(x, list | tuple):
            h.update(f"l:{len(x)};".encode())
            for item in x:
                feed(item)
        elif isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"t:{t.dtype}:{tuple(x.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        else:
            h.update(f"v:{x!r};".encode())

    feed(obj)
    return h.hexdigest()


def state_digests(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """Global step and digests of the weights, the EMA buffers and the optimiser states."""
    state = pl_module.state_dict()
    return {
        "global_step": trainer.global_step,
        "weights": tree_digest(state),
        "ema": tree_digest({k: v for k, v in state.items() if k.startswith("model_ema.")}),
        "optimizer": tree_digest([opt.state_dict() for opt in trainer.optimizers]),
    }


class TrainReport(Callback):
    """Each rank writes ``<logdir>/reports/rank{r}.json``: world size, steps it ran, the sample keys
    it saw, batch end times and state digests at train start/end (checks DDP sync and resume)."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}
        self.path: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logdir = trainer.strategy.broadcast(str(trainer.default_root_dir))  # rank 0's, everywhere
        self.path = Path(logdir) / "reports" / f"rank{trainer.global_rank}.json"

    def _write(self) -> None:
        """Write the record as JSON (rank 0's log dir, one file per rank)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.record, indent=1))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "start": state_digests(trainer, pl_module),
            "samples": [],
            "step_end_times": [],
        }
        self._write()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if "video_id" in batch and "frame" in batch:
            keys = zip(batch["video_id"].tolist(), batch["frame"].tolist(), strict=True)
            self.record["samples"].extend(f"{v}_{f}" for v, f in keys)
        self.record["step_end_times"].append(time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["end"] = state_digests(trainer, pl_module)
        self._write()


class ProgressETA(Callback):
    """Log ``step k/N (p%), s/step, ETA`` every ``every_n_steps`` optimiser steps (N = max_steps),
    for runs watched from a log rather than a terminal (the demo). With ``lightning.trainer.
    max_time`` the ETA is the sooner of the two ends, and a run the time stops says so."""

    def __init__(self, every_n_steps: int = 100, name: str = "train") -> None:
        self.every_n_steps = every_n_steps
        self.name = name
        self.start: tuple[float, int] | None = None  # (time, step) when this process started

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if not trainer.is_global_zero or step % self.every_n_steps or total <= 0:
            return
        t0, step0 = self.start
        rate = (time.perf_counter() - t0) / max(1, step - step0)  # s/step, resumes included
        eta = rate * (total - step)
        remaining = time_remaining(trainer)
        eta = eta if remaining is None else min(eta, remaining)
        logger.info(
            "[%s] step %d/%d (%d%%), %.2f s/step, ETA %d:%02d min",
            self.name, step, total, 100 * step // total, rate, eta // 60, eta % 60,
        )  # fmt: skip

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if trainer.is_global_zero and 0 < step < total and time_remaining(trainer) == 0:
            logger.warning(
                "[%s] stopped at step %d/%d: its time budget (lightning.trainer.max_time) ran out",
                self.name, step, total,
            )  # fmt: skip


def time_remaining(trainer: pl.Trainer) -> float | None:
    """Seconds of ``lightning.trainer.max_time`` left for training (0 when spent), or None."""
    timer = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, Timer)), None)
    left = None if timer is None else timer.time_remaining("train")
    return None if left is None else max(0.0, left)
