"""DataModuleFromConfig: datasets from ``target:``/``params:`` configs (out of ldm main.py)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from ldm.util import instantiate_from_config


class DataModuleFromConfig(pl.LightningDataModule):
    """Builds train/validation datasets once per process and wraps them in loaders."""

    def __init__(
        self,
        batch_size: int,
        train: Any | None = None,
        validation: Any | None = None,
        num_workers: int | None = None,
        val_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = batch_size * 2 if num_workers is None else num_workers
        self.dataset_configs = {"train": train, "validation": validation}
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for name, cfg in self.dataset_configs.items():
            if cfg is not None and name not in self.datasets:
                self.datasets[name] = instantiate_from_config(cfg)

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[name],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=True,  # as the original, for train and validation
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.val_batch_size, shuffle=False)
