"""MFCC exactly as python_speech_features.mfcc computes it with its defaults (SyncNet's input)."""

from __future__ import annotations

import decimal

import numpy as np
from scipy.fft import dct

from ldm.data.layout import SAMPLE_RATE

WIN_SECONDS, STEP_SECONDS = 0.025, 0.01
N_FFT, N_FILTERS, N_CEPSTRA = 512, 26, 13
PREEMPHASIS, LIFTER = 0.97, 22


def _round_half_up(x: float) -> int:
    """Round .5 away from zero, as python_speech_features does for frame sizes."""
    return int(decimal.Decimal(x).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _frames(signal: np.ndarray, length: int, step: int) -> np.ndarray:
    """(N, length) rectangular-window frames, the tail zero-padded to a whole frame."""
    n = 1 if len(signal) <= length else 1 + int(np.ceil((len(signal) - length) / step))
    padded = np.concatenate([signal, np.zeros((n - 1) * step + length - len(signal))])
    idx = np.arange(length)[None] + step * np.arange(n)[:, None]
    return padded[idx]


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of the HTK mel scale."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sr: int, n_fft: int = N_FFT, n_filters: int = N_FILTERS) -> np.ndarray:
    """(n_filters, n_fft // 2 + 1) triangular filters on integer FFT bins, 0 Hz .. sr / 2."""
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_filters + 2)
    bins = np.floor((n_fft + 1) * _mel_to_hz(mels) / sr)
    fb = np.zeros((n_filters, n_fft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(int(lo), int(mid)):
            fb[j, i] = (i - lo) / (mid - lo)
        for i in range(int(mid), int(hi)):
            fb[j, i] = (hi - i) / (hi - mid)
    return fb


def mfcc(signal: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """(N, 13) MFCC at 100 Hz; c0 is replaced by the log frame energy (appendEnergy)."""
    x = np.asarray(signal, np.float64)
    x = np.append(x[0], x[1:] - PREEMPHASIS * x[:-1])
    frames = _frames(x, _round_half_up(WIN_SECONDS * sr), _round_half_up(STEP_SECONDS * sr))
    power = np.abs(np.fft.rfft(frames, N_FFT)) ** 2 / N_FFT  # (N, 257)
    tiny = np.finfo(float).eps
    energy = power.sum(1)
    energy = np.where(energy == 0, tiny, energy)
    feat = power @ mel_filterbank(sr).T
    feat = np.where(feat == 0, tiny, feat)
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :N_CEPSTRA]
    cep *= 1 + (LIFTER / 2.0) * np.sin(np.pi * np.arange(N_CEPSTRA) / LIFTER)
    cep[:, 0] = np.log(energy)
    return cep
