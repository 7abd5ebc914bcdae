"""Config instantiation and small helpers shared across the package (as in CompVis ldm/util.py)."""

from __future__ import annotations

import importlib
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


def get_obj_from_str(string: str) -> Any:
    """Import ``"pkg.module.Name"`` and return ``Name``."""
    module, cls = string.rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)


def instantiate_from_config(config: Any, **extra: Any) -> Any:
    """Build ``config.target(**config.params, **extra)``; the LDM ``target:``/``params:`` format."""
    if "target" not in config:
        raise KeyError(f"Expected key 'target' to instantiate, got keys {list(config.keys())}")
    params = dict(config.get("params", None) or {})
    params.update(extra)
    return get_obj_from_str(config["target"])(**params)


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def default(val: Any, d: Any) -> Any:
    """``val`` unless it is None, else ``d`` (called if callable)."""
    if val is not None:
        return val
    return d() if callable(d) else d


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def to_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Images in [-1, 1] (tensor or array, any layout) -> uint8, clipped and rounded, same type."""
    if isinstance(images, torch.Tensor):
        return ((images.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def from_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """8-bit images (tensor or array, any layout) -> float32 in [-1, 1], same type."""
    if isinstance(images, torch.Tensor):
        return images.float() / 127.5 - 1.0
    return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


def load_checkpoint_file(
    path: str | Path, missing_hint: str = "", allow_pickle: bool = True
) -> Any:
    """A torch checkpoint file as saved (a Lightning dict, a bare state dict, ...), on the CPU.

    Loads with ``weights_only=True``; with ``allow_pickle``, old Lightning 1.x files that pickle
    Python objects fall back to a full load, with a warning naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}. {missing_hint}".rstrip())
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not allow_pickle:
            raise
        logger.warning(
            "%s holds pickled Python objects (an old Lightning checkpoint); loading it with "
            "weights_only=False, which runs code from the file: only do this for files you trust.",
            path,
        )
        return torch.load(path, map_location="cpu", weights_only=False)


def state_dict_of(ckpt: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a loaded Lightning/LDM checkpoint, or the checkpoint itself when it
    is a bare state dict; ValueError naming ``path`` otherwise."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(ckpt).__name__}")
    return ckpt


def load_state_dict_file(
    path: str | Path, missing_hint: str = "", allow_pickle: bool = True
) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning/LDM checkpoint (or a bare state dict), on the CPU
    (``load_checkpoint_file``). The one loader of model, first-stage, LPIPS and metric weights.
    """
    return state_dict_of(load_checkpoint_file(path, missing_hint, allow_pickle), path)
