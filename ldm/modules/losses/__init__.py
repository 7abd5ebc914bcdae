"""First-stage training losses (one class for VQ and KL autoencoders)."""

from ldm.modules.losses.vqperceptual import LPIPSWithDiscriminator

__all__ = ["LPIPSWithDiscriminator"]
