"""The audio-to-mouth ridge predictor of the demo recipe (ldm/modules/encoders/mouth.py)."""

from __future__ import annotations

import pytest
import torch

from ldm.data.layout import MOUTH, UPPER_FACE_LANDMARKS
from ldm.modules.encoders.mouth import MouthPredictor, mouth_code, mouth_points, shape_template


def faces(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 39, 2) upper-face and (n, 20, 2) mouth landmarks of randomly placed and sized faces."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(68, 2, generator=g) * 40 + 40
    scale = 0.5 + torch.rand(n, 1, 1, generator=g)
    shift = torch.rand(n, 1, 2, generator=g) * 50
    lms = base * scale + shift + torch.randn(n, 68, 2, generator=g)
    return lms[:, list(UPPER_FACE_LANDMARKS)], lms[:, list(MOUTH)]


def rotate(points: torch.Tensor, degrees: float) -> torch.Tensor:
    a = torch.tensor(degrees).deg2rad()
    rot = torch.stack([torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])])
    return points @ rot.T


def test_mouth_code_drops_position_size_and_roll_and_maps_back_onto_each_face():
    upper, mouth = faces(6)
    template = shape_template(upper)
    code = mouth_code(mouth, upper, template)
    assert code.shape == (6, 40)
    assert torch.allclose(mouth_points(code, upper, template), mouth, atol=1e-3)
    # the same faces moved, enlarged and tilted by 12 degrees have the same codes
    moved = mouth_code(rotate(mouth, 12) * 2 + 7, rotate(upper, 12) * 2 + 7, template)
    assert torch.allclose(moved, code, atol=1e-4)
    # an opened mouth has another code; a mouth placed on another face follows that face
    opened = mouth.clone()
    opened[:, 13:20, 1] += 3.0
    assert not torch.allclose(mouth_code(opened, upper, template), code, atol=0.05)
    other = mouth_points(code, rotate(upper, 30), template)
    assert torch.allclose(other, rotate(mouth, 30), atol=1e-3)


@pytest.mark.parametrize("n_train", [400, 40])  # more samples than inputs (primal), fewer (dual)
def test_ridge_fit_recovers_a_linear_audio_to_mouth_map_on_held_out_windows(n_train):
    torch.manual_seed(0)
    model = MouthPredictor(feature_dim=6, win_size=4, smooth=0, ridge=1e-3)  # 24 inputs
    true_w = torch.randn(24, 40)
    audio = torch.randn(n_train + 100, 8, 4, 6)
    codes = audio[:, 4].flatten(1) @ true_w + 0.5
    model.fit_codes(audio[:n_train], codes[:n_train])
    pred = model(audio[n_train:])
    err = (pred - codes[n_train:]).norm() / codes[n_train:].norm()
    if n_train > 24:
        assert err < 1e-3  # determined: the map itself
    else:
        assert err < 0.95  # underdetermined: the minimum-norm solution still predicts some
        assert model(audio[:n_train]).sub(codes[:n_train]).norm() < 1e-2 * codes.norm()


def test_ridge_shrinks_towards_the_mean_shape_and_the_fit_is_in_the_state_dict():
    torch.manual_seed(0)
    audio, codes = torch.randn(200, 8, 4, 3), torch.randn(200, 40)
    strong = MouthPredictor(feature_dim=3, win_size=4, ridge=1e6)
    strong.fit_codes(audio, codes)
    spread = strong(audio).std(0).mean()
    assert spread < 0.05 * codes.std(0).mean()  # a strong ridge predicts about the mean shape
    assert torch.allclose(strong(audio).mean(0), codes.mean(0), atol=0.05)
    copy = MouthPredictor(feature_dim=3, win_size=4)
    copy.load_state_dict(strong.state_dict())
    assert torch.equal(copy(audio), strong(audio))


def test_prediction_averages_the_windows_of_the_neighbouring_frames():
    torch.manual_seed(0)
    audio = torch.randn(50, 8, 4, 3)
    model = MouthPredictor(feature_dim=3, win_size=4, smooth=2)
    model.fit_codes(audio, torch.randn(50, 40))
    single = MouthPredictor(feature_dim=3, win_size=4, smooth=0)
    single.load_state_dict(model.state_dict())
    shifted = [single(torch.roll(audio, -k, dims=1)) for k in range(-2, 3)]  # window 4 + k
    assert torch.allclose(model(audio), torch.stack(shifted).mean(0), atol=1e-5)
    bad = MouthPredictor(feature_dim=3, win_size=4, smooth=4)  # frames f-4 .. f+4: 9 windows
    bad.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="outside the 8 audio windows"):
        bad(audio)


def test_an_unfitted_predictor_says_how_it_gets_fitted():
    with pytest.raises(RuntimeError, match="fits it when training starts"):
        MouthPredictor()(torch.zeros(1, 8, 16, 29))


def mouth_model_and_batch():
    """A small talking-demo LatentDiffusion with a MouthPredictor (fitted) and a batch."""
    from ldm.config import load_config
    from ldm.util import instantiate_from_config

    from conftest import ROOT

    cfg = load_config(
        [str(ROOT / "configs/latent-diffusion/talking-small.yaml"),
         str(ROOT / "configs/latent-diffusion/talking-demo.yaml")],
        ["model.params.first_stage_config.params.ckpt_path=null", "model.params.ckpt_path=null"],
    )  # fmt: skip
    cfg.model.params.mouth_config = {
        "target": "ldm.modules.encoders.mouth.MouthPredictor",
        "params": {"feature_dim": 29, "ridge": 1.0},
    }
    torch.manual_seed(0)
    model = instantiate_from_config(cfg.model)
    upper, mouth = faces(8)
    batch = {
        "audio_smooth": torch.randn(8, 8, 16, 29),
        "landmarks": upper,
        "mouth_landmarks": mouth,
        "image_mask": torch.zeros(8, 128, 128, 3),
        "reference_img": torch.zeros(8, 128, 128, 3),
        "reference_landmarks": upper,
    }
    model.mouth_model.fit(batch["audio_smooth"], mouth, upper)
    model.mouth_model.code_noise, model.mouth_model.smooth = 0.0, 0
    return model, batch


def test_the_audio_feature_is_the_true_mouth_when_training_and_the_predicted_one_otherwise():
    model, batch = mouth_model_and_batch()
    other_audio = {**batch, "audio_smooth": torch.randn(8, 8, 16, 29)}
    other_mouth = {**batch, "mouth_landmarks": batch["mouth_landmarks"].flip(0)}
    with torch.no_grad():
        model.train()
        train = model.audio_feature(batch, batch["audio_smooth"])
        assert torch.equal(train, model.audio_feature(other_audio, other_audio["audio_smooth"]))
        assert not torch.allclose(train, model.audio_feature(other_mouth, batch["audio_smooth"]))
        model.eval()
        test = model.audio_feature(batch, batch["audio_smooth"])
        assert torch.equal(test, model.audio_feature(other_mouth, batch["audio_smooth"]))
        moved = model.audio_feature(other_audio, other_audio["audio_smooth"])
        assert not torch.allclose(test, moved)
    # the fit reproduces its training mouths (weak ridge, 8 samples): test == train feature
    assert torch.allclose(test, train, atol=1e-2)
    assert {id(p) for p in model.mouth_model.embed.parameters()} <= {
        id(p) for p in model.trainable_parameters()
    }
