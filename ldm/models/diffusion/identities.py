"""The identities a LatentDiffusion run trains on, recorded when it starts training and kept in its
checkpoints as a top-level entry (never in the state dict): portrait mode and the web app compare
a portrait's face with them (ldm/inference/identity.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ldm.preprocessing.identity import CHECKPOINT_KEY, Identities, dataset_identities

logger = logging.getLogger(__name__)


def training_identities(trainer: Any, inherited: Identities | None) -> Identities | None:
    """Identities of the trainer's training dataset (rank 0 describes them, then broadcasts),
    merged with ``inherited`` ones (a model initialised from another checkpoint); None when the
    dataset is not a talking dataset (no ``root`` and ``keys``)."""
    datamodule = getattr(trainer, "datamodule", None)
    dataset = getattr(datamodule, "datasets", {}).get("train")
    if dataset is None or not hasattr(dataset, "root") or not hasattr(dataset, "keys"):
        logger.info("no talking training dataset: the run's identities are not recorded")
        return inherited
    found = None
    if trainer.is_global_zero:
        found = dataset_identities(Path(dataset.root), dataset.keys)
    found = trainer.strategy.broadcast(found, src=0)
    return found if inherited is None else inherited.merged(found)


def checkpoint_identities(checkpoint: dict[str, Any], source: str | Path) -> Identities | None:
    """The identities entry of a loaded checkpoint, or None when it has none (older files)."""
    entry = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    return None if entry is None else Identities.from_entry(entry, source)
