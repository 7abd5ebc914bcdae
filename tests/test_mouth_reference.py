"""Mouth-matched references: training draws (ldm/data/mouth_reference.py) and the rendering
bank (ldm/inference/bank.py)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ldm.data.layout import MOUTH, UPPER_FACE_LANDMARKS
from ldm.data.mouth_reference import nearest_mouths
from ldm.data.talk import TalkTrain
from ldm.inference.bank import ReferenceBank
from ldm.inference.render import RenderOptions
from ldm.modules.encoders.mouth import MouthPredictor

from conftest import face_template, make_tiny_dataset

N_FRAMES = 40


def openings(n: int) -> np.ndarray:
    return 0.5 + 0.5 * np.sin(np.arange(1, n + 1) * 0.7)  # in [0, 1], frame 1..n


def speaking_dataset(root: Path, size: int = 64) -> Path:
    """The tiny dataset with landmarks whose lower lip drops with each frame's opening, and
    audio windows that carry the opening; two identities of N_FRAMES frames."""
    data = make_tiny_dataset(root, n_ids=2, n_frames=N_FRAMES, size=size)
    base = face_template(size)
    for vid in (1, 2):
        for frame, opening in enumerate(openings(N_FRAMES), start=1):
            lms = base.copy()
            lms[[*range(55, 60), *range(65, 68)], 1] += 6.0 * opening  # lower lip
            lms += vid * 1.5  # the second identity sits elsewhere
            np.savetxt(data / "landmarks" / f"{vid}_{frame}.lms", lms, fmt="%f")
            audio = np.full((8, 16, 29), opening, dtype=np.float32)
            np.save(data / "audio_smooth" / f"{vid}_{frame}.npy", audio)
    return data


def test_nearest_mouths_stay_in_the_identity_outside_the_margin_nearest_first():
    keys = np.array([[1, f] for f in range(1, 11)] + [[2, 1], [2, 2], [2, 3], [3, 1], [3, 2]])
    codes = np.concatenate([np.arange(10.0), [0.1, 0.2, 0.3, 5.0, 5.0]])[:, None]  # 1-D shapes
    near = nearest_mouths(keys, codes, margin=2, k=3)
    # frame 1 (code 0): frames -1 .. 2 are excluded; the nearest outside: 3, 4, 5
    assert near[0].tolist() == [3, 4, 5]
    # frame 6 (code 5): 4 .. 7 excluded; 8 (code 7) is nearest, then 3 and 9 (both 3 away)
    assert near[5].tolist() == [8, 3, 9]
    assert all(set(n) <= set(range(1, 11)) for n in near[:10])  # never the other identities
    assert near[10].tolist() == [3]  # identity 2, frame 1: only frame 3 is outside the margin
    assert near[13].tolist() == [2]  # identity 3: none outside, so the other frame


def test_mouth_references_have_the_targets_mouth_and_random_ones_do_not(tmp_path):
    data = speaking_dataset(tmp_path)
    split = tmp_path / "data_train.txt"
    split.write_text("".join(f"1_{f}\n" for f in range(1, N_FRAMES + 1)))
    kw = dict(root=str(data), size=64, reference_margin=3, audio_shape=(8, 16, 29))
    matched = TalkTrain(str(split), reference_choice="mouth", mouth_candidates=2, **kw)
    random = TalkTrain(str(split), **kw)
    op = openings(N_FRAMES)
    frames = matched.keys[:, 1]
    gap = np.abs(op[matched.references - 1] - op[frames - 1])
    gap_random = np.abs(op[random.references - 1] - op[frames - 1])
    assert gap.mean() < 0.05 and gap_random.mean() > 0.15
    assert (np.abs(matched.references - frames) >= 3).all()  # still outside the margin
    item = matched[4]
    assert item["reference_frame"] == matched.references[4]
    with pytest.raises(ValueError, match="reference_choice"):
        TalkTrain(str(split), reference_choice="nearest", **kw)


def fitted_predictor(data: Path, frames: range) -> MouthPredictor:
    lms = torch.stack(
        [torch.from_numpy(np.loadtxt(data / "landmarks" / f"1_{f}.lms")).float() for f in frames]
    )
    audio = torch.stack(
        [torch.from_numpy(np.load(data / "audio_smooth" / f"1_{f}.npy")) for f in frames]
    )
    model = MouthPredictor(feature_dim=29, smooth=0, ridge=1e-3, code_noise=0.0)
    model.fit(audio, lms[:, list(MOUTH)], lms[:, list(UPPER_FACE_LANDMARKS)])
    return model


def test_the_bank_lends_each_frame_the_training_mouth_its_audio_asks_for(tmp_path):
    data = speaking_dataset(tmp_path)
    bank_split = tmp_path / "bank.txt"
    bank_split.write_text("".join(f"1_{f}\n" for f in range(1, 21)))
    predictor = fitted_predictor(data, range(1, 21))
    model = SimpleNamespace(mouth_model=predictor, frame_size=64)
    bank = ReferenceBank(model, bank_split, data)
    assert bank.images.shape == (20, 64, 64, 3) and bank.landmarks.shape == (20, 39, 2)
    wanted = np.array([0.05, 0.5, 0.97])
    batch = {"audio_smooth": torch.from_numpy(np.repeat(wanted, 8 * 16 * 29).reshape(3, 8, 16, 29))}
    idx = bank.apply(batch)
    lent = openings(N_FRAMES)[idx]  # bank row i is frame i + 1
    assert np.abs(lent - wanted).max() < 0.1
    assert batch["reference_img"].shape == (3, 64, 64, 3)
    assert float(batch["reference_img"].min()) >= -1.0 and float(batch["reference_img"].max()) <= 1
    assert torch.equal(batch["reference_landmarks"], bank.landmarks[idx])
    assert torch.equal(batch["mouth_code"], predictor(batch["audio_smooth"]))  # for the model


def test_a_bank_needs_a_fitted_mouth_predictor_and_the_option_its_list(tmp_path):
    data = speaking_dataset(tmp_path)
    split = tmp_path / "bank.txt"
    split.write_text("1_1\n")
    unfitted = SimpleNamespace(mouth_model=MouthPredictor(), frame_size=64)
    with pytest.raises(ValueError, match="fitted MouthPredictor"):
        ReferenceBank(unfitted, split, data)
    with pytest.raises(ValueError, match="go together"):
        RenderOptions(reference="bank")
    with pytest.raises(ValueError, match="go together"):
        RenderOptions(reference_bank=str(split))


def test_self_reference_makes_that_fraction_of_items_their_own_reference(tmp_path):
    data = speaking_dataset(tmp_path)
    split = tmp_path / "data_train.txt"
    split.write_text("".join(f"1_{f}\n" for f in range(1, N_FRAMES + 1)))
    kw = dict(root=str(data), size=64, reference_margin=3, audio_shape=(8, 16, 29))
    random.seed(0)
    always = TalkTrain(str(split), self_reference=1.0, **kw)
    item = always[7]
    assert item["reference_frame"] == item["frame"]
    assert np.array_equal(item["reference_img"], item["image"])
    half = TalkTrain(str(split), self_reference=0.5, reference_choice="mouth", **kw)
    own = [half[i % N_FRAMES]["reference_frame"] == half.keys[i % N_FRAMES, 1] for i in range(400)]
    assert 0.4 < np.mean(own) < 0.6  # drawn anew each time an item is read
    never = TalkTrain(str(split), **kw)
    assert all(never[i]["reference_frame"] != never.keys[i, 1] for i in range(N_FRAMES))
    with pytest.raises(ValueError, match="self_reference"):
        TalkTrain(str(split), self_reference=1.5, **kw)


def test_without_a_named_bank_a_model_borrows_from_its_own_training_frames(tmp_path):
    from omegaconf import OmegaConf

    from ldm.app.studio import model_bank
    from ldm.inference.bank import training_bank

    data = speaking_dataset(tmp_path)
    split = tmp_path / "data_train.txt"
    split.write_text("1_1\n1_2\n")
    config = OmegaConf.create(
        {"data": {"params": {"train": {"params": {"split_file": str(split), "root": str(data)}}}}}
    )
    assert training_bank(config) == (str(split), str(data))
    fitted = SimpleNamespace(mouth_model=fitted_predictor(data, range(1, 21)))
    assert model_bank(fitted, config) == (str(split), str(data))
    assert model_bank(SimpleNamespace(mouth_model=MouthPredictor()), config) is None  # unfitted
    assert model_bank(SimpleNamespace(), config) is None  # no mouth predictor: no bank
    split.unlink()  # the run's data moved away: say what to pass instead
    with pytest.raises(ValueError, match="--reference-bank SPLIT --bank-root DATASET"):
        training_bank(config)
    assert model_bank(fitted, config) is None
