"""What the benchmarks' command lines share: their options, and the flow of their main().

`Parser` is argparse with the options several benchmarks take, each written once (`--runs`,
`--seconds`, `--warmup`, the MQTT ones, the Modbus load's, and `--quick`/`--profile`/`--out`
last); `Parser.parse` applies the `--quick` sizes and `params` fills a benchmark's `Params`
from the parsed options. `main` is what every benchmark's main() does with its options:
measure (the benchmark prints its progress and hands back its table and document), print
the table, write the result file through bench.report (`results/<name><suffix>.json`
unless `--out`), say where.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bench.report import result_file, result_suffix, timestamp, write_json


class Options(Protocol):
    """What main() needs of a benchmark's Params (a dataclass)."""

    quick: bool
    out: Path | None


P = TypeVar("P", bound=Options)
A = TypeVar("A")
B = TypeVar("B")


class Parser(argparse.ArgumentParser):
    """`python -m bench <name>`'s options; the shared ones by one method each."""

    def __init__(
        self, name: str, description: str, *, runs: str | None = None, prog: str | None = None
    ) -> None:
        """`runs`: what one of the `--runs` (3) is; None: no --runs (or the benchmark's own)."""
        super().__init__(prog=prog or f"python -m bench {name}", description=description)
        self.name = name
        if runs is not None:
            self.add_argument("--runs", type=int, default=3, help=f"runs ({runs}); 3")

    def seconds(self, default: float, what: str = "agent measured window") -> None:
        self.add_argument("--seconds", type=float, default=default, help=f"{what}; {default:g}")

    def warmup(self, default: float, what: str) -> None:
        self.add_argument("--warmup", type=float, default=default, help=f"{what}; {default:g}")

    def messages(self) -> None:
        """The raw paho ceiling's payloads (throughput, drain)."""
        self.add_argument(
            "--messages", type=int, default=100_000, help="ceiling payloads per run; 100000"
        )

    def rate(self, what: str) -> None:
        """Readings/s asked of the synthetic device (throughput, drain)."""
        self.add_argument("--rate", type=float, default=200_000, help=what)

    def mqtt(self, window: int) -> None:
        """The agent's in-flight window and MQTT version (throughput, drain, latency)."""
        self.add_argument("--window", type=int, default=window, help=f"in-flight window; {window}")
        self.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version; 5")

    def modbus_load(self) -> None:
        """The simulated Modbus devices' poll interval, simulators, value changes."""
        self.add_argument("--interval", type=float, default=1.0, help="poll interval, s; 1")
        self.add_argument(
            "--simulators",
            type=int,
            default=1,
            help="simulator processes, one TCP bus (connection) each; 1",
        )
        self.add_argument(
            "--case-every",
            type=float,
            default=0.5,
            help="seconds between the simulated devices' value changes; 0.5 (every poll changes)",
        )

    def last(self, quick: str, profile: str | None = None) -> None:
        """`--quick` (its sizes), `--profile` (py-spy, when the benchmark takes it), `--out`."""
        self.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
        if profile is not None:
            self.add_argument("--profile", action="store_true", help=f"py-spy record {profile}")
        variants = "-quick/-profiled" if profile is not None else "-quick"
        self.add_argument(
            "--out",
            type=Path,
            default=None,
            help=f"JSON file (default bench/results/{self.name}.json; {variants} variants)",
        )

    def parse(self, argv: list[str] | None, quick: dict[str, Any]) -> argparse.Namespace:
        """The options; with --quick, `quick`'s values replace the defaults (an option given
        on the command line still wins)."""
        a = self.parse_args(argv)
        if a.quick:
            for name, value in quick.items():
                if getattr(a, name) == self.get_default(name):
                    setattr(a, name, value)
        return a


def params(cls: type[P], a: argparse.Namespace, **given: Any) -> P:
    """The dataclass `cls` from the options of the same names (`given`: the others)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: given[n] if n in given else getattr(a, n) for n in names})


@dataclass
class Measured:
    """What a benchmark hands back to main(): its table and its result document.

    `params`: what the document's `params` adds to the Params (payload size, ...); `doc`:
    the document after `params`, in order; `then`: more of it, made after the table is
    printed (py-spy summaries, which print themselves).
    """

    table: str
    doc: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    then: Callable[[], dict[str, Any]] | None = None


def main(
    name: str,
    p: P,
    measure: Callable[[P], Measured],
    *,
    suffix: str | None = None,
    default: Callable[[Any], Any] | None = None,
) -> int:
    """Measure, print the table, write `results/<name><suffix>.json` (or `--out`); 0.

    `suffix`: of the result file (default: -quick after --quick, -profiled after
    --profile); `default`: write_json's, for values JSON has no type for.
    """
    profile = bool(getattr(p, "profile", False))
    out = p.out or result_file(name, result_suffix(p.quick, profile) if suffix is None else suffix)
    started = timestamp()
    m = measure(p)
    print()
    print(m.table)
    doc: dict[str, Any] = {
        "benchmark": name,
        "started": started,
        "params": {**asdict(p), "out": str(out), **m.params},  # type: ignore[call-overload]
        **m.doc,
    }
    if m.then is not None:
        doc.update(m.then())
    write_json(out, doc, default=default)
    print(f"\nwritten: {out}")
    return 0


def alternate(
    i: int, ceiling: Callable[[], A], agent: Callable[[], B]
) -> tuple[tuple[str, str], A, B]:
    """Run i's ceiling and agent measurements: ceiling first in even runs, agent first in odd
    ones, so that a drift of the machine does not always favour the same side."""
    if i % 2 == 0:
        c = ceiling()
        return ("ceiling", "agent"), c, agent()
    a = agent()
    return ("agent", "ceiling"), ceiling(), a


def run_record(
    i: int, order: tuple[str, str], ceiling: Any, agent: Any, profiled: bool
) -> dict[str, Any]:
    """The result file's entry for run i (0-based) of a ceiling + agent benchmark."""
    return {
        "run": i + 1,
        "order": list(order),
        "ceiling": asdict(ceiling),
        "agent": asdict(agent),
        "profiled": profiled,
    }
