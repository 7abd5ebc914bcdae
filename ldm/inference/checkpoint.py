"""Build a LatentDiffusion from a config list and load a DiffTalk checkpoint into it, strictly."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.models.diffusion.identities import checkpoint_identities
from ldm.preprocessing.identity import Identities
from ldm.util import instantiate_from_config, load_checkpoint_file, state_dict_of

logger = logging.getLogger(__name__)

# Persistent buffers of the original LDM's DDPM; recomputed from the config here, so a checkpoint
# may hold them (original files do) or not (ours do not).
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "lvlb_weights",
    "logvar",
)
MAX_LISTED_KEYS = 12
# the original's audio networks, which a model with a MouthPredictor no longer builds; its
# checkpoints written before that carry them frozen and unused, and load without them
AUDIO_NETWORKS = ("cond_stage_model_for_audio.", "cond_stage_model_for_audio_smooth.")


DEFAULT_CONFIG = (  # the paper model with the original inference dataset merged over it
    "configs/latent-diffusion/talking.yaml",
    "configs/latent-diffusion/talking-inference.yaml",
)


MANY_SPEAKER = Path("models/many_speaker")  # `sh demo.sh --many`'s export (ldm/demo/many.py)
EXPORTED_WEIGHTS = "model.ckpt"  # an exported model folder's files: the talking model's weights,
EXPORTED_CONFIG = "config.yaml"  # the config it was trained with and
EXPORTED_FIRST_STAGE = "first_stage.ckpt"  # its first stage (demo.sh --init adapts from both)


def default_model(folder: Path | None = None) -> Path | None:
    """The many-speaker model's checkpoint in ``folder`` (default MANY_SPEAKER), portrait mode's
    and the app's default, or None when it holds none."""
    folder = MANY_SPEAKER if folder is None else folder
    ckpt = folder / EXPORTED_WEIGHTS
    return ckpt if ckpt.is_file() and (folder / EXPORTED_CONFIG).is_file() else None


def model_config(ckpt: Path) -> list[Path]:
    """The config a checkpoint was saved with: an exported folder's config.yaml, a Lightning
    run's logs/<run>/configs/*-project.yaml, else DEFAULT_CONFIG (the paper model)."""
    if (ckpt.parent / EXPORTED_CONFIG).is_file():
        return [ckpt.parent / EXPORTED_CONFIG]
    if ckpt.parent.name == "checkpoints":
        saved = sorted((ckpt.parent.parent / "configs").glob("*-project.yaml"))
        if saved:
            return [saved[-1]]
    return [Path(p) for p in DEFAULT_CONFIG]


class CheckpointError(ValueError):
    """A checkpoint is missing or does not fit the config; the message says what differs."""


def _listed(keys: Sequence[str]) -> str:
    """Up to MAX_LISTED_KEYS keys, then how many more."""
    keys = sorted(keys)
    more = len(keys) - MAX_LISTED_KEYS
    return ", ".join(keys[:MAX_LISTED_KEYS]) + (f" ... and {more} more" if more > 0 else "")


def check_schedule(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], ckpt: str) -> None:
    """Refuse a checkpoint whose stored noise schedule differs from the config's."""
    stored = state_dict.get("alphas_cumprod")
    if stored is None:
        return
    ours = model.alphas_cumprod.detach().cpu().double()
    if stored.shape != ours.shape or not torch.allclose(stored.double(), ours, atol=1e-5):
        raise CheckpointError(
            f"{ckpt}: its noise schedule (alphas_cumprod, {tuple(stored.shape)}) differs from "
            f"the config's ({tuple(ours.shape)}; check timesteps/linear_start/linear_end)"
        )


def mismatch_report(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    """Missing, unexpected and wrongly shaped keys of a strict load ('' if none)."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state_dict]
    unexpected = [k for k in state_dict if k not in ours]
    shapes = [
        f"{k} {tuple(v.shape)} vs config {tuple(ours[k].shape)}"
        for k, v in state_dict.items()
        if k in ours and v.shape != ours[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {_listed(shapes)}")
    return "; ".join(parts)


def load_model(
    config: DictConfig, ckpt: str | Path, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Instantiate ``config.model`` and load ``ckpt`` strictly (schedule buffers excepted).

    The first stage comes from the checkpoint when it holds ``first_stage_model.*`` (DiffTalk
    checkpoints do), so the config's first-stage ``ckpt_path`` is then not needed.
    """
    ckpt = str(ckpt)
    if not Path(ckpt).is_file():
        raise CheckpointError(
            f"checkpoint not found: {ckpt} (train one with main.py; it writes "
            "logs/<run>/checkpoints/last.ckpt)"
        )
    try:
        raw = load_checkpoint_file(ckpt)
        state_dict = state_dict_of(raw, ckpt)
    except Exception as exc:  # corrupt or not a torch file
        raise CheckpointError(f"{ckpt}: cannot be read as a torch checkpoint ({exc})") from exc
    config = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    params = config.model.params
    params.ckpt_path = None
    if any(k.startswith("first_stage_model.") for k in state_dict):
        params.first_stage_config.params.ckpt_path = None
    model = instantiate_from_config(config.model)
    check_schedule(model, state_dict, ckpt)
    state_dict = {k: v for k, v in state_dict.items() if k not in SCHEDULE_BUFFERS}
    if model.mouth_model is not None:
        kept = {k: v for k, v in state_dict.items() if not k.startswith(AUDIO_NETWORKS)}
        if len(kept) < len(state_dict):
            logger.info("%s: left out the unused audio networks of an older checkpoint", ckpt)
        state_dict = kept
    is_buffer = "scale_factor" in dict(model.named_buffers())  # scale_by_std models keep it
    stored_scale = None if is_buffer else state_dict.pop("scale_factor", None)  # LDM's buffer
    if stored_scale is not None and float(stored_scale) != float(model.scale_factor):
        logger.info("using the checkpoint's scale_factor %.6g", float(stored_scale))
        model.scale_factor = float(stored_scale)
    problems = mismatch_report(model, state_dict)
    if problems:
        raise CheckpointError(f"{ckpt} does not fit the config: {problems}")
    model.load_state_dict(state_dict, strict=True)
    logger.info("loaded %s (%d tensors)", ckpt, len(state_dict))
    model.identities = read_identities(raw, ckpt)
    return model.eval().requires_grad_(False).to(device)


def read_identities(raw: object, ckpt: str) -> Identities | None:
    """The training identities a checkpoint records (logged), or None for one saved before they
    were recorded; CheckpointError when the entry is malformed."""
    try:
        identities = checkpoint_identities(raw, ckpt)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    if identities is None:
        logger.info(
            "%s records no training identities (saved before they were kept): portraits are not "
            "compared with the faces it was trained on", ckpt
        )  # fmt: skip
    else:
        logger.info(
            "trained on %d person(s) in %d video(s) with a face",
            identities.n_persons, len(identities.videos),
        )  # fmt: skip
    return identities
