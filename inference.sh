#!/bin/sh
# The paper's inference protocol over a split list (SPEC 3, 5.2): runs scripts/inference.py on
# every clip of SPLIT in the project's .venv, with EMA weights, DDIM 200 steps, eta 0, the frame
# masked below landmark 33, reference frame 1 and the jaw-polygon latent mask. Writes
# OUT/{id}/frames/{frame:05d}.png, OUT/{id}.mp4 (with the clip's audio), OUT/{id}_truth.mp4 and
# OUT/{id}_side_by_side.mp4 (ground truth | generated).
#
# Usage: sh inference.sh [CKPT [CONFIG [SPLIT [OUT]]]] [-- OPTIONS ...]
#   sh inference.sh logs/run/checkpoints/last.ckpt
#   CKPT=logs/run/checkpoints/last.ckpt OUT=logs/inference sh inference.sh -- --sampler dpm
#
# Positional arguments ("" = keep) override the environment, which overrides the defaults:
#   CKPT    the checkpoint (default: logs/difftalk/checkpoints/last.ckpt)
#   CONFIG  space-separated YAMLs merged in order (default: configs/latent-diffusion/talking.yaml
#           configs/latent-diffusion/talking-inference.yaml)
#   SPLIT   the key list (default: data/data_test.txt)
#   OUT     the output folder (default: logs/inference)
#   DATA    (environment only) the dataset root instead of the config's
#   TORCH_SPEC, PYTHON  the torch build and interpreter that make .venv (scripts/setup_env.sh)
# OPTIONS after -- go to scripts/inference.py: --sampler ddim|dpm, --steps N, --eta E,
# --reference first|progressive|bank, --shared-noise, --batch-size N, --seed N, --ids 100-110,
# --max-frames N, --audio-id ID, --image-format png|jpg, --first-stage-only, --device D, ...
# (all of them: .venv/bin/python scripts/inference.py --help). .venv is created on first use
# (shared with demo.sh and run.sh).
for arg in "$@"; do  # the comment above is the usage
    case $arg in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; --) break ;; esac
done
set -eu
cd "$(dirname "$0")"

CKPT=${CKPT:-logs/difftalk/checkpoints/last.ckpt}
CONFIG=${CONFIG:-"configs/latent-diffusion/talking.yaml configs/latent-diffusion/talking-inference.yaml"}
SPLIT=${SPLIT:-data/data_test.txt}
OUT=${OUT:-logs/inference}

for name in CKPT CONFIG SPLIT OUT; do
    [ $# -gt 0 ] && [ "$1" != "--" ] || break
    [ -z "$1" ] || eval "$name=\$1"  # an empty argument keeps the default
    shift
done
[ $# -gt 0 ] && [ "$1" = "--" ] && shift

# shellcheck disable=SC2086  # CONFIG is a list of files
set -- --ckpt "$CKPT" --config $CONFIG --split "$SPLIT" --outdir "$OUT" ${DATA:+--root "$DATA"} "$@"
. scripts/setup_env.sh
exec .venv/bin/python scripts/inference.py "$@"
