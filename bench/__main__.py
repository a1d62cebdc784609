"""`python -m bench [name ...] [options]`: run the named benchmarks (all when none is named).

Options after the names go to every benchmark run, e.g. `python -m bench throughput --quick`.
A benchmark is a module of this package with `main(argv) -> int`; add it to BENCHMARKS.
"""

from __future__ import annotations

import importlib
import sys
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
        "bridge",
        "bench.bridge",
        "firmware bridge: bytes per DATA frame, and a firmware image's time on the wire",
    ),
]


def usage() -> str:
    lines = ["usage: python -m bench [name ...] [options]  (options go to each benchmark)", ""]
    lines += [f"  {b.name:<12} {b.about}" for b in BENCHMARKS]
    lines += ["", "`python -m bench NAME --help` lists a benchmark's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks in order; the exit code is the first failure's, else 0."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "--list"):
        print(usage())
        return 0
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
    for b in chosen:
        if len(chosen) > 1:
            print(f"== {b.name} ==", flush=True)
        code = int(importlib.import_module(b.module).main(list(args)))
        status = status or code
    return status


if __name__ == "__main__":
    raise SystemExit(main())
