"""Rendering: samplers, paste-back, length matching, the CLI end to end (tiny trained model)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm.config import load_config
from ldm.data.talk import TalkInference
from ldm.inference.checkpoint import CheckpointError, load_model
from ldm.inference.clip import frame_indices, n_video_frames
from ldm.inference.paste import paste_face, paste_mask
from ldm.inference.render import Renderer, RenderOptions
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler, make_dpm_timesteps
from ldm.preprocessing import synthetic
from ldm.video import ffmpeg_exe, probe, read_frames

from conftest import (
    SHARED_DATA,
    TINY_SIZE,
    face_template,
    load_script,
    tiny_config,
)

SIZE = TINY_SIZE  # frame side of the tiny model (16 x 16 latents)


pytestmark = pytest.mark.usefixtures("one_thread")
INFERENCE = load_script("inference")


@pytest.fixture(scope="module")
def tiny_model(tiny) -> torch.nn.Module:
    return load_model(load_config([tiny["config"]]), tiny["ckpt"])


# --------------------------------------------------------------------------- units


def test_frame_indices_loop_and_pingpong():
    assert frame_indices(5, 3).tolist() == [0, 1, 2]
    assert frame_indices(3, 8, "pingpong").tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert frame_indices(3, 7, "loop").tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert frame_indices(1, 4).tolist() == [0, 0, 0, 0]
    assert n_video_frames(16000) == 25
    with pytest.raises(ValueError, match="shorter than one video frame"):
        n_video_frames(100)


def test_dpm_timesteps_are_strictly_decreasing_from_t_max_to_zero():
    abar = np.cumprod(1 - np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2)
    for spacing in ("time", "logsnr"):
        for steps in (1, 5, 20, 200, 999):
            ts = make_dpm_timesteps(steps, abar, spacing)
            assert len(ts) == steps + 1 and ts[0] == 999 and ts[-1] == 0
            assert (np.diff(ts) < 0).all()


def test_paste_keeps_every_pixel_outside_the_mask():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    box = [100, 40, 150]  # x0, y0, side
    lms = face_template(256)
    mask = paste_mask(lms, 256, box[2])
    generated = np.full((64, 64, 3), 255, np.uint8)
    out = paste_face(frame, generated, box, mask)
    full = np.zeros(frame.shape[:2], np.float32)
    full[40:190, 100:250] = mask
    assert mask.max() == 1.0 and mask[0].max() == 0.0  # solid inside, zero at the box top
    assert (out[full == 0] == frame[full == 0]).all()
    assert (out[full == 1] == 255).all()
    soft = (full > 0.05) & (full < 0.95)
    assert soft.sum() > 100  # a feathered edge, not a hard cut


def test_checkpoint_errors_name_the_problem(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(load_config([tiny["config"]]), tmp_path / "nope.ckpt")
    wider = tiny_config(model_channels=64)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*model\.diffusion_model"):
        load_model(wider, tiny["ckpt"])
    sd = torch.load(tiny["ckpt"], weights_only=True)["state_dict"]
    sd = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model_for_ldm")}
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match=r"missing key.*cond_stage_model_for_ldm") as err:
        load_model(load_config([tiny["config"]]), tmp_path / "partial.ckpt")
    assert "unexpected key(s): extra.weight" in str(err.value)


# --------------------------------------------------------------------------- sampling


def inference_items(tiny) -> TalkInference:
    return TalkInference(
        split_file=str(tiny["root"] / "data_test.txt"), root=str(tiny["data"]), size=SIZE
    )


def test_same_seed_same_frames_and_the_modes_run(tiny, tiny_model):
    items = inference_items(tiny)
    reference = items[0]["reference_img"]
    opts = dict(sampler="dpm", steps=4, batch_size=3, progress=False)
    a = Renderer(tiny_model, RenderOptions(seed=7, **opts)).render(items, reference)
    b = Renderer(tiny_model, RenderOptions(seed=7, **opts)).render(items, reference)
    c = Renderer(tiny_model, RenderOptions(seed=8, **opts)).render(items, reference)
    assert a.shape == (8, SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    prog = RenderOptions(seed=7, reference="progressive", shared_noise=True, **opts)
    p1 = Renderer(tiny_model, prog).render(items, reference)
    p2 = Renderer(tiny_model, prog).render(items, reference)
    assert np.array_equal(p1, p2) and not np.array_equal(p1, a)


def test_dpm20_is_closer_to_ddim200_than_ddim20(tiny, tiny_model):
    batch = next(iter(DataLoader(inference_items(tiny), batch_size=4)))
    shape = (4, 3, SIZE // 4, SIZE // 4)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with tiny_model.ema_scope(), torch.inference_mode():
        cond = tiny_model.get_learned_conditioning(batch)
        ref = DDIMSampler(tiny_model).sample(200, cond, shape, x_T=x_T)
        ddim20 = DDIMSampler(tiny_model).sample(20, cond, shape, x_T=x_T)
        dpm20 = DPMSolverSampler(tiny_model).sample(20, cond, shape, x_T=x_T)
    err_ddim, err_dpm = (ddim20 - ref).norm(), (dpm20 - ref).norm()
    logging.getLogger(__name__).info("vs DDIM-200: DDIM-20 %.4f, DPM-20 %.4f", err_ddim, err_dpm)
    assert err_dpm < 0.5 * err_ddim


def test_dpm_inpainting_keeps_the_known_region(tiny_model):
    x0 = torch.randn(2, 3, SIZE // 4, SIZE // 4)
    mask = torch.zeros(2, 1, SIZE // 4, SIZE // 4)
    mask[..., : SIZE // 8, :] = 1.0
    cond = {
        "masked_latent": torch.zeros_like(x0),
        "reference_latent": torch.zeros_like(x0),
        "audio_feature": torch.zeros(2, 64),
        "landmark_feature": torch.zeros(2, 64),
    }
    gen = torch.Generator().manual_seed(0)
    sampler = DPMSolverSampler(tiny_model)
    out = sampler.sample(10, cond, tuple(x0.shape), x0=x0, mask=mask, generator=gen)
    known = (out - x0)[..., : SIZE // 8, :].abs().mean()
    assert known < 0.5 * (out - x0)[..., SIZE // 8 :, :].abs().mean()


# --------------------------------------------------------------------------- CLI end to end


def encode_audio_file(path: Path, seconds: float) -> Path:
    """Speech-like audio in the format of the suffix (mp3, ogg, ...), made by ffmpeg."""
    wav = path.with_suffix(".src.wav")
    sf.write(wav, synthetic.speech_like_audio(seconds), 16000)
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-i", str(wav), str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def cli_args(tiny, *extra) -> list[str]:
    return ["--ckpt", str(tiny["ckpt"]), "--config", str(tiny["config"]), *map(str, extra)]


def test_portrait_mode_samples_as_the_demo_renders_and_the_split_mode_as_the_paper(tmp_path):
    """Unset sampling options: portrait mode takes the demo's render (DDIM 20, eta 1, one x_T
    for the clip; DPM-Solver++ stays an ODE), the split mode the paper protocol (DDIM 200, eta
    0, a new x_T per frame); whatever the user sets wins."""
    clip = tmp_path / "me.mp4"
    clip.touch()
    portrait = ["--ckpt", "x.ckpt", "--video", str(clip), "--audio", str(clip)]
    portrait += ["--out", str(tmp_path / "o.mp4")]
    split = ["--ckpt", "x.ckpt", "--split", str(clip)]

    def sampling(*argv: str) -> tuple:
        o = INFERENCE.render_options(INFERENCE.parse_args(list(argv)))
        return o.sampler, o.steps, o.eta, o.shared_noise

    assert sampling(*portrait) == ("ddim", 20, 1.0, True)
    assert sampling(*portrait, "--sampler", "dpm") == ("dpm", 20, 0.0, True)
    assert sampling(*portrait, "--steps", "50", "--eta", "0.5", "--no-shared-noise") == (
        "ddim", 50, 0.5, False,
    )  # fmt: skip
    assert sampling(*split) == ("ddim", 200, 0.0, False)
    assert sampling(*split, "--sampler", "dpm", "--eta", "1", "--shared-noise") == (
        "dpm", 20, 1.0, True,
    )  # fmt: skip


def lower_face_region(frame: np.ndarray, margin: float = 0.25) -> np.ndarray:
    """Boolean (H, W): the jaw polygon of dlib's landmarks on ``frame`` grown by ``margin`` face
    widths, and nothing above the eyes."""
    from ldm.data.talk import JAW_POLYGON
    from ldm.preprocessing.landmarks import make_landmarker

    lms = make_landmarker("dlib").detect(frame)
    assert lms is not None
    region = np.zeros(frame.shape[:2], np.uint8)
    cv2.fillPoly(region, [lms[list(JAW_POLYGON)].astype(np.int32)], 1)
    r = int(margin * np.ptp(lms[:, 0]))
    region = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    region[: int(lms[36:48, 1].max())] = 0
    return region.astype(bool)


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path))[..., ::-1]


def test_video_portrait_with_longer_mp3_speech(tiny, tmp_path):
    video = synthetic.make_face_video(tmp_path / "portrait.mp4", seconds=1.0)  # 25 frames
    audio = encode_audio_file(tmp_path / "speech.mp3", 1.63)  # 40 frames: ping-pong
    out, frames_dir = tmp_path / "result.mp4", tmp_path / "frames"
    argv = ["--video", video, "--audio", audio, "--out", out, "--frames-dir", frames_dir]
    rc = INFERENCE.main(cli_args(tiny, *argv, "--sampler", "dpm", "--steps", "4"))
    assert rc == 0
    info = probe(out)
    n_out = len(read_frames(out, fps=None))
    assert abs(n_out - 1.63 * 25) <= 1 and info.has_audio
    assert (info.width, info.height) == (320, 240)
    source = read_frames(video)
    pngs = sorted(frames_dir.glob("*.png"))
    assert len(pngs) == 40
    for k in (0, 10, 30):  # output 30 shows source frame 18 (ping-pong)
        src = source[frame_indices(25, 40)[k]]
        result = read_png(pngs[k])
        changed = (result != src).any(-1)
        assert changed.sum() > 500  # a face was pasted ...
        assert not (changed & ~lower_face_region(src)).any()  # ... and nothing outside it


def test_photo_portrait_same_seed_same_video(tiny, tmp_path):
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), synthetic.head_image()[..., ::-1])  # 270 x 270
    audio = encode_audio_file(tmp_path / "speech.ogg", 0.5)
    runs = []
    for name in ("a", "b"):
        out, frames_dir = tmp_path / f"{name}.mp4", tmp_path / name
        argv = ["--image", photo, "--audio", audio, "--out", out, "--frames-dir", frames_dir]
        extra = ["--steps", "4", "--reference", "progressive", "--shared-noise", "--seed", "3"]
        assert INFERENCE.main(cli_args(tiny, *argv, *extra)) == 0
        info = probe(out)
        assert (info.width, info.height) == (270, 270) and info.has_audio
        assert abs(len(read_frames(out, fps=None)) - 12.5) <= 1
        runs.append(np.stack([read_png(p) for p in sorted(frames_dir.glob("*.png"))]))
    assert np.array_equal(runs[0], runs[1])
    head = synthetic.head_image()
    changed = (runs[0] != head[None]).any(-1).any(0)
    assert changed.any() and not (changed & ~lower_face_region(head)).any()


def test_split_mode_writes_frames_mp4_and_side_by_side(tiny, tmp_path):
    outdir = tmp_path / "out"
    argv = ["--split", tiny["root"] / "data_test.txt", "--root", tiny["data"], "--outdir", outdir]
    assert INFERENCE.main(cli_args(tiny, *argv, "--steps", "4", "--batch-size", "4")) == 0
    assert sorted(p.name for p in (outdir / "2" / "frames").iterdir()) == [
        f"{f:05d}.png" for f in range(1, 9)
    ]
    clip, sbs = probe(outdir / "2.mp4"), probe(outdir / "2_side_by_side.mp4")
    assert clip.has_audio and sbs.has_audio
    assert (clip.width, clip.height, sbs.width) == (SIZE, SIZE, 2 * SIZE)
    assert len(read_frames(outdir / "2.mp4", fps=None)) == 8
    truth = read_frames(outdir / "2_truth.mp4", fps=None)  # what scripts/evaluate.py takes as --gt
    left = read_frames(outdir / "2_side_by_side.mp4", fps=None)[:, :, :SIZE]
    assert truth.shape == (8, SIZE, SIZE, 3) and probe(outdir / "2_truth.mp4").has_audio
    assert np.abs(truth.astype(int) - left).mean() < 4  # the truth half, up to compression


def test_errors_are_clear_and_leave_no_mp4(tiny, tmp_path, caplog):
    cli = load_script("inference")
    video = synthetic.make_face_video(tmp_path / "portrait.mp4", seconds=0.4)
    speech = encode_audio_file(tmp_path / "speech.wav", 0.5)
    out = tmp_path / "out" / "result.mp4"
    portrait = ["--video", video, "--audio", speech, "--out", out, "--steps", "4"]

    def fails(argv: list, message: str) -> None:
        caplog.clear()
        assert cli.main([str(a) for a in argv]) == 1
        assert message in caplog.text, caplog.text
        assert not out.parent.exists() or not list(out.parent.iterdir())

    missing = tmp_path / "missing.ckpt"
    fails(["--ckpt", missing, "--config", tiny["config"], *portrait], "checkpoint not found")
    wide = tmp_path / "wide.yaml"
    OmegaConf.save(tiny_config(model_channels=64), wide)
    fails(["--ckpt", tiny["ckpt"], "--config", wide, *portrait], "does not fit the config")
    assert "model.diffusion_model.input_blocks.0.0.weight" in caplog.text
    short = encode_audio_file(tmp_path / "short.wav", 0.02)
    fails(cli_args(tiny, *portrait[:2], "--audio", short, *portrait[4:]), "shorter than one")
    faceless = synthetic.make_face_video(tmp_path / "empty.mp4", seconds=0.4, faces=0)
    fails(cli_args(tiny, "--video", faceless, *portrait[2:]), "no face")
    assert cli.main(cli_args(tiny, "--audio", speech)) == 2  # neither a portrait nor a split


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "hdtf").is_dir(), reason="../shared/data/hdtf is absent")
def test_real_hdtf_clip_driven_by_another_segment(tiny, tmp_path):
    speech = tmp_path / "speech.wav"
    wav, sr = sf.read(SHARED_DATA / "audio" / "RD_Radio34_002.wav")
    sf.write(speech, wav[: sr // 2], sr)  # 0.5 s, stereo
    video = SHARED_DATA / "hdtf" / "RD_Radio34_000.mp4"
    out = tmp_path / "radio.mp4"
    argv = ["--video", video, "--audio", speech, "--out", out, "--frames-dir", tmp_path / "f"]
    assert INFERENCE.main(cli_args(tiny, *argv, "--sampler", "dpm", "--steps", "4")) == 0
    info = probe(out)
    assert (info.width, info.height, info.has_audio) == (512, 512, True)
    src = read_frames(video, max_frames=1)[0]
    changed = (read_png(tmp_path / "f" / "00001.png") != src).any(-1)
    assert changed.any() and not (changed & ~lower_face_region(src)).any()
