"""Offline evaluation of generated talking-head videos: image, landmark and sync metrics."""

from __future__ import annotations

from pathlib import Path


class WeightsError(ValueError):
    """A metric's weight file is missing or unusable; the message names it and how to fix it."""


def load_state_dict(path: str | Path, what: str) -> dict:
    """ldm.util.load_state_dict_file without pickles; any failure is a WeightsError naming it."""
    from ldm.util import load_state_dict_file

    try:
        return load_state_dict_file(path, allow_pickle=False)
    except Exception as err:  # missing, pickle, zip and tensor errors: "not a usable file"
        first = (str(err).strip().splitlines() or [""])[0][:120]
        raise WeightsError(
            f"{path}: cannot load {what} weights as a torch state dict "
            f"({type(err).__name__}: {first})"
        ) from err
