"""First stage: LDM key layout, parity with the original VQ-f4, checkpoint loading, KL, training."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm.config import load_config
from ldm.data.images import ImageFolder
from ldm.models.autoencoder import AutoencoderKL, VQModel, VQModelInterface
from ldm.modules.diffusionmodules.model import Encoder
from ldm.modules.distributions import DiagonalGaussianDistribution
from ldm.modules.losses import LPIPSWithDiscriminator
from ldm.modules.losses.lpips import LPIPS, load_lpips
from ldm.modules.quantize import VectorQuantizer
from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
PAPER_TSV = FIXTURES / "difftalk_paper_state_dict.tsv"
INTERFACE = "ldm.models.autoencoder.VQModelInterface"
LOSS = "ldm.modules.losses.LPIPSWithDiscriminator"
TOL = 1e-4
SMALL_DDCONFIG = {
    "double_z": False,
    "z_channels": 3,
    "resolution": 32,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run single-threaded: on 2 shared cores, 2 intra-op threads can be ~30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (fixtures from the original code live in ../shared)")
    return path


@pytest.fixture(scope="module")
def first_stage() -> dict:
    """The original VQ's config, weights, inputs and outputs (shared/fixtures/README.md)."""
    vectors = torch.load(_require(FIXTURES / "original_vectors.pt"), weights_only=True)
    return vectors["first_stage"]


def _interface(fs: dict, **params) -> VQModelInterface:
    return VQModelInterface(
        ddconfig=fs["ddconfig"], n_embed=fs["n_embed"], embed_dim=fs["embed_dim"], **params
    ).eval()


def _shapes(module: torch.nn.Module, skip_prefix: str | None = None) -> list[tuple[str, str]]:
    return [
        (key, "x".join(str(s) for s in value.shape))
        for key, value in module.state_dict().items()
        if skip_prefix is None or not key.startswith(skip_prefix)
    ]


def test_paper_first_stage_keys_and_shapes_equal_original():
    prefix = "first_stage_model."
    lines = _require(PAPER_TSV).read_text().splitlines()
    expected = [tuple(ln[len(prefix) :].split("\t")) for ln in lines if ln.startswith(prefix)]
    assert len(expected) == 205
    cfg = OmegaConf.load(ROOT / "configs/autoencoder/vq_f4_paper.yaml")
    with torch.device("meta"):
        trainable = instantiate_from_config(cfg.model)
        frozen_cfg = OmegaConf.merge(cfg.model, {"target": INTERFACE})
        frozen_cfg.params.lossconfig = {"target": "torch.nn.Identity"}
        frozen = instantiate_from_config(frozen_cfg)
    assert isinstance(trainable, VQModel) and isinstance(frozen, VQModelInterface)
    assert _shapes(frozen) == expected
    assert _shapes(trainable, skip_prefix="loss.") == expected


def test_encode_decode_match_original(first_stage):
    fs = first_stage
    model = _interface(fs)
    model.load_state_dict(fs["state_dict"], strict=True)
    with torch.no_grad():
        encoded = model.encode(fs["image"])
        indices = model.quantize.code_indices(encoded)
        decoded = model.decode(fs["encoded"])
    assert encoded.shape == (2, 3, 16, 16)
    assert (encoded - fs["encoded"]).abs().max() < TOL
    assert torch.equal(indices, fs["code_indices"])
    assert (decoded - fs["decoded"]).abs().max() < TOL


def test_quantizer_nearest_code_and_legacy_loss():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_e=50, e_dim=3, beta=0.25)
    torch.nn.init.normal_(vq.embedding.weight)
    z = torch.randn(2, 3, 5, 7, requires_grad=True)
    z_q, loss, (perplexity, _, indices) = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(flat, vq.embedding.weight).argmin(dim=1).reshape(2, 5, 7)
    assert torch.equal(indices, brute)
    assert torch.allclose(z_q, vq.embedding.weight[brute].permute(0, 3, 1, 2))
    assert torch.allclose(loss, 1.25 * ((z_q - z) ** 2).mean())
    assert 1.0 <= perplexity <= len(indices.unique()) + 1e-4
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through


def test_ckpt_path_loads_ldm_checkpoint_and_ignores_loss_keys(first_stage, tmp_path, caplog):
    fs = first_stage
    state_dict = dict(fs["state_dict"])
    state_dict["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    state_dict["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state_dict, "global_step": 7}, path)
    config = {
        "target": INTERFACE,
        "params": {
            **{k: fs[k] for k in ("ddconfig", "n_embed", "embed_dim")},
            "lossconfig": {"target": "torch.nn.Identity"},
            "ckpt_path": str(path),
        },
    }
    with caplog.at_level(logging.INFO, logger="ldm.models.autoencoder"):
        model = instantiate_from_config(config).eval()
    assert any("ignored 2 loss.*" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        assert (model.encode(fs["image"]) - fs["encoded"]).abs().max() < TOL
        assert (model.decode(fs["encoded"]) - fs["decoded"]).abs().max() < TOL

    pickled = tmp_path / "old_lightning.ckpt"  # old checkpoints pickle hyper-parameters
    torch.save({"state_dict": state_dict, "hparams": argparse.Namespace(lr=1.0)}, pickled)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ldm.models.autoencoder"):
        _interface(fs, ckpt_path=str(pickled))
    assert any(str(pickled) in r.getMessage() for r in caplog.records)

    wrong = tmp_path / "wrong.ckpt"
    state_dict["encoder.not_a_layer.weight"] = torch.zeros(1)
    del state_dict["quantize.embedding.weight"]
    torch.save({"state_dict": state_dict}, wrong)
    with pytest.raises(RuntimeError, match="not_a_layer.*|quantize.embedding.weight"):
        _interface(fs, ckpt_path=str(wrong))


def test_missing_checkpoint_names_path_and_training_command(first_stage, tmp_path):
    missing = tmp_path / "models" / "model.ckpt"
    with pytest.raises(FileNotFoundError) as info:
        _interface(first_stage, ckpt_path=str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "python main.py --base configs/autoencoder/vq_f4_small.yaml -t" in message


def test_autoencoder_kl_shapes_and_kl_term():
    ddconfig = {**SMALL_DDCONFIG, "double_z": True, "z_channels": 4, "attn_resolutions": [16]}
    loss = {"target": LOSS, "params": {"disc_start": 10, "kl_weight": 0.5}}
    model = AutoencoderKL(ddconfig=ddconfig, embed_dim=4, lossconfig=loss)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    posterior = model.encode(x)
    assert isinstance(posterior, DiagonalGaussianDistribution)
    assert posterior.sample().shape == posterior.mode().shape == (2, 4, 16, 16)
    assert model.decode(posterior.mode()).shape == (2, 3, 32, 32)
    xrec, regularizers, _ = model._reconstruct(x)
    rec_only, _ = model.loss.generator_loss({}, x, xrec, 0, model.get_last_layer(), "train")
    total, logs = model.loss.generator_loss(
        regularizers, x, xrec, 0, model.get_last_layer(), "train"
    )
    assert torch.allclose(total, rec_only + 0.5 * regularizers["kl"])
    assert logs["train/kl_loss"] > 0

    params = torch.zeros(1, 8, 2, 2)
    assert torch.allclose(DiagonalGaussianDistribution(params).kl(), torch.zeros(1))
    params[:, :4] = 1.0  # mean 1, var 1: KL = 0.5 per element
    assert torch.allclose(DiagonalGaussianDistribution(params).kl(), torch.tensor([8.0]))
    with pytest.raises(ValueError, match="double_z"):
        AutoencoderKL(ddconfig={**ddconfig, "double_z": False}, embed_dim=4)


def _synthetic_images(n: int = 4, size: int = 32) -> torch.Tensor:
    """Smooth coloured blobs and ramps, (n, size, size, 3) in [-1, 1]."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images = []
    for i in range(n):
        r = torch.sqrt((x - 0.3 * np.cos(i)) ** 2 + (y - 0.3 * np.sin(i)) ** 2)
        channels = [
            torch.tanh(3 * (0.5 - r)),
            x * np.cos(i) + y * np.sin(i),
            0.5 * torch.sin(3 * x + i),
        ]
        images.append(torch.stack(channels, dim=-1).clamp(-1, 1))
    return torch.stack(images)


def test_small_vq_training_reduces_reconstruction_loss():
    torch.manual_seed(0)
    n_batches, disc_start = 40, 30
    disc = {"disc_start": disc_start, "disc_weight": 0.1, "disc_num_layers": 2, "disc_ndf": 16}
    loss = {"target": LOSS, "params": disc}
    model = VQModel(ddconfig=SMALL_DDCONFIG, n_embed=64, embed_dim=3, lossconfig=loss)
    model.learning_rate = 1e-3
    images = _synthetic_images()
    batch = {"image": images}

    def l1() -> float:
        with torch.no_grad():
            x = model.get_input(batch)
            return (model(x)[0] - x).abs().mean().item()

    before = l1()
    loader = DataLoader([{"image": im} for im in images] * n_batches, batch_size=len(images))
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", enable_checkpointing=False, **quiet)
    trainer.fit(model, loader)
    after = l1()
    assert after < before / 3, (before, after)
    assert trainer.global_step == n_batches + (n_batches - disc_start)  # both optimisers stepped
    metrics = trainer.logged_metrics
    for key in ("rec_loss", "aeloss", "discloss", "codebook_usage", "perplexity", "g_loss"):
        assert torch.isfinite(torch.as_tensor(metrics[f"train/{key}"])), key
    assert 0 < metrics["train/codebook_usage"] <= 1 and metrics["train/discloss"] > 0
    logged = model.log_images(batch)
    assert set(logged) == {"inputs", "reconstructions"}
    assert logged["reconstructions"].shape == logged["inputs"].shape == (4, 3, 32, 32)


def test_small_config_builds_and_matches_talking_small():
    cfg = load_config([str(ROOT / "configs/autoencoder/vq_f4_small.yaml")])
    model = instantiate_from_config(cfg.model)
    assert model.loss.perceptual_weight == 0.0  # no weights file here: perceptual term off
    with torch.no_grad():
        h = model.encode_to_prequant(torch.zeros(1, 3, 128, 128))
    assert h.shape == (1, 3, 32, 32)
    talking = _require(ROOT / "configs/latent-diffusion/talking-small.yaml")
    frozen = load_config([str(talking)]).model.params.first_stage_config.params
    for key in ("ddconfig", "n_embed", "embed_dim"):
        assert frozen[key] == cfg.model.params[key], key


def test_lpips_loads_torchvision_and_taming_names(tmp_path, caplog):
    torch.manual_seed(0)
    reference = LPIPS()
    for p in reference.parameters():
        p.data.normal_(0, 0.1)
    ours = reference.state_dict()
    torchvision_style = {k.removeprefix("net."): v for k, v in ours.items()}
    torchvision_style["classifier.0.weight"] = torch.zeros(1)
    taming_style = {
        "loss.perceptual_loss." + k.replace("net.features.", "net.slice1."): v
        for k, v in ours.items()
    }
    x, y = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    for i, state_dict in enumerate((torchvision_style, {"state_dict": taming_style})):
        torch.save(state_dict, tmp_path / f"w{i}.pth")
        lpips = load_lpips(tmp_path / f"w{i}.pth")
        assert torch.allclose(lpips(x, y), reference(x, y)) and lpips(x, x).abs().max() < 1e-6
    with caplog.at_level(logging.WARNING, logger="ldm.modules.losses.vqperceptual"):
        loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weights_path="absent.pth")
    assert loss.perceptual_weight == 0.0 and "absent.pth" in caplog.text and "OFF" in caplog.text


@pytest.mark.parametrize("backbone", ["vgg16", "alexnet"])
def test_both_lpips_share_the_head_and_compute_its_formula(backbone):
    from ldm.evaluation.lpips import LPIPS as AlexLPIPS

    torch.manual_seed(0)
    model = LPIPS() if backbone == "vgg16" else AlexLPIPS()
    for k in range(5):
        torch.nn.init.uniform_(getattr(model, f"lin{k}").model[1].weight, 0.0, 1.0)
    x, y = torch.rand(2, 2, 3, 64, 64) * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)  # LPIPS's ScalingLayer
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    expected = torch.zeros(2)
    taps = zip(model.net((x - shift) / scale), model.net((y - shift) / scale), strict=True)
    for k, (a, b) in enumerate(taps):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        w = getattr(model, f"lin{k}").model[1].weight.view(1, -1, 1, 1)
        expected += ((a - b) ** 2 * w).sum(1).mean((1, 2))
    model.train()  # stays a frozen metric
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(x, y).flatten(), expected, atol=1e-6, rtol=1e-5)


def test_image_folder(tmp_path):
    from PIL import Image

    with pytest.raises(FileNotFoundError, match="images"):
        ImageFolder(tmp_path / "images", size=16)
    root = tmp_path / "images"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=str(root)):
        ImageFolder(root, size=16)
    for key in ("1_1", "1_2"):
        Image.new("RGB", (40, 40), (255, 0, 0)).save(root / f"{key}.jpg")
    (tmp_path / "split.txt").write_text("1_2\n\n")
    assert len(ImageFolder(root, size=16)) == 2
    dataset = ImageFolder(root, size=16, split_file=tmp_path / "split.txt")
    image = dataset[0]["image"]
    assert len(dataset) == 1 and image.shape == (16, 16, 3) and image.dtype == np.float32
    assert image.min() >= -1 and image.max() <= 1 and image[..., 0].mean() > 0.9


def test_image_folder_random_crops_are_windows_of_the_frame(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "1_1.png")  # lossless, read by content
    (root / "1_1.png").rename(root / "1_1.jpg")
    full = ImageFolder(root, size=32)[0]["image"]
    crops = [ImageFolder(root, size=32, crop_size=8)[0]["image"] for _ in range(20)]
    assert all(c.shape == (8, 8, 3) for c in crops)
    corners = set()
    windows = [(y, x) for y in range(25) for x in range(25)]
    for c in crops:
        match = [(y, x) for y, x in windows if np.array_equal(full[y : y + 8, x : x + 8], c)]
        assert match, "a crop is not a window of the frame"
        corners.add(match[0])
    assert len(corners) > 1  # random positions
    np.random.seed(1)  # without mouth_crops a crop draws only its corner, as it always did:
    plain = ImageFolder(root, size=32, crop_size=8)  # the runs of other configs are unchanged
    drawn = [plain.crop_corner(plain.paths[0], 1.0) for _ in range(5)]
    np.random.seed(1)
    assert drawn == [tuple(int(v) for v in np.random.randint(0, 25, size=2)) for _ in range(5)]


@pytest.mark.parametrize("norm", ["group", "pixel"])
def test_pixel_norm_keeps_the_latent_of_a_region_independent_of_the_rest_of_the_frame(norm):
    torch.manual_seed(0)
    encoder = Encoder(**{**SMALL_DDCONFIG, "ch": 32}, norm=norm, mid_attention=False).eval()
    x = torch.rand(1, 3, 32, 64) * 2 - 1
    other = x.clone()
    other[:, :, :, 48:] = torch.tensor([0.9, -0.8, 0.7]).view(1, 3, 1, 1)  # a new background
    with torch.no_grad():
        change = (encoder(other) - encoder(x))[..., :4].abs().max()  # far left of the latent
    if norm == "pixel":
        assert change < 1e-6  # beyond the receptive field nothing moves
    else:
        assert change > 1e-3  # GroupNorm's statistics carry the background everywhere
    with pytest.raises(ValueError, match="norm"):
        Encoder(**SMALL_DDCONFIG, norm="batch")


def test_mouth_focused_crops_contain_the_mouth(tmp_path):
    from PIL import Image

    from conftest import face_template

    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "landmarks").mkdir()
    lms = face_template(64)
    for key in ("1_1", "1_2"):
        Image.new("RGB", (64, 64)).save(root / f"{key}.jpg")
        np.savetxt(tmp_path / "landmarks" / f"{key}.lms", lms * 2.0)  # a 128 px crop's pixels
    dataset = ImageFolder(root, size=64, crop_size=24, mouth_crops=1.0, crop_jitter=4)
    centre = lms[48:68].mean(0)  # (x, y) in the 64 px frame
    for _ in range(20):
        y, x = dataset.crop_corner(dataset.paths[0], 0.5)
        assert x <= centre[0] < x + 24 and y <= centre[1] < y + 24
        assert abs(x + 12 - centre[0]) <= 5 and abs(y + 12 - centre[1]) <= 5
    assert dataset[1]["image"].shape == (24, 24, 3)
    (tmp_path / "landmarks" / "1_2.lms").unlink()
    with pytest.raises(FileNotFoundError, match="1_2.jpg.*landmarks"):
        dataset[1]
    with pytest.raises(ValueError, match="crop_size"):
        ImageFolder(root, size=64, mouth_crops=0.5)
    half = ImageFolder(root, size=64, crop_size=24, mouth_crops=0.5, crop_jitter=4)
    np.random.seed(0)
    corners = [half.crop_corner(half.paths[0], 0.5) for _ in range(1000)]
    near = [abs(x + 12 - centre[0]) <= 5 and abs(y + 12 - centre[1]) <= 5 for y, x in corners]
    assert 0.47 < np.mean(near) < 0.62  # half, plus the 7 % of the others that land there too
