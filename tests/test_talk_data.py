"""The DiffTalk dataset (SPEC 2-3) on a small synthetic HDTF-layout fixture."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from ldm.data.talk import (
    JAW_POLYGON,
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


def test_8_bit_images_go_to_minus_one_one_and_back_exactly_as_arrays_or_tensors():
    import torch

    from ldm.util import from_uint8, to_uint8

    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = from_uint8(levels)
    assert x.dtype == np.float32 and (x.min(), x.max()) == (-1.0, 1.0)
    np.testing.assert_array_equal(to_uint8(x), levels)
    t = from_uint8(torch.from_numpy(levels))
    np.testing.assert_array_equal(t.numpy(), x)
    assert torch.equal(to_uint8(t), torch.from_numpy(levels))
    for out_of_range in (np.array([-3.0, 2.0]), torch.tensor([-3.0, 2.0])):
        assert to_uint8(out_of_range).tolist() == [0, 255]  # clipped, not wrapped around


def test_missing_data_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images/ folder"):
        TalkTrain(split_file=str(tmp_path / "x.txt"), root=str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- the original's mask

PIL_PRECISION_BITS = 22  # PIL's fixed-point coefficients for 8-bit images (Resample.c)


def pil_bicubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) integer weights of PIL's bicubic (a = -0.5) resize, written out here."""
    scale = n_in / n_out
    filter_scale = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo = max(int(centre - 2 * filter_scale + 0.5), 0)
        hi = min(int(centre + 2 * filter_scale + 0.5), n_in)
        x = np.abs((np.arange(lo, hi) - centre + 0.5) / filter_scale)
        w = np.where(
            x < 1, (1.5 * x - 2.5) * x * x + 1, np.where(x < 2, ((x - 5) * x + 8) * x * -0.5 + 2, 0)
        )
        w = w / w.sum() * 2**PIL_PRECISION_BITS
        weights[o, lo:hi] = np.where(w < 0, np.trunc(w - 0.5), np.trunc(w + 0.5))
    return weights.astype(np.int64)


def original_inference_mask(lms: np.ndarray, size: int, latent: int) -> np.ndarray:
    """The original's inference_mask (SPEC 3): 0/1 polygon image, two rounded 8-bit passes."""
    mask = np.ones((size, size))
    mask = cv2.fillPoly(mask, pts=[lms[list(JAW_POLYGON)].astype("int32")], color=(0, 0, 0))
    mask = (mask > 0).astype(np.int64)
    w = pil_bicubic_weights(size, latent)
    half = 1 << (PIL_PRECISION_BITS - 1)
    rows = np.clip((mask @ w.T + half) >> PIL_PRECISION_BITS, 0, 255)  # horizontal pass
    return np.clip((w @ rows + half) >> PIL_PRECISION_BITS, 0, 255).astype(np.float32)


@pytest.mark.parametrize("size", [256, 300, 512])
def test_jaw_mask_rounds_as_the_original(size):
    rng = np.random.default_rng(size)
    for _ in range(4):
        lms = face_template(size) + rng.normal(0, 0.01 * size, (68, 2)).astype(np.float32)
        expected = original_inference_mask(lms, size, 64)
        np.testing.assert_array_equal(jaw_latent_mask(lms, size, 64), expected)


def test_the_dataset_masks_each_frame_by_its_own_landmarks(tiny_dataset):
    split = str(tiny_dataset.parent / "data_test.txt")
    lms = np.loadtxt(tiny_dataset / "landmarks" / "2_1.lms", dtype=np.float32)
    item = TalkInference(split_file=split, root=str(tiny_dataset))[0]
    expected = jaw_latent_mask(lms, 64, 64)  # 64 px frames, latent 256 // 4
    np.testing.assert_array_equal(item["inference_mask"][0], expected)
    assert 0 < expected.sum() < expected.size


def test_audio_windows_the_model_cannot_read_fail_naming_the_file(tiny_dataset):
    split = str(tiny_dataset.parent / "data_train.txt")
    with pytest.raises(ValueError, match=r"1_1\.npy holds audio windows of shape \(8, 16, 29\)"):
        TalkTrain(split_file=split, root=str(tiny_dataset), size=32, audio_shape=(8, 16, 384))


def test_config_datasets_expect_the_model_audio_shape(tiny_dataset):
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    from conftest import ROOT

    cfg = OmegaConf.load(ROOT / "configs/latent-diffusion/talking.yaml")
    cfg.model.params.audio_config.params.feature_dim = 384  # e.g. whisper features
    for split, name in (("train", "data_train.txt"), ("validation", "data_test.txt")):
        data = cfg.data.params[split]
        data.params.update(root=str(tiny_dataset), split_file=str(tiny_dataset.parent / name))
        with pytest.raises(ValueError, match="feature_dim"):
            instantiate_from_config(data)
    cfg.model.params.audio_config.params.feature_dim = 29
    assert len(instantiate_from_config(cfg.data.params.validation)) == 8
