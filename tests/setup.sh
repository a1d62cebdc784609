#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine for the test suite and the benchmarks: installs
# what is missing (mosquitto, socat, openssl, a C compiler, python3-venv) with apt-get and
# the project with its test extras into .venv. Used by tests/run.sh and bench/run.sh.
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
  echo "$(basename "$0"): installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
