"""ReferenceBank: per frame, the training frame whose mouth matches the audio (reference "bank").

A model trained with mouth-matched references (``reference_choice: mouth``,
ldm/data/mouth_reference.py) learns to use the reference it is shown (not yet to copy its lips:
docs/experiments.md). At rendering time each frame is shown the frame of the speaker's training
footage whose mouth shape is nearest the one its MouthPredictor reads from the audio; the model
warps it onto the frame's head pose (``align_reference``) and inpaints with it. The bank is a
split list of a preprocessed dataset (e.g. the demo's ``data/data_train.txt``): its images and
landmark files are read once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ldm.data.layout import MOUTH, UPPER_FACE_LANDMARKS, format_key
from ldm.data.mouth_reference import read_landmarks
from ldm.data.talk import load_image, read_keys
from ldm.util import from_uint8, to_uint8

logger = logging.getLogger(__name__)


def has_fitted_mouth(model: Any) -> bool:
    """Whether ``model`` has a fitted MouthPredictor, which a reference bank needs."""
    predictor = getattr(model, "mouth_model", None)
    return predictor is not None and bool(predictor.fitted)


class ReferenceBank:
    """Frames (N, S, S, 3) uint8, their upper-face landmarks (N, 39, 2) and mouth shapes
    (N, 40: their mouth codes within the predictor's principal shapes)."""

    def __init__(self, model: Any, split_file: str | Path, root: str | Path) -> None:
        if not has_fitted_mouth(model):
            raise ValueError(
                "--reference bank needs a model trained with a fitted MouthPredictor "
                "(model.params.mouth_config, e.g. configs/latent-diffusion/talking-demo.yaml)"
            )
        root, self.predictor = Path(root), model.mouth_model
        keys = read_keys(Path(split_file))
        if len(keys) == 0:
            raise ValueError(f"reference bank {split_file}: no keys")
        size = model.frame_size
        images, scales = [], []
        for key in tqdm(keys, desc="reference bank", leave=False, disable=None):  # no bar in logs
            image, scale = load_image(root / "images" / f"{format_key(*key)}.jpg", size)
            images.append(to_uint8(image))
            scales.append(scale)
        lms = torch.from_numpy(read_landmarks(root, keys) / np.asarray(scales)[:, None, None])
        self.images = np.stack(images)
        self.landmarks = lms[:, list(UPPER_FACE_LANDMARKS)].float()
        with torch.no_grad():  # the shapes within the principal components, once
            codes = self.predictor.code(lms[:, list(MOUTH)], self.landmarks)
            self.shapes = self.predictor.project(codes)
        logger.info("reference bank: %d frames from %s", len(keys), split_file)

    def pick(self, codes: torch.Tensor) -> np.ndarray:
        """(B, 40) mouth codes -> (B,) indices of the bank frames with the nearest shapes:
        distances between the shapes within the predictor's principal components (the part it
        predicts), in units of the codes' spread over the training frames."""
        p = self.predictor
        with torch.no_grad():
            diff = (p.project(codes)[:, None] - self.shapes[None]) / p.code_std
        return diff.pow(2).sum(-1).argmin(1).cpu().numpy()

    @torch.no_grad()
    def apply(self, batch: dict[str, Any]) -> np.ndarray:
        """Give each item of ``batch`` the bank frame matching its audio as ``reference_img`` and
        ``reference_landmarks``, and the predicted mouth code as ``mouth_code`` (which the model
        then conditions on); returns the indices picked."""
        device = self.predictor.template.device
        codes = self.predictor(batch["audio_smooth"].to(device, torch.float32))
        batch["mouth_code"] = codes
        idx = self.pick(codes)
        batch["reference_img"] = from_uint8(torch.from_numpy(self.images[idx]))
        batch["reference_landmarks"] = self.landmarks[idx]
        return idx


def training_bank(config: DictConfig) -> tuple[str, str]:
    """(split list, dataset root) of the frames a model trained on, read from its run config
    (``data.params.train.params``): the bank ``--reference bank`` uses when none is named.
    ValueError, saying what to pass instead, when they are not on this machine."""
    params = OmegaConf.select(config, "data.params.train.params", default=None) or {}
    split, root = params.get("split_file"), params.get("root")
    if not split or not root or not Path(split).is_file() or not (Path(root) / "images").is_dir():
        raise ValueError(
            f"reference bank: this model's training frames ({split} in {root}, from its config) "
            "are not on this machine; name them with --reference-bank SPLIT --bank-root DATASET"
        )
    return str(split), str(root)
