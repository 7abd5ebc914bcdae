"""VQModel, VQModelInterface and AutoencoderKL first stages (ldm:ldm/models/autoencoder.py).

Attribute names equal LDM checkpoint keys (`encoder.`, `decoder.`, `quantize.embedding.weight`,
`quant_conv.`, `post_quant_conv.`), so LDM's released `model.ckpt` files load unchanged. Each model
trains with Lightning 2 manual optimisation (autoencoder + discriminator optimisers) and, frozen,
serves LatentDiffusion through `encode` / `decode` without any loss config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from einops import rearrange
from torch import nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.distributions import DiagonalGaussianDistribution
from ldm.modules.quantize import VectorQuantizer
from ldm.util import instantiate_from_config, load_state_dict_file

logger = logging.getLogger(__name__)

IMAGE_KEY = "image"  # batch[IMAGE_KEY]: (B, H, W, 3) float in [-1, 1]
LOSS_PREFIX = "loss."  # training-loss weights inside first-stage checkpoints
TRAIN_COMMAND = "python main.py --base configs/autoencoder/vq_f4_small.yaml -t"
ADAM_BETAS = (0.5, 0.9)  # as in LDM / taming for both optimisers
VQ_BETA = 0.25  # commitment weight of the quantiser
Metric = torch.Tensor | float  # a value to log


MISSING_CHECKPOINT_HINT = (
    "Put the LDM vq-f4 `model.ckpt` there (see models/README.md) or train one with "
    f"`{TRAIN_COMMAND}` (vq_f4_paper.yaml for the paper size) and copy its checkpoints/last.ckpt "
    "there."
)


class AutoencoderBase(pl.LightningModule):
    """Encoder/Decoder/loss shared by the VQ and KL first stages, plus their training loop."""

    def __init__(
        self, ddconfig: Mapping[str, Any], lossconfig: Mapping[str, Any] | None, monitor: str | None
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        # ldm.modules.losses.LPIPSWithDiscriminator for training; Identity when frozen
        self.loss = nn.Identity() if lossconfig is None else instantiate_from_config(lossconfig)
        self.learning_rate: float | None = None  # set by main.py from model.base_learning_rate
        if monitor is not None:  # main.py reads `model.monitor` only when it exists, as in LDM
            self.monitor = monitor

    def init_from_ckpt(self, path: str | Path) -> None:
        """Load every non-loss weight from the LDM-format checkpoint `path`; `loss.*` is ignored."""
        state_dict = load_state_dict_file(path, MISSING_CHECKPOINT_HINT)
        n_ignored = sum(key.startswith(LOSS_PREFIX) for key in state_dict)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(LOSS_PREFIX)}
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        missing = [key for key in missing if not key.startswith(LOSS_PREFIX)]
        if missing or unexpected:
            raise RuntimeError(
                f"{path} does not match {type(self).__name__}: {len(missing)} missing keys "
                f"(e.g. {missing[:5]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:5]}). "
                "Check that the config (ddconfig, n_embed, embed_dim) matches the checkpoint."
            )
        logger.info(
            "Restored %s from %s (ignored %d %s* training-loss entries)",
            type(self).__name__,
            path,
            n_ignored,
            LOSS_PREFIX,
        )

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each side: 2 ** (levels - 1)."""
        return 2 ** (self.encoder.num_resolutions - 1)

    def get_input(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """batch["image"] (B, H, W, 3) -> (B, 3, H, W) float, contiguous."""
        return rearrange(batch[IMAGE_KEY], "b h w c -> b c h w").float().contiguous()

    def get_last_layer(self) -> torch.Tensor:
        """Decoder output weight, where the adaptive GAN weight is measured."""
        return self.decoder.conv_out.weight

    def _reconstruct(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Metric]]:
        """(B, 3, H, W) -> (reconstruction, regularisers for the loss, extra stats to log)."""
        raise NotImplementedError

    def _batch_step(self) -> int:
        """Index of the current training batch (LDM's `global_step`).

        Lightning's `global_step` counts every optimiser step, i.e. up to 2 per batch here.
        """
        return self.trainer.fit_loop.total_batch_idx

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """One autoencoder step, then one discriminator step once the GAN is active."""
        opt_ae, opt_disc = self.optimizers()
        step = self._batch_step()
        x = self.get_input(batch)
        with self.toggled_optimizer(opt_ae):
            xrec, regularizers, stats = self._reconstruct(x)
            aeloss, logs = self.loss.generator_loss(
                regularizers, x, xrec, step, self.get_last_layer(), "train"
            )
            opt_ae.zero_grad()
            self.manual_backward(aeloss)
            opt_ae.step()
        discloss = torch.zeros((), device=x.device)
        if self.loss.disc_factor_at(step) > 0:
            with self.toggled_optimizer(opt_disc):
                discloss, disc_logs = self.loss.discriminator_loss(x, xrec.detach(), step, "train")
                opt_disc.zero_grad()
                self.manual_backward(discloss)
                opt_disc.step()
            logs.update(disc_logs)
        self._log_all("train", aeloss, discloss, logs, stats, x.shape[0])

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Log val/rec_loss, val/aeloss (without the GAN term, as in LDM) and val/discloss."""
        step = max(self._batch_step(), 0)
        x = self.get_input(batch)
        xrec, regularizers, stats = self._reconstruct(x)
        aeloss, logs = self.loss.generator_loss(
            regularizers, x, xrec, step, self.get_last_layer(), "val"
        )
        discloss, disc_logs = self.loss.discriminator_loss(x, xrec, step, "val")
        self._log_all("val", aeloss, discloss, {**logs, **disc_logs}, stats, x.shape[0])

    def _log_all(
        self,
        split: str,
        aeloss: torch.Tensor,
        discloss: torch.Tensor,
        logs: dict[str, Metric],
        stats: dict[str, Metric],
        batch_size: int,
    ) -> None:
        """Log the two losses, the loss terms and the model's stats under `split/`."""
        metrics = {f"{split}/aeloss": aeloss.detach(), f"{split}/discloss": discloss.detach()}
        metrics.update(logs)
        metrics.update({f"{split}/{name}": value for name, value in stats.items()})
        self.log_dict(metrics, batch_size=batch_size, sync_dist=split == "val")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for the autoencoder and Adam for the discriminator, both at `learning_rate`."""
        if self.learning_rate is None:
            raise RuntimeError(
                "learning_rate is not set: main.py sets it from model.base_learning_rate."
            )
        if not hasattr(self.loss, "discriminator"):
            raise RuntimeError(
                "Training a first stage needs lossconfig: "
                f"ldm.modules.losses.LPIPSWithDiscriminator, got {type(self.loss).__name__}."
            )
        ae_params = [p for n, p in self.named_parameters() if not n.startswith(LOSS_PREFIX)]
        disc_params = list(self.loss.discriminator.parameters())
        return [
            torch.optim.Adam(ae_params, lr=self.learning_rate, betas=ADAM_BETAS),
            torch.optim.Adam(disc_params, lr=self.learning_rate, betas=ADAM_BETAS),
        ]

    @torch.no_grad()
    def log_images(
        self, batch: Mapping[str, torch.Tensor], **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """{"inputs", "reconstructions"}: (B, 3, H, W) in [-1, 1]; ImageLogger kwargs are unused."""
        x = self.get_input(batch).to(self.device)
        return {"inputs": x, "reconstructions": self._reconstruct(x)[0]}


class VQModel(AutoencoderBase):
    """VQ-regularised autoencoder: encode -> (quantised latent, codebook loss, info)."""

    def __init__(
        self,
        ddconfig: Mapping[str, Any],  # Encoder/Decoder params (double_z false)
        n_embed: int,  # codebook size
        embed_dim: int,  # code (= latent) channels
        lossconfig: Mapping[str, Any] | None = None,  # training loss; absent when frozen
        ckpt_path: str | None = None,  # LDM-format checkpoint to start from
        monitor: str | None = None,  # metric for checkpointing, e.g. val/rec_loss
    ) -> None:
        super().__init__(ddconfig, lossconfig, monitor)
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=VQ_BETA)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], kernel_size=1)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path)

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pre-quantisation latent h (B, embed_dim, H/f, W/f)."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """(z_q (B, embed_dim, h, w), codebook loss, (perplexity, None, indices))."""
        return self.quantize(self.encode_to_prequant(x))

    def _decode_quantized(self, quant: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, h, w) codes -> (B, 3, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(quant))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Quantised latent (B, embed_dim, h, w) -> image (B, 3, h*f, w*f)."""
        return self._decode_quantized(quant)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (reconstruction, codebook loss, code indices (B, h, w))."""
        quant, qloss, (_, _, indices) = self.quantize(self.encode_to_prequant(x))
        return self._decode_quantized(quant), qloss, indices

    def _reconstruct(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Metric]]:
        """Reconstruction, {"codebook": loss}, codebook usage (fraction used) and perplexity."""
        xrec, qloss, indices = self(x)
        stats = {
            "codebook_usage": indices.unique().numel() / self.n_embed,
            "perplexity": self.quantize.perplexity(indices),
        }
        return xrec, {"codebook": qloss}, stats


class VQModelInterface(VQModel):
    """Frozen first stage of LatentDiffusion: diffuses the PRE-quantisation latent (SPEC 4.1)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> h = quant_conv(encoder(x)) (B, embed_dim, H/f, W/f), not quantised."""
        return self.encode_to_prequant(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Latent (B, embed_dim, h, w) -> nearest codes -> post_quant_conv -> decoder (B,3,H,W)."""
        return self._decode_quantized(self.quantize(h)[0])


class AutoencoderKL(AutoencoderBase):
    """KL-regularised autoencoder: encode -> DiagonalGaussianDistribution over the latent."""

    def __init__(
        self,
        ddconfig: Mapping[str, Any],  # Encoder/Decoder params (double_z true)
        embed_dim: int,  # latent channels
        lossconfig: Mapping[str, Any] | None = None,
        ckpt_path: str | None = None,
        monitor: str | None = None,
    ) -> None:
        if not ddconfig["double_z"]:
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (mean and logvar).")
        super().__init__(ddconfig, lossconfig, monitor)
        self.embed_dim = embed_dim
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], kernel_size=1)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """(B, 3, H, W) -> posterior over (B, embed_dim, H/f, W/f)."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, h, w) -> (B, 3, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """(B, 3, H, W) -> (reconstruction from a posterior sample, posterior)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample()), posterior

    def _reconstruct(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Metric]]:
        """Reconstruction and {"kl": batch mean of the per-sample KL}."""
        xrec, posterior = self(x)
        return xrec, {"kl": posterior.kl().mean()}, {}
