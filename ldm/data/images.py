"""Plain image dataset for first-stage (autoencoder) training on the HDTF face frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.layout import read_split_keys


class ImageFolder(Dataset):
    """`{root}/{key}.jpg` images -> {"image": (size, size, 3) float32 in [-1, 1]} (LDM layout).

    Keys come from `split_file` when given, else every *.jpg in `root` (sorted). Images are resized
    to size x size with bicubic filtering (the HDTF crops are square).
    """

    def __init__(
        self,
        root: str | Path,  # e.g. data/HDTF/images
        size: int,  # output side in pixels
        split_file: str | Path | None = None,  # one key per line; None = all *.jpg
        max_items: int | None = None,  # keep only the first max_items images
        crop_size: int | None = None,  # random square crops of this side (cheap AE training)
    ) -> None:
        self.root = Path(root)
        self.size = size
        self.crop_size = crop_size
        if not self.root.is_dir():
            raise FileNotFoundError(f"Image directory not found: {self.root}")
        if split_file is None:
            self.paths = sorted(self.root.glob("*.jpg"))
        else:
            self.paths = [self.root / f"{key}.jpg" for key in read_split_keys(split_file)]
        if max_items is not None:
            self.paths = self.paths[:max_items]
        if not self.paths:
            raise FileNotFoundError(
                f"No images to load from {self.root} (split_file={split_file}): expected "
                "{key}.jpg frames, see data/README.md."
            )

    def __len__(self) -> int:
        """Number of images."""
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """{"image": (size, size, 3) float32 in [-1, 1]}."""
        with Image.open(self.paths[index]) as img:
            img = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
            image = np.asarray(img, dtype=np.float32)
        if self.crop_size is not None:  # the autoencoder is convolutional: patches train it too
            y, x = np.random.randint(0, self.size - self.crop_size + 1, size=2)
            image = image[y : y + self.crop_size, x : x + self.crop_size]
        return {"image": image / 127.5 - 1.0}
