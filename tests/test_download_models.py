"""scripts/download_models.py against a local HTTP server: resume, checksums, lock file, unpack."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from ldm.download import models as table
from ldm.download.http import ChecksumError, DownloadError, Expected, fetch

from conftest import FileServer, load_script

dm = load_script("download_models")


def served_file(server: FileServer, name: str, size: int = 300_000, seed: int = 0) -> bytes:
    """Write `size` pseudo-random bytes as a served file and return them."""
    data = torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(seed))
    raw = data.to(torch.uint8).numpy().tobytes()
    (server.folder / name).write_bytes(raw)
    return raw


def only_model(monkeypatch, model: table.Model) -> None:
    """Make the script's table hold just `model`."""
    monkeypatch.setattr(dm, "MODELS", {model.name: model})


def test_cut_connection_is_resumed_with_range(file_server: FileServer, tmp_path: Path) -> None:
    raw = served_file(file_server, "w.bin")
    file_server.cut["w.bin"] = 1
    dest = tmp_path / "out" / "w.bin"
    digest = fetch(file_server.url("w.bin"), dest, progress=False)
    assert dest.read_bytes() == raw and digest == hashlib.sha256(raw).hexdigest()
    gets = [r for r in file_server.requests if r[0] == "GET"]
    assert [g[2] for g in gets] == [None, f"bytes={len(raw) // 2}-"]
    assert not (tmp_path / "out" / "w.bin.part").exists()


def test_cut_without_retries_leaves_only_a_part_and_next_run_resumes(
    file_server: FileServer, tmp_path: Path
) -> None:
    raw = served_file(file_server, "w.bin")
    file_server.cut["w.bin"] = 1
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError, match="incomplete after 1 attempts"):
        fetch(file_server.url("w.bin"), dest, retries=0, progress=False)
    assert not dest.exists()
    assert (tmp_path / "w.bin.part").stat().st_size == len(raw) // 2
    fetch(file_server.url("w.bin"), dest, retries=0, progress=False)
    assert dest.read_bytes() == raw
    assert file_server.requests[-1][2] == f"bytes={len(raw) // 2}-"


def test_wrong_published_checksum_is_refused(file_server: FileServer, tmp_path: Path) -> None:
    served_file(file_server, "w.bin")
    dest = tmp_path / "w.bin"
    with pytest.raises(ChecksumError, match=r"w\.bin: sha256 .* does not match .*deadbeef.*torchv"):
        fetch(file_server.url("w.bin"), dest, Expected("deadbeef", "torchvision"), progress=False)
    assert not dest.exists() and not (tmp_path / "w.bin.part").exists()


def test_missing_file_is_a_clear_error(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(file_server.url("gone.bin"), tmp_path / "gone.bin", progress=False)


def test_lock_records_then_refuses_a_changed_file(
    file_server: FileServer, tmp_path: Path, monkeypatch, caplog
) -> None:
    raw = served_file(file_server, "syncnet_v2.model")
    model = table.Model(
        "syncnet", "test", (table.Asset(file_server.url("syncnet_v2.model"), "models/s.model", 1),)
    )
    only_model(monkeypatch, model)
    assert dm.main(["syncnet", "--root", str(tmp_path)]) == 0
    lock = json.loads((tmp_path / dm.LOCK_NAME).read_text())
    assert lock["models/s.model"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert dm.main(["syncnet", "--root", str(tmp_path), "--verify"]) == 0
    # upstream (or the disk) changes: both the installed copy and a fresh download are refused
    (tmp_path / "models/s.model").write_bytes(raw[:-1] + b"x")
    assert dm.main(["syncnet", "--root", str(tmp_path), "--verify"]) == 1
    assert "does not match" in caplog.text
    served_file(file_server, "syncnet_v2.model", seed=1)
    caplog.clear()
    assert dm.main(["syncnet", "--root", str(tmp_path)]) == 1
    assert "moved aside to models/s.model.rejected" in caplog.text
    assert dm.main(["syncnet", "--root", str(tmp_path)]) == 1  # the new download is refused
    assert "recorded at the first download" in caplog.text and "download was deleted" in caplog.text
    assert not (tmp_path / "models/s.model").exists()
    assert not (tmp_path / "models/s.model.part").exists()


def test_vq_f4_zip_is_unpacked_to_model_ckpt(
    file_server: FileServer, tmp_path: Path, monkeypatch
) -> None:
    ckpt = served_file(file_server, "model.ckpt", size=50_000)
    with zipfile.ZipFile(file_server.folder / "vq-f4.zip", "w") as zf:
        zf.write(file_server.folder / "model.ckpt", "model.ckpt")
    real = table.MODELS["vq-f4"]
    asset = table.Asset(file_server.url("vq-f4.zip"), real.assets[0].path, 1)
    only_model(monkeypatch, dataclasses.replace(real, assets=(asset,)))
    assert dm.main(["vq-f4", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "models/model.ckpt").read_bytes() == ckpt
    assert not (tmp_path / "models/vq-f4.zip").exists()
    assert dm.main(["all", "--root", str(tmp_path), "--verify"]) == 0
    n_gets = len(file_server.requests)
    assert dm.main(["vq-f4", "--root", str(tmp_path)]) == 0  # installed: nothing downloaded
    assert len(file_server.requests) == n_gets


def test_lpips_vgg_merges_into_the_file_the_configs_load(
    file_server: FileServer, tmp_path: Path, monkeypatch
) -> None:
    from ldm.modules.losses.lpips import LPIPS, load_lpips

    state = LPIPS().state_dict()
    vgg = {k.replace("net.features.", "features."): v for k, v in state.items() if "lin" not in k}
    torch.save(vgg, file_server.folder / "vgg16.pth")
    torch.save(
        {k: v for k, v in state.items() if k.startswith("lin")}, file_server.folder / "v.pth"
    )
    real = table.MODELS["lpips-vgg"]
    assets = tuple(
        table.Asset(file_server.url(n), a.path, 1)
        for n, a in zip(("vgg16.pth", "v.pth"), real.assets, strict=True)
    )
    only_model(monkeypatch, dataclasses.replace(real, assets=assets))
    assert dm.main(["lpips-vgg", "--root", str(tmp_path)]) == 0
    assert real.products == ("models/lpips_vgg16.pth",)
    load_lpips(tmp_path / "models/lpips_vgg16.pth")  # raises if keys are missing
    assert not (tmp_path / real.assets[0].path).exists()


def test_offline_prints_one_line_per_file(capsys, tmp_path: Path) -> None:
    assert dm.main(["all", "--offline", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assets = [a for m in table.MODELS.values() for a in m.assets]
    assert len(lines) == len(assets)
    for line, asset in zip(lines, assets, strict=True):
        assert line == f"{asset.url} -> {tmp_path / asset.path}"


def test_table_puts_files_where_the_code_looks() -> None:
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1]
    cfg = OmegaConf.load(root / "configs/latent-diffusion/talking.yaml")
    assert cfg.model.params.first_stage_config.params.ckpt_path in table.MODELS["vq-f4"].products
    vq = OmegaConf.load(root / "configs/autoencoder/vq_f4_paper.yaml")
    weights = vq.model.params.lossconfig.params.perceptual_weights_path
    assert weights in table.MODELS["lpips-vgg"].products
    fan = [Path(a.path).parent for a in table.MODELS["fan"].assets]
    assert fan == [table.DEFAULT_FAN_DIR / "checkpoints"] * 2
