"""ldm.evaluation's metrics and clip scoring on a synthetic talking clip and a real HDTF segment."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

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
from ldm.evaluation.metrics import region_boxes, ssim, ssim_map

from conftest import face_template, load_script
from eval_clips import N_SHORT, blur, blur_mouth, lip_box, noisy

cli = load_script("evaluate")


def _summary(pred, gt, landmarker, gt_lms, **kw) -> dict:
    """Summary numbers of the prediction row."""
    res = evaluate_clip(pred, gt, Scorers(landmarker), gt_lms=gt_lms, **kw)
    return summarize_row(res.rows[0], res.gt_opening)


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
    ys, xs = lip_box(lms[0], pad=10)
    out[:, ys, xs] = frames[0, ys, xs]
    return out


# --------------------------------------------------------------------------- metric units


def test_ssim_matches_skimage():
    """Own SSIM = skimage's Gaussian-window SSIM (Wang et al. settings)."""
    from skimage import data
    from skimage.metrics import structural_similarity

    a = data.astronaut()[:96, :128]
    b = noisy(a[None], sigma=12)[0]
    ref = structural_similarity(
        a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )  # fmt: skip
    assert ssim(b, a) == pytest.approx(ref, abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_map_pools_to_ssim_and_stays_where_the_images_differ():
    """The per-pixel map's mean without the window's radius at the borders is ``ssim``; a
    changed square lowers the map there and leaves it at 1 beyond the window's reach."""
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = a.copy()
    b[40:50, 40:50] = 255 - b[40:50, 40:50]
    m = ssim_map(b, a)
    assert np.mean(m[5:-5, 5:-5]) == pytest.approx(ssim(b, a), abs=1e-12)
    assert m[45, 45] < 0.5
    np.testing.assert_allclose(m[:30, :30], 1.0, atol=1e-9)


def _face_clip(change: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured 256 px frame, a copy changed on the lips or along the lower jaw, landmarks."""
    lms = face_template(256)
    truth = np.random.default_rng(1).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    where = np.zeros((256, 256), np.uint8)
    if change == "lips":
        cv2.fillConvexPoly(where, cv2.convexHull(lms[48:60].astype(np.int32)), 1)
    else:  # the jaw's outline from point 5 to 11, 3 px wide
        cv2.polylines(where, [lms[5:12].astype(np.int32)], False, 1, thickness=3)
    render = truth.copy()
    render[0][where > 0] = 255 - render[0][where > 0]
    return truth, render, lms[None]


@pytest.mark.parametrize("change", ["lips", "jaw"])
def test_ssim_regions_put_a_change_in_its_own_region(change):
    """benchmarks/ssim_regions.py: a render changed only on the lips loses SSIM in the lips
    region, one changed only along the jaw's outline in the edge band; the untouched first
    stage scores 1 everywhere and the regions' shares add up to the box."""
    regions = load_script("ssim_regions", "benchmarks")
    truth, render, lms = _face_clip(change)
    means, shares, _ = regions.split_scores(
        {"render": render, "first stage only": truth.copy()}, truth, lms, band=8.0
    )
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in means["first stage only"].values())
    r = means["render"]
    assert r["outside"] == pytest.approx(1.0, abs=1e-6)
    if change == "lips":
        assert r["lips"] < 0.8 and min(r["edge"], r["inside"]) > 0.99
    else:
        assert r["edge"] < 0.9 and min(r["lips"], r["inside"]) > 0.99


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
    base = noisy(gt, sigma=8.0)
    ref = _summary(base, gt, landmarker, gt_lms)
    blurred = _summary(blur_mouth(base, gt_lms), gt, landmarker, gt_lms)
    frozen = _summary(_freeze_mouth(base, gt_lms), gt, landmarker, gt_lms)
    for s in (blurred, frozen):
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
    assert list(rows) == [
        "prediction", "copy_reference", "copy_reference_aligned", "shifted_truth", "truth",
    ]  # fmt: skip
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
    blurred, grainy = blur(gt, 2.0), _grain(gt)
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


@pytest.mark.parametrize("clip", ["synth", "real"])
def test_mouth_gmsd_penalises_blur_and_grain_alike(clip, request, landmarker):
    """GMSD is 0 for the truth and rises with blur, more blur rising more; grain, which the
    sharpness ratio scores above the truth's, raises it too."""
    gt, gt_lms = _short(clip, request)
    extra = [
        ("blur1", "blur sigma 1", blur(gt, 1.0)),
        ("blur3", "blur sigma 3", blur(gt, 3.0)),
        ("grainy", "grainy copy", _grain(gt)),
    ]
    rows = _rows(evaluate_clip(gt, gt, Scorers(landmarker), gt_lms=gt_lms, extra_rows=extra))
    assert rows["prediction"]["gmsd_mouth"] == 0.0
    assert 0.0 < rows["blur1"]["gmsd_mouth"] < rows["blur3"]["gmsd_mouth"]
    assert rows["grainy"]["sharpness_mouth"] > 1.05 and rows["grainy"]["gmsd_mouth"] > 0.02


def test_sharpness_exposes_a_smeared_mouth_that_psnr_rewards(real, real_lms, landmarker):
    """A lip blur beats both baselines on mouth PSNR, yet its sharpness is well below 1 and below
    the shifted truth's (real frames, wrong timing). Copy-reference is not compared: its
    sharpness is that of one frame's content (a closed mouth has less detail) and varies."""
    gt, gt_lms = real["frames"][:N_SHORT], real_lms[:N_SHORT]
    res = evaluate_clip(
        blur_mouth(gt, gt_lms), gt, Scorers(landmarker), gt_lms=gt_lms, baselines=True, shift=4
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
    b = evaluate_clip(blur(gt[3:12], 2.0), gt[3:12], Scorers(landmarker), gt_lms=gt_lms[3:12])
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
        blur_mouth(gt, gt_lms), gt, Scorers(landmarker), gt_lms=gt_lms, baselines=True,
        shift=4, extra_rows=[(FIRST_STAGE, label, gt)],
    )  # fmt: skip
    assert [r.key for r in res.rows] == [
        "prediction", FIRST_STAGE, "copy_reference", "copy_reference_aligned", "shifted_truth",
        "truth",
    ]  # fmt: skip
    assert res.rows[1].label == label and "first stage only" in label
    s = _rows(res)[FIRST_STAGE]
    assert s["psnr"] == np.inf and s["psnr_mouth"] == np.inf
    assert s["lmd"] == pytest.approx(0.0, abs=1e-6) and s["sharpness_mouth"] == 1.0
    extra = [(FIRST_STAGE, label, blur(gt, 1.0)), ("more", "more blur", blur(gt, 2.0))]
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
