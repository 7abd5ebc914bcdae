"""Offline evaluation of generated talking-head videos: image, landmark and sync metrics."""

from __future__ import annotations

from pathlib import Path


class WeightsError(ValueError):
    """A metric's weight file is missing or unusable; the message names it and how to fix it."""


def load_state_dict(path: str | Path, what: str) -> dict:
    """A torch state dict from `path` (a `state_dict` entry is unwrapped) or WeightsError."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and tensor errors all mean "not a usable file"
        first = (str(err).strip().splitlines() or [""])[0][:120]
        raise WeightsError(
            f"{path}: cannot load {what} weights as a torch state dict "
            f"({type(err).__name__}: {first})"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a {what} state dict, found {type(state).__name__}")
    return state
