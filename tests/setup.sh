#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine for the test suite and the benchmarks: installs
# what is missing (mosquitto, socat, strace, openssl, a C compiler, python3-venv, systemd for
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
# tests/test_deb.py makes a throwaway Debian 12 root to install the package into.
have debootstrap || missing+=(debootstrap)
have strace || missing+=(strace)  # tests/test_e2e_read_wakeups.py counts recvfrom calls
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# evdev (the `hid` extra, drivers/card_hid) is built from source: Python.h and linux/input.h.
python3 -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
  2>/dev/null || missing+=(python3-dev)
[ -f /usr/include/linux/input.h ] || missing+=(linux-libc-dev)
# The BLE tests (tests/test_ble*.py) run python-dbusmock's BlueZ template on a private bus:
# dbus-daemon, and Debian's python3-dbus for the system python (/usr/bin/python3, which it
# brings where only another Python is installed) that runs the mock: dbus-python from PyPI
# would have to be built against libdbus-1-dev with meson; the Debian one is ready.
/usr/bin/python3 -c 'import dbus' 2>/dev/null || missing+=(python3-dbus)
# systemd-analyze scores systemd/campus-agent.service and expands its system call groups;
# the package brings libseccomp too (tests/test_systemd_unit.py). Installed without its
# recommends (dbus, timesyncd); where systemd is not PID 1 its postinst starts nothing.
bare=()
have systemd-analyze || bare+=(systemd)
# `dbus` (not `dbus-daemon`: Ubuntu 22.04 has no such package) without its recommends
# (dbus-user-session would bring systemd's PAM module): the tests start their own bus.
have dbus-daemon || bare+=(dbus)
if [ ${#missing[@]} -gt 0 ] || [ ${#bare[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "$(basename "$0"): installing ${missing[*]} ${bare[*]} with apt-get" >&2
  $sudo apt-get update -qq
  updated=1
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ${#bare[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${bare[@]}" >/dev/null
  fi
fi

# The board page's test (tests/test_classboard_page.py) drives a real headless Chromium over
# the DevTools protocol (no chromedriver). Debian has a real `chromium` package (~120 MB to
# fetch, ~440 MB installed, ~20 s from a near mirror). Ubuntu has none: its chromium-browser
# is a shim that installs the snap, and snaps do not run in a container (no snapd); there we
# install nothing and say so (point CHROMIUM at a Chrome/Chromium binary instead).
real_chromium() {
  local b
  for b in "${CHROMIUM:-}" chromium chromium-browser google-chrome; do
    [ -n "$b" ] || continue
    b=$(command -v "$b" 2>/dev/null) || continue
    case "$(readlink -f "$b")" in /snap/*) continue ;; esac
    grep -qs snap "$b" && continue  # Ubuntu's shim script
    return 0
  done
  return 1
}
if ! real_chromium; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  [ -n "${updated:-}" ] || $sudo apt-get update -qq
  # Read whole before grep: under pipefail, `apt-cache show | grep -q` fails whenever grep
  # stops early and apt-cache dies of SIGPIPE (it did here: chromium was then not installed).
  info=$(apt-cache show chromium 2>/dev/null || true)
  if grep -q '^Package: chromium$' <<<"$info" && ! grep -qi snap <<<"$info"; then
    echo "$(basename "$0"): installing chromium with apt-get (the board page's test)" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      chromium >/dev/null
  else
    echo "$(basename "$0"): no real chromium package here (Ubuntu's is a snap, which does not" \
      "run in a container): tests/test_classboard_page.py will fail until CHROMIUM names a" \
      "Chrome or Chromium binary (e.g. Google's google-chrome-stable .deb), or run the suite" \
      "on Debian" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# constraints.txt: the versions the suite was last run with (pip freeze); pyproject.toml
# only bounds them.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,hid,osdp,ble]'
# python-dbusmock (pure Python) without its dbus-python requirement: the harness runs it with
# the system python3 and Debian's python3-dbus (tests/harness/bluez.py).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt python-dbusmock
# The agent and its test extras are now in .venv: the demo (examples/demo.sh, also run by
# tests/test_demo.py) need not pip-install them again, which would race the other pytest worker.
touch .venv/.demo-installed
