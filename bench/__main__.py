"""`python -m bench [name ...] [options]`: run the named benchmarks (all when none is named).

Options after the names go to every benchmark run, e.g. `python -m bench throughput --quick`.
A benchmark is a module of this package with `main(argv) -> int`; add it to BENCHMARKS.
All of them take --quick; one that rejects an option (argparse exits) fails alone, the
others still run.

The last one, `peer` (the ThingsBoard IoT Gateway on the same Modbus load), takes ~20-25
minutes and creates its own venv at bench/results/peer-venv on first use (pip, PyPI); skip
it by naming the others:
`python -m bench throughput modbus drain latency bridge flood storm classboard`.

When more than one benchmark ran, one combined table follows (bench/summary.py: the headline
figures against the goals) and is written to results/summary.json (summary-quick.json after
--quick). `python -m bench --summary [--quick]` rebuilds it from the latest result files
without measuring anything.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: the module holding its main(argv) and one line about it."""

    name: str
    module: str
    about: str


BENCHMARKS: list[Benchmark] = [
    Benchmark(
        "throughput",
        "bench.throughput",
        "agent PUBACKs/s and committed/s vs raw paho QoS 1 on the same broker",
    ),
    Benchmark(
        "modbus",
        "bench.modbus",
        "requests saved by block reads; points polled/s, CPU, RSS at 200 Modbus TCP devices",
    ),
    Benchmark(
        "drain",
        "bench.drain",
        "500 000 events stored while the broker is down: drain rate vs raw paho, alarm delay",
    ),
    Benchmark(
        "latency",
        "bench.latency",
        "sample -> PUBACK p50/p99 at 1000/s, CPU at 100 and 1000/s, idle CPU, start-up time",
    ),
    Benchmark(
        "bridge",
        "bench.bridge",
        "firmware bridge: bytes per DATA frame, and a firmware image's time on the wire",
    ),
    Benchmark(
        "flood",
        "bench.flood",
        "100 000 commands flooding a gateway: RSS, alarm latency, another bus's period",
    ),
    Benchmark(
        "storm",
        "bench.storm",
        "one device's alarm storm: the other bus's latency and period, alarms sent, CPU",
    ),
    Benchmark(
        "classboard",
        "bench.classboard",
        "60 class boards: a morning swipe burst (CPU, RSS), an emergency notice -> every receipt",
    ),
    Benchmark(
        "ble",
        "bench.ble",
        "BLE driver: agent CPU at 200 advertising devices (bleak over a mocked BlueZ)",
    ),
    Benchmark(
        "school",
        "bench.school",
        "a whole big school in one agent capped at 25 % of a core: sustained rate, p99s, lost",
    ),
    Benchmark(
        "peer",
        "bench.peer",
        "vs ThingsBoard IoT Gateway 3.8.x, 100/200 Modbus devices: CPU, outage (~20-25 min)",
    ),
]


def usage() -> str:
    lines = ["usage: python -m bench [name ...] [options]  (options go to each benchmark)", ""]
    lines += [f"  {b.name:<12} {b.about}" for b in BENCHMARKS]
    lines += [
        "",
        "`python -m bench NAME --help` lists a benchmark's options.",
        "`python -m bench --summary [--quick]` prints the combined table of the latest results.",
        "`peer` pip-installs thingsboard-gateway 3.8.x into bench/results/peer-venv on first use;",
        "without it: `python -m bench throughput modbus drain latency bridge flood storm "
        "classboard`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks in order; the exit code is the first failure's, else 0."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "--list"):
        print(usage())
        return 0
    summary_only = "--summary" in args
    args = [a for a in args if a != "--summary"]
    known = {b.name: b for b in BENCHMARKS}
    names: list[str] = []
    while args and not args[0].startswith("-"):
        name = args.pop(0)
        if name not in known:
            print(f"bench: no benchmark {name!r}\n\n{usage()}", file=sys.stderr)
            return 2
        names.append(name)
    chosen = [known[n] for n in names] if names else BENCHMARKS
    status = 0
    since = time.time()
    for b in [] if summary_only else chosen:
        if len(chosen) > 1:
            print(f"== {b.name} ==", flush=True)
        try:
            code = int(importlib.import_module(b.module).main(list(args)))
        except SystemExit as e:  # argparse: an option this benchmark does not take, --help
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        except Exception:  # one failed benchmark must not lose the others
            traceback.print_exc()
            code = 1
        status = status or code
    if summary_only or len(chosen) > 1:
        status = combined_table(args, since=None if summary_only else since) or status
    return status


def combined_table(args: list[str], since: float | None) -> int:
    """Print the combined table and write results/summary.json; 0 (or 1 if it failed)."""
    from bench import summary
    from bench.report import result_suffix

    suffix = result_suffix("--quick" in args, "--profile" in args)
    try:
        out, doc = summary.write(suffix, since, argv=sys.argv[1:])
    except Exception:  # the figures are already printed and written
        traceback.print_exc()
        return 1
    m = doc["machine"]
    print(f"\n== summary{' (quick: smoke sizes, not figures to quote)' if suffix else ''} ==")
    print(
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB; {m['os']}, kernel {m['kernel']}; "
        f"Python {m['python']}, mosquitto {m['mosquitto']}, SQLite {m['sqlite']}"
    )
    print(summary.table(doc["rows"]))
    if any(not r.get("fresh", True) for r in doc["rows"]):
        print("* from an earlier invocation (see `sources` in the JSON)")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
