"""Shared test helpers: the project root, ../shared fixtures and data, a tiny DiffTalk model."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ldm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
SHARED_DATA = SHARED / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


def load_script(name: str, folder: str = "scripts"):
    """``{folder}/{name}.py`` as a module (scripts/ and benchmarks/ are not packages)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_for(
    cond: Callable[[], bool],
    proc: subprocess.Popen,
    what: str,
    timeout: float = 150,
    poll: float = 0.1,
) -> None:
    """Poll ``cond`` every ``poll`` s until true; fail if ``proc`` dies or time runs out."""
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on 2 cores shared with other jobs, 2 threads run ~10x
    slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny model trained 40 steps on a synthetic dataset: its checkpoint, config and data."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def require(path: Path) -> Path:
    """Skip the calling test, with the reason, when a ../shared file is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent (tests read ../shared beside the project root)")
    return path


@pytest.fixture(scope="session")
def original_vectors() -> dict:
    """Outputs of the original DiffTalk modules on fixed inputs (shared/fixtures/README.md)."""
    return torch.load(require(FIXTURES / "original_vectors.pt"), weights_only=True)


def small_config(**unet_overrides) -> OmegaConf:
    """The CPU config with a random (checkpoint-free) first stage."""
    cfg = load_config([str(ROOT / "configs/latent-diffusion/talking-small.yaml")])
    cfg.model.params.first_stage_config.params.ckpt_path = None
    for k, v in unet_overrides.items():
        cfg.model.params.unet_config.params[k] = v
    return cfg


def face_template(size: int) -> np.ndarray:
    """A plausible iBUG-68 layout (68, 2) in pixels of a size x size face crop."""
    pts = np.zeros((68, 2), dtype=np.float32)
    a = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)
    pts[0:17] = np.stack([0.5 - 0.36 * np.cos(a), 0.45 + 0.42 * np.sin(a)], 1)  # jaw
    pts[17:27] = np.stack([np.linspace(0.22, 0.78, 10), np.full(10, 0.3)], 1)  # brows
    pts[27:31] = np.stack([np.full(4, 0.5), np.linspace(0.38, 0.56, 4)], 1)  # nose bridge
    pts[31:36] = np.stack([np.linspace(0.42, 0.58, 5), np.full(5, 0.6)], 1)  # nostrils
    for start, cx in ((36, 0.35), (42, 0.65)):  # eyes
        e = np.linspace(0, 2 * np.pi, 6, endpoint=False)
        pts[start : start + 6] = np.stack([cx + 0.06 * np.cos(e), 0.4 + 0.02 * np.sin(e)], 1)
    m = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    pts[48:60] = np.stack([0.5 + 0.12 * np.cos(m), 0.75 + 0.05 * np.sin(m)], 1)  # outer lips
    i = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    pts[60:68] = np.stack([0.5 + 0.08 * np.cos(i), 0.75 + 0.02 * np.sin(i)], 1)  # inner lips
    return pts * size


def make_tiny_dataset(
    root: Path, n_ids: int = 2, n_frames: int = 8, size: int = 64, feature_dim: int = 29
) -> Path:
    """Write an HDTF-layout dataset (SPEC 1) of synthetic frames whose mouth opens with the audio.

    Returns the data directory (``root/HDTF``); split lists go to ``root/data_{train,test}.txt``.
    Identity 1..n_ids-1 are training ids, the last one is the test id.
    """
    from PIL import Image, ImageDraw

    data = root / "HDTF"
    for sub in ("images", "landmarks", "audio_smooth"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lms = face_template(size)
    for vid in range(1, n_ids + 1):
        colour = tuple(int(c) for c in rng.integers(60, 200, 3))
        for frame in range(1, n_frames + 1):
            opening = 0.5 + 0.5 * np.sin(frame * 0.9 + vid)  # in [0, 1]
            im = Image.new("RGB", (size, size), (30, 30, 40))
            draw = ImageDraw.Draw(im)
            draw.ellipse([0.14 * size, 0.1 * size, 0.86 * size, 0.95 * size], fill=colour)
            h = (0.01 + 0.08 * opening) * size
            draw.ellipse([0.38 * size, 0.75 * size - h, 0.62 * size, 0.75 * size + h], fill=0)
            im.save(data / "images" / f"{vid}_{frame}.jpg", quality=95)
            np.savetxt(data / "landmarks" / f"{vid}_{frame}.lms", lms, fmt="%f")
            audio = np.full((8, 16, feature_dim), opening, dtype=np.float32)
            audio += 0.05 * rng.standard_normal(audio.shape).astype(np.float32)
            np.save(data / "audio_smooth" / f"{vid}_{frame}.npy", audio)
    (data / "data.txt").write_text("".join(f"{v} {n_frames}\n" for v in range(1, n_ids + 1)))
    keys = [[f"{v}_{f}" for f in range(1, n_frames + 1)] for v in range(1, n_ids + 1)]
    (root / "data_train.txt").write_text("\n".join(k for ks in keys[:-1] for k in ks) + "\n")
    (root / "data_test.txt").write_text("\n".join(keys[-1]) + "\n")
    return data


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A 2-identity, 8-frame, 64 px dataset in a temporary directory (returns root/HDTF)."""
    return make_tiny_dataset(tmp_path)


TINY_SIZE = 64  # frame side of the tiny trained model (16 x 16 latents)


def tiny_config(model_channels: int = 32) -> OmegaConf:
    """The small config shrunk to 64 px frames and a random first stage."""
    cfg = small_config(model_channels=model_channels, image_size=TINY_SIZE // 4)
    cfg.model.params.image_size = TINY_SIZE // 4
    cfg.model.params.first_stage_config.params.ddconfig.resolution = TINY_SIZE
    for split in ("train", "validation"):
        cfg.data.params[split].params.size = TINY_SIZE
    return cfg


def make_tiny_checkpoint(tmp: Path) -> dict:
    """Train a tiny model 40 steps on a synthetic dataset in ``tmp``; save it as a DiffTalk
    checkpoint ({"state_dict": ...}) plus its config YAML.

    Returns {"ckpt", "config", "data", "root"} (the same as tests/test_inference.py's ``tiny``).
    """
    import soundfile as sf
    from torch.utils.data import DataLoader

    from ldm.data.talk import TalkTrain
    from ldm.preprocessing import synthetic
    from ldm.util import instantiate_from_config

    data = make_tiny_dataset(tmp, n_ids=2, n_frames=8, size=TINY_SIZE)
    (data / "audio").mkdir()
    sf.write(data / "audio" / "2.wav", synthetic.speech_like_audio(8 / 25 + 0.5), 16000)
    torch.manual_seed(0)
    cfg = tiny_config()
    model = instantiate_from_config(cfg.model)
    model.learning_rate = 2e-3
    ds = TalkTrain(split_file=str(tmp / "data_train.txt"), root=str(data), size=TINY_SIZE)
    opt = model.configure_optimizers()
    model.train()
    for batch in DataLoader(ds, batch_size=4, shuffle=True):
        for _ in range(20):  # 2 batches x 20 = 40 steps
            loss, _ = model.shared_step(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.update_ema()
    ckpt, config = tmp / "tiny.ckpt", tmp / "tiny.yaml"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    OmegaConf.save(cfg, config)
    return {"ckpt": ckpt, "config": config, "data": data, "root": tmp}


class FileServer:
    """A local HTTP server over a folder with Range support, request log and injectable faults.

    `cut[name] = k` makes the next k GETs of /name send the full Content-Length but close after
    half the body, as a dropped connection does.
    """

    def __init__(self, folder: Path) -> None:
        self.folder, self.cut, self.requests = folder, {}, []
        handler = functools.partial(_RangeHandler, server_state=self)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        """URL of a file in the served folder."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of files with 'Range: bytes=N-' support."""

    def __init__(self, *args, server_state: FileServer, **kw) -> None:
        self.state = server_state
        super().__init__(*args, **kw)

    def log_message(self, *args) -> None:
        """Keep test output quiet."""

    def do_HEAD(self) -> None:
        """Headers only."""
        self.do_GET(body=False)

    def do_GET(self, body: bool = True) -> None:
        """The file (from the Range offset), 404 when absent, or half of it when cut."""
        name = self.path.lstrip("/").split("?")[0]
        path = self.state.folder / name
        self.state.requests.append((self.command, name, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header(
            "Content-Type", "video/mp4" if name.endswith(".mp4") else "application/octet-stream"
        )
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return
        if self.command == "GET" and self.state.cut.get(name, 0) > 0:
            self.state.cut[name] -= 1
            self.wfile.write(data[start : start + (len(data) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture
def file_server(tmp_path: Path):
    """A FileServer over tmp_path/'served'."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = FileServer(folder)
    yield server
    server.close()


# --------------------------------------------------------------------------- evaluation clips


@pytest.fixture(scope="module")
def landmarker():
    """The offline dlib landmarker (the default of the CLI)."""
    from ldm.preprocessing.landmarks import make_landmarker

    return make_landmarker("dlib")


@pytest.fixture(scope="module")
def synth(landmarker) -> dict:
    """A synthetic talking clip with a known mouth opening (tests/eval_clips.py)."""
    from eval_clips import synthetic_clip

    return synthetic_clip(landmarker)


@pytest.fixture(scope="module")
def real() -> dict:
    """The first frames of a real HDTF clip (skips when ../shared/data is absent)."""
    from eval_clips import real_clip

    return real_clip()


@pytest.fixture(scope="module")
def real_lms(real, landmarker) -> np.ndarray:
    """dlib track of the real segment."""
    return landmarker.track(real["frames"])
