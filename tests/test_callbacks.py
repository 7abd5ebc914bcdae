"""The paper config's image logger logs on the original's schedule (SPEC 4.7)."""

from __future__ import annotations

from omegaconf import OmegaConf

from ldm.callbacks import ImageLogger
from ldm.util import instantiate_from_config

from conftest import ROOT


def logged_steps(logger: ImageLogger, last: int) -> list[int]:
    return [step for step in range(last + 1) if logger.check_frequency(step)]


def test_paper_image_logger_logs_every_5000_steps_only():
    cfg = OmegaConf.load(ROOT / "configs/latent-diffusion/talking.yaml")
    logger = instantiate_from_config(cfg.lightning.callbacks.image_logger)
    assert logged_steps(logger, 20000) == [5000, 10000, 15000, 20000]


def test_increase_log_steps_adds_the_powers_of_two():
    logger = ImageLogger(batch_frequency=5000, max_images=1, increase_log_steps=True)
    powers = [2**i for i in range(13)]  # 1 .. 4096
    assert logged_steps(logger, 10000) == [*powers, 5000, 10000]
