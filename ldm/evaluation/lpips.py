"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), weights from a local path only.

Parameter names follow the `lpips` package (`net.sliceK.I.*`, `linK.model.1.weight`), so the state
dict of `lpips.LPIPS(net="alex")` loads as is. A folder holding torchvision's AlexNet file
(`alexnet-owt-*.pth`, keys `features.I.*`) plus the package's linear layers `alex.pth` works too.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ldm.evaluation import WeightsError, load_state_dict
from ldm.modules.losses.lpips import LPIPSHead
from ldm.util import from_uint8

log = logging.getLogger(__name__)

# torchvision AlexNet `features` indices of each slice; each slice ends at a ReLU (relu1..relu5)
SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
CHANNELS = (64, 192, 384, 256, 256)

ENABLE_HELP = (
    "LPIPS needs AlexNet-LPIPS weights on disk: `python scripts/download_models.py lpips-alex` "
    "puts them where scripts/evaluate.py finds them; or --lpips-weights FILE, where FILE is "
    "torch.save(lpips.LPIPS(net='alex').state_dict()) made where the weights can be downloaded, "
    "or a folder with torchvision's alexnet-owt-7be5be79.pth and the lpips package's "
    "weights/v0.1/alex.pth"
)


def _alexnet_layers() -> list[nn.Module]:
    """torchvision AlexNet `features` without the last max-pool, indices 0..11."""
    return [
        nn.Conv2d(3, 64, 11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(inplace=True),
    ]


class AlexFeatures(nn.Module):
    """AlexNet cut into the five slices whose ReLU outputs LPIPS compares."""

    def __init__(self) -> None:
        super().__init__()
        layers = _alexnet_layers()
        for k, (a, b) in enumerate(SLICES, start=1):
            seq = nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(a, b)))
            self.add_module(f"slice{k}", seq)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five feature maps (B, C_k, H_k, W_k)."""
        feats = []
        for k in range(1, len(SLICES) + 1):
            x = getattr(self, f"slice{k}")(x)
            feats.append(x)
        return feats


class LPIPS(LPIPSHead):
    """AlexNet LPIPS v0.1 on the shared LPIPSHead: (B, 3, H, W) x2 in [-1, 1] -> (B,)."""

    def __init__(self) -> None:
        super().__init__(AlexFeatures(), CHANNELS)


def _rename(key: str) -> str | None:
    """Map a torchvision/lpips key to this module's name; None for keys LPIPS does not use."""
    parts = key.split(".")
    if parts[0] == "features" and parts[1].isdigit():
        i = int(parts[1])
        k = next((n for n, (a, b) in enumerate(SLICES, start=1) if a <= i < b), None)
        return None if k is None else f"net.slice{k}.{i}.{parts[2]}"
    if parts[0] == "lins" and parts[-1] == "weight":
        return f"lin{parts[1]}.model.1.weight"
    if parts[0].startswith("lin") and parts[-1] == "weight":
        return f"{parts[0]}.model.1.weight"
    if parts[0] == "net" and parts[1].startswith("slice"):
        return key
    return None


def load_lpips(path: str | Path) -> LPIPS:
    """AlexNet-LPIPS in eval mode from a state-dict file or a folder of .pth files."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"{path}: LPIPS weights not found. {ENABLE_HELP}")
    files = sorted(p.glob("*.pth")) + sorted(p.glob("*.pt")) if p.is_dir() else [p]
    state = {}
    for f in files:
        for key, value in load_state_dict(f, "LPIPS").items():
            name = _rename(key)
            if name is not None:
                state[name] = value
    model = LPIPS()
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise WeightsError(f"{path}: LPIPS weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    model.load_state_dict(state)
    log.info("LPIPS (AlexNet, v0.1) loaded from %s", path)
    return model.eval()


@torch.inference_mode()
def lpips_frames(
    model: LPIPS, pred: Iterable[np.ndarray], gt: Iterable[np.ndarray], batch: int = 8
) -> np.ndarray:
    """(T,) LPIPS of uint8 RGB frame pairs (H, W, 3) at their own resolution, read in batches."""
    out = []
    pairs = zip(pred, gt, strict=True)
    while chunk := list(itertools.islice(pairs, batch)):
        x = torch.from_numpy(np.stack([p for p, _ in chunk]))
        y = torch.from_numpy(np.stack([g for _, g in chunk]))
        x = from_uint8(x.permute(0, 3, 1, 2))  # (B, 3, H, W) in [-1, 1]
        y = from_uint8(y.permute(0, 3, 1, 2))
        out.append(model(x, y).cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
