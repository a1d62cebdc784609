#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine for the test suite and the benchmarks: installs
# what is missing (mosquitto, socat, openssl, a C compiler, python3-venv, systemd for
# systemd-analyze) with apt-get and the project with its test extras into .venv, at the
# versions in constraints.txt. Used by tests/run.sh and bench/run.sh.
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
# evdev (the `hid` extra, drivers/card_hid) is built from source: Python.h and linux/input.h.
python3 -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
  2>/dev/null || missing+=(python3-dev)
[ -f /usr/include/linux/input.h ] || missing+=(linux-libc-dev)
# systemd-analyze scores systemd/campus-agent.service and expands its system call groups;
# the package brings libseccomp too (tests/test_systemd_unit.py). Installed without its
# recommends (dbus, timesyncd); where systemd is not PID 1 its postinst starts nothing.
bare=()
have systemd-analyze || bare+=(systemd)
if [ ${#missing[@]} -gt 0 ] || [ ${#bare[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "$(basename "$0"): installing ${missing[*]} ${bare[*]} with apt-get" >&2
  $sudo apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ${#bare[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${bare[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# constraints.txt: the versions the suite was last run with (pip freeze); pyproject.toml
# only bounds them.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,hid,osdp]'
