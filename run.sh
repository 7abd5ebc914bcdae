#!/bin/sh
# Train DiffTalk with the paper configuration on every visible GPU (the original run.sh, SPEC 5.3):
# runs `main.py --base $CONFIG -t --gpus $GPUS, ARGS` in the project's .venv.
#
# Usage: sh run.sh [ARGS ...]
#   sh run.sh                                 # all GPUs torch sees, configs/latent-diffusion/talking.yaml
#   GPUS=0,1 sh run.sh                        # GPU indices among the visible ones
#   CUDA_VISIBLE_DEVICES=4,5,6,7 sh run.sh    # restrict what torch sees (then GPUS=0..3 by default)
#   CONFIG=my.yaml sh run.sh data.params.batch_size=4 --precision bf16-mixed
#   sh run.sh -r logs/<time>_talking          # resume a run
#
# Environment:
#   CONFIG      the config YAML (default: configs/latent-diffusion/talking.yaml)
#   GPUS        GPU indices, comma-separated (default: every GPU torch sees)
#   TORCH_SPEC  the torch build .venv gets (scripts/setup_env.sh; default: the CPU wheel), PYTHON
#               the interpreter that makes .venv (default: python3)
# ARGS go to main.py: config overrides key=value, -r LOGDIR (resume), -n NAME, -l LOGDIR,
# --max_steps N, --max_epochs N, --precision P, --strategy S, --scale_lr false, -s SEED, -d
# (all of them: .venv/bin/python main.py --help). Without a CUDA GPU it stops and names the CPU
# config. .venv is created on first use (shared with demo.sh and inference.sh).
for arg in "$@"; do  # the comment above is the usage
    case $arg in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; --) break ;; esac
done
set -eu
cd "$(dirname "$0")"
. scripts/setup_env.sh
CONFIG="${CONFIG:-configs/latent-diffusion/talking.yaml}"
PY=.venv/bin/python
if ! VISIBLE=$("$PY" -c 'import torch; print(",".join(map(str, range(torch.cuda.device_count()))) if torch.cuda.is_available() else "")'); then
    echo "run.sh: $PY cannot import torch; delete .venv/.difftalk-installed to reinstall it" >&2
    exit 1
fi
if [ -z "$VISIBLE" ]; then
    echo "run.sh: torch sees no CUDA GPU (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset})." >&2
    echo "The paper config ($CONFIG) needs GPUs. On this machine train the CPU-sized config:" >&2
    echo "  $PY main.py --base configs/latent-diffusion/talking-small.yaml -t --accelerator cpu" >&2
    exit 1
fi
GPUS="${GPUS:-$VISIBLE}"
echo "run.sh: training $CONFIG on GPUs $GPUS" >&2
exec "$PY" main.py --base "$CONFIG" -t --gpus "$GPUS," "$@"
