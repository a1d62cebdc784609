#!/usr/bin/env bash
# Every benchmark on a fresh Debian/Ubuntu machine, then the combined table
# (docs/performance.md). Installs what it needs (tests/setup.sh), as root for the packet
# capture of the latency benchmark. Arguments go to `python -m bench`, e.g.
#   ./bench/run.sh                     everything (~45 min, the peer comparison included)
#   ./bench/run.sh throughput latency  only those
#   ./bench/run.sh --quick             smoke sizes (~5 min)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
exec .venv/bin/python -m bench "$@"
