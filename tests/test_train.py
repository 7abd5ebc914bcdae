"""main.py end to end on CPU: a tiny run, kill -9 + exact resume, signals, 2-process DDP, config
errors, first-stage training. Subprocess tests run `python main.py` as a user would."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ldm.callbacks import make_grid, tree_digest
from ldm.config import ConfigError
from ldm.train_utils import (
    AtomicCheckpointIO,
    parse_gpus,
    resolve_resume,
    scaled_learning_rate,
)

from conftest import ROOT, make_tiny_dataset, wait_for

MAIN = ROOT / "main.py"
SMALL = ROOT / "configs/latent-diffusion/talking-small.yaml"
VQ_SMALL = ROOT / "configs/autoencoder/vq_f4_small.yaml"
SIZE = 32  # frames; latents 8x8
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
REPORT_YAML = (
    "lightning:\n  callbacks:\n    train_report:\n      target: ldm.callbacks.TrainReport\n"
)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for these tiny models: on a busy 2-core machine two OpenMP threads
    spin-wait on each other and a step gets several times slower (subprocesses: ENV)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def load_main():
    """main.py as a module (it is a script at the project root, not part of the package)."""
    if "difftalk_main" not in sys.modules:
        spec = importlib.util.spec_from_file_location("difftalk_main", MAIN)
        module = importlib.util.module_from_spec(spec)
        sys.modules["difftalk_main"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["difftalk_main"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 identities x 8 frames at 32 px: 16 training keys, 8 test keys (returns the root)."""
    root = tmp_path_factory.mktemp("data")
    make_tiny_dataset(root, n_ids=3, n_frames=8, size=SIZE)
    return root


def data_overrides(root: Path, images: bool = False) -> list[str]:
    """Point both splits of a config at the tiny dataset (ImageFolder wants images/)."""
    out = []
    for split, lst in (("train", "data_train.txt"), ("validation", "data_test.txt")):
        p = f"data.params.{split}.params"
        folder = root / "HDTF" / "images" if images else root / "HDTF"
        out += [f"{p}.root={folder}", f"{p}.split_file={root / lst}", f"{p}.size={SIZE}"]
    return out + ["data.params.batch_size=2", "data.params.num_workers=0"]


def common_overrides() -> list[str]:
    """Quiet, small, fast trainer and image logger settings."""
    t, il = "lightning.trainer", "lightning.callbacks.image_logger.params"
    return [
        f"{t}.num_sanity_val_steps=0",
        f"{t}.enable_progress_bar=false",
        f"{t}.enable_model_summary=false",
        f"{t}.log_every_n_steps=1",
        f"{il}.batch_frequency=2",
        f"{il}.max_images=2",
    ]


def talking_args(root: Path, *extra: str) -> list[str]:
    """The CPU config shrunk to 32 px with a random first stage, on the tiny dataset."""
    m = "model.params"
    return [
        "--base",
        str(SMALL),
        *extra,
        f"{m}.first_stage_config.params.ckpt_path=null",
        f"{m}.first_stage_config.params.ddconfig.resolution={SIZE}",
        f"{m}.image_size={SIZE // 4}",
        f"{m}.unet_config.params.image_size={SIZE // 4}",
        "lightning.callbacks.image_logger.params.ddim_steps=2",
        *data_overrides(root),
        *common_overrides(),
    ]


def report_yaml(tmp_path: Path) -> str:
    """An extra --base config that adds the per-rank TrainReport callback."""
    path = tmp_path / "report.yaml"
    path.write_text(REPORT_YAML)
    return str(path)


def the_logdir(logs: Path) -> Path:
    """The single run directory under ``logs``."""
    (logdir,) = [p for p in logs.iterdir() if p.is_dir()]
    return logdir


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python main.py ARGS` in the background, output to cwd/out.log."""
    out = open(cwd / "out.log", "ab")  # noqa: SIM115 - closed by the OS when the child ends
    cmd = [sys.executable, str(MAIN), *args]
    return subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=out, env=ENV)


def run(args: list[str], cwd: Path, timeout: float = 200) -> subprocess.CompletedProcess:
    """`python main.py ARGS` to completion; fail with its output when it does not exit 0."""
    cmd = [sys.executable, str(MAIN), *args]
    res = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


def load_ckpt(path: Path) -> dict:
    """A Lightning checkpoint, loaded with weights_only=True (no pickled objects inside)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def ema_of(state_dict: dict) -> dict:
    """The model_ema.* entries of a state dict."""
    return {k: v for k, v in state_dict.items() if k.startswith("model_ema.")}


# ----------------------------------------------------------------------------- units


def test_gpus_devices_and_lr_scaling():
    assert parse_gpus("0,1,") == [0, 1]
    assert parse_gpus("0,1,2,3,4,5,6,7,") == list(range(8))
    assert parse_gpus("2") == 2
    with pytest.raises(ConfigError):
        parse_gpus("a,b")
    assert scaled_learning_rate(1e-6, 8, 8, 1, True) == pytest.approx(6.4e-5)  # SPEC 4.7
    assert scaled_learning_rate(1e-6, 8, 8, 1, False) == 1e-6


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpus_without_cuda_is_a_clear_error(data, tmp_path, caplog):
    argv = talking_args(data, "-t", "--gpus", "0,1,", "--max_steps", "1", "-l", str(tmp_path))
    code = load_main().main(argv)
    assert code == 1
    assert "no CUDA GPU" in caplog.text and "--accelerator cpu" in caplog.text


def test_resume_resolution(tmp_path):
    run_dir = tmp_path / "2024_x"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "configs").mkdir()
    (run_dir / "configs" / "a-project.yaml").write_text("model: {}\n")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_resume(run_dir)
    (run_dir / "checkpoints" / "epoch=0.ckpt").write_bytes(b"x")
    assert resolve_resume(run_dir).ckpt.name == "epoch=0.ckpt"  # no last.ckpt: the newest
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    target = resolve_resume(run_dir)
    assert target.ckpt.name == "last.ckpt" and target.logdir == run_dir.resolve()
    assert resolve_resume(run_dir / "checkpoints" / "epoch=0.ckpt").logdir == run_dir.resolve()


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(load_ckpt(path)["step"]) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_make_grid_layout():
    grid = make_grid(torch.rand(5, 3, 8, 8), nrow=3, padding=2)
    assert grid.shape == (3, 2 * 10, 3 * 10)


# ----------------------------------------------------------------------------- config errors


def test_overrides_reach_the_model(data):
    main = load_main()
    argv = talking_args(data, "-t", "model.params.unet_config.params.model_channels=64")
    argv += ["model.params.first_stage_config.params.n_embed=256", "model.params.ema_decay=0.99"]
    opt, overrides = main.get_parser().parse_known_args(argv)
    run = main.prepare_run(opt, overrides)
    model = main.build_model(opt, run.config)
    assert model.model.diffusion_model.input_blocks[0][0].out_channels == 64
    assert model.first_stage_model.quantize.embedding.weight.shape[0] == 256
    assert float(model.model_ema.decay) == pytest.approx(0.99)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("model.params.unet_config.params.model_chanels=8", "did you mean 'model_channels'"),
        ("model.paramz.x=1", "did you mean 'model.params'"),
        ("lightning.trainer.max_stepz=3", "max_stepz"),
        ("not_an_override", "key=value"),
    ],
)
def test_bad_config_key_is_one_clear_error(data, tmp_path, caplog, bad, message):
    argv = talking_args(data, "-t", "--max_steps", "1", "-l", str(tmp_path))
    code = load_main().main([*argv, bad])
    assert code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0].getMessage()
    assert not any(tmp_path.iterdir())  # nothing was created


def test_missing_data_dir_is_one_clear_error(data, tmp_path, caplog):
    missing = tmp_path / "no_such_data"
    argv = talking_args(data, "-t", "--max_steps", "1", "-l", str(tmp_path))
    assert load_main().main([*argv, f"data.params.train.params.root={missing}"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(missing) in errors[0]
    assert "Traceback" not in caplog.text


# ----------------------------------------------------------------------------- training runs


def test_tiny_run_writes_checkpoints_grids_config_and_tensorboard(data, tmp_path):
    logs = tmp_path / "logs"
    argv = talking_args(data, "-t", "--max_steps", "4", "-l", str(logs), "-n", "tiny")
    assert load_main().main([*argv, "lightning.last_checkpoint.params.every_n_train_steps=3"]) == 0
    logdir = the_logdir(logs)
    assert logdir.name.endswith("_tiny")
    last = load_ckpt(logdir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 4  # saved at step 3 and again at the end of training
    assert int(last["state_dict"]["model_ema.num_updates"]) == 4  # EMA saved with its step
    (cfg,) = (logdir / "configs").glob("*-project.yaml")
    assert "every_n_train_steps: 3" in cfg.read_text()
    grids = {p.name.split("_gs-")[0] for p in (logdir / "images" / "train").glob("*.png")}
    assert {
        "inputs",
        "masked",
        "reference",
        "reconstruction",
        "samples_inpaint",
        "overview",
    } <= grids
    assert list((logdir / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_max_time_stops_a_run_early_with_its_last_checkpoint_and_says_so(data, tmp_path):
    logs = tmp_path / "logs"
    progress = tmp_path / "progress.yaml"  # an extra --base config: overrides add no new keys
    progress.write_text(
        "lightning:\n  callbacks:\n    progress:\n      target: ldm.callbacks.ProgressETA\n"
        "      params: {every_n_steps: 1}\n"
    )
    argv = talking_args(data, str(progress), "-t", "--max_steps", "100000", "-l", str(logs))
    res = run(
        [
            *argv,
            "lightning.trainer.max_time=00:00:00:04",
            "lightning.callbacks.image_logger.params.batch_frequency=100000",
        ],
        tmp_path,
    )
    step = load_ckpt(the_logdir(logs) / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < step < 100000
    assert f"stopped at step {step}/100000: its time budget" in res.stderr


@pytest.mark.slow
def test_kill9_then_resume_continues_at_the_same_step_and_state(data, tmp_path):
    logs = tmp_path / "logs"
    args = talking_args(data, report_yaml(tmp_path), "-t", "-l", str(logs))
    args += ["lightning.last_checkpoint.params.every_n_train_steps=2"]
    proc = start([*args, "--max_steps", "1000"], tmp_path)
    last = lambda: next(logs.glob("*/checkpoints/last.ckpt"), None)  # noqa: E731
    wait_for(lambda: last() is not None, proc, "last.ckpt at step 2")
    first_inode = last().stat().st_ino  # each atomic save is a new file
    wait_for(lambda: last().stat().st_ino != first_inode, proc, "last.ckpt at step 4")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    logdir = the_logdir(logs)
    killed = load_ckpt(logdir / "checkpoints" / "last.ckpt")  # atomic: complete whatever the timing
    step = killed["global_step"]
    assert step >= 4 and step % 2 == 0
    assert int(killed["state_dict"]["model_ema.num_updates"]) == step
    stale = logdir / "checkpoints" / ".last.ckpt.tmp-99999"
    stale.write_bytes(b"partial")

    run(["-r", str(logdir), "-t", "--max_steps", str(step + 2)], tmp_path)
    start_state = json.loads((logdir / "reports" / "rank0.json").read_text())["start"]
    assert start_state["global_step"] == step
    assert start_state["weights"] == tree_digest(killed["state_dict"])
    assert start_state["ema"] == tree_digest(ema_of(killed["state_dict"]))
    assert start_state["optimizer"] == tree_digest(killed["optimizer_states"])
    assert load_ckpt(logdir / "checkpoints" / "last.ckpt")["global_step"] == step + 2
    assert not stale.exists()


@pytest.mark.slow
def test_sigusr1_saves_and_continues_sigterm_saves_and_stops(data, tmp_path):
    logs = tmp_path / "logs"
    args = talking_args(data, report_yaml(tmp_path), "-t", "-l", str(logs))
    proc = start(
        [*args, "--max_steps", "1000", "lightning.callbacks.image_logger.params.disabled=true"],
        tmp_path,
    )
    wait_for(lambda: bool(list(logs.glob("*/reports/rank0.json"))), proc, "training to start")
    last = the_logdir(logs) / "checkpoints" / "last.ckpt"  # every 500 steps: only signals write it
    os.kill(proc.pid, signal.SIGUSR1)
    wait_for(last.exists, proc, "the SIGUSR1 checkpoint")
    first = load_ckpt(last)["global_step"]
    time.sleep(1.0)
    assert proc.poll() is None  # still training
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert load_ckpt(last)["global_step"] > first
    assert "continue with: python main.py -r" in (tmp_path / "out.log").read_text()


@pytest.mark.slow
def test_ddp_two_cpu_processes_share_the_data_and_end_identical(data, tmp_path):
    logs = tmp_path / "logs"
    args = talking_args(data, report_yaml(tmp_path), "-t", "-l", str(logs))
    ddp = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--max_steps", "4"]
    run([*args, *ddp], tmp_path, timeout=300)
    logdir = the_logdir(logs)
    reports = [json.loads((logdir / "reports" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    seen = [set(r["samples"]) for r in reports]
    assert all(len(s) == 8 for s in seen) and not seen[0] & seen[1]  # 4 steps x 2, disjoint
    assert reports[0]["end"]["global_step"] == reports[1]["end"]["global_step"] == 4
    assert reports[0]["end"]["weights"] == reports[1]["end"]["weights"]
    assert reports[0]["end"]["weights"] != reports[0]["start"]["weights"]  # it trained
    assert load_ckpt(logdir / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert list((logdir / "images" / "val").glob("overview_*.png"))  # validation ran, rank 0 drew


def test_first_stage_trains_and_the_talking_model_loads_it(data, tmp_path, caplog):
    logs = tmp_path / "logs"
    argv = ["--base", str(VQ_SMALL), "-t", "-l", str(logs), "--max_steps", "6"]
    argv += [
        f"model.params.ddconfig.resolution={SIZE}",
        "model.params.lossconfig.params.disc_start=2",
    ]
    argv += ["lightning.trainer.limit_val_batches=1", *data_overrides(data, images=True)]
    assert load_main().main(argv + common_overrides()) == 0
    assert "Perceptual (LPIPS) loss is OFF" in caplog.text
    logdir = the_logdir(logs)
    ckpt = logdir / "checkpoints" / "last.ckpt"
    state = load_ckpt(ckpt)["state_dict"]
    assert any(k.startswith("loss.discriminator.") for k in state)
    names = {p.name.split("_gs-")[0] for p in (logdir / "images" / "train").glob("*.png")}
    assert {"inputs", "reconstructions"} <= names
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir / "tensorboard")).Reload()
    assert "train/codebook_usage" in events.Tags()["scalars"]

    main = load_main()
    override = f"model.params.first_stage_config.params.ckpt_path={ckpt}"
    opt, overrides = main.get_parser().parse_known_args([*talking_args(data), override])
    model = main.build_model(opt, main.prepare_run(opt, overrides).config)
    torch.testing.assert_close(
        model.first_stage_model.encoder.conv_in.weight, state["encoder.conv_in.weight"]
    )
