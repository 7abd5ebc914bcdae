#!/bin/sh
# Train DiffTalk with the paper configuration on every visible GPU (the original run.sh, SPEC 5.3).
#
#   sh run.sh                                     # all GPUs torch sees, configs/latent-diffusion/talking.yaml
#   GPUS=0,1 sh run.sh                            # GPU indices among the visible ones
#   CUDA_VISIBLE_DEVICES=4,5,6,7 sh run.sh        # restrict what torch sees (then GPUS=0..3 by default)
#   CONFIG=my.yaml sh run.sh data.params.batch_size=4 --precision bf16-mixed
#   sh run.sh -r logs/<time>_talking              # resume a run (extra args go to main.py)
#
# Environment: CONFIG (default configs/latent-diffusion/talking.yaml), GPUS (default: all visible).
# Runs in the project's .venv, created on first use by scripts/setup_env.sh (the same one demo.sh
# and inference.sh use; TORCH_SPEC picks the torch build, PYTHON the interpreter that makes it).
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
