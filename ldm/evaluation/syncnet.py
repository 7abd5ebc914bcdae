"""SyncNet (Chung & Zisserman 2016, `syncnet_v2`) and the LSE-D / LSE-C lip-sync scores.

The network and the scoring follow joonson/syncnet_python (SyncNetModel.S, SyncNetInstance): 5-frame
224 x 224 BGR face crops against 20 MFCC steps (0.2 s), distances searched over +-15 frames.
LSE-D is the smallest mean distance over offsets, LSE-C the median minus that minimum. The face
crop uses syncnet_python's geometry, with the face box taken from dlib landmarks instead of S3FD.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.signal import medfilt
from torch import nn

from ldm.data.layout import SAMPLE_RATE
from ldm.evaluation import WeightsError, load_state_dict
from ldm.evaluation.audio_mfcc import mfcc

log = logging.getLogger(__name__)

WINDOW = 5  # video frames per SyncNet input
MFCC_PER_FRAME = 4  # 100 Hz MFCC steps per 25 fps frame
SAMPLES_PER_FRAME = 640  # 16 kHz audio samples per 25 fps frame
VSHIFT = 15  # offsets searched, in frames, both ways
CROP_SIZE = 224
CROP_SCALE = 0.4  # syncnet_python run_pipeline --crop_scale
SMOOTH_KERNEL = 13  # median filter of the crop track, frames
PAD_VALUE = 110
ENABLE_HELP = (
    "LSE-C/LSE-D need SyncNet weights on disk: `python scripts/download_models.py syncnet` "
    "puts them where scripts/evaluate.py finds them; or --syncnet-weights syncnet_v2.model "
    "(from joonson/syncnet_python's download_model.sh)"
)


def _conv_bn(conv: nn.Module, bn: nn.Module, pool: nn.Module | None = None) -> list[nn.Module]:
    """conv, batch norm, ReLU and an optional pool (flattened into the Sequential)."""
    return [conv, bn, nn.ReLU(inplace=True)] + ([pool] if pool is not None else [])


def _audio_cnn() -> nn.Sequential:
    """netcnnaud: (B, 1, 13, 20) MFCC -> (B, 512, 1, 1)."""
    c2, bn2, mp2 = nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d
    return nn.Sequential(
        *_conv_bn(c2(1, 64, 3, padding=1), bn2(64), mp2(1, 1)),
        *_conv_bn(c2(64, 192, 3, padding=1), bn2(192), mp2(3, stride=(1, 2))),
        *_conv_bn(c2(192, 384, 3, padding=1), bn2(384)),
        *_conv_bn(c2(384, 256, 3, padding=1), bn2(256)),
        *_conv_bn(c2(256, 256, 3, padding=1), bn2(256), mp2(3, stride=2)),
        *_conv_bn(c2(256, 512, (5, 4)), bn2(512)),
    )


def _lip_cnn() -> nn.Sequential:
    """netcnnlip: (B, 3, 5, 224, 224) BGR frames in 0..255 -> (B, 512, 1, 1, 1)."""
    c3, bn3, mp3 = nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d
    return nn.Sequential(
        *_conv_bn(c3(3, 96, (5, 7, 7), stride=(1, 2, 2)), bn3(96), mp3((1, 3, 3), (1, 2, 2))),
        *_conv_bn(
            c3(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            bn3(256),
            mp3((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)),
        ),
        *_conv_bn(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256)),
        *_conv_bn(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256)),
        *_conv_bn(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256), mp3((1, 3, 3), (1, 2, 2))),
        *_conv_bn(c3(256, 512, (1, 6, 6)), bn3(512)),
    )


def _head(dim: int) -> nn.Sequential:
    """netfcaud / netfclip: 512 -> 512 -> dim embedding."""
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNet(nn.Module):
    """Two-stream audio/lip embedding network; module names match the syncnet_v2 state dict."""

    def __init__(self, dim: int = 1024) -> None:
        super().__init__()
        self.netcnnaud = _audio_cnn()
        self.netfcaud = _head(dim)
        self.netfclip = _head(dim)
        self.netcnnlip = _lip_cnn()

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC windows -> (B, dim)."""
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) face crops -> (B, dim)."""
        return self.netfclip(self.netcnnlip(x).flatten(1))


def load_syncnet(path: str | Path) -> SyncNet:
    """SyncNet in eval mode from a syncnet_v2 state-dict file."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{path}: SyncNet weights not found. {ENABLE_HELP}")
    state = load_state_dict(p, "SyncNet")
    state = {k.removeprefix("__S__."): v for k, v in state.items()}
    model = SyncNet()
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{path}: not a syncnet_v2 state dict (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )
    log.info("SyncNet loaded from %s", path)
    return model.eval()


def _fill_nearest(x: np.ndarray) -> np.ndarray:
    """Replace NaN rows of a (T, D) array by the nearest finite row in time."""
    ok = np.flatnonzero(np.isfinite(x).all(1))
    nearest = ok[np.abs(np.arange(len(x))[:, None] - ok[None]).argmin(1)]
    return x[nearest]


def crop_track(lms: np.ndarray) -> np.ndarray | None:
    """(T, 3) smoothed crop (centre x, centre y, half size) from landmarks; None if no face."""
    ok = np.isfinite(lms).all(axis=(1, 2))
    if not ok.any():
        return None
    lo, hi = np.nanmin(lms, axis=1), np.nanmax(lms, axis=1)  # (T, 2)
    top = lo[:, 1] - 0.25 * (hi[:, 1] - lo[:, 1])  # S3FD boxes reach above the brows
    box = np.stack([lo[:, 0], top, hi[:, 0], hi[:, 1]], 1)
    size = np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) / 2
    det = np.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2, size], 1)
    det = _fill_nearest(np.where(ok[:, None], det, np.nan))
    k = min(SMOOTH_KERNEL, len(det) - (len(det) + 1) % 2)  # odd and not longer than the clip
    return np.stack([medfilt(det[:, j], k) for j in range(3)], 1) if k > 1 else det


def face_crops(frames: Iterable[np.ndarray], track: np.ndarray) -> Iterator[np.ndarray]:
    """(224, 224, 3) uint8 BGR crop of each frame, syncnet_python's run_pipeline geometry."""
    for frame, (mx, my, bs) in zip(frames, track, strict=True):
        pad = int(bs * (1 + 2 * CROP_SCALE))
        img = cv2.copyMakeBorder(
            cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR),
            pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3,
        )  # fmt: skip
        my, mx = my + pad, mx + pad
        face = img[
            int(my - bs) : int(my + bs * (1 + 2 * CROP_SCALE)),
            int(mx - bs * (1 + CROP_SCALE)) : int(mx + bs * (1 + CROP_SCALE)),
        ]
        yield cv2.resize(face, (CROP_SIZE, CROP_SIZE))


@torch.inference_mode()
def embed(model: SyncNet, crops: Iterator[np.ndarray], cc: np.ndarray, n: int, batch: int = 16):
    """Lip and audio embeddings (n, dim) of windows starting at frames 0..n-1, holding at most
    batch + WINDOW - 1 crops at a time."""
    aud = torch.from_numpy(cc).float()[None]  # (1, 13, N)
    lip_feats, aud_feats, held = [], [], []
    for i in range(0, n, batch):
        idx = range(i, min(n, i + batch))
        held += itertools.islice(crops, len(idx) + WINDOW - 1 - len(held))
        vid = torch.from_numpy(np.stack(held)).float().permute(3, 0, 1, 2)  # (3, b + 4, 224, 224)
        v = torch.stack([vid[:, j - i : j - i + WINDOW] for j in idx])  # (B, 3, 5, 224, 224)
        a = torch.stack([aud[:, :, j * MFCC_PER_FRAME : j * MFCC_PER_FRAME + 20] for j in idx])
        lip_feats.append(model.forward_lip(v))
        aud_feats.append(model.forward_aud(a))  # a: (B, 1, 13, 20)
        held = held[len(idx) :]
    return torch.cat(lip_feats), torch.cat(aud_feats)


def offset_distances(lip: torch.Tensor, aud: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """(2 vshift + 1,) mean lip-audio distance per offset (syncnet_python calc_pdist)."""
    padded = torch.nn.functional.pad(aud, (0, 0, vshift, vshift))
    win = 2 * vshift + 1
    dists = [
        torch.nn.functional.pairwise_distance(lip[[i]].repeat(win, 1), padded[i : i + win])
        for i in range(len(lip))
    ]
    return torch.stack(dists, 1).mean(1)


def lse(
    model: SyncNet, frames: Iterable[np.ndarray], lms: np.ndarray, audio: np.ndarray,
    sr: int = SAMPLE_RATE,
) -> dict[str, float]:  # fmt: skip
    """LSE-D, LSE-C and the best AV offset (frames) of 25 fps RGB frames (one per landmark row,
    read one at a time) with 16 kHz audio."""
    if sr != SAMPLE_RATE:
        raise ValueError(f"SyncNet expects 16 kHz audio, got {sr} Hz")
    track = crop_track(lms)
    n = min(len(lms), len(audio) // SAMPLES_PER_FRAME) - WINDOW
    if track is None or n < 1:
        why = "no face found" if track is None else f"clip too short ({len(lms)} frames)"
        log.warning("SyncNet skipped: %s", why)
        return {"lse_d": float("nan"), "lse_c": float("nan"), "av_offset": float("nan")}
    cc = mfcc(audio * 32768.0, sr).T  # (13, N); syncnet_python reads int16 samples
    lip, aud = embed(model, face_crops(frames, track), cc, n)
    mdist = offset_distances(lip, aud)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return {"lse_d": float(minval), "lse_c": float(conf), "av_offset": float(VSHIFT - minidx)}
