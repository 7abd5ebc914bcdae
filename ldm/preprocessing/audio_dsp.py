"""Audio pieces shared by the log-mel features and the learned encoders: the 50 Hz step grid
(feature step j is centred on audio sample j * HOP at 16 kHz) and the STFT / mel filter bank."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ldm.data.layout import FEATURE_RATE, SAMPLE_RATE

HOP = SAMPLE_RATE // FEATURE_RATE  # 320 samples per 50 Hz step at 16 kHz


def n_steps(n_samples: int, sr: int = SAMPLE_RATE) -> int:
    """Number of 50 Hz steps for an audio of n_samples at sr."""
    return int(round(n_samples * SAMPLE_RATE / sr)) // HOP + 1


@lru_cache(maxsize=4)
def mel_basis(n_fft: int, n_mels: int, sr: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft//2+1) Slaney mel filter bank (librosa.filters.mel, no numba JIT)."""
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)


def power_spectrogram(wav: np.ndarray, n_fft: int, win: int, hop: int) -> np.ndarray:
    """(n_fft//2+1, 1 + len//hop) power STFT, centred frames, reflect padding, Hann window."""
    pad = n_fft // 2
    mode = "reflect" if len(wav) > pad else "constant"
    x = np.pad(np.asarray(wav, np.float32), pad, mode=mode)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]  # (T, n_fft)
    window = np.zeros(n_fft, np.float32)
    off = (n_fft - win) // 2
    window[off : off + win] = np.hanning(win + 1)[:-1]  # periodic Hann
    spec = np.fft.rfft(frames * window, axis=1)
    return (spec.real**2 + spec.imag**2).T.astype(np.float32)


def align_to_grid(feats: np.ndarray, n_target: int, stride: int, center: float) -> np.ndarray:
    """Linearly resample encoder outputs (frame j centred at stride*j + center samples, 16 kHz)
    onto the exact 50 Hz grid (step i centred at 320*i); returns (n_target, D)."""
    feats = np.asarray(feats, np.float32)
    if len(feats) == 0:
        return np.zeros((n_target, feats.shape[-1]), np.float32)
    pos = (np.arange(n_target) * HOP - center) / stride  # fractional source index
    pos = np.clip(pos, 0, len(feats) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(feats) - 1)
    w = (pos - lo)[:, None].astype(np.float32)
    return (1 - w) * feats[lo] + w * feats[hi]
