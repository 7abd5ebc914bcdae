"""The audio-to-mouth ridge predictor of the demo recipe (ldm/modules/encoders/mouth.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ldm.data.layout import MOUTH, UPPER_FACE_LANDMARKS
from ldm.geometry import mouth_code, mouth_points, shape_template
from ldm.modules.encoders.mouth import MouthPredictor, mouth_heatmaps


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
    model = MouthPredictor(  # 24 inputs, the whole 40-d code, the plain ridge
        feature_dim=6, win_size=4, smooth=0, ridge=1e-3, components=40, calibrate=0.0
    )
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


def speaker_clips(n_speakers: int, n: int = 60, seed: int = 0) -> list[tuple]:
    """(audio, mouth, upper) of clips of one face geometry whose mouths differ by a per-speaker
    offset (the person) plus a shared linear function of the audio (the speech)."""
    g = torch.Generator().manual_seed(seed)
    upper, mouth = faces(1)
    motion = torch.randn(24, 40, generator=g) * 0.2
    clips = []
    for _ in range(n_speakers):
        offset = torch.randn(20, 2, generator=g) * 3.0
        audio = torch.randn(n, 8, 4, 6, generator=g)
        moved = mouth + offset + (audio[:, 4].flatten(1) @ motion).view(n, 20, 2)
        clips.append((audio, moved, upper.expand(n, -1, -1)))
    return clips


def test_a_per_speaker_fit_takes_a_new_faces_mean_mouth_from_its_reference_frame():
    *train, (audio, mouth, upper) = speaker_clips(6)
    args = dict(feature_dim=6, win_size=4, smooth=0, ridge=1e-3, components=40, calibrate=0.0)
    pooled, per = MouthPredictor(**args), MouthPredictor(per_speaker=True, **args)
    data = [torch.cat(x) for x in zip(*train, strict=True)]
    videos = torch.arange(len(train)).repeat_interleave(len(audio))
    pooled.fit(*data)
    per.fit(*data, videos=videos)
    truth = per.code(mouth, upper)
    reference = per.code(mouth[:1], upper[:1])[0]  # the new face's first frame
    with_speech = per(audio) + per.person_offset(reference, audio[0])
    at_rest = per(audio) + per.person_offset(reference)  # its speech unknown: taken at rest
    err = {name: (pred - truth).norm() for name, pred in
           (("pooled", pooled(audio)), ("speech", with_speech), ("rest", at_rest))}  # fmt: skip
    assert err["speech"] < 0.03 * err["pooled"]  # the offset and the motion both right
    assert err["speech"] < err["rest"] < err["pooled"]
    with pytest.raises(ValueError, match="video ids"):
        MouthPredictor(per_speaker=True, **args).fit(*data)


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


def mouth_model_and_batch(**params):
    """A small talking-demo LatentDiffusion with a MouthPredictor (fitted) and a batch;
    ``params`` override model.params."""
    from omegaconf import OmegaConf

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
        "params": {"feature_dim": 29, "ridge": 1.0, "components": 40, "calibrate": 0.0},
    }
    cfg.model.params = OmegaConf.merge(cfg.model.params, params)
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


def test_mouth_heatmaps_peak_at_each_point_on_the_latent_grid():
    # 128 px frame, 32 x 32 latent: cell (row r, column c) covers pixels [4r, 4r + 4) x [4c, 4c + 4)
    points = torch.tensor([[[38.0, 22.0], [10.0, 101.0], [40.0, 22.0]]])  # (x, y) pixels
    maps = mouth_heatmaps(points, frame_size=128, latent_size=32, sigma=1.0)
    assert maps.shape == (1, 3, 32, 32)
    assert maps[0, 0, 5, 9] == pytest.approx(1.0)  # x 38 -> column 9, y 22 -> row 5: its centre
    assert maps[0, 0, 5, 10] == pytest.approx(math.exp(-0.5))  # one cell away, sigma 1 cell
    assert maps[0, 0, 7, 9] == pytest.approx(math.exp(-2.0))
    assert int(maps[0, 1].argmax()) == 25 * 32 + 2
    # on the border of two cells (x 40): both equally, less than at a centre
    assert maps[0, 2, 5, 9] == pytest.approx(float(maps[0, 2, 5, 10]))
    assert maps[0, 2, 5, 9] < 0.9


SKETCH = {"mouth_sketch": True, "unet_config": {"params": {"in_channels": 44}}}


def peak_cells(sketch: torch.Tensor) -> torch.Tensor:
    """(B, 20, h, w) heatmaps -> (B, 20, 2) (column, row) of each channel's maximum."""
    flat = sketch.flatten(2).argmax(-1)
    return torch.stack([flat % sketch.shape[-1], flat // sketch.shape[-1]], dim=-1)


def test_the_mouth_sketch_draws_the_true_mouth_in_training_and_the_predicted_one_otherwise():
    model, batch = mouth_model_and_batch(**SKETCH)
    other_audio = {**batch, "audio_smooth": torch.randn(8, 8, 16, 29)}
    shut = batch["mouth_landmarks"].clone()
    shut[:, :, 1] = shut[:, :, 1].mean(1, keepdim=True)  # every lip point on one line
    other_mouth = {**batch, "mouth_landmarks": shut}
    inside = ((batch["mouth_landmarks"] > 2) & (batch["mouth_landmarks"] < 126)).all(-1)

    def sketch_of(b):
        return model.audio_condition(b, b["audio_smooth"])["mouth_sketch"]

    with torch.no_grad():
        model.train()
        sketch = sketch_of(batch)
        assert sketch.shape == (8, 20, 32, 32)
        truth_cells = (batch["mouth_landmarks"] / 4).floor().long()
        assert torch.equal(peak_cells(sketch)[inside], truth_cells[inside])
        assert torch.equal(sketch_of(other_audio), sketch)
        assert not torch.allclose(sketch_of(other_mouth), sketch)
        model.eval()
        test = sketch_of(batch)
        assert torch.equal(sketch_of(other_mouth), test)
        assert not torch.allclose(sketch_of(other_audio), test)
        predicted = model.mouth_model.points(
            model.mouth_model(batch["audio_smooth"]), batch["landmarks"]
        )
        assert torch.equal(peak_cells(test)[inside], (predicted / 4).floor().long()[inside])


def test_the_mouth_sketch_joins_the_unet_input_after_the_two_latents():
    model, batch = mouth_model_and_batch(**SKETCH)
    model.eval()
    seen = {}
    first_conv = model.model.diffusion_model.input_blocks[0]
    first_conv.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        cond = model.get_learned_conditioning(batch)
        x = torch.randn(8, 8, 32, 32)
        model.model(x, torch.full((8,), 10), cond)
    assert seen["x"].shape[1] == 8 + 8 + 8 + 20
    assert torch.equal(seen["x"][:, :8], x)
    assert torch.equal(seen["x"][:, 24:], cond["mouth_sketch"])


def test_mouth_sketch_needs_a_mouth_predictor_and_twenty_more_unet_channels():
    with pytest.raises(
        ValueError, match=r"in_channels = 24, .* plus 20 for model\.params\.mouth_sketch"
    ):
        mouth_model_and_batch(mouth_sketch=True, unet_config={"params": {"in_channels": 24}})
    with pytest.raises(ValueError, match="mouth_sketch needs model.params.mouth_config"):
        mouth_model_and_batch(mouth_sketch=True, mouth_config=None)


def test_the_mouth_predictor_takes_the_audio_networks_place_in_the_context_token():
    model, _ = mouth_model_and_batch(audio_config={"params": {"dim_aud": 16}})  # not built
    assert model.cond_stage_model_for_audio is None
    assert model.cond_stage_model_for_audio_smooth is None
    assert not any(k.startswith("cond_stage_model_for_audio") for k in model.state_dict())
    with pytest.raises(
        ValueError,
        match=r"context_dim = 128, but model\.params\.mouth_config\.params\.dim_out \(32\)",
    ):
        mouth_model_and_batch(mouth_config={"params": {"dim_out": 32}})


def shrunk_fit(calibrate: float) -> tuple[MouthPredictor, torch.Tensor, torch.Tensor]:
    """A strong ridge on 2 principal shapes of noisy codes (the audio explains them in part);
    returns the predictor and held-out (audio, codes)."""
    torch.manual_seed(0)
    audio = torch.randn(700, 8, 4, 3)
    shapes = torch.randn(2, 40)
    scores = audio[:, 4].flatten(1) @ torch.randn(12, 2) + 2.0 * torch.randn(700, 2)
    codes = scores @ shapes + 0.01 * torch.randn(700, 40)
    model = MouthPredictor(feature_dim=3, win_size=4, smooth=0, ridge=300, components=2,
                           calibrate=calibrate)  # fmt: skip
    model.fit_codes(audio[:500], codes[:500])
    return model, audio[500:], codes[500:]


def test_calibration_undoes_the_ridges_shrinkage_on_held_out_frames():
    plain, audio, codes = shrunk_fit(calibrate=0.0)
    calibrated, _, _ = shrunk_fit(calibrate=1.0)
    half, _, _ = shrunk_fit(calibrate=0.5)
    truth = (codes - codes.mean(0)) @ plain.basis.T  # the held-out principal-shape scores
    for model in (plain, calibrated):
        pred = (model(audio) - model.bias) @ model.basis.T
        ratio = pred.std(0) / truth.std(0)
        corr = [float(torch.corrcoef(torch.stack([pred[:, k], truth[:, k]]))[0, 1]) for k in (0, 1)]
        assert min(corr) > 0.4  # both follow the audio ...
        if model is plain:
            assert ratio.max() < 0.6  # ... the plain ridge with a fraction of the spread
        else:
            assert ((ratio > 0.7) & (ratio < 1.4)).all()  # ... the calibrated one with about all
    assert (calibrated.gain > 1.5).all() and torch.equal(plain.gain, torch.ones(2))
    assert torch.allclose(half.gain, calibrated.gain.sqrt())
    with pytest.raises(ValueError, match="calibrate"):
        MouthPredictor(calibrate=2.0)


def test_predictions_noise_and_projections_stay_within_the_principal_shapes():
    model, audio, codes = shrunk_fit(calibrate=1.0)
    model.code_noise = 0.5
    for code in (model(audio), model.add_noise(codes), model.project(codes)):
        inside = model.bias + (code - model.bias) @ model.basis.T @ model.basis
        assert torch.allclose(code, inside, atol=1e-4)
    assert not torch.allclose(model.add_noise(codes), model.project(codes), atol=1e-2)
    # all 40 components keep the whole code
    full = MouthPredictor(feature_dim=3, win_size=4, components=40)
    full.fit_codes(audio, codes)
    assert torch.allclose(full.project(codes), codes, atol=1e-4)
    with pytest.raises(ValueError, match="components"):
        MouthPredictor(components=41)


def test_reference_prior_makes_the_untrained_model_return_the_references_posterior_mean():
    model, batch = mouth_model_and_batch(reference_prior=True, **SKETCH)  # the demo's
    plain, _ = mouth_model_and_batch(reference_prior=False, **SKETCH)
    batch["reference_img"] = torch.rand(8, 128, 128, 3) * 2 - 1  # a reference with content
    t = torch.tensor([50, 200, 500, 800, 950, 10, 300, 700])
    z_t = torch.randn(8, 8, 32, 32)
    a = model.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
    s = model.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        model.eval(), plain.eval()
        cond = model.get_learned_conditioning(batch)
        ref = cond["reference_latent"] * model.scale_factor / model.condition_scale
        x0 = (z_t - s * model.apply_model(z_t, t, cond)) / a  # the UNet's last conv is zero
        x0_plain = (z_t - s * plain.apply_model(z_t, t, cond)) / a
    assert ref.abs().mean() > 0.05
    assert torch.allclose(x0, a * z_t + s**2 * ref, atol=1e-4)  # N(ref, I) given z_t
    assert torch.allclose(x0_plain, a * z_t, atol=1e-4)  # N(0, I) given z_t
    with pytest.raises(ValueError, match="reference_prior needs parameterization: v"):
        mouth_model_and_batch(reference_prior=True, parameterization="eps", **SKETCH)
