#!/usr/bin/env bash
# The demo: three Modbus devices and a gate card reader (simulated), a private local broker,
# and the events as the district sees them.
#
#   ./examples/demo.sh                   runs until Ctrl-C
#   DEMO_SECONDS=15 ./examples/demo.sh   stops by itself 15 s after the agent started (CI
#                                        smoke test): exit 0 if telemetry of the classroom
#                                        sensor and of the meter (with units and the values
#                                        the simulator serves), fence zone 3 raised and
#                                        cleared, an "ok" command reply, a hashed card
#                                        read at the gate, a board swipe and the board's
#                                        "displayed" receipt of the notice were all seen,
#                                        1 if not
#
# On a fresh Debian/Ubuntu machine it first installs what is missing (apt-get, through sudo
# when not root), creates .venv in the repo and installs the agent into it. Then it starts, on
# 127.0.0.1 only and never the system's mosquitto service:
#   - a private mosquitto on a free port (config and log in demo-run/),
#   - one Modbus TCP simulator (python -m drivers.modbus.simulator) on a free port, serving
#     unit 1, an XY-MD02 classroom sensor; unit 2, an Eastron SDM120 energy meter; and unit
#     3, a pulse fence host, each answering with its profile's test vector
#     (tests/vectors/*.toml) and moving to the vector's next case every 5, 7 and 4 s, so the
#     readings change and fence zone 3 is raised and cleared (log and stats in demo-run/),
#   - a simulated class board (python -m drivers.classboard.simulator) talking to the agent's
#     board hub on a free loopback port: heartbeats and three attendance swipes; the script
#     posts a district notice to it a few seconds in, and its receipt comes back,
#   - a pty pair (socat) and a simulated RDM6300 gate reader writing a card every few seconds
#     (python -m drivers.card_serial.simulator), and a random card key (demo-run/card.key),
#   - where D-Bus is (dbus-daemon, python3-dbus, the ble extra): a mocked BlueZ on a private
#     bus with a BTHome v2 sensor advertising every 2 s (tests/harness/bluez.py), scanned by
#     the agent's ble driver (log in demo-run/ble-sim.log),
#   - `campus-agent run` with examples/demo.toml (log in demo-run/agent.log),
#   - `campus-agent tail`, the district's view, shown in this terminal,
# prints `campus-agent status`, sends one fence.arm command a few seconds in, and on Ctrl-C
# (or after DEMO_SECONDS) stops exactly the processes it started, by PID.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
RUN=$ROOT/demo-run
VENV=$ROOT/.venv
BIN=$VENV/bin
PYTHON=${PYTHON:-python3}
DEMO_SECONDS=${DEMO_SECONDS:-}

if [[ -t 1 ]]; then bold=$'\033[1m' red=$'\033[1;31m' plain=$'\033[0m'; else bold="" red="" plain=""; fi
say() { printf '%s\n' "${bold}demo:${plain} $*"; }
die() { printf '%s\n' "${red}demo: $*${plain}" >&2; exit 1; }

case ${1:-} in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1' (try --help)" ;;
esac
if [[ -n $DEMO_SECONDS && ! $DEMO_SECONDS =~ ^[1-9][0-9]*$ ]]; then
  die "DEMO_SECONDS must be a whole number of seconds, e.g. DEMO_SECONDS=15"
fi

# ---- 1. system packages (only what is missing) -------------------------------------------

find_mosquitto() {
  command -v mosquitto 2>/dev/null || { [[ -x /usr/sbin/mosquitto ]] && echo /usr/sbin/mosquitto; }
}
need=()
command -v "$PYTHON" >/dev/null || need+=(python3)
if [[ ! -x $BIN/python ]] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [[ $PYTHON == python3 ]]; then need+=(python3-venv); else need+=("${PYTHON##*/}-venv"); fi
fi
find_mosquitto >/dev/null || need+=(mosquitto)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v socat >/dev/null || need+=(socat)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "missing ${need[*]}; install them as root: apt-get install ${need[*]}"
    sudo=(sudo)
  fi
  say "installing system packages: ${need[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
MOSQUITTO=$(find_mosquitto) || die "mosquitto is still not installed"

# ---- 2. the virtualenv with the agent ----------------------------------------------------

if [[ ! -x $BIN/python ]]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "the agent needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1)." \
      "Install a newer one (e.g. apt-get install python3.11 python3.11-venv) and run" \
      "PYTHON=python3.11 $0"
  say "creating .venv"
  "$PYTHON" -m venv "$VENV"
fi
stamp=$VENV/.demo-installed
if [[ ! -x $BIN/campus-agent || ! -e $stamp || $ROOT/pyproject.toml -nt $stamp ]]; then
  say "installing the agent into .venv (pip install -e '.[test]')"
  (cd "$ROOT" && "$BIN/python" -m pip install --quiet -e '.[test]')
  touch "$stamp"
fi
AGENT=$BIN/campus-agent

# ---- 3. the run folder, the broker, the config -------------------------------------------

for f in agent simulator; do
  if [[ -f $RUN/$f.pid ]] && kill -0 "$(cat "$RUN/$f.pid")" 2>/dev/null; then
    die "a demo is already running ($f pid $(cat "$RUN/$f.pid")); stop it with Ctrl-C first"
  fi
done
rm -rf -- "$RUN"
mkdir -p -- "$RUN"

MOSQ_PID="" SIM_PID="" AGENT_PID="" TAIL_PID="" VIEW_PID="" PTY_PID="" GATE_PID="" BOARD_PID="" BLE_PID=""

stop_pid() { # pid seconds: SIGTERM, wait up to `seconds`, then SIGKILL; always reap
  local pid=$1 i
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  trap - EXIT INT TERM
  # The agent first, while the broker is up: it drains and publishes its retained
  # "offline" status, which tail still shows. Then the simulated devices; the broker last.
  stop_pid "$AGENT_PID" 15
  stop_pid "$SIM_PID" 5
  stop_pid "$BLE_PID" 5
  stop_pid "$GATE_PID" 2
  stop_pid "$BOARD_PID" 2
  stop_pid "$PTY_PID" 2
  [[ -z $VIEW_PID ]] || sleep 0.5
  stop_pid "$TAIL_PID" 2
  stop_pid "$VIEW_PID" 2
  stop_pid "$MOSQ_PID" 5
  rm -f -- "$RUN/agent.pid" "$RUN/simulator.pid" "$RUN/mosquitto.pid"
}
trap cleanup EXIT
trap 'echo; say "stopping"; exit 130' INT
trap 'exit 143' TERM

PORT=$("$BIN/python" -c \
  'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$RUN/mosquitto.conf" <<EOF
# Written by examples/demo.sh: a private broker for the demo, reachable from this machine only.
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
EOF
"$MOSQUITTO" -c "$RUN/mosquitto.conf" >"$RUN/mosquitto.log" 2>&1 &
MOSQ_PID=$!
echo "$MOSQ_PID" >"$RUN/mosquitto.pid"
for ((i = 0; ; i++)); do
  kill -0 "$MOSQ_PID" 2>/dev/null || die "mosquitto did not start: $(tail -n 5 "$RUN/mosquitto.log")"
  (: <>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  ((i < 100)) || die "mosquitto does not listen on 127.0.0.1:$PORT after 10 s (see $RUN/mosquitto.log)"
  sleep 0.1
done
say "mosquitto listening on 127.0.0.1:$PORT (pid $MOSQ_PID)"

# The simulated devices: one Modbus TCP server, three unit ids (the `address` of each device
# in examples/demo.toml), each filled from its profile's test vector and moving to the next
# case every few seconds. Port 0: the kernel picks a free port, which the simulator writes
# into its stats file ("listen") once it serves.
VECTORS=$ROOT/tests/vectors
SIM_STATS=$RUN/simulator.json
"$BIN/python" -m drivers.modbus.simulator --tcp 127.0.0.1:0 \
  --device "1=$VECTORS/xy-md02.toml:every=5" \
  --device "2=$VECTORS/eastron-sdm120.toml:every=7" \
  --device "3=$VECTORS/generic-pulse-fence.toml:every=4" \
  --stats "$SIM_STATS" >"$RUN/simulator.log" 2>&1 &
SIM_PID=$!
echo "$SIM_PID" >"$RUN/simulator.pid"
for ((i = 0; ; i++)); do
  kill -0 "$SIM_PID" 2>/dev/null || die "the Modbus simulator did not start: $(tail -n 5 "$RUN/simulator.log")"
  SIM_PORT=$("$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["listen"]["port"])' \
    "$SIM_STATS" 2>/dev/null) && break
  ((i < 100)) || die "the Modbus simulator does not listen after 10 s (see $RUN/simulator.log)"
  sleep 0.1
done
say "Modbus simulator on 127.0.0.1:$SIM_PORT (pid $SIM_PID): unit 1 classroom sensor, unit 2 energy meter, unit 3 fence"

# The gate reader: a pty pair, the agent on one end (demo-run/gate-reader), a simulated
# RDM6300 on the other writing one of three demo cards every 4 s. The cards are test
# numbers; they are never shown: tail shows the keyed hash the district receives.
socat pty,raw,echo=0,link="$RUN/gate-reader" pty,raw,echo=0,link="$RUN/gate-sim" \
  >"$RUN/socat.log" 2>&1 &
PTY_PID=$!
for ((i = 0; ; i++)); do
  [[ -e $RUN/gate-reader && -e $RUN/gate-sim ]] && break
  kill -0 "$PTY_PID" 2>/dev/null || die "socat did not start: $(tail -n 5 "$RUN/socat.log")"
  ((i < 100)) || die "socat made no pty pair in 10 s (see $RUN/socat.log)"
  sleep 0.1
done
(umask 077 && head -c 32 /dev/urandom | base64 >"$RUN/card.key")
"$BIN/python" -m drivers.card_serial.simulator --port "$RUN/gate-sim" --profile rdm6300 \
  --card 0x0A0012D687 --card 0x0A00BC614E --card 0x1A002F0A31 --count 10000 --rate 0.25 \
  >"$RUN/gate-sim.log" 2>&1 &
GATE_PID=$!
say "gate card reader on a pty (simulated RDM6300, pid $GATE_PID): a card every 4 s"

# The class board's token, and a free port for the board hub.
mkdir -p "$RUN/tokens"
(umask 077 && head -c 24 /dev/urandom | base64 >"$RUN/tokens/c3-2-board.token")
HUB_PORT=$("$BIN/python" -c \
  'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

CONFIG=$RUN/agent.toml
sed -e "s|mqtt://127.0.0.1:PORT|mqtt://127.0.0.1:$PORT|" \
  -e "s|^listen = \"127.0.0.1:8480\"|listen = \"127.0.0.1:$HUB_PORT\"|" \
  -e "s|^port = 1502 |port = $SIM_PORT |" "$ROOT/examples/demo.toml" >"$CONFIG"
grep -q "127.0.0.1:$HUB_PORT" "$CONFIG" || die "examples/demo.toml has no 'listen = \"127.0.0.1:8480\"' line"
grep -q "^port = $SIM_PORT " "$CONFIG" || die "examples/demo.toml has no 'port = 1502' line for the simulator"

# A mocked BLE sensor (drivers/ble), where D-Bus is: python-dbusmock's BlueZ on a private bus
# and a BTHome v2 sensor advertising through it every 2 s (tests/harness/bluez.py); the agent
# scans it with the real bleak. Left out where dbus-daemon, python3-dbus or the ble extra
# is missing.
if command -v dbus-daemon >/dev/null 2>&1 && /usr/bin/python3 -c 'import dbus' 2>/dev/null \
  && "$BIN/python" -c 'import bleak, bthome_ble, importlib.util as u; assert u.find_spec("dbusmock")' 2>/dev/null; then
  "$BIN/python" -m tests.harness.bluez "$RUN/bluez" A4:C1:38:00:00:12 >"$RUN/ble-sim.log" 2>&1 &
  BLE_PID=$!
  for ((i = 0; ; i++)); do
    [[ -s $RUN/bluez/address ]] && break
    kill -0 "$BLE_PID" 2>/dev/null || die "the mocked BlueZ did not start: $(tail -n 5 "$RUN/ble-sim.log")"
    ((i < 200)) || die "the mocked BlueZ did not start in 20 s (see $RUN/ble-sim.log)"
    sleep 0.1
  done
  DBUS_SYSTEM_BUS_ADDRESS=$(cat "$RUN/bluez/address")
  export DBUS_SYSTEM_BUS_ADDRESS
  cat >>"$CONFIG" <<'EOF'

[[buses]]
id = "ble-dorm"
driver = "ble"
adapter = "hci0"

[[devices]]
id = "ble-dorm-12"
profile = "bthome-sensor"
bus = "ble-dorm"
address = "A4:C1:38:00:00:12"
EOF
  say "BLE sensor (BTHome v2 through a mocked BlueZ on a private D-Bus, pid $BLE_PID): every 2 s"
else
  say "no D-Bus here (dbus-daemon, python3-dbus, the ble extra): the BLE sensor is left out"
fi
"$AGENT" check --config "$CONFIG"

# What the script needs from the config, read by the agent's own loader.
read -r BASE FENCE < <("$BIN/python" - "$CONFIG" <<'EOF'
import sys
from agent.config import load_config
c = load_config(sys.argv[1])
fence = next(d for d in c.devices if d.profile.category == "fence")
print(f"{c.agent.topic_prefix}/{c.agent.school}/{c.agent.gateway}", fence.id)
EOF
)

# ---- 4. tail, agent, status --------------------------------------------------------------

# campus-agent tail subscribes before the agent starts and writes to a file, so that the
# first events (the first reading of every device, the devices coming online) are
# not lost while the status is printed; the file is shown in this terminal further down.
"$AGENT" tail --config "$CONFIG" >"$RUN/tail.log" 2>&1 &
TAIL_PID=$!
for ((i = 0; ; i++)); do
  grep -q '^tail: listening' "$RUN/tail.log" && break
  kill -0 "$TAIL_PID" 2>/dev/null || die "campus-agent tail stopped: $(cat "$RUN/tail.log")"
  ((i < 150)) || die "campus-agent tail did not subscribe in 15 s: $(cat "$RUN/tail.log")"
  sleep 0.1
done

"$AGENT" run --config "$CONFIG" >"$RUN/agent.log" 2>&1 &
AGENT_PID=$!
echo "$AGENT_PID" >"$RUN/agent.pid"
STARTED=$SECONDS
say "agent running (pid $AGENT_PID, log demo-run/agent.log); waiting for it to connect"
for ((i = 0; ; i++)); do
  kill -0 "$AGENT_PID" 2>/dev/null || die "the agent stopped; its log: $(tail -n 20 "$RUN/agent.log")"
  status=$("$AGENT" status --config "$CONFIG" 2>&1) && [[ $status == *"broker:   connected"* ]] && break
  ((i < 30)) || { echo "$status"; die "the agent did not connect in 15 s (see demo-run/agent.log)"; }
  sleep 0.5
done
echo
echo "\$ campus-agent status --config demo-run/agent.toml"
echo "$status"
echo
say "in another terminal, try:"
echo "    .venv/bin/campus-agent status --config demo-run/agent.toml"
echo "    mosquitto_sub -h 127.0.0.1 -p $PORT -v -t '$BASE/#'"
echo "    cat demo-run/simulator.json    # what the simulated devices were asked"
echo "    kill -HUP $AGENT_PID    # reload demo-run/agent.toml"
if [[ -n $DEMO_SECONDS ]]; then
  say "events as the district sees them (campus-agent tail); stopping after ${DEMO_SECONDS} s"
else
  say "events as the district sees them (campus-agent tail); Ctrl-C stops the demo"
fi
echo
tail -n +1 -f "$RUN/tail.log" &
VIEW_PID=$!

# The class board of room 302: heartbeats every 5 s, three swipes over 6 s, and it answers
# every notice it gets with a "displayed" receipt.
"$BIN/python" -m drivers.classboard.simulator --url "http://127.0.0.1:$HUB_PORT" \
  --names c3-2-board --token-dir "$RUN/tokens" --interval 5 --swipes 3 --spread 6 \
  --stats "$RUN/board.json" >"$RUN/board.log" 2>&1 &
BOARD_PID=$!

# ---- 5. one command from "the district", then wait ---------------------------------------

send_command() {
  local id payload
  id="demo-$(date -u +%Y%m%dT%H%M%S)-$$"
  payload=$(printf '{"id": "%s", "action": "arm", "ts": "%s"}' "$id" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
  say "the district sends fence.arm: mosquitto_pub -t '$BASE/cmd/$FENCE' -m '$payload'"
  mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -t "$BASE/cmd/$FENCE" -m "$payload" ||
    say "mosquitto_pub failed (exit $?)"
}

send_notice() {
  local id payload
  id="demo-notice-$(date -u +%Y%m%dT%H%M%S)-$$"
  payload=$(printf '{"id": "%s", "action": "notice_post", "ts": "%s", "args": {"id": "fire-drill", "title": "Fire drill", "body": "Fire drill at 10:00: leave by the east stairs.", "level": "urgent", "targets": "class:3-2"}}' \
    "$id" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
  say "the district posts a notice to class 3-2: mosquitto_pub -t '$BASE/cmd/boards-hub' -m '$payload'"
  mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -t "$BASE/cmd/boards-hub" -m "$payload" ||
    say "mosquitto_pub failed (exit $?)"
}

sent=0
noticed=0
while :; do
  elapsed=$((SECONDS - STARTED))
  kill -0 "$AGENT_PID" 2>/dev/null || die "the agent stopped; its log: $(tail -n 20 "$RUN/agent.log")"
  kill -0 "$TAIL_PID" 2>/dev/null || die "campus-agent tail stopped: $(tail -n 5 "$RUN/tail.log")"
  kill -0 "$SIM_PID" 2>/dev/null || die "the Modbus simulator stopped: $(tail -n 5 "$RUN/simulator.log")"
  kill -0 "$GATE_PID" 2>/dev/null || die "the gate reader simulator stopped: $(tail -n 5 "$RUN/gate-sim.log")"
  if ((!sent && elapsed >= 5)); then
    send_command
    sent=1
  fi
  if ((!noticed && elapsed >= 7)); then
    send_notice
    noticed=1
  fi
  if [[ -n $DEMO_SECONDS ]] && ((elapsed >= DEMO_SECONDS)); then
    break
  fi
  sleep 0.5
done

sleep 0.5 # let the viewer print the last lines
cleanup
count() { grep -c -E "$1" "$RUN/tail.log" || true; }
env=$(count '^telemetry +env/')
energy=$(count '^telemetry +energy/')
raised=$(count '^alarm .* zone_3 ACTIVE')
cleared=$(count '^alarm .* zone_3 CLEARED')
reply=$(count '^reply .* ok:')
card=$(count '^access +card/.*card=[0-9a-f]{8}')
swipe=$(count '^access +classboard/c3-2-board.*card=[0-9a-f]{8}')
receipt=$(count '^state +classboard/c3-2-board.*notice_status=displayed')
ble=$(count '^telemetry +env/ble-dorm-12')
env=$((env - ble)) # the classroom sensor's, not the BLE sensor's
echo
say "stopped after ${DEMO_SECONDS} s; seen: $env env and $energy energy telemetry, zone 3 raised $raised and cleared $cleared times, $reply ok command reply, $card hashed card reads, $swipe board swipes, $receipt notice receipts, $ble BLE sensor readings"
missing=()
((env > 0)) || missing+=("env telemetry")
((energy > 0)) || missing+=("energy telemetry")
((raised > 0)) || missing+=("zone_3 ACTIVE")
((cleared > 0)) || missing+=("zone_3 CLEARED")
((reply > 0)) || missing+=("an ok command reply")
((card > 0)) || missing+=("a hashed card read at the gate")
((swipe > 0)) || missing+=("a class board swipe")
((receipt > 0)) || missing+=("the board's displayed receipt of the notice")
[[ -z $BLE_PID ]] || ((ble > 0)) || missing+=("the BLE sensor's telemetry")
if ((${#missing[@]})); then
  die "expected but not seen: ${missing[*]} (see demo-run/tail.log and demo-run/agent.log)"
fi

# Every telemetry reading shown must be one of the readings the simulator served (a case of
# the profile's test vector), with the profile's units; the meter must show its voltage in V
# and its energy in kWh.
"$BIN/python" - "$CONFIG" "$VECTORS" "$RUN/tail.log" <<'EOF' || die "telemetry does not match what the simulated devices served (see demo-run/tail.log)"
import math, re, sys, tomllib
from pathlib import Path
from agent.config import load_config

config, vectors, tail = load_config(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
number = re.compile(r"^(\w+)=(-?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?)(\S*)$")
devices = {f"{d.profile.category}/{d.id}": d for d in config.devices if d.profile.driver == "modbus"}
bad, checked, meter_units = [], 0, False
for line in tail.read_text().splitlines():
    words = line.split()
    if len(words) < 5 or words[0] != "telemetry" or words[1] not in devices:
        continue
    if any(w.startswith("quality=") for w in words):
        continue  # a failed read: no values to compare
    profile = devices[words[1]].profile
    if profile.driver == "ble":
        continue  # the mocked BLE sensor (tests/harness/bluez.py) serves no vector
    units = {p.name: p.unit or "" for p in profile.points if p.kind == "telemetry"}
    cases = tomllib.loads((vectors / f"{profile.id}.toml").read_text())["case"]
    seen, shown = {}, {}
    for word in words[4:]:
        m = number.match(word)
        if m is None or units.get(m[1]) != m[3]:
            name = m[1] if m else word.partition("=")[0]
            bad.append(f"{line}\n    {word!r}: expected a number with unit {units.get(name)!r}")
            break
        seen[m[1]], shown[m[1]] = float(m[2]), m[3]
    else:
        if not any(
            seen.keys() == units.keys()
            and all(math.isclose(v, case["expect"][k], rel_tol=1e-6, abs_tol=1e-9) for k, v in seen.items())
            for case in cases
        ):
            bad.append(f"{line}\n    matches no case of tests/vectors/{profile.id}.toml")
        checked += 1
        if profile.category == "energy" and shown.get("voltage") == "V" and "kWh" in shown.values():
            meter_units = True
for b in bad:
    print(f"demo: {b}", file=sys.stderr)
if not meter_units:
    print("demo: no energy meter reading with voltage in V and energy in kWh", file=sys.stderr)
if bad or not meter_units:
    sys.exit(1)
print(f"demo: {checked} telemetry readings checked: the values and units the simulator served")
EOF
exit 0
