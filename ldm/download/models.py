"""The weight files DiffTalk uses: where each comes from, where it goes and how it is checked.

Each file is placed where the code looks for it by default (paths relative to the project root):
configs/latent-diffusion/talking.yaml (models/model.ckpt), configs/autoencoder/*.yaml
(models/lpips_vgg16.pth), scripts/evaluate.py (models/lpips_alex/, models/syncnet_v2.model),
--landmarker fan (models/fan/checkpoints/) and --audio-features wav2vec2/hubert (models/{kind}/).

Checksums: `sha256` holds what a public source states (torchvision names its files with the first
hex digits of their sha256 and verifies them the same way); every other file is unverifiable on
first download, so its sha256 is recorded in the lock file then and checked on every later run.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Where the code looks by default (relative to the working directory, the project root, like the
# configs' `ckpt_path`); scripts/download_models.py puts the files there.
DEFAULT_FAN_DIR = Path("models/fan")  # TORCH_HOME-style: checkpoints/2DFAN4-*.zip, s3fd-*.pth
DEFAULT_LPIPS_ALEX = Path("models/lpips_alex")
DEFAULT_SYNCNET = Path("models/syncnet_v2.model")
DEFAULT_AUDIO_MODELS = {"wav2vec2": Path("models/wav2vec2"), "hubert": Path("models/hubert")}


def existing(path: Path | None) -> str | None:
    """`path` as a string when it exists, else None (for optional defaults)."""
    return str(path) if path is not None and path.exists() else None


TORCHVISION = "torchvision file name (sha256 prefix, checked by torch.hub too)"
LPIPS_RAW = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1"
FAN_RAW = "https://www.adrianbulat.com/downloads/python-fan"
HF = "https://huggingface.co"


@dataclass(frozen=True)
class Asset:
    """One file to download: its URL, where it is stored and what it must hash to."""

    url: str
    path: str  # relative to the project root
    size_mb: float  # approximate, for the disk estimate
    sha256: str | None = None  # published checksum or prefix; None: recorded in the lock file
    checksum_source: str = ""


@dataclass(frozen=True)
class Model:
    """A named weight set: its downloads, the finished files and how to make them."""

    name: str
    what: str
    assets: tuple[Asset, ...]
    products: tuple[str, ...] = ()  # files made from the assets; empty: the assets are the files
    finish: Callable[[Path, Model], None] | None = field(default=None, compare=False)
    finish_help: str = ""  # the finish step in words, for --offline

    def final_files(self) -> tuple[str, ...]:
        """Project-relative paths that exist once this model is installed."""
        return self.products or tuple(a.path for a in self.assets)


def _replace_atomically(dest: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) for a temp path beside dest, then rename it to dest."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def unzip_member(member: str) -> Callable[[Path, Model], None]:
    """A finish step that extracts `member` of the model's zip to its single product."""

    def finish(root: Path, model: Model) -> None:
        """Extract the member (temp + rename), then remove the zip."""
        archive, dest = root / model.assets[0].path, root / model.products[0]
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if Path(n).name == member]
            if not names:
                raise zipfile.BadZipFile(f"{archive}: no {member} inside (has {zf.namelist()})")

            def write(tmp: Path) -> None:
                with zf.open(names[0]) as src, open(tmp, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)

            _replace_atomically(dest, write)
        archive.unlink()

    return finish


def merge_state_dicts(root: Path, model: Model) -> None:
    """A finish step that saves the union of the assets' state dicts as the single product."""
    import torch

    merged = {}
    for asset in model.assets:
        merged.update(torch.load(root / asset.path, map_location="cpu", weights_only=True))
    _replace_atomically(root / model.products[0], lambda tmp: torch.save(merged, tmp))
    for asset in model.assets:
        (root / asset.path).unlink()


def _hf(repo: str, folder: str, weights_mb: float) -> tuple[Asset, ...]:
    """config, preprocessor config and weights of a transformers model on the Hugging Face hub."""
    files = (("config.json", 0.01), ("preprocessor_config.json", 0.01))
    files += (("pytorch_model.bin", weights_mb),)
    return tuple(
        Asset(f"{HF}/{repo}/resolve/main/{name}", f"{DEFAULT_AUDIO_MODELS[folder]}/{name}", mb)
        for name, mb in files
    )


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model(
            "vq-f4",
            "LDM's VQ-f4 first stage (the paper's), unzipped to models/model.ckpt",
            (
                Asset(
                    "https://ommer-lab.com/files/latent-diffusion/vq-f4.zip", "models/vq-f4.zip", 68
                ),
            ),
            products=("models/model.ckpt",),
            finish=unzip_member("model.ckpt"),
            finish_help="unzip model.ckpt from it to models/model.ckpt",
        ),
        Model(
            "lpips-alex",
            "AlexNet-LPIPS v0.1 for scripts/evaluate.py (a folder of two state dicts)",
            (
                Asset(
                    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                    f"{DEFAULT_LPIPS_ALEX}/alexnet-owt-7be5be79.pth",
                    233,
                    "7be5be79",
                    TORCHVISION,
                ),
                Asset(f"{LPIPS_RAW}/alex.pth", f"{DEFAULT_LPIPS_ALEX}/alex.pth", 0.006),
            ),
        ),
        Model(
            "lpips-vgg",
            "VGG16-LPIPS for the first stage's perceptual loss, merged into one state dict",
            (
                Asset(
                    "https://download.pytorch.org/models/vgg16-397923af.pth",
                    "models/downloads/vgg16-397923af.pth",
                    528,
                    "397923af",
                    TORCHVISION,
                ),
                Asset(f"{LPIPS_RAW}/vgg.pth", "models/downloads/lpips_vgg.pth", 0.007),
            ),
            products=("models/lpips_vgg16.pth",),
            finish=merge_state_dicts,
            finish_help="then rerun this command: it merges them into models/lpips_vgg16.pth",
        ),
        Model(
            "syncnet",
            "syncnet_v2 for LSE-C/LSE-D in scripts/evaluate.py",
            (
                Asset(
                    "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
                    str(DEFAULT_SYNCNET),
                    52,
                ),
            ),
        ),
        Model(
            "fan",
            "face-alignment's FAN 2D and S3FD for --landmarker fan",
            (
                Asset(
                    f"{FAN_RAW}/2DFAN4-cd938726ad.zip",
                    f"{DEFAULT_FAN_DIR}/checkpoints/2DFAN4-cd938726ad.zip",
                    91,
                ),
                Asset(
                    f"{FAN_RAW}/s3fd-619a316812.pth",
                    f"{DEFAULT_FAN_DIR}/checkpoints/s3fd-619a316812.pth",
                    86,
                ),
            ),
        ),
        Model(
            "wav2vec2",
            "wav2vec 2.0 base (960 h) for --audio-features wav2vec2",
            _hf("facebook/wav2vec2-base-960h", "wav2vec2", 360),
        ),
        Model(
            "hubert",
            "HuBERT large (ls960-ft) for --audio-features hubert",
            _hf("facebook/hubert-large-ls960-ft", "hubert", 1200),
        ),
    )
}
