"""scripts/evaluate.py and ldm.evaluation on a synthetic talking clip and a real HDTF segment."""

from __future__ import annotations

import json
import logging
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ldm.evaluation import landmark_metrics as lm
from ldm.evaluation.clips import match_clips, read_clip
from ldm.evaluation.evaluate import (
    FIRST_STAGE,
    Scorers,
    baseline_label,
    evaluate_clip,
    summarize_overall,
    summarize_row,
)
from ldm.evaluation.lpips import LPIPS, load_lpips, lpips_frames
from ldm.evaluation.metrics import region_boxes, ssim
from ldm.evaluation.syncnet import SyncNet, load_syncnet, lse

from conftest import load_script

REAL_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "hdtf" / "RD_Radio34_000.mp4"
ROOT = Path(__file__).resolve().parents[1]
N_SYNTH, N_REAL = 40, 40
N_SHORT = 10  # frames of the sharpness / first-stage tests


cli = load_script("evaluate")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def landmarker():
    """The offline dlib landmarker (the default of the CLI)."""
    from ldm.preprocessing.landmarks import make_landmarker

    return make_landmarker("dlib")


def _open_mouth(img: np.ndarray, gap: float, lms: np.ndarray) -> np.ndarray:
    """Drop the lower lip and jaw by `gap` px below the lip line, filling the gap dark."""
    h, w = img.shape[:2]
    cx = lms[48:68, 0].mean()
    split = (lms[62, 1] + lms[66, 1]) / 2
    half_w, chin = (lms[54, 0] - lms[48, 0]) / 2, lms[8, 1]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wx = np.sqrt(np.clip(1 - ((xx - cx) / (half_w * 1.2)) ** 2, 0, 1))
    ramp = np.clip(1 - (yy - chin) / (0.6 * (chin - split)), 0, 1)
    d = np.where(yy >= split, gap * wx * ramp, 0).astype(np.float32)
    out = cv2.remap(img, xx, yy - d, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out[(yy >= split) & (yy - d < split) & (wx > 0.2)] = (60, 15, 20)
    return out


def _design(n: int, seed: int = 0) -> np.ndarray:
    """A smooth, non-palindromic opening pattern in [0, 1] (speech-like bursts)."""
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.random(n + 6), np.ones(4) / 4, mode="valid")[:n]
    return (x - x.min()) / np.ptp(x)


@pytest.fixture(scope="module")
def synth(landmarker):
    """40 frames, 256 px, of a real face photo whose mouth opens as `design`; slight head sway."""
    from skimage import data

    face = cv2.resize(data.astronaut()[40:232, 130:322], (256, 256), interpolation=cv2.INTER_CUBIC)
    lms0 = landmarker.detect(face)
    assert lms0 is not None, "dlib no longer finds the astronaut's face"
    design = _design(N_SYNTH)
    frames = []
    for t, g in enumerate(design):
        f = _open_mouth(face, 14.0 * g, lms0)
        shift = np.float32([[1, 0, 1.5 * np.sin(t / 5)], [0, 1, np.cos(t / 7)]])
        frames.append(cv2.warpAffine(f, shift, (256, 256), borderMode=cv2.BORDER_REFLECT))
    frames = np.stack(frames)
    return {"frames": frames, "design": design, "lms": landmarker.track(frames)}


@pytest.fixture(scope="module")
def real():
    """The first 40 frames of a real HDTF clip and its landmarks (skips when absent)."""
    if not REAL_CLIP.exists():
        pytest.skip(f"{REAL_CLIP} is absent (tests read ../shared/data beside the project root)")
    frames = read_clip(REAL_CLIP, max_frames=N_REAL)
    return {"frames": frames}


@pytest.fixture(scope="module")
def real_lms(real, landmarker):
    """dlib track of the real segment."""
    return landmarker.track(real["frames"])


def _summary(pred, gt, landmarker, gt_lms, **kw) -> dict:
    """Summary numbers of the prediction row."""
    res = evaluate_clip(pred, gt, Scorers(landmarker), gt_lms=gt_lms, **kw)
    return summarize_row(res.rows[0], res.gt_opening)


def _lip_box(lms: np.ndarray, pad: int = 6) -> tuple[slice, slice]:
    """Rows/cols around the lips (points 48-67) of one frame."""
    lo, hi = lms[48:68].min(0).astype(int) - pad, lms[48:68].max(0).astype(int) + pad
    return slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _noisy(frames: np.ndarray, sigma: float = 3.0, seed: int = 1) -> np.ndarray:
    """A mildly degraded copy over the whole frame (a stand-in for a decent generator)."""
    noise = np.random.default_rng(seed).normal(0, sigma, frames.shape)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def _blur_mouth(frames: np.ndarray, lms: np.ndarray) -> np.ndarray:
    """Copy with a strong blur on the lips of every frame."""
    out = frames.copy()
    for t in range(len(out)):
        ys, xs = _lip_box(lms[t])
        out[t, ys, xs] = cv2.GaussianBlur(out[t, ys, xs], (0, 0), 5)
    return out


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Whole-frame Gaussian blur of every frame."""
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def _grain(frames: np.ndarray, sigma: float = 20.0, seed: int = 2) -> np.ndarray:
    """Copy with grey pixel noise (the same on R, G and B, so it is all in the luma)."""
    noise = np.random.default_rng(seed).normal(0, sigma, frames.shape[:3])[..., None]
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def _own_sharpness(frames: np.ndarray, gt: np.ndarray, gt_lms: np.ndarray) -> float:
    """The documented mouth sharpness, written out: pooled band-pass energies, method / truth."""
    energies = np.zeros(2)
    for box, f, g in zip(region_boxes(gt_lms, gt.shape[1:]), frames, gt, strict=True):
        x0, y0, x1, y1 = box
        for i, img in enumerate((f, g)):
            y = cv2.cvtColor(img[y0:y1, x0:x1].astype(np.float32), cv2.COLOR_RGB2GRAY)
            band = cv2.GaussianBlur(y, (0, 0), 1) - cv2.GaussianBlur(y, (0, 0), 3)
            energies[i] += np.mean(band.astype(np.float64) ** 2)
    return energies[0] / energies[1]


def _rows(res) -> dict[str, dict]:
    """Summary of every row of a ClipResult, by key, in row order."""
    return {r.key: summarize_row(r, res.gt_opening) for r in res.rows}


def _freeze_mouth(frames: np.ndarray, lms: np.ndarray) -> np.ndarray:
    """Copy whose lip area is the first frame's in every frame."""
    out = frames.copy()
    ys, xs = _lip_box(lms[0], pad=10)
    out[:, ys, xs] = frames[0, ys, xs]
    return out


# --------------------------------------------------------------------------- metric units


def test_ssim_matches_skimage():
    """Own SSIM = skimage's Gaussian-window SSIM (Wang et al. settings)."""
    from skimage import data
    from skimage.metrics import structural_similarity

    a = data.astronaut()[:96, :128]
    b = _noisy(a[None], sigma=12)[0]
    ref = structural_similarity(
        a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )  # fmt: skip
    assert ssim(b, a) == pytest.approx(ref, abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_lmd_ignores_head_pose_and_measures_mouth_shift(synth):
    """A similarity-moved face has LMD 0; moving only the mouth by 3 px gives LMD 3."""
    gt = synth["lms"][:5].astype(np.float64)
    ang, s, t = 0.2, 1.3, np.array([7.0, -4.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    moved = s * gt @ rot.T + t
    assert np.nanmax(lm.lmd(moved, gt)) < 1e-9
    shifted = gt.copy()
    shifted[:, 48:68] += np.array([0.0, 3.0])
    np.testing.assert_allclose(lm.lmd(shifted, gt), 3.0, atol=1e-9)
    assert np.isnan(lm.correlation(np.arange(5.0), np.full(5, 2.0)))  # constant: undefined


def test_synthetic_mouth_opening_is_seen_by_dlib(synth):
    """The fixture's drawn mouth opening is what dlib measures (else the tests below are moot)."""
    opening = lm.mouth_opening(synth["lms"])
    assert np.isfinite(opening).all()
    assert lm.correlation(opening, synth["design"]) > 0.9
    assert np.ptp(opening) > 0.1  # inner-lip gap changes by > 10% of the inter-ocular distance


# --------------------------------------------------------------------------- clip-level behaviour


@pytest.mark.parametrize("clip", ["synth", "real"])
def test_truth_against_itself(clip, request, landmarker):
    """PSNR inf, SSIM 1, LMD 0 and correlation 1, over the frame and the mouth."""
    d = request.getfixturevalue(clip)
    gt_lms = d["lms"] if clip == "synth" else request.getfixturevalue("real_lms")
    s = _summary(d["frames"], d["frames"], landmarker, gt_lms)
    assert s["psnr"] == np.inf and s["psnr_mouth"] == np.inf
    assert s["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert s["ssim_mouth"] == pytest.approx(1.0, abs=1e-9)
    assert s["lmd"] == pytest.approx(0.0, abs=1e-6)
    assert s["mouth_corr"] == pytest.approx(1.0, abs=1e-9)


def _mse(psnr_db: float) -> float:
    """MSE back from PSNR."""
    return 255.0**2 / 10 ** (psnr_db / 10)


@pytest.mark.parametrize("clip", ["synth", "real"])
def test_mouth_degradation_hits_mouth_metrics_only(clip, request, landmarker):
    """Blurring/freezing the lips costs the mouth metrics much more than the whole-frame ones.

    The prediction stands in for a decent generator (noise, 30 dB). PSNR is log-MSE, so the
    whole-frame check is on MSE growth: about the lower-face box's share of the frame.
    """
    d = request.getfixturevalue(clip)
    gt, gt_lms = d["frames"], d["lms"] if clip == "synth" else request.getfixturevalue("real_lms")
    base = _noisy(gt, sigma=8.0)
    ref = _summary(base, gt, landmarker, gt_lms)
    blur = _summary(_blur_mouth(base, gt_lms), gt, landmarker, gt_lms)
    frozen = _summary(_freeze_mouth(base, gt_lms), gt, landmarker, gt_lms)
    for s in (blur, frozen):
        assert ref["psnr_mouth"] - s["psnr_mouth"] > 2.0
        frame_growth = _mse(s["psnr"]) - _mse(ref["psnr"])
        assert 0 < frame_growth < 0.3 * (_mse(s["psnr_mouth"]) - _mse(ref["psnr_mouth"]))
        assert ref["ssim_mouth"] - s["ssim_mouth"] > 0.01
        assert ref["ssim"] - s["ssim"] < 0.3 * (ref["ssim_mouth"] - s["ssim_mouth"])
        assert s["lmd"] > ref["lmd"] + 0.5
    assert not frozen["mouth_corr"] > ref["mouth_corr"] - 0.2  # NaN (no motion) also passes


@pytest.mark.parametrize("clip", ["synth", "real"])
def test_reversed_time_lowers_correlation(clip, request, landmarker):
    """Playing the truth backwards keeps the images but breaks the mouth timing."""
    d = request.getfixturevalue(clip)
    gt_lms = d["lms"] if clip == "synth" else request.getfixturevalue("real_lms")
    s = _summary(d["frames"][::-1], d["frames"], landmarker, gt_lms)
    assert s["mouth_corr"] < 0.5
    assert s["lmd"] > 0.5


def test_baselines_rows(synth, landmarker):
    """Copy-reference has no lip motion; shifted truth is worse than truth itself."""
    res = evaluate_clip(
        synth["frames"], synth["frames"], Scorers(landmarker), gt_lms=synth["lms"],
        baselines=True, shift=25,
    )  # fmt: skip
    rows = {r.key: summarize_row(r, res.gt_opening) for r in res.rows}
    assert list(rows) == ["prediction", "copy_reference", "shifted_truth", "truth"]
    assert np.isnan(rows["copy_reference"]["mouth_corr"])
    assert rows["copy_reference"]["opening_mae"] > 0.02
    assert rows["shifted_truth"]["mouth_corr"] < 0.6 and rows["truth"]["mouth_corr"] == 1.0
    assert np.isfinite(rows["shifted_truth"]["psnr"]) and rows["truth"]["psnr"] == np.inf


def _short(clip: str, request) -> tuple[np.ndarray, np.ndarray]:
    """The first N_SHORT frames of a clip fixture and its truth landmarks."""
    d = request.getfixturevalue(clip)
    gt_lms = d["lms"] if clip == "synth" else request.getfixturevalue("real_lms")
    return d["frames"][:N_SHORT], gt_lms[:N_SHORT]


@pytest.mark.parametrize("clip", ["synth", "real"])
def test_mouth_sharpness_truth_blur_and_noise(clip, request, landmarker):
    """Truth scores exactly 1, a sigma-2 blur < 0.5, added grain > 1, copy-reference finite;
    the values are the documented pooled band-pass ratio."""
    gt, gt_lms = _short(clip, request)
    blurred, grainy = _blur(gt, 2.0), _grain(gt)
    extra = [("blurred", "blurred copy", blurred), ("grainy", "grainy copy", grainy)]
    res = evaluate_clip(
        gt, gt, Scorers(landmarker), gt_lms=gt_lms, baselines=True, shift=4, extra_rows=extra
    )
    rows = _rows(res)
    assert rows["prediction"]["sharpness_mouth"] == 1.0 and rows["truth"]["sharpness_mouth"] == 1.0
    assert rows["blurred"]["sharpness_mouth"] < 0.5
    assert rows["grainy"]["sharpness_mouth"] > 1.05
    assert np.isfinite(rows["copy_reference"]["sharpness_mouth"])
    for key, frames in (("blurred", blurred), ("grainy", grainy)):
        expected = _own_sharpness(frames, gt, gt_lms)
        assert rows[key]["sharpness_mouth"] == pytest.approx(expected, rel=1e-4)
    per = res.rows[1].per_frame
    assert per["hf_mouth"].shape == (N_SHORT,) and (per["hf_mouth_truth"] > 0).all()


def test_sharpness_exposes_a_smeared_mouth_that_psnr_rewards(real, real_lms, landmarker):
    """A lip blur beats both baselines on mouth PSNR, yet its sharpness is well below 1 and below
    the shifted truth's (real frames, wrong timing). Copy-reference is not compared: its
    sharpness is that of one frame's content (a closed mouth has less detail) and varies."""
    gt, gt_lms = real["frames"][:N_SHORT], real_lms[:N_SHORT]
    res = evaluate_clip(
        _blur_mouth(gt, gt_lms), gt, Scorers(landmarker), gt_lms=gt_lms, baselines=True, shift=4
    )
    rows = _rows(res)
    pred = rows["prediction"]
    for key in ("copy_reference", "shifted_truth"):
        assert pred["psnr_mouth"] > rows[key]["psnr_mouth"]
    assert pred["sharpness_mouth"] < 0.9
    assert pred["sharpness_mouth"] < rows["shifted_truth"]["sharpness_mouth"] - 0.1


def test_overall_sharpness_pools_frames_over_clips(synth, landmarker):
    """Over clips, energies are pooled then divided: not the mean of the clip ratios."""
    gt, gt_lms = synth["frames"], synth["lms"]
    a = evaluate_clip(gt[:3], gt[:3], Scorers(landmarker), gt_lms=gt_lms[:3])
    b = evaluate_clip(_blur(gt[3:12], 2.0), gt[3:12], Scorers(landmarker), gt_lms=gt_lms[3:12])
    pooled = summarize_overall([a, b])["prediction"]["sharpness_mouth"]
    clip_ratios = [summarize_row(c.rows[0], c.gt_opening)["sharpness_mouth"] for c in (a, b)]
    per = [c.rows[0].per_frame for c in (a, b)]
    energy = sum(p["hf_mouth"].sum() for p in per)
    truth_energy = sum(p["hf_mouth_truth"].sum() for p in per)
    assert pooled == pytest.approx(energy / truth_energy, rel=1e-12)
    assert abs(pooled - np.mean(clip_ratios)) > 0.05  # 3 sharp + 9 blurred frames, not 1:1


def test_first_stage_row(synth, landmarker):
    """The truth as first-stage frames scores like the truth; a blurred copy loses mouth PSNR
    and sharpness, more so when blurred more. The row comes right after the prediction."""
    gt, gt_lms = synth["frames"][:N_SHORT], synth["lms"][:N_SHORT]
    label = baseline_label(FIRST_STAGE)
    res = evaluate_clip(
        _blur_mouth(gt, gt_lms), gt, Scorers(landmarker), gt_lms=gt_lms, baselines=True,
        shift=4, extra_rows=[(FIRST_STAGE, label, gt)],
    )  # fmt: skip
    assert [r.key for r in res.rows] == [
        "prediction", FIRST_STAGE, "copy_reference", "shifted_truth", "truth",
    ]  # fmt: skip
    assert res.rows[1].label == label and "first stage only" in label
    s = _rows(res)[FIRST_STAGE]
    assert s["psnr"] == np.inf and s["psnr_mouth"] == np.inf
    assert s["lmd"] == pytest.approx(0.0, abs=1e-6) and s["sharpness_mouth"] == 1.0
    extra = [(FIRST_STAGE, label, _blur(gt, 1.0)), ("more", "more blur", _blur(gt, 2.0))]
    rows = _rows(evaluate_clip(gt, gt, Scorers(landmarker), gt_lms=gt_lms, extra_rows=extra))
    soft, more = rows[FIRST_STAGE], rows["more"]
    assert np.isfinite(soft["psnr_mouth"]) and soft["sharpness_mouth"] < 1.0
    assert more["psnr_mouth"] < soft["psnr_mouth"] - 1.0
    assert more["sharpness_mouth"] < soft["sharpness_mouth"]


def test_extra_rows_are_checked(synth, landmarker):
    """A taken key or frames of another shape are refused."""
    gt = synth["frames"][:4]
    scorers = Scorers(landmarker)
    with pytest.raises(ValueError, match="already a row"):
        evaluate_clip(gt, gt, scorers, gt_lms=synth["lms"][:4], extra_rows=[("truth", "t", gt)])
    with pytest.raises(ValueError, match="truth"):
        evaluate_clip(gt, gt, scorers, gt_lms=synth["lms"][:4], extra_rows=[("x", "x", gt[:3])])


# --------------------------------------------------------------------------- inputs


def test_lengths_and_resolution_are_matched(synth, caplog):
    """Different lengths truncate (logged); a smaller prediction is resized to the truth's size."""
    gt = synth["frames"]
    small = np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_AREA) for f in gt[:30]])
    with caplog.at_level(logging.WARNING):
        pred, truth, notes = match_clips(small, gt)
    assert pred.shape == truth.shape == (30, 256, 256, 3)
    assert "truncated to the first 30" in caplog.text and "resized" in caplog.text
    assert len(notes) == 2
    assert ssim(pred[3], truth[3]) > 0.8


def test_frames_dir_is_read_in_numeric_order(tmp_path, synth):
    """frame_2.png comes before frame_10.png."""
    for i in range(12):
        cv2.imwrite(str(tmp_path / f"frame_{i + 1}.png"), synth["frames"][i][:, :, ::-1])
    frames = read_clip(tmp_path)
    np.testing.assert_array_equal(frames, synth["frames"][:12])


def test_unreadable_inputs_exit_nonzero_naming_the_file(tmp_path, synth, caplog):
    """Missing/corrupt/empty inputs and bad weight files: exit 1 naming the offending path."""
    good = tmp_path / "good"
    good.mkdir()
    cv2.imwrite(str(good / "0.png"), synth["frames"][0])
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 50)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ["--out", str(tmp_path / "r")]
    for path in (tmp_path / "missing.mp4", bad, empty):
        caplog.clear()
        assert cli.main(["--pred", str(path), "--gt", str(good), *out]) == 1
        assert str(path) in caplog.text
    for flag in ("--lpips-weights", "--syncnet-weights"):  # a video is not a weight file
        caplog.clear()
        assert cli.main(["--pred", str(good), "--gt", str(good), flag, str(bad), *out]) == 1
        assert str(bad) in caplog.text and "state dict" in caplog.text


# --------------------------------------------------------------------------- LPIPS / SyncNet / CLI


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
    diff = lpips_frames(model, _noisy(frames, sigma=20), frames)
    assert diff.shape == (4,) and np.isfinite(diff).all() and (diff > 0).all()
    state = torch.load(full, weights_only=True)
    folder = tmp_path / "lpips_folder"
    folder.mkdir()
    backbone = {k: v for k, v in state.items() if k.startswith("net.")}
    torchvision_keys = {"features." + ".".join(k.split(".")[2:]): v for k, v in backbone.items()}
    torch.save(torchvision_keys, folder / "alexnet-owt-test.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, folder / "alex.pth")
    again = lpips_frames(load_lpips(folder), _noisy(frames, sigma=20), frames)
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
    pred = _blur_mouth(synth["frames"], synth["lms"])
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
        "prediction", "copy_reference", "shifted_truth", "truth",
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
    for i, f in enumerate(_blur(synth["frames"][:6], 1.5)):
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
