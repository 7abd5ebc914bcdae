"""The paper config's image logger logs on the original's schedule (SPEC 4.7); the demo's
progress log shows step, rate and ETA."""

from __future__ import annotations

import logging
from types import SimpleNamespace

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


def test_progress_eta_logs_step_total_and_remaining_time(caplog, monkeypatch):
    from ldm import callbacks

    clock = iter([100.0, 110.0])  # start, then 10 s later
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    trainer = SimpleNamespace(global_step=0, max_steps=100, is_global_zero=True)
    eta = callbacks.ProgressETA(every_n_steps=50, name="talking")
    eta.on_train_start(trainer, None)
    trainer.global_step = 50
    with caplog.at_level(logging.INFO, logger="ldm.callbacks"):
        eta.on_train_batch_end(trainer, None, None, None, 0)
    assert "[talking] step 50/100 (50%), 0.20 s/step, ETA 0:10 min" in caplog.text


def test_progress_eta_is_the_time_budget_when_that_ends_first(caplog, monkeypatch):
    from lightning.pytorch.callbacks import Timer

    from ldm import callbacks

    clock = iter([100.0, 110.0])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    timer = Timer(duration="00:00:10:00")
    monkeypatch.setattr(timer, "time_remaining", lambda stage="train": 30.0)
    trainer = SimpleNamespace(global_step=0, max_steps=1000, is_global_zero=True, callbacks=[timer])
    eta = callbacks.ProgressETA(every_n_steps=50, name="first_stage")
    eta.on_train_start(trainer, None)
    trainer.global_step = 50
    with caplog.at_level(logging.INFO, logger="ldm.callbacks"):
        eta.on_train_batch_end(trainer, None, None, None, 0)  # 950 steps x 0.2 s = 190 s
    assert "step 50/1000 (5%), 0.20 s/step, ETA 0:30 min" in caplog.text
