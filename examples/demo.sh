#!/usr/bin/env bash
# The demo: two simulated devices, a private local broker, and the events as the district
# sees them.
#
#   ./examples/demo.sh                   runs until Ctrl-C
#   DEMO_SECONDS=15 ./examples/demo.sh   stops by itself 15 s after the agent started (CI
#                                        smoke test): exit 0 if telemetry, an alarm and the
#                                        command reply were all seen, 1 if not
#
# On a fresh Debian/Ubuntu machine it first installs what is missing (apt-get, through sudo
# when not root), creates .venv in the repo and installs the agent into it. Then it starts, on
# 127.0.0.1 only and never the system's mosquitto service:
#   - a private mosquitto on a free port (config and log in demo-run/),
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

if [[ -f $RUN/agent.pid ]] && kill -0 "$(cat "$RUN/agent.pid")" 2>/dev/null; then
  die "a demo is already running (agent pid $(cat "$RUN/agent.pid")); stop it with Ctrl-C first"
fi
rm -rf -- "$RUN"
mkdir -p -- "$RUN"

MOSQ_PID="" AGENT_PID="" TAIL_PID="" VIEW_PID=""

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
  # "offline" status, which tail still shows. The broker last.
  stop_pid "$AGENT_PID" 15
  [[ -z $VIEW_PID ]] || sleep 0.5
  stop_pid "$TAIL_PID" 2
  stop_pid "$VIEW_PID" 2
  stop_pid "$MOSQ_PID" 5
  rm -f -- "$RUN/agent.pid" "$RUN/mosquitto.pid"
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

CONFIG=$RUN/agent.toml
sed "s|mqtt://127.0.0.1:PORT|mqtt://127.0.0.1:$PORT|" "$ROOT/examples/demo.toml" >"$CONFIG"
"$AGENT" check --config "$CONFIG"

# What the script needs from the config, read by the agent's own loader.
read -r BASE FENCE ALARM_EVERY < <("$BIN/python" - "$CONFIG" <<'EOF'
import sys
from agent.config import load_config
c = load_config(sys.argv[1])
fence = next(d for d in c.devices if d.profile.category == "fence")
every = getattr(fence.options, "alarm_every", None) or 0
print(f"{c.agent.topic_prefix}/{c.agent.school}/{c.agent.gateway}", fence.id, every)
EOF
)

# ---- 4. tail, agent, status --------------------------------------------------------------

# campus-agent tail subscribes before the agent starts and writes to a file, so that the
# first events (a fence alarm already active at start-up, the devices coming online) are
# not lost while the status is printed; the file is shown in this terminal further down.
"$AGENT" tail --config "$CONFIG" >"$RUN/tail.log" 2>&1 &
TAIL_PID=$!
for ((i = 0; ; i++)); do
  grep -q '^tail: listening' "$RUN/tail.log" && break
  kill -0 "$TAIL_PID" 2>/dev/null || die "campus-agent tail stopped: $(cat "$RUN/tail.log")"
  ((i < 150)) || die "campus-agent tail did not subscribe in 15 s: $(cat "$RUN/tail.log")"
  sleep 0.1
done

if [[ -n $DEMO_SECONDS ]] && [[ $ALARM_EVERY != 0 ]]; then
  # The synthetic fence's alarm follows the wall clock: active during every other
  # `alarm_every` period. A short run starts the agent at a moment when the alarm will be
  # raised within the run (worst case for the agent's start-up: 4 s).
  wait_s=$("$BIN/python" - "$ALARM_EVERY" "$DEMO_SECONDS" <<'EOF'
import sys, time
every, seconds = float(sys.argv[1]), float(sys.argv[2])
def first_alarm(start, startup):
    first = start + startup
    phase = first % (2 * every)
    return first if phase >= every else first + every - phase
now = time.time()
for tenth in range(int(20 * every) + 1):
    start = now + tenth / 10
    if all(first_alarm(start, s / 10) - start <= seconds - 2 for s in range(3, 41)):
        print(f"{tenth / 10:.1f}")
        break
else:
    print(0)
EOF
  )
  if [[ $wait_s != 0 && $wait_s != 0.0 ]]; then
    say "waiting ${wait_s}s so that the fence alarm (it toggles every ${ALARM_EVERY%.0}s) is raised within the ${DEMO_SECONDS} s run"
    sleep "$wait_s"
  fi
fi

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
echo "    kill -HUP $AGENT_PID    # reload demo-run/agent.toml"
if [[ -n $DEMO_SECONDS ]]; then
  say "events as the district sees them (campus-agent tail); stopping after ${DEMO_SECONDS} s"
else
  say "events as the district sees them (campus-agent tail); Ctrl-C stops the demo"
fi
echo
tail -n +1 -f "$RUN/tail.log" &
VIEW_PID=$!

# ---- 5. one command from "the district", then wait ---------------------------------------

send_command() {
  local id payload
  id="demo-$(date -u +%Y%m%dT%H%M%S)-$$"
  payload=$(printf '{"id": "%s", "action": "arm", "ts": "%s"}' "$id" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
  say "the district sends fence.arm: mosquitto_pub -t '$BASE/cmd/$FENCE' -m '$payload'"
  mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -t "$BASE/cmd/$FENCE" -m "$payload" ||
    say "mosquitto_pub failed (exit $?)"
}

sent=0
while :; do
  elapsed=$((SECONDS - STARTED))
  kill -0 "$AGENT_PID" 2>/dev/null || die "the agent stopped; its log: $(tail -n 20 "$RUN/agent.log")"
  kill -0 "$TAIL_PID" 2>/dev/null || die "campus-agent tail stopped: $(tail -n 5 "$RUN/tail.log")"
  if ((!sent && elapsed >= 5)); then
    send_command
    sent=1
  fi
  if [[ -n $DEMO_SECONDS ]] && ((elapsed >= DEMO_SECONDS)); then
    break
  fi
  sleep 0.5
done

sleep 0.5 # let the viewer print the last lines
cleanup
count() { grep -c "^$1 " "$RUN/tail.log" || true; }
telemetry=$(count telemetry) alarm=$(count alarm) reply=$(count reply) audit=$(count audit)
echo
say "stopped after ${DEMO_SECONDS} s; seen: $telemetry telemetry, $alarm alarm, $reply command reply, $audit audit events"
missing=()
((telemetry > 0)) || missing+=(telemetry)
((alarm > 0)) || missing+=(alarm)
((reply > 0)) || missing+=("command reply")
if ((${#missing[@]})); then
  die "expected but not seen: ${missing[*]} (see demo-run/tail.log and demo-run/agent.log)"
fi
exit 0
