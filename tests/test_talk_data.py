"""The DiffTalk dataset (SPEC 2-3) on a small synthetic HDTF-layout fixture."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ldm.data.talk import (
    UPPER_FACE_LANDMARKS,
    TalkInference,
    TalkTrain,
    jaw_latent_mask,
    sample_reference_frame,
)

from conftest import face_template


def test_reference_frames_avoid_the_margin_and_cover_the_rest():
    rng = random.Random(0)
    draws = [sample_reference_frame(300, 150, margin=60, rng=rng) for _ in range(20000)]
    assert all(1 <= d <= 299 for d in draws)
    assert not any(90 <= d <= 209 for d in draws)  # {f-60, ..., f+59} excluded
    assert set(draws) == set(range(1, 90)) | set(range(210, 300))  # all the others occur
    near_start = [sample_reference_frame(300, 10, margin=60, rng=rng) for _ in range(2000)]
    assert min(near_start) >= 70
    assert sample_reference_frame(5, 3, margin=60, rng=rng) in {1, 2, 4}  # too short: any other


def test_train_item_has_the_original_keys_shapes_and_mask(tiny_dataset):
    split = str(tiny_dataset.parent / "data_train.txt")
    ds = TalkTrain(split_file=split, root=str(tiny_dataset), size=32)
    item = ds[0]
    assert item["image"].shape == item["reference_img"].shape == (32, 32, 3)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["landmarks"].shape == (39, 2)
    assert item["audio_smooth"].shape == (8, 16, 29)
    lms = face_template(64)
    np.testing.assert_allclose(item["landmarks"], lms[list(UPPER_FACE_LANDMARKS)] / 2, rtol=1e-5)
    cut = int(lms[30, 1] / 2)  # nose tip, in the 32 px frame
    assert (item["image_mask"][cut:] == -1).all()
    np.testing.assert_array_equal(item["image_mask"][:cut], item["image"][:cut])
    assert item["inpaint_mask"][cut:].all() and not item["inpaint_mask"][:cut].any()
    assert ds.references[0] == ds[0]["reference_frame"]  # drawn once, at construction


def test_inference_item_uses_frame_one_landmark_33_and_the_jaw_mask(tiny_dataset):
    ds = TalkInference(
        split_file=str(tiny_dataset.parent / "data_test.txt"), root=str(tiny_dataset)
    )
    item = ds[3]
    assert item["reference_frame"] == 1
    cut = int(face_template(64)[33, 1] * 256 / 64)
    assert (item["image_mask"][cut:] == -1).all() and not (item["image_mask"][cut - 1] == -1).all()
    mask = item["inference_mask"]
    assert mask.shape == (1, 64, 64) and set(np.unique(mask)) == {0.0, 1.0}
    assert mask[0, 48, 32] == 0 and mask[0, 5, 5] == 1  # chin region unknown, corner known


def test_jaw_mask_is_zero_exactly_inside_the_polygon():
    lms = face_template(256)
    mask = jaw_latent_mask(lms, 256, 64)
    inside = mask[int(lms[57, 1] / 4), int(lms[57, 0] / 4)]  # lower lip
    outside = mask[int(lms[19, 1] / 4), int(lms[19, 0] / 4)]  # eyebrow
    assert inside == 0 and outside == 1


def test_missing_data_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images/ folder"):
        TalkTrain(split_file=str(tmp_path / "x.txt"), root=str(tmp_path / "nowhere"))
