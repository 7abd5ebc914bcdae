"""DiffTalk's condition encoders: AudioNet, AudioAttNet (from AD-NeRF) and LdmNet (SPEC 4.2)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ldm.data.layout import AUDIO_SMOOTHING, AUDIO_WINDOW, FEATURE_DIM, UPPER_FACE_LANDMARKS

LEAKY_SLOPE = 0.02


def _leaky() -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


class AudioNet(nn.Module):
    """Encode one audio window (N, win_size, feature_dim) -> (N, dim_aud) with strided 1D convs."""

    def __init__(
        self, dim_aud: int = 64, win_size: int = AUDIO_WINDOW, feature_dim: int = FEATURE_DIM
    ) -> None:
        super().__init__()
        n_convs = int(math.log2(win_size))  # each stride-2 conv halves the window down to 1
        if win_size < 4 or 2**n_convs != win_size:
            raise ValueError(f"win_size must be a power of two >= 4, got {win_size}")
        widths = [feature_dim] + [32] * (n_convs - 2) + [64, 64]  # 16 -> [D, 32, 32, 64, 64]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv1d(c_in, c_out, kernel_size=3, stride=2, padding=1), _leaky()]
        self.win_size = win_size
        self.feature_dim = feature_dim
        self.dim_aud = dim_aud
        self.encoder_conv = nn.Sequential(*layers)  # (N, D, win) -> (N, 64, 1)
        self.encoder_fc1 = nn.Sequential(nn.Linear(64, 64), _leaky(), nn.Linear(64, dim_aud))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, win_size, feature_dim) -> (N, dim_aud)."""
        x = self.encoder_conv(x.transpose(1, 2))  # (N, 64, 1)
        return self.encoder_fc1(x.squeeze(-1))


class AudioAttNet(nn.Module):
    """Temporal attention over a sequence of audio features (B, seq_len, C) -> (B, C).

    The attention logits come from the first ``dim_aud`` channels only; DiffTalk's config uses 32
    of its 64 channels (SPEC 4.2), a faithful port must keep.
    """

    def __init__(self, dim_aud: int = 32, seq_len: int = AUDIO_SMOOTHING) -> None:
        super().__init__()
        self.dim_aud = dim_aud
        self.seq_len = seq_len
        widths = [dim_aud, 16, 8, 4, 2, 1]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv1d(c_in, c_out, kernel_size=3, stride=1, padding=1), _leaky()]
        self.attentionConvNet = nn.Sequential(*layers)
        self.attentionNet = nn.Sequential(nn.Linear(seq_len, seq_len), nn.Softmax(dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, seq_len, C) -> (B, C): softmax-weighted sum over the sequence."""
        y = x[..., : self.dim_aud].transpose(1, 2)  # (B, dim_aud, seq_len)
        weights = self.attentionNet(self.attentionConvNet(y))  # (B, 1, seq_len)
        return torch.bmm(weights, x).squeeze(1)


class LdmNet(nn.Module):
    """Encode the (mouth-free) landmarks (B, n_points, 2) -> (B, dim_out) with an MLP."""

    def __init__(self, n_points: int = len(UPPER_FACE_LANDMARKS), dim_out: int = 64) -> None:
        super().__init__()
        self.dim_out = dim_out
        self.encoder_fc1 = nn.Sequential(
            nn.Linear(2 * n_points, 128),
            _leaky(),
            nn.Linear(128, 64),
            _leaky(),
            nn.Linear(64, dim_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_points, 2) -> (B, dim_out)."""
        return self.encoder_fc1(x.flatten(1))


def encode_audio(audio_net: AudioNet, att_net: AudioAttNet, audio: torch.Tensor) -> torch.Tensor:
    """Smoothed audio windows (B, seq_len, win, D) -> one audio feature per sample (B, dim_aud)."""
    b, seq_len = audio.shape[:2]
    per_window = audio_net(audio.flatten(0, 1))  # (B*seq_len, dim_aud)
    return att_net(per_window.view(b, seq_len, -1))
