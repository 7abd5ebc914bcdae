"""Train DiffTalk or its first stage: the CompVis LDM main.py command line on Lightning 2.

python main.py --base configs/latent-diffusion/talking.yaml -t --gpus 0,1,2,3,4,5,6,7,
python main.py --base configs/latent-diffusion/talking-small.yaml -t data.params.batch_size=4
python main.py -r logs/<time>_talking -t                 # resume exactly where it stopped
python main.py --base configs/autoencoder/vq_f4_small.yaml -t --accelerator cpu --devices 2
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ldm.callbacks import SetupCallback
from ldm.config import ConfigError, check_trainer_kwargs, load_config
from ldm.train_utils import (
    AtomicCheckpointIO,
    first_stage_ckpt,
    parse_gpus,
    resolve_resume,
    resolve_strategy,
    run_name,
    scaled_learning_rate,
    trainer_world_size,
)
from ldm.util import instantiate_from_config

logger = logging.getLogger("main")
EXIT_SIGTERM = 128 + 15  # the shell's code for "terminated by SIGTERM"

LIGHTNING_FLAGS = "accelerator strategy devices num_nodes max_steps max_epochs precision".split()


def str2bool(value: str | bool) -> bool:
    """argparse type for yes/no flags written as --flag, --flag true or --flag false."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def get_parser() -> argparse.ArgumentParser:
    """LDM's flags plus the Lightning 2 device/length/precision flags; key=value args override."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", "--name", default="", help="run name: logs/<time>_<name>")
    p.add_argument("-r", "--resume", default="", help="log dir or checkpoint to resume from")
    p.add_argument(
        "-r2", "--resume2", default="", help="checkpoint whose weights initialise the model"
    )
    p.add_argument(
        "-b",
        "--base",
        nargs="*",
        default=[],
        metavar="base_config.yaml",
        help="configs merged left to right; then key=value overrides",
    )
    p.add_argument("-t", "--train", action="store_true", help="train (else validate only)")
    p.add_argument("-d", "--debug", action="store_true", help="DEBUG logs and full tracebacks")
    p.add_argument("-s", "--seed", type=int, default=23)
    p.add_argument("-f", "--postfix", default="", help="appended to the log dir name")
    p.add_argument("-l", "--logdir", default="logs", help="where run directories are created")
    p.add_argument(
        "--scale_lr",
        type=str2bool,
        nargs="?",
        const=True,
        default=True,
        help="lr = base_lr x devices x batch x accumulation (default true)",
    )
    p.add_argument("--gpus", default=None, help="PL-1 style GPU ids '0,1,' or a count '2'")
    p.add_argument("--accelerator", default=None, help="cpu, gpu, mps, auto (default: auto)")
    p.add_argument("--strategy", default=None, help="auto, ddp, ddp_spawn, fsdp, ...")
    p.add_argument("--devices", default=None, help="count, ids '0,1' or auto")
    p.add_argument("--num_nodes", type=int, default=None)
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--max_epochs", type=int, default=None)
    p.add_argument("--precision", default=None, help="32-true, bf16-mixed, 16-mixed, ...")
    return p


@dataclass
class Run:
    """One training run: its log dir, the checkpoint it resumes from and its merged config."""

    logdir: Path
    now: str
    config: DictConfig
    ckpt: Path | None = None


def prepare_run(opt: argparse.Namespace, overrides: list[str]) -> Run:
    """Resolve the log dir (new or resumed) and merge saved configs, --base and overrides."""
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    is_override = lambda arg: "=" in arg and not arg.endswith((".yaml", ".yml"))  # noqa: E731
    overrides = [a for a in opt.base if is_override(a)] + overrides  # `--base a.yaml k=v`
    base = [a for a in opt.base if not is_override(a)]
    if opt.name and opt.resume:
        raise ConfigError(
            "-n/--name and -r/--resume cannot be combined: a resumed run keeps its name"
        )
    if opt.resume:
        target = resolve_resume(opt.resume)
        config = load_config([str(p) for p in target.configs] + base, overrides)
        return Run(target.logdir, now, config, target.ckpt)
    if not base:
        raise ConfigError("give --base config.yaml (or -r a log dir to resume)")
    logdir = Path(opt.logdir) / (now + run_name(opt.name, base, opt.postfix))
    return Run(logdir.resolve(), now, load_config(base, overrides))


def trainer_kwargs(
    opt: argparse.Namespace, config: DictConfig, model: pl.LightningModule
) -> dict[str, Any]:
    """lightning.trainer from the config, then the command-line flags that were given."""
    kwargs = OmegaConf.to_container(config.lightning.trainer, resolve=True)
    check_trainer_kwargs(kwargs)
    for flag in LIGHTNING_FLAGS:
        if getattr(opt, flag) is not None:
            kwargs[flag] = getattr(opt, flag)
    if isinstance(kwargs.get("devices"), str) and kwargs["devices"] != "auto":
        kwargs["devices"] = parse_gpus(kwargs["devices"])
    if opt.gpus is not None:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--gpus {opt.gpus} but torch sees no CUDA GPU; train on CPU with "
                "--accelerator cpu (configs/latent-diffusion/talking-small.yaml is CPU-sized)"
            )
        kwargs.update(accelerator="gpu", devices=parse_gpus(opt.gpus))
    if "accelerator" not in kwargs and not torch.cuda.is_available():
        kwargs["accelerator"] = "cpu"  # never "mps"/"auto" surprises when no CUDA is present
    resolve_strategy(kwargs, model)
    return kwargs


def build_callbacks(run: Run) -> list[pl.Callback]:
    """Setup, kept checkpoints, last.ckpt (+signals), lr monitor and the config's callbacks."""
    lcfg = run.config.lightning
    ckptdir = run.logdir / "checkpoints"
    callbacks = [
        SetupCallback(run.now, run.logdir, run.config, resume=run.ckpt is not None),
        instantiate_from_config(lcfg.modelcheckpoint, dirpath=ckptdir),
        instantiate_from_config(lcfg.last_checkpoint, dirpath=ckptdir),
        LearningRateMonitor(logging_interval="step"),
    ]
    callbacks += [instantiate_from_config(c) for c in lcfg.callbacks.values() if c is not None]
    return callbacks


def build_data(config: DictConfig) -> pl.LightningDataModule:
    """Instantiate and set up the datamodule now, so a missing data dir fails before training."""
    data = instantiate_from_config(config.data)
    data.setup("fit")
    for name, dataset in getattr(data, "datasets", {}).items():
        logger.info("data %s: %s, %d items", name, type(dataset).__name__, len(dataset))
    return data


def build_model(opt: argparse.Namespace, config: DictConfig) -> pl.LightningModule:
    """Instantiate the model, optionally load --resume2 weights, warn about a random first stage."""
    is_talking, ckpt_path = first_stage_ckpt(config)
    if is_talking and ckpt_path is None and opt.train:
        logger.warning(
            "first_stage_config.params.ckpt_path is null: the first stage is RANDOM, so the "
            "latents mean nothing. Fine for tests; for real training train one with "
            "`python main.py --base configs/autoencoder/vq_f4_small.yaml -t` (models/README.md)."
        )
    model = instantiate_from_config(config.model)
    if opt.resume2:
        model.init_from_ckpt(opt.resume2)
    return model


def train(opt: argparse.Namespace, overrides: list[str]) -> int:
    """Build run, data, model and trainer, then fit (with -t) or validate; return the exit code."""
    run = prepare_run(opt, overrides)
    pl.seed_everything(opt.seed, workers=True)
    if rank_zero_only.rank == 0:
        logger.info("log dir %s", run.logdir)
    if "base_learning_rate" not in run.config.model:
        raise ConfigError("model.base_learning_rate is missing from the config")
    data = build_data(run.config)
    model = build_model(opt, run.config)
    kwargs = trainer_kwargs(opt, run.config, model)
    trainer = pl.Trainer(
        **kwargs,
        default_root_dir=str(run.logdir),
        logger=TensorBoardLogger(
            str(run.logdir), name="tensorboard", version="", default_hp_metric=False
        ),
        callbacks=build_callbacks(run),
        plugins=[AtomicCheckpointIO()],
    )
    model.learning_rate = scaled_learning_rate(
        run.config.model.base_learning_rate,
        run.config.data.params.batch_size,
        trainer_world_size(trainer),
        kwargs.get("accumulate_grad_batches", 1) or 1,
        opt.scale_lr,
    )
    ckpt = str(run.ckpt) if run.ckpt else None
    if not opt.train:
        trainer.validate(model, data, ckpt_path=ckpt)
        return 0
    try:
        trainer.fit(model, data, ckpt_path=ckpt)
    except SIGTERMException:
        if trainer.is_global_zero:  # other ranks' run.logdir is a name rank 0 never created
            logger.warning("stopped by SIGTERM; continue with: python main.py -r %s -t", run.logdir)
        return EXIT_SIGTERM
    return 0


def setup_logging(debug: bool) -> None:
    """INFO (DEBUG with --debug) to stderr with time and logger name."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (1 with a one-line message for config/data errors)."""
    opt, overrides = get_parser().parse_known_args(argv)
    setup_logging(opt.debug)
    try:
        return train(opt, overrides)
    except (ConfigError, FileNotFoundError) as err:
        if opt.debug:
            raise
        logger.error("%s: %s (run with --debug for the traceback)", type(err).__name__, err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
