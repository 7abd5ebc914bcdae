"""Helpers for main.py: config merge and checks, resume resolution, lr scaling, atomic saves."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from ldm.util import get_obj_from_str

logger = logging.getLogger(__name__)

LAST_CKPT = "last.ckpt"
TMP_MARK = ".tmp-"  # partial checkpoint files: .{name}.tmp-{pid}

# Merged under every --base list, so these keys exist, can be overridden and are dumped to configs/.
DEFAULT_LIGHTNING = {
    "trainer": {},
    "modelcheckpoint": {  # kept checkpoints; every epoch unless every_n_train_steps is set
        "target": "lightning.pytorch.callbacks.ModelCheckpoint",
        "params": {
            "filename": "{epoch:06}-{step:09}",
            "save_top_k": -1,
            "every_n_train_steps": None,
        },
    },
    "last_checkpoint": {  # checkpoints/last.ckpt, overwritten atomically, what `-r` resumes from
        "target": "ldm.callbacks.LastCheckpoint",
        "params": {"every_n_train_steps": 500},
    },
    "callbacks": {},
}


PL1_HINTS = {  # Lightning 1.x Trainer arguments that LDM-era configs carry
    "gpus": "Lightning 2: pass --gpus 0,1, or lightning.trainer.accelerator/devices",
    "resume_from_checkpoint": "Lightning 2: resume with -r LOGDIR_OR_CKPT",
    "distributed_backend": "Lightning 2: --strategy ddp",
}


class ConfigError(ValueError):
    """A config key or value that cannot work; main.py reports it in one line."""


def load_config(base: list[str], overrides: list[str]) -> DictConfig:
    """Merge DEFAULT_LIGHTNING, the ``--base`` YAMLs (left to right) and dotlist overrides."""
    config = OmegaConf.create({"lightning": DEFAULT_LIGHTNING})
    for path in base:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        update = OmegaConf.load(path)
        drop_retargeted(config, update)
        config = OmegaConf.merge(config, update)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"unrecognised argument {item!r}: overrides are written key=value")
        check_override_key(config, item.split("=", 1)[0])
    config = OmegaConf.merge(config, OmegaConf.from_dotlist(overrides))
    check_targets(config)
    check_trainer_kwargs(dict(config.lightning.trainer))
    return config


def drop_retargeted(config: DictConfig, update: DictConfig) -> None:
    """Delete every node of ``config`` whose ``target`` the ``update`` changes, so that a later
    YAML that swaps a class (e.g. a KL first stage for a VQ one) replaces its ``params`` instead
    of inheriting keys the new class does not take."""
    for key, new in update.items():
        old = config.get(key) if isinstance(config, DictConfig) else None
        if not (isinstance(old, DictConfig) and isinstance(new, DictConfig)):
            continue
        if "target" in new and "target" in old and new.target != old.target:
            del config[key]
        else:
            drop_retargeted(old, new)


def init_parameters(target: str) -> set[str] | None:
    """Keyword parameters of ``target``'s constructor, following ``**kwargs`` up the MRO;
    None when some class accepts arbitrary keywords all the way up."""
    try:
        obj = get_obj_from_str(target)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"target {target!r} cannot be imported: {err}") from err
    names: set[str] = set()
    for cls in obj.__mro__ if isinstance(obj, type) else ():
        if cls is object or "__init__" not in vars(cls):
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {"self"}
    return None


def check_targets(node: Any, path: str = "") -> None:
    """Every ``params`` key of every ``target:`` node must be a parameter of that target."""
    if isinstance(node, DictConfig):
        if "target" in node and isinstance(node.get("params"), DictConfig):
            accepted = init_parameters(node.target)
            unknown = [] if accepted is None else sorted(set(node.params) - accepted)
            for key in unknown:
                hint = difflib.get_close_matches(str(key), sorted(accepted), n=1)
                raise ConfigError(
                    f"{path}.params.{key}: {node.target} takes no parameter {key!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                )
        for key, value in node.items_ex(resolve=False):
            check_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            check_targets(value, f"{path}[{i}]")


def check_override_key(config: DictConfig, key: str) -> None:
    """Accept a key that exists, a Trainer argument, a new callback's ``target``, or a new
    ``params`` entry of a ``target`` (checked by check_targets); anything else is a ConfigError."""
    missing = object()
    if OmegaConf.select(config, key, default=missing) is not missing:
        return
    parts = key.split(".")
    parent = ".".join(parts[:-1])
    if parent == "lightning.trainer":
        check_trainer_kwargs({parts[-1]: None})
        return
    if parts[:2] == ["lightning", "callbacks"] and len(parts) >= 4 and parts[3] == "target":
        return  # a new callback: lightning.callbacks.NAME.target=pkg.Class
    if len(parts) >= 2 and parts[-2] == "params":
        owner = OmegaConf.select(config, ".".join(parts[:-2]), default=None)
        if isinstance(owner, DictConfig) and "target" in owner:
            return
    i = next(
        i for i in range(len(parts)) if OmegaConf.select(config, ".".join(parts[: i + 1])) is None
    )
    node = OmegaConf.select(config, ".".join(parts[:i])) if i else config
    siblings = [str(s) for s in node.keys()] if isinstance(node, DictConfig) else []
    hint = difflib.get_close_matches(parts[i], siblings, n=1)
    raise ConfigError(
        f"override {key!r}: the merged config has no key {'.'.join(parts[: i + 1])!r}"
        + (f" (did you mean {'.'.join([*parts[:i], hint[0]])!r}?)" if hint else "")
    )


def check_trainer_kwargs(kwargs: dict[str, Any]) -> None:
    """Raise ConfigError for ``lightning.trainer`` keys that pl.Trainer does not accept."""
    unknown = sorted(set(kwargs) - (init_parameters("lightning.pytorch.Trainer") or set()))
    if unknown:
        hints = [PL1_HINTS[k] for k in unknown if k in PL1_HINTS]
        raise ConfigError(
            f"lightning.trainer: pl.Trainer has no argument(s) {unknown}"
            + (f" ({'; '.join(hints)})" if hints else "")
        )


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
