"""run.sh, inference.sh and demo.sh: their usage on --help, and the project's .venv through
scripts/setup_env.sh.

Each test runs a copy of the scripts in a temporary project whose .venv is already set up (its
stamp matches), so setup_env.sh installs nothing and the commands' own logic runs.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import load_main

from conftest import ROOT, load_script

TORCH_SPEC = "torch==2.13.0"


def script(path: Path, body: str) -> str:
    """Write an executable sh script; its path."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def project_copy(tmp_path: Path, python: str) -> Path:
    """A temp project with the shell scripts and a ready .venv whose python runs `python`."""
    proj = tmp_path / "proj"
    (proj / "scripts").mkdir(parents=True)
    for name in ("run.sh", "inference.sh", "demo.sh", "requirements.txt", "scripts/setup_env.sh"):
        shutil.copy(ROOT / name, proj / name)
    (proj / ".venv" / "bin").mkdir(parents=True)
    script(proj / ".venv" / "bin" / "python", f'exec "{python}" "$@"\n')
    cksum = subprocess.run(
        "cksum < requirements.txt", shell=True, cwd=proj, capture_output=True, text=True
    ).stdout.strip()
    (proj / ".venv" / ".difftalk-installed").write_text(f"{cksum} {TORCH_SPEC}\n")
    return proj


def sh(proj: Path, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run `sh script args` from outside the project (PATH without any python of ours)."""
    environ = {"PATH": "/usr/bin:/bin", "TORCH_SPEC": TORCH_SPEC, "HOME": str(proj), **env}
    return subprocess.run(
        ["sh", str(proj / script), *args], env=environ, cwd="/", capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_inference_sh_runs_in_the_venv_with_the_paper_defaults(tmp_path: Path) -> None:
    fake = script(tmp_path / "fake", 'echo "cwd=$(pwd)"\nfor a in "$@"; do echo "arg=$a"; done\n')
    proj = project_copy(tmp_path, fake)
    res = sh(proj, "inference.sh", "my.ckpt", "", "", "out", "--", "--steps", "5")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"cwd={proj}"
    args = [ln.removeprefix("arg=") for ln in lines[1:]]
    assert args[:3] == ["scripts/inference.py", "--ckpt", "my.ckpt"]
    assert args[args.index("--split") + 1] == "data/data_test.txt"
    assert args[args.index("--outdir") + 1] == "out" and args[-2:] == ["--steps", "5"]
    assert "setting up .venv" not in res.stderr  # the existing .venv was reused


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_run_sh_uses_the_venv_and_without_a_gpu_names_the_cpu_config(tmp_path: Path) -> None:
    proj = project_copy(tmp_path, sys.executable)
    res = sh(proj, "run.sh", CUDA_VISIBLE_DEVICES="")
    assert res.returncode == 1
    assert "no CUDA GPU" in res.stderr and "talking-small.yaml" in res.stderr
    assert ".venv/bin/python main.py" in res.stderr


def test_changed_requirements_make_setup_env_reinstall(tmp_path: Path) -> None:
    calls = tmp_path / "calls.log"
    fake = script(tmp_path / "fake", f'echo "$*" >> {calls}\ncase "$*" in *-r*) exit 1;; esac\n')
    proj = project_copy(tmp_path, fake)
    with open(proj / "requirements.txt", "a") as fh:
        fh.write("yt-dlp>=2099\n")
    res = sh(proj, "inference.sh")
    # pip is asked for torch and the new requirements; its failure stops the command
    assert "setting up .venv" in res.stderr and res.returncode != 0
    assert calls.read_text().splitlines() == [
        f"-m pip install -q {TORCH_SPEC}",
        "-m pip install -q -r requirements.txt",
    ]
    assert "scripts/inference.py" not in calls.read_text()


USAGE_NAMES = {  # what each command's usage must name: its own arguments and environment
    "run.sh": ("CONFIG", "GPUS", "TORCH_SPEC", "main.py"),
    "inference.sh": ("CKPT", "CONFIG", "SPLIT", "OUT", "DATA", "scripts/inference.py"),
    "demo.sh": ("--test", "--out", "--quick", "--no-time-limit", "scripts/demo.py"),
}


@pytest.mark.parametrize("command", sorted(USAGE_NAMES))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_each_command_prints_its_usage_before_any_setup(tmp_path: Path, command, flag) -> None:
    calls = tmp_path / "calls.log"
    fake = script(tmp_path / "fake", f'echo "$*" >> {calls}\n')
    proj = project_copy(tmp_path, fake)
    (proj / ".venv" / ".difftalk-installed").unlink()  # any setup would reinstall and say so
    args = ("my.ckpt", flag) if command == "inference.sh" else (flag,)
    res = sh(proj, command, *args, CUDA_VISIBLE_DEVICES="")
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.startswith(("Train", "The paper", "DiffTalk")) and "Usage: sh " in res.stdout
    for name in USAGE_NAMES[command]:
        assert name in res.stdout
    assert not calls.exists()  # neither pip, nor the GPU check, nor the command ran


OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def options(parse_args) -> set[str]:
    """The long options a script's argparse parser prints in its --help."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args(["--help"])
    return set(OPTION.findall(out.getvalue())) - {"--help"}


def test_the_usages_name_only_options_their_scripts_take_and_demo_sh_all_of_them() -> None:
    parsers = {
        "run.sh": load_main().get_parser().parse_args,
        "inference.sh": load_script("inference").parse_args,
        "demo.sh": load_script("demo").parse_args,
    }
    for command, parse_args in parsers.items():
        usage = subprocess.run(
            ["sh", str(ROOT / command), "--help"], capture_output=True, text=True
        )
        named, taken = set(OPTION.findall(usage.stdout)) - {"--help"}, options(parse_args)
        assert named and named <= taken, (command, named - taken)
        if command == "demo.sh":  # it passes everything through: its usage lists every option
            assert named == taken
