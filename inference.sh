#!/bin/sh
# The paper's inference protocol over a split list (SPEC 3, 5.2): EMA weights, DDIM 200 steps,
# eta 0, masked frame cut at landmark 33, reference frame 1, jaw-polygon latent mask. Writes
# $OUT/{id}/frames/{frame:05d}.png, $OUT/{id}.mp4 (with the clip's audio), $OUT/{id}_truth.mp4 and
# $OUT/{id}_side_by_side.mp4 (ground truth | generated).
#
#   sh inference.sh [CKPT [CONFIG [SPLIT [OUT]]]] [-- extra scripts/inference.py options]
#   CKPT=logs/run/checkpoints/last.ckpt OUT=logs/inference sh inference.sh -- --sampler dpm
#
# Positional arguments ("" = keep) override the environment, which overrides the defaults below. CONFIG is a
# space-separated list of YAMLs merged in order; DATA overrides the config's dataset root.
# Runs in the project's .venv, created on first use by scripts/setup_env.sh (shared with demo.sh, run.sh).
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
