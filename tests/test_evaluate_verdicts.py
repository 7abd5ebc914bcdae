"""The evaluation's guards against a good-looking failure: renders whose mouth does not follow the
speech are marked whatever their LMD and PSNR, and the copy-reference baseline has a pose-aligned
variant (the first frame warped onto each frame's head pose)."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from ldm.evaluation import landmark_metrics as lm
from ldm.evaluation.clips import ClipFrames
from ldm.evaluation.evaluate import (
    FOLLOWS_SPEECH_CORR,
    Scorers,
    baseline_label,
    evaluate_clip,
    follows_speech,
    summarize_row,
)
from ldm.evaluation.pose_aligned import mapped_landmarks, pose_transforms, warped_frames
from ldm.evaluation.report import write_report

from conftest import SHARED_DATA, load_script
from eval_clips import noisy

ALIGNED = "copy_reference_aligned"
MARK = "(does not follow the speech)"


def _rows(res) -> dict[str, dict]:
    """Summary of every row of a ClipResult, by key."""
    return {r.key: summarize_row(r, res.gt_opening) for r in res.rows}


# --------------------------------------------------------------------------- "does not follow"


def test_follows_speech_threshold_and_undefined_correlation():
    """At or above the threshold follows; below does not; an undefined corr does not follow a
    moving truth, and says nothing when the truth's mouth is still."""
    moving, still = np.array([0.1, 0.3, 0.2, 0.4]), np.full(4, 0.2)
    assert FOLLOWS_SPEECH_CORR == 0.2
    assert follows_speech(0.2, moving) is True and follows_speech(0.8, moving) is True
    assert follows_speech(0.19, moving) is False and follows_speech(-0.5, moving) is False
    assert follows_speech(float("nan"), moving) is False
    assert follows_speech(float("nan"), still) is None
    assert follows_speech(float("nan"), np.array([0.1, np.nan, np.nan, np.nan])) is None


def _lower_face(lms: np.ndarray) -> slice:
    """Rows from below the nose (iBUG 33) of the first frame down: the lips and the jaw."""
    return slice(int(lms[0, 33, 1]) + 2, None)


def _still_mouth(frames: np.ndarray, lms: np.ndarray) -> np.ndarray:
    """Copy whose lower face is the first frame's in every frame (the rest is the truth)."""
    out = frames.copy()
    rows = _lower_face(lms)
    out[:, rows] = frames[0, rows]
    return out


def _shuffled_mouth(frames: np.ndarray, lms: np.ndarray, seed: int = 3) -> np.ndarray:
    """Copy whose lower face comes from the frames in a shuffled order."""
    out = frames.copy()
    rows = _lower_face(lms)
    order = np.random.default_rng(seed).permutation(len(frames))
    out[:, rows] = frames[order][:, rows]
    return out


def test_report_marks_renders_whose_mouth_does_not_follow(synth, landmarker, tmp_path, caplog):
    """A good render is not marked; a still and a shuffled mouth are, in report.md (cell and a
    line under the table), report.json (follows_speech) and the CLI's warnings, although the
    shuffled mouth beats both copy-reference baselines on mouth PSNR and LMD. Baselines are
    never marked."""
    gt, gt_lms = synth["frames"], synth["lms"]
    extra = [
        ("still", "still mouth", _still_mouth(gt, gt_lms)),
        ("shuffled", "shuffled mouth", _shuffled_mouth(gt, gt_lms)),
    ]
    res = evaluate_clip(
        noisy(gt, 3.0), gt, Scorers(landmarker), name="synth", gt_lms=gt_lms, baselines=True,
        shift=10, extra_rows=extra,
    )  # fmt: skip
    rows = _rows(res)
    assert rows["prediction"]["mouth_corr"] > 0.9
    assert not rows["still"]["mouth_corr"] >= FOLLOWS_SPEECH_CORR  # low or NaN
    assert rows["shuffled"]["mouth_corr"] < FOLLOWS_SPEECH_CORR
    shuffled, plain = rows["shuffled"], rows["copy_reference"]
    assert shuffled["psnr"] > plain["psnr"] + 1.0  # real mouths, at the wrong times: they
    for key in ("copy_reference", ALIGNED):  # beat both still baselines on the numbers
        assert shuffled["psnr_mouth"] > rows[key]["psnr_mouth"] + 0.5
        assert shuffled["lmd"] < rows[key]["lmd"] - 0.3
    write_report([res], tmp_path, {"fps": 25.0}, [])
    md = (tmp_path / "report.md").read_text()
    methods = [x.split("|")[2].strip() for x in md.splitlines() if x.startswith("| synth |")]
    assert methods[:3] == ["prediction", f"still mouth **{MARK}**", f"shuffled mouth **{MARK}**"]
    assert methods[3:] == [r.label for r in res.rows[3:]]  # no baseline marked, NaN corr or not
    assert "**2 row(s) does not follow the speech**" in md
    report = json.loads((tmp_path / "report.json").read_text())
    summaries = {k: v["summary"] for k, v in report["clips"][0]["rows"].items()}
    assert summaries["prediction"]["follows_speech"] is True
    assert summaries["still"]["follows_speech"] is False
    assert summaries["shuffled"]["follows_speech"] is False
    assert all("follows_speech" not in summaries[k] for k in ("copy_reference", ALIGNED, "truth"))
    assert report["overall"]["still"]["follows_speech"] is False
    assert report["overall"]["prediction"]["follows_speech"] is True
    with caplog.at_level(logging.WARNING):
        load_script("evaluate").warn_not_following([res])
    assert "still mouth does not follow the speech" in caplog.text
    assert "prediction does not follow" not in caplog.text


# --------------------------------------------------------------------------- pose-aligned copy


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float], centre) -> np.ndarray:
    """(2, 3) rotation by ``angle_deg`` and scaling about ``centre``, then ``shift`` pixels."""
    a = cv2.getRotationMatrix2D(tuple(map(float, centre)), angle_deg, scale)
    a[:, 2] += shift
    return a


POSES = [  # (angle, scale, shift) per frame; frames 0 and 4 keep the first frame's pose
    (0, 1.0, (0, 0)), (4, 1.0, (3, 2)), (-6, 1.05, (-5, 4)), (8, 0.95, (6, -3)),
    (0, 1.0, (0, 0)), (-3, 1.02, (8, 6)), (5, 0.97, (-7, -6)), (-8, 1.04, (4, -8)),
]  # fmt: skip


def test_pose_aligned_copy_follows_the_head(synth, landmarker):
    """On a head that moves (the first frame rotated, scaled and shifted), the pose-aligned copy
    puts the mouth where the truth's is: the truth itself where the pose is the first frame's,
    far higher mouth PSNR and SSIM than the plain copy elsewhere, its mapped landmarks on the
    truth's; its LMD equals the plain copy's (LMD aligns the faces by a similarity first)."""
    first, lms0 = synth["frames"][0], synth["lms"][0].astype(np.float64)
    h, w = first.shape[:2]
    frames, gt_lms = [], []
    for angle, scale, shift in POSES:
        a = _similarity(angle, scale, shift, lms0[27:48].mean(0))
        frames.append(cv2.warpAffine(first, a, (w, h), borderMode=cv2.BORDER_REPLICATE))
        gt_lms.append(lms0 @ a[:, :2].T + a[:, 2])
    frames, gt_lms = np.stack(frames), np.stack(gt_lms)
    res = evaluate_clip(frames, frames, Scorers(landmarker), gt_lms=gt_lms, baselines=True, shift=2)
    rows, per = _rows(res), {r.key: r.per_frame for r in res.rows}
    assert [r.label for r in res.rows if r.key == ALIGNED] == [baseline_label(ALIGNED)]
    assert per[ALIGNED]["mse"][0] == 0 and per[ALIGNED]["mse"][4] == 0
    assert (per["copy_reference"]["mse"][[1, 2, 3, 5, 6, 7]] > 0).all()
    plain, aligned = rows["copy_reference"], rows[ALIGNED]
    assert aligned["psnr_mouth"] > plain["psnr_mouth"] + 8.0
    assert aligned["ssim_mouth"] > plain["ssim_mouth"] + 0.2
    assert aligned["lmd"] == pytest.approx(plain["lmd"], abs=1e-6)
    moved = mapped_landmarks(lms0, pose_transforms(lms0, gt_lms))
    np.testing.assert_allclose(moved, gt_lms, atol=1e-6)
    still_error = np.linalg.norm(lms0[None, 48:68] - gt_lms[:, 48:68], axis=-1).mean()
    assert still_error > 5.0  # the plain copy's mouth is that far from the truth's, in pixels
    assert np.isnan(aligned["mouth_corr"])  # a still mouth, moved: no motion of its own


def test_pose_aligned_frames_are_produced_one_at_a_time(synth):
    """The warped frames come from a generator over the transforms (memory does not grow with
    the clip), and a frame without a face keeps the first frame as it is."""
    first, lms0 = synth["frames"][0], synth["lms"][0].astype(np.float64)
    lms = np.stack([lms0, lms0 + 5.0, np.full_like(lms0, np.nan)])
    poses = pose_transforms(lms0, lms)
    frames = warped_frames(first, poses)
    assert iter(frames) is frames  # a generator, not a list
    out = list(frames)
    assert np.array_equal(out[0], first) and np.array_equal(out[2], first)
    np.testing.assert_allclose(poses[1], [[1, 0, 5], [0, 1, 5]], atol=1e-9)
    assert np.array_equal(out[1][10:-10, 10:-10], first[5:-15, 5:-15])


FEIFEILI = SHARED_DATA / "speakers" / "feifeili_clip3.mp4"


@pytest.mark.skipif(not FEIFEILI.exists(), reason=f"{FEIFEILI} is absent (../shared/data)")
def test_pose_aligned_landmarks_on_a_real_moving_head(landmarker):
    """feifeili_clip3 (lively head motion, 40 frames): the first frame's mouth moved onto each
    frame's pose lies far closer to the truth's mouth than where it was (measured: 2.9 vs 10 px
    over 100 frames)."""
    gt_lms = landmarker.track(ClipFrames(FEIFEILI, max_frames=40).frames())
    ok = lm.valid_frames(gt_lms)
    assert ok.mean() > 0.9
    moved = mapped_landmarks(gt_lms[0], pose_transforms(gt_lms[0], gt_lms))
    err = {
        "still": np.linalg.norm(gt_lms[0, 48:68] - gt_lms[ok, 48:68], axis=-1).mean(),
        "aligned": np.linalg.norm(moved[ok, 48:68] - gt_lms[ok, 48:68], axis=-1).mean(),
    }
    logging.getLogger(__name__).info("mouth landmark error, px: %s", err)
    assert err["aligned"] < 0.5 * err["still"]
