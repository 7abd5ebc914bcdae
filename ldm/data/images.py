"""Plain image dataset for first-stage (autoencoder) training on the HDTF face frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.layout import MOUTH, read_landmarks_file, read_split_keys
from ldm.util import from_uint8


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
        mouth_crops: float = 0.0,  # this fraction of the crops is centred on the mouth (the
        # frame's landmarks in {root}/../landmarks) +- crop_jitter pixels; the rest lie anywhere
        crop_jitter: int = 16,
    ) -> None:
        self.root = Path(root)
        self.size = size
        self.crop_size = crop_size
        if not 0.0 <= mouth_crops <= 1.0:
            raise ValueError(f"mouth_crops must be a fraction in [0, 1], got {mouth_crops}")
        if mouth_crops and crop_size is None:
            raise ValueError("mouth_crops needs a crop_size")
        self.mouth_crops = mouth_crops
        self.crop_jitter = crop_jitter
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
        path = self.paths[index]
        with Image.open(path) as img:
            scale = self.size / img.size[0]
            img = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
            image = np.asarray(img, dtype=np.float32)
        if self.crop_size is not None:  # the autoencoder is convolutional: patches train it too
            y, x = self.crop_corner(path, scale)
            image = image[y : y + self.crop_size, x : x + self.crop_size]
        return {"image": from_uint8(image)}

    def crop_corner(self, path: Path, scale: float) -> tuple[int, int]:
        """(top, left) of a random crop: around the mouth (a ``mouth_crops`` fraction of them)
        or anywhere."""
        last = self.size - self.crop_size
        if not self.mouth_crops or np.random.rand() >= self.mouth_crops:  # no draw at 0: the
            # crops of a run without mouth_crops are those of the versions before it
            y, x = np.random.randint(0, last + 1, size=2)
            return int(y), int(x)
        try:
            lms = read_landmarks_file(self.root.parent, path.stem)
        except OSError as exc:
            raise FileNotFoundError(
                f"{path}: mouth_crops needs its landmarks in "
                f"{self.root.parent / 'landmarks'} ({exc})"
            ) from exc
        centre = lms[list(MOUTH)].mean(0) * scale  # (x, y) in pixels of the resized frame
        shift = np.random.randint(-self.crop_jitter, self.crop_jitter + 1, size=2)
        x, y = np.clip(np.round(centre - self.crop_size / 2).astype(int) + shift, 0, last)
        return int(y), int(x)
