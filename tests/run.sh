#!/usr/bin/env bash
# The whole test suite on a fresh Debian/Ubuntu machine (the README's second command).
# Installs what it needs (tests/setup.sh: mosquitto, socat, openssl, a virtual environment),
# then runs the format check, the linter, the type checker, the schema check and pytest.
# Extra arguments go to pytest, e.g. ./tests/run.sh -x -k outage
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh

.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m agent.schema --check docs
# Two workers (pytest-xdist): the suite is mostly waiting on brokers and child processes.
# --dist loadgroup keeps each xdist_group (tests that measure, that build the same C
# objects, that make a Debian root) on one worker. The 20 slowest tests are listed at the end.
exec .venv/bin/pytest -n 2 --dist loadgroup --durations=20 "$@"
