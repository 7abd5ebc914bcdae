#!/bin/sh
# Sourced by demo.sh, run.sh, inference.sh and tests/run.sh: make .venv with torch and
# requirements.txt, once per change.
# TORCH_SPEC picks the torch build (default: the CPU 2.13.0 wheel; GPU users: e.g. "torch>=2.4").
set -eu
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
stamp=".venv/.difftalk-installed"
want="$(cksum < requirements.txt) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setting up .venv (first run or requirements changed) ..." >&2
    .venv/bin/python -m pip install -q "$TORCH_SPEC" 2> .venv/pip.log || { cat .venv/pip.log >&2; exit 1; }
    .venv/bin/python -m pip install -q -r requirements.txt 2>> .venv/pip.log || { cat .venv/pip.log >&2; exit 1; }
    .venv/bin/python -m pip install -q --no-deps -e . 2>> .venv/pip.log || { cat .venv/pip.log >&2; exit 1; }
    echo "$want" > "$stamp"
fi
