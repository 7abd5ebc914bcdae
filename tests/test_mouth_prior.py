"""The mouth predictor's prior: shrinking a short fit towards another fitted predictor
(``MouthPredictor(prior=...)``, ldm/modules/encoders/mouth.py), as the demo recipe does with the
committed many-speaker model's."""

from __future__ import annotations

import pytest
import torch

from ldm.config import load_config
from ldm.modules.encoders.mouth import MouthPredictor, prior_weight
from ldm.util import instantiate_from_config

from conftest import ROOT


def saved_predictor(tmp_path, name: str, audio: torch.Tensor, codes: torch.Tensor) -> str:
    """A checkpoint (state dict under ``mouth_model.``) of a plain fit on ``audio``, ``codes``."""
    model = MouthPredictor(
        feature_dim=6, win_size=4, smooth=0, ridge=1.0, components=4, calibrate=0.0
    )
    model.fit_codes(audio, codes)
    path = tmp_path / f"{name}.ckpt"
    sd = {f"mouth_model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd}, path)
    return str(path)


def test_a_prior_from_many_speakers_helps_a_short_fit_and_a_wrong_one_is_not_used(tmp_path):
    """The corpus's predictor (its audio on another scale) as the prior of a 40-frame fit: the
    held-out error falls; a prior that moves the mouth the wrong way is turned down by
    cross-validation."""
    g = torch.Generator().manual_seed(0)
    shapes = torch.linalg.qr(torch.randn(40, 4, generator=g))[0].T  # 4 principal shapes
    speech = torch.randn(24, 4, generator=g)  # the audio -> shape map every speaker shares

    def clip(n, scale, shift, speech=speech):  # the features' spread and level differ by clip
        audio = torch.randn(n, 8, 4, 6, generator=g) * scale + shift
        scores = (audio[:, 4].flatten(1) - shift) @ speech
        return audio, (scores + scale * torch.randn(n, 4, generator=g)) @ shapes

    good = saved_predictor(tmp_path, "good", *clip(2000, 3.0, 1.0))
    wrong = saved_predictor(tmp_path, "wrong", *clip(2000, 3.0, 1.0, speech=-speech))
    audio, codes = clip(240, 0.5, -2.0)  # 40 training frames, 200 held out
    args = dict(feature_dim=6, win_size=4, smooth=0, ridge=30.0, calibrate=0.0)
    fits = {}
    for name, prior in (("none", None), ("good", good), ("wrong", wrong)):
        fits[name] = MouthPredictor(prior=prior, **args)
        fits[name].fit_codes(audio[:40], codes[:40])
    err = {k: (m(audio[40:]) - codes[40:]).norm() for k, m in fits.items()}
    assert err["good"] < 0.5 * err["none"]
    assert torch.equal(fits["wrong"].weight, fits["none"].weight)  # strength 0 chosen


def test_a_prior_of_another_audio_feature_or_without_a_predictor_is_refused(tmp_path):
    audio, codes = torch.randn(50, 8, 4, 6), torch.randn(50, 40)
    prior = saved_predictor(tmp_path, "six", audio, codes)
    other = MouthPredictor(feature_dim=3, win_size=4, prior=prior)
    with pytest.raises(ValueError, match=r"six\.ckpt.* 24 audio inputs per window, this model 12"):
        other.fit_codes(torch.randn(50, 8, 4, 3), codes)
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, empty)
    with pytest.raises(ValueError, match=r"empty\.ckpt: no fitted MouthPredictor"):
        MouthPredictor(feature_dim=6, win_size=4, prior=str(empty)).fit_codes(audio, codes)


def test_the_demo_recipes_prior_is_a_committed_predictor_of_its_audio_feature():
    """talking-demo.yaml's prior (models/many_speaker) reads the recipe's Whisper windows."""
    cfg = load_config(
        [str(ROOT / "configs/latent-diffusion/talking-small.yaml"),
         str(ROOT / "configs/latent-diffusion/talking-demo.yaml")], [],
    )  # fmt: skip
    predictor = instantiate_from_config(cfg.model.params.mouth_config)
    prior = str(ROOT / predictor.prior)
    weight = prior_weight(prior, predictor.std, predictor.basis)  # its inputs, 4 principal shapes
    assert weight.shape == (16 * 384, 4) and torch.isfinite(weight).all() and weight.abs().sum() > 0
