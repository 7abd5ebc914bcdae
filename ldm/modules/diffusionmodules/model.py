"""First-stage convolutional Encoder/Decoder of LDM (ldm:ldm/modules/diffusionmodules/model.py).

Attribute names follow LDM exactly so the released VQ-f4 / KL checkpoints load unchanged. Only the
pieces the autoencoder configs use are kept: no timestep embedding (the first stage has none),
resampling always with a convolution, vanilla attention only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

NUM_GROUPS = 32  # GroupNorm groups everywhere in the first stage: channels must be multiples of 32
NORMS = ("group", "pixel")  # ddconfig `norm`: LDM's GroupNorm, or PixelNorm (no spatial statistics)


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU activation, any shape."""
    return F.silu(x)


class PixelNorm(nn.Module):
    """LayerNorm over the channels of each position, with a per-channel affine (ConvNeXt's).

    GroupNorm normalises by statistics over the whole feature map, so what an autoencoder does
    to the mouth depends on the background and light of the rest of the frame, and one trained
    on crops decodes whole frames with shifted colours. PixelNorm uses none: each output depends
    only on its receptive field, so crops train it for whole frames.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        h = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return h.permute(0, 3, 1, 2)


def Normalize(in_channels: int, norm: str = "group") -> nn.Module:  # noqa: N802 (LDM name)
    """GroupNorm with 32 groups and eps 1e-6, as in LDM; or ``PixelNorm`` (``norm="pixel"``)."""
    if norm == "pixel":
        return PixelNorm(in_channels)
    if norm != "group":
        raise ValueError(f"first stage ddconfig norm must be one of {NORMS}, got {norm!r}")
    return nn.GroupNorm(num_groups=NUM_GROUPS, num_channels=in_channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    """Nearest x2 upsampling followed by a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after LDM's right/bottom zero padding: (B,C,H,W) -> (B,C,H/2,W/2)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H/2, W/2)."""
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class ResnetBlock(nn.Module):
    """Pre-norm residual block, norm-swish-conv twice; 1x1 `nin_shortcut` when channels change."""

    def __init__(
        self, *, in_channels: int, out_channels: int | None = None, dropout: float,
        norm: str = "group",
    ) -> None:  # fmt: skip
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = Normalize(in_channels, norm)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = Normalize(out_channels, norm)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        h = self.conv1(nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q/k/v/proj_out and a residual connection."""

    def __init__(self, in_channels: int, norm: str = "group") -> None:
        super().__init__()
        self.norm = Normalize(in_channels, norm)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        h_ = self.norm(x)
        _, _, height, width = x.shape
        q, k, v = (rearrange(f(h_), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        h_ = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), scale C**-0.5 as in LDM
        h_ = rearrange(h_, "b 1 (h w) c -> b c h w", h=height, w=width)
        return x + self.proj_out(h_)


def _mid_block(channels: int, dropout: float, norm: str, attention: bool) -> nn.Module:
    """LDM's `mid`: block_1 -> attn_1 -> block_2 at the lowest resolution (``attention`` False:
    no attn_1, so nothing in the first stage looks beyond its receptive field)."""
    mid = nn.Module()
    mid.block_1 = ResnetBlock(in_channels=channels, dropout=dropout, norm=norm)
    mid.attn_1 = AttnBlock(channels, norm) if attention else nn.Identity()
    mid.block_2 = ResnetBlock(in_channels=channels, dropout=dropout, norm=norm)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Apply a `_mid_block`: (B, C, h, w) -> (B, C, h, w)."""
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    """Image -> latent: (B, in_channels, H, W) -> (B, z_channels (x2 if double_z), H/f, W/f).

    f = 2 ** (len(ch_mult) - 1). `out_ch` is accepted (and unused) so that one LDM `ddconfig`
    builds both the Encoder and the Decoder.
    """

    def __init__(
        self,
        *,
        ch: int,  # base channel count
        out_ch: int,  # decoder output channels; unused here
        ch_mult: Sequence[int] = (1, 2, 4, 8),  # channel multiplier per resolution level
        num_res_blocks: int,  # ResnetBlocks per level
        attn_resolutions: Sequence[int],  # feature-map sizes that get an AttnBlock per ResnetBlock
        dropout: float = 0.0,
        in_channels: int,  # image channels
        resolution: int,  # nominal input size, used to place attn_resolutions
        z_channels: int,  # latent channels
        double_z: bool = True,  # output mean and logvar (KL) instead of a single latent (VQ)
        norm: str = "group",  # LDM's GroupNorm, or "pixel" (PixelNorm: crops train whole frames)
        mid_attention: bool = True,  # LDM's attention at the lowest resolution
    ) -> None:
        super().__init__()
        del out_ch
        self.ch = ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        kw = {"dropout": dropout, "norm": norm}
        in_ch_mult = (1, *ch_mult)
        curr_res = resolution
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(**kw, in_channels=block_in, out_channels=block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in, norm))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                curr_res //= 2
            self.down.append(down)
        self.mid = _mid_block(block_in, dropout, norm, mid_attention)
        self.norm_out = Normalize(block_in, norm)
        out_channels = 2 * z_channels if double_z else z_channels
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_img, H, W) -> (B, C_z, H/f, W/f)."""
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent -> image: (B, z_channels, h, w) -> (B, out_ch, h*f, w*f), f = 2 ** (len(ch_mult) - 1).

    `in_channels` and `double_z` are accepted (and unused) so that one LDM `ddconfig` builds both.
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,  # the decoder uses num_res_blocks + 1 blocks per level, as in LDM
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        in_channels: int,  # unused here
        resolution: int,
        z_channels: int,
        double_z: bool = False,  # unused here
        norm: str = "group",  # as the Encoder's
        mid_attention: bool = True,
    ) -> None:
        super().__init__()
        del in_channels, double_z
        self.ch = ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _mid_block(block_in, dropout, norm, mid_attention)
        kw = {"dropout": dropout, "norm": norm}
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(**kw, in_channels=block_in, out_channels=block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in, norm))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample(block_in)
                curr_res *= 2
            self.up.insert(0, up)  # keep `up.0` = highest resolution, as in LDM checkpoints
        self.norm_out = Normalize(block_in, norm)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C_z, h, w) -> (B, out_ch, h*f, w*f)."""
        h = _run_mid(self.mid, self.conv_in(z))
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))
