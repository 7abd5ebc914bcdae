"""UNetModel: the denoiser of DiffTalk (LDM's openaimodel, only the options DiffTalk uses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import normalization, timestep_embedding, zero_module


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the time embedding to ResBlocks and the context to transformers."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    """Nearest 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    """Strided 3x3 conv halving the resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block with an additive time embedding: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(
        self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class UNetModel(nn.Module):
    """Denoising UNet with spatial transformers: x (B, C_in, H, W), t (B,), ctx (B, M, D) -> eps
    (or v: the model's ``parameterization`` decides what it is trained to predict)."""

    def __init__(
        self,
        image_size: int,  # latent size; kept for config compatibility
        in_channels: int,  # 9 = noisy ‖ masked ‖ reference latents
        out_channels: int,
        model_channels: int,
        attention_resolutions: list[int],  # downsampling factors that get a transformer
        num_res_blocks: int,
        channel_mult: list[int],
        num_head_channels: int,
        context_dim: int,
        transformer_depth: int = 1,
        dropout: float = 0.0,
        use_spatial_transformer: bool = True,  # the only mode DiffTalk uses
        use_checkpoint: bool = False,  # gradient checkpointing of transformer blocks (training)
    ) -> None:
        super().__init__()
        if not use_spatial_transformer:
            raise ValueError("DiffTalk's UNetModel needs use_spatial_transformer: true")
        self.image_size = image_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.context_dim = context_dim
        self.model_channels = model_channels
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )

        self._blocks = dict(
            emb=time_embed_dim, dropout=dropout, head_ch=num_head_channels,
            depth=transformer_depth, context_dim=context_dim, checkpoint=use_checkpoint,
        )  # fmt: skip
        mults = [model_channels * m for m in channel_mult]
        skip_chans = self._make_input_blocks(
            in_channels, mults, num_res_blocks, attention_resolutions
        )
        ch, ds = mults[-1], 2 ** (len(mults) - 1)
        self.middle_block = TimestepEmbedSequential(
            self._res(ch, ch), self._attn(ch), self._res(ch, ch)
        )
        self._make_output_blocks(mults, num_res_blocks, attention_resolutions, skip_chans, ds)
        self.out = nn.Sequential(
            normalization(mults[0]),
            nn.SiLU(),
            zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)),
        )

    def _res(self, ch_in: int, ch_out: int) -> ResBlock:
        b = self._blocks
        return ResBlock(ch_in, b["emb"], b["dropout"], ch_out)

    def _attn(self, ch: int) -> SpatialTransformer:
        b = self._blocks
        return SpatialTransformer(
            ch, ch // b["head_ch"], b["head_ch"], b["depth"], b["dropout"], b["context_dim"],
            b["checkpoint"],
        )  # fmt: skip

    def _make_input_blocks(
        self, in_channels: int, mults: list[int], num_res_blocks: int, attn_at: list[int]
    ) -> list[int]:
        """The encoder half; returns the channels of the activations kept for skips."""
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, self.model_channels, 3, padding=1))]
        )
        skip_chans, ch, ds = [self.model_channels], self.model_channels, 1
        for level, width in enumerate(mults):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [self._res(ch, width)]
                ch = width
                if ds in attn_at:
                    layers.append(self._attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(mults) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_chans.append(ch)
                ds *= 2
        return skip_chans

    def _make_output_blocks(
        self, mults: list[int], num_res_blocks: int, attn_at: list[int], skips: list[int], ds: int
    ) -> None:
        """The decoder half, consuming the skip channels from the deepest up."""
        self.output_blocks = nn.ModuleList([])
        ch = mults[-1]
        for level, width in list(enumerate(mults))[::-1]:
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [self._res(ch + skips.pop(), width)]
                ch = width
                if ds in attn_at:
                    layers.append(self._attn(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict eps (or v): x (B, C_in, H, W), timesteps (B,), context (B, M, context_dim)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)
