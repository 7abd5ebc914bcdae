#!/bin/sh
# The test command: creates .venv on first use (CPU torch + requirements), lints, runs pytest.
# Extra arguments go to pytest, e.g. `sh tests/run.sh tests/test_model.py -x`; all tests run by
# default, `sh tests/run.sh -m "not slow"` leaves out the slow ones (pyproject.toml, markers).
set -eu
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
