"""scripts/evaluate.py end to end, and the LPIPS and SyncNet weights it loads."""

from __future__ import annotations

import json
import logging
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ldm.evaluation.evaluate import FIRST_STAGE, baseline_label
from ldm.evaluation.lpips import LPIPS, load_lpips, lpips_frames
from ldm.evaluation.syncnet import SyncNet, load_syncnet, lse

from conftest import load_script
from eval_clips import REAL_CLIP, blur, blur_mouth, noisy

cli = load_script("evaluate")


def _random_lpips(path: Path) -> Path:
    """Save a randomly initialised AlexNet-LPIPS state dict (non-negative linear weights)."""
    torch.manual_seed(0)
    model = LPIPS()
    for k in range(5):
        torch.nn.init.uniform_(getattr(model, f"lin{k}").model[1].weight, 0.0, 1.0)
    torch.save(model.state_dict(), path)
    return path


def _random_syncnet(path: Path) -> Path:
    """Save a randomly initialised syncnet_v2-layout state dict."""
    torch.manual_seed(0)
    torch.save(SyncNet().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def synth_video(synth, tmp_path_factory) -> Path:
    """The synthetic clip as an H.264 mp4 with a 16 kHz voice-like tone following the mouth."""
    from ldm.video import write_video

    folder = tmp_path_factory.mktemp("synth_video")
    sr, n = 16000, len(synth["frames"])
    t = np.arange(n * sr // 25) / sr
    env = np.interp(t, np.arange(n) / 25, synth["design"])
    voice = sum(np.sin(2 * np.pi * f0 * t) / (k + 1) for k, f0 in enumerate((140, 280, 420, 700)))
    pcm = (0.3 * env * voice / 2.1 * 32767).astype(np.int16)
    wav = folder / "voice.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return write_video(folder / "truth.mp4", synth["frames"], fps=25, audio_path=wav)


def test_lpips_weights_load_and_identical_frames_score_zero(tmp_path, synth):
    """File and folder (torchvision + alex.pth) layouts load alike; identical frames give 0."""
    full = _random_lpips(tmp_path / "lpips_alex.pth")
    model = load_lpips(full)
    frames = synth["frames"][:4]
    np.testing.assert_array_equal(lpips_frames(model, frames, frames), 0.0)
    diff = lpips_frames(model, noisy(frames, sigma=20), frames)
    assert diff.shape == (4,) and np.isfinite(diff).all() and (diff > 0).all()
    state = torch.load(full, weights_only=True)
    folder = tmp_path / "lpips_folder"
    folder.mkdir()
    backbone = {k: v for k, v in state.items() if k.startswith("net.")}
    torchvision_keys = {"features." + ".".join(k.split(".")[2:]): v for k, v in backbone.items()}
    torch.save(torchvision_keys, folder / "alexnet-owt-test.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, folder / "alex.pth")
    again = lpips_frames(load_lpips(folder), noisy(frames, sigma=20), frames)
    np.testing.assert_allclose(again, diff, rtol=1e-5)


def test_syncnet_scores_real_frames(tmp_path, real, real_lms):
    """Random syncnet_v2 weights: LSE-D/LSE-C/offset are finite and of the right kind."""
    from ldm.video import load_audio

    model = load_syncnet(_random_syncnet(tmp_path / "syncnet_v2.model"))
    n = 16
    audio = load_audio(REAL_CLIP)[: n * 640]
    out = lse(model, real["frames"][:n], real_lms[:n], audio)
    assert np.isfinite([out["lse_d"], out["lse_c"], out["av_offset"]]).all()
    assert out["lse_d"] > 0 and out["lse_c"] >= 0
    assert abs(out["av_offset"]) <= 15 and out["av_offset"] == int(out["av_offset"])


def test_cli_writes_report_files(tmp_path, synth, synth_video):
    """End to end with --baselines and random LPIPS/SyncNet weights: JSON, markdown and PNG."""
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    pred = blur_mouth(synth["frames"], synth["lms"])
    for i, f in enumerate(pred):
        cv2.imwrite(str(pred_dir / f"{i:04d}.png"), f[:, :, ::-1])
    out = tmp_path / "report"
    argv = ["--pred", str(pred_dir), "--gt", str(synth_video), "--out", str(out), "--baselines"]
    argv += ["--max-frames", "12", "--lpips-weights", str(_random_lpips(tmp_path / "l.pth"))]
    argv += ["--syncnet-weights", str(_random_syncnet(tmp_path / "s.model"))]
    assert cli.main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    clip = rep["clips"][0]
    assert clip["frames"] == 12 and list(clip["rows"]) == [
        "prediction", "copy_reference", "copy_reference_aligned", "shifted_truth", "truth",
    ]  # fmt: skip
    pred_sum, truth_sum = clip["rows"]["prediction"]["summary"], clip["rows"]["truth"]["summary"]
    assert 0 < pred_sum["lpips"] < 1e6 and truth_sum["lpips"] == 0.0
    assert truth_sum["psnr"] == "inf" and isinstance(pred_sum["psnr"], float)
    for s in (pred_sum, truth_sum):
        assert np.isfinite([s["lse_d"], s["lse_c"]]).all()
    assert len(clip["rows"]["prediction"]["per_frame"]["mse"]) == 12
    assert any("LSE audio" in n and "truth.mp4" in n for n in clip["notes"])
    md = (out / "report.md").read_text()
    assert "| clip | method | PSNR ↑ | SSIM ↑ | mouth PSNR ↑" in md and "LSE-C ↑" in md
    assert "mouth sharpness" in md and 0 < pred_sum["sharpness_mouth"] < 1  # the lips are blurred
    assert truth_sum["sharpness_mouth"] == 1.0
    img = cv2.imread(clip["plot"])
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 600


def test_cli_without_weights_says_what_was_skipped(tmp_path, synth_video, caplog):
    """No LPIPS/SyncNet weights: the report says they were skipped and how to enable them."""
    out = tmp_path / "report"
    argv = ["--pred", str(synth_video), "--gt", str(synth_video), "--out", str(out)]
    with caplog.at_level(logging.INFO):
        assert cli.main([*argv, "--max-frames", "8"]) == 0
    md = (out / "report.md").read_text()
    assert "LPIPS skipped" in md and "--lpips-weights" in md
    assert "LSE-C/LSE-D skipped" in md and "--syncnet-weights" in md
    assert "LPIPS ↓" not in md and "LPIPS skipped" in caplog.text


def test_cli_first_stage_frames_row(tmp_path, synth, synth_video):
    """--first-stage-frames (a folder, smaller and shorter) is resized and truncated like --pred,
    and its row is in report.json (after the prediction) and in report.md."""
    first = tmp_path / "first"
    first.mkdir()
    for i, f in enumerate(blur(synth["frames"][:6], 1.5)):
        cv2.imwrite(str(first / f"{i}.png"), cv2.resize(f, (128, 128))[:, :, ::-1])
    out = tmp_path / "report"
    argv = ["--pred", str(synth_video), "--gt", str(synth_video), "--out", str(out)]
    argv += ["--first-stage-frames", str(first), "--max-frames", "8", "--baselines"]
    assert cli.main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    clip = rep["clips"][0]
    assert list(clip["rows"])[:2] == ["prediction", FIRST_STAGE] and clip["frames"] == 6
    row = clip["rows"][FIRST_STAGE]
    assert row["label"] == baseline_label(FIRST_STAGE) and len(row["per_frame"]["hf_mouth"]) == 6
    assert 0 < row["summary"]["sharpness_mouth"] < 1 and isinstance(row["summary"]["psnr"], float)
    assert FIRST_STAGE in rep["overall"] and rep["settings"]["first_stage_frames"] == str(first)
    assert any("resized" in n for n in clip["notes"])
    md = (out / "report.md").read_text()
    assert f"| {baseline_label(FIRST_STAGE)} |" in md and "mouth sharpness" in md


def test_cli_first_stage_frames_needs_a_single_clip(synth_video, capsys):
    """With several clips --first-stage-frames is refused with a clear message."""
    two = [str(synth_video)] * 2
    with pytest.raises(SystemExit):
        cli.parse_args(["--pred", *two, "--gt", *two, "--first-stage-frames", str(synth_video)])
    assert "single clip" in capsys.readouterr().err
