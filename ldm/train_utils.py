"""Helpers for main.py: --gpus, resume resolution, lr scaling, strategy, atomic saves."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ldm.config import ConfigError

logger = logging.getLogger(__name__)

LAST_CKPT = "last.ckpt"
TMP_MARK = ".tmp-"  # partial checkpoint files: .{name}.tmp-{pid}


def parse_gpus(spec: str) -> list[int] | int:
    """LDM/PL-1 ``--gpus``: ``"0,1,"`` -> [0, 1] (ids); ``"2"`` -> 2 (a count); ``"-1"`` -> all."""
    spec = spec.strip()
    try:
        if "," in spec:
            return [int(s) for s in spec.split(",") if s.strip()]
        return int(spec)
    except ValueError as err:
        raise ConfigError(f"--gpus {spec!r}: expected ids like 0,1, or a count like 2") from err


@dataclass
class ResumeTarget:
    """Where a resumed run lives: its log dir, the checkpoint to load and its saved configs."""

    logdir: Path
    ckpt: Path
    configs: list[Path]


def resolve_resume(path: str | Path) -> ResumeTarget:
    """``-r`` with a log dir (its last.ckpt, else its newest *.ckpt) or with a checkpoint file."""
    path = Path(path)
    if path.is_file():
        logdir, ckpt = path.resolve().parent.parent, path
    elif path.is_dir():
        logdir = path.resolve()
        ckpts = sorted((logdir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        last = logdir / "checkpoints" / LAST_CKPT
        if not ckpts:
            raise FileNotFoundError(f"cannot resume: no checkpoint in {logdir / 'checkpoints'}")
        ckpt = last if last.is_file() else ckpts[-1]
    else:
        raise FileNotFoundError(f"cannot resume from {path}: no such log dir or checkpoint")
    configs = sorted((logdir / "configs").glob("*.yaml"))
    if not configs:
        raise FileNotFoundError(f"cannot resume: no saved config in {logdir / 'configs'}")
    return ResumeTarget(logdir, ckpt, configs)


def run_name(name: str, base: list[str], postfix: str = "") -> str:
    """``-n`` name, else ``_<first config stem>`` as LDM (``<time>_talking``), plus the postfix."""
    if name:
        return f"_{name}{postfix}"
    stem = Path(base[0]).stem if base else ""
    return f"_{stem}{postfix}" if stem else postfix


def scaled_learning_rate(
    base_lr: float, batch_size: int, n_devices: int, accumulate: int, scale_lr: bool
) -> float:
    """LDM's rule: lr = accumulate x devices x batch x base_lr with --scale_lr, else base_lr."""
    if not scale_lr:
        logger.info("Setting learning rate to %.2e (base_learning_rate, --scale_lr false)", base_lr)
        return base_lr
    lr = accumulate * n_devices * batch_size * base_lr
    logger.info(
        "Setting learning rate to %.2e = %d (accumulate_grad_batches) * %d (devices) * "
        "%d (batch size) * %.2e (base_learning_rate)",
        lr,
        accumulate,
        n_devices,
        batch_size,
        base_lr,
    )
    return lr


def first_stage_ckpt(config: DictConfig) -> tuple[bool, str | None]:
    """(is a talking model with a first stage, that first stage's ckpt_path)."""
    first = OmegaConf.select(config, "model.params.first_stage_config", default=None)
    if first is None:
        return False, None
    return True, OmegaConf.select(first, "params.ckpt_path", default=None)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename) to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to ``.{name}.tmp-{pid}`` beside the target, fsync, then os.replace.

    Lightning 2.6 writes through a temp file from ``tempfile.mkstemp()`` (the system temp dir)
    and ``shutil.move``: a copy, not a rename, when /tmp is another filesystem, with no fsync,
    and a stray file in /tmp after kill -9. Remote URLs keep Lightning's own path.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)


def remove_partial_checkpoints(ckptdir: Path) -> None:
    """Delete ``.*.tmp-*`` files that a killed run left half-written in ``ckptdir``."""
    for tmp in ckptdir.glob(f".*{TMP_MARK}*"):
        logger.warning("removing partial checkpoint %s left by a killed run", tmp)
        tmp.unlink(missing_ok=True)


def n_processes(kwargs: dict[str, Any]) -> int:
    """Processes the Trainer kwargs ask for: devices per node (count, ids or auto) x nodes."""
    devices = kwargs.get("devices", "auto")
    if isinstance(devices, list | tuple):
        n = len(devices)
    elif isinstance(devices, int) and devices > 0:
        n = devices
    else:  # "auto" or -1: every GPU when CUDA is used, else one process
        gpu = kwargs.get("accelerator", "auto") in ("auto", "gpu", "cuda")
        n = torch.cuda.device_count() if gpu and torch.cuda.is_available() else 1
    return n * int(kwargs.get("num_nodes", 1) or 1)


def resolve_strategy(kwargs: dict[str, Any], model: nn.Module) -> None:
    """Where Lightning would use plain "ddp", use DDP that tolerates unused parameters and
    broadcasts buffers only when BatchNorm statistics need it.

    Unused: with one context token the cross-attention to_q/to_k/norm2 are skipped, and the
    first stage's discriminator is idle before disc_start. Buffers: the EMA copy (530M floats in
    the paper config) is updated identically on every rank, so a per-step broadcast is waste.
    """
    strategy = kwargs.get("strategy", "auto")
    if strategy == "ddp" or (strategy in (None, "auto") and n_processes(kwargs) > 1):
        batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        kwargs["strategy"] = DDPStrategy(find_unused_parameters=True, broadcast_buffers=batchnorm)


def trainer_world_size(trainer: pl.Trainer) -> int:
    """Processes taking part in training: devices per node x nodes."""
    return int(trainer.num_devices) * int(trainer.num_nodes)
