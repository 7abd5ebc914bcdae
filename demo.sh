#!/bin/sh
# The main job on a fresh machine: sets up .venv, then preprocess -> train first stage -> train the
# talking LDM -> render -> evaluate, all on CPU. `sh demo.sh [video.mp4] [--quick] [--out DIR]`
set -eu
cd "$(dirname "$0")"
. scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
