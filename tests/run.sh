#!/usr/bin/env bash
# The whole test suite on a fresh Debian/Ubuntu machine (the README's second command).
# Installs what it needs (mosquitto, socat, openssl, a virtual environment), then runs the
# format check, the linter, the type checker, the schema check and pytest.
# Extra arguments go to pytest, e.g. ./tests/run.sh -x -k outage
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
missing=()
have mosquitto || missing+=(mosquitto)
have mosquitto_pub || missing+=(mosquitto-clients)
have socat || missing+=(socat)
have openssl || missing+=(openssl)
have gcc || missing+=(gcc)
have make || missing+=(make)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "tests/run.sh: installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m agent.schema --check docs
exec .venv/bin/pytest "$@"
