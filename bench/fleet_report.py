"""The fleet's analysis and report: what the raw run material says, and the table it prints.

`analyse` turns what bench/fleet.py's run() gathered (the checker's arrivals, the workers'
final figures, the broker's log and the parent's CPU/RSS samples) into the figures of the
result file: the cold start, each broker restart (`analyse_round`: reconnections, drain,
CPU, RSS, loop lag, timelines) and the totals (nothing lost, duplicates). `report` prints
them; `environment` says on what they were measured. Reads only: it starts nothing.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
from bisect import bisect_left
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from bench.report import pairs_table
from bench.stats import quantile, rounded
from tests.harness.broker import mosquitto_version

if TYPE_CHECKING:
    from bench.fleet import Checker, Monitor, Params


def max_in_window(times: list[float], width: float = 1.0) -> tuple[int, float | None]:
    """The most events in any `width`-second window (sliding), and where it starts."""
    ts = sorted(times)
    best, at = 0, None
    for i, t in enumerate(ts):
        n = bisect_left(ts, t + width) - i
        if n > best:
            best, at = n, t
    return best, at


def per_second(times: list[float], t0: float, t1: float) -> list[int]:
    """Counts in consecutive 1-second buckets from t0 (to t1)."""
    n = max(1, math.ceil(t1 - t0))
    out = [0] * n
    for t in times:
        i = math.floor(t - t0)
        if 0 <= i < n:
            out[i] += 1
    return out


def cpu_window(samples: list[dict[str, Any]], key: str, t0: float, t1: float) -> float | None:
    """Mean CPU % (of one core) of `key` between t0 and t1 (the broker: one process)."""
    inside = [s for s in samples if t0 <= s["t"] <= t1 and s.get(key) is not None]
    if key == "cpu":
        if not inside:
            return None
        pid = inside[-1]["pid"]
        inside = [s for s in inside if s["pid"] == pid]
    if len(inside) < 2 or inside[-1]["t"] - inside[0]["t"] < 0.05:
        return None
    a, b = inside[0], inside[-1]
    return 100 * (b[key] - a[key]) / (b["t"] - a["t"])


def cpu_peak_second(samples: list[dict[str, Any]], key: str, t0: float, t1: float) -> float | None:
    """The busiest 1-second stretch (CPU % of one core) between t0 and t1."""
    best: float | None = None
    t = t0
    while t + 1.0 <= t1 + 1e-6:
        v = cpu_window(samples, key, t, t + 1.0)
        if v is not None and (best is None or v > best):
            best = v
        t += 0.5
    return best


def analyse_round(r: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    k = r["round"]
    t_stop, t_listen, t_done = r["t_stop"], r["t_listen"], r["t_done"]
    checker: Checker = raw["checker"]
    mon: Monitor = raw["monitor"]
    reconnects: list[float] = []
    drained: list[float] = []
    delivered: list[float] = []
    failed_attempts: list[float] = []
    tries: Counter[int] = Counter()
    gateway_outage: list[float] = []
    backlog_events = 0
    drain_rates: list[float] = []
    for g in raw["gateways"]:
        rr = next(x for x in g["rounds"] if x["round"] == k)
        t_rec = rr["reconnect_t"]
        reconnects.append(t_rec - t_listen)
        gateway_outage.append(t_rec - t_stop)
        drained.append(rr["drained_t"] - t_listen)
        arr = checker.arrivals[g["name"]]
        got = [arr[s] for s in range(1, rr["target"] + 1) if s in arr]
        delivered.append(max(got, default=t_listen) - t_listen)
        mine = sum(1 for t in got if t >= t_stop)
        backlog_events += mine
        took = max(got, default=t_rec) - t_rec
        if mine >= 20 and took > 0:  # events/s one gateway drained at, after it reconnected
            drain_rates.append(mine / took)
        fails = [t for t, ok in g["attempts"] if not ok and t_stop <= t <= t_rec]
        failed_attempts += fails
        tries[len(fails) + 1] += 1
    rec_abs = [x + t_listen for x in reconnects]
    peak, peak_at = max_in_window(rec_abs)
    names = {g["name"] for g in raw["gateways"]}
    log = [sec for sec, cid in raw["broker_connects"] if cid in names]
    log_round = Counter(sec for sec in log if t_stop <= sec <= t_done + 1)
    storm_end = t_listen + max(*reconnects, *delivered)
    samples = mon.samples
    before = [s for s in samples if s["t"] < t_stop and s["rss"] is not None]
    storm = [s for s in samples if t_listen <= s["t"] <= storm_end + 1 and s["rss"] is not None]
    lags = [lag for f in raw["finals"] for t, lag in f["lags"] if t_listen <= t <= storm_end + 1]
    steady_lags = [lag for f in raw["finals"] for t, lag in f["lags"] if t_stop - 10 <= t < t_stop]
    tele = [t for arr in checker.arrivals.values() for t in arr.values()]
    tele_storm = [t for t in tele if t_listen <= t <= storm_end + 1]
    msgs_peak, _ = max_in_window(tele_storm)
    steady_msgs = sum(1 for t in tele if t_stop - 10 <= t < t_stop) / 10
    backlog_peak = max((b for t, b, _ in mon.backlog if t_stop <= t <= t_done), default=0)
    offline = [
        (t, gw)
        for t, gw, state, _ in checker.statuses
        if t_stop <= t <= t_done and state == "offline"
    ]
    online = {
        gw for t, gw, state, _ in checker.statuses if t_listen <= t <= t_done and state == "online"
    }
    span0, span1 = t_stop - 5, t_done + 3
    return {
        "round": k,
        "broker_down_s": rounded(t_listen - t_stop, 2),
        "broker_exit_s": rounded(r["t_exit"] - t_stop, 3),
        "broker_start_to_listen_s": rounded(t_listen - r["t_start"], 3),
        "gateways": len(reconnects),
        "reconnect_after_back_s": {
            "min": rounded(min(reconnects), 2),
            "median": rounded(statistics.median(reconnects), 2),
            "p90": rounded(quantile(reconnects, 0.9), 2),
            "max": rounded(max(reconnects), 2),
        },
        "outage_seen_by_gateways_s": {
            "median": rounded(statistics.median(gateway_outage), 2),
            "max": rounded(max(gateway_outage), 2),
        },
        "reconnects_peak_1s": peak,
        "reconnects_peak_1s_at_s": rounded(None if peak_at is None else peak_at - t_listen, 2),
        "broker_connects_peak_per_s": max(log_round.values(), default=0),
        "broker_connects_total": sum(log_round.values()),
        "connect_tries_histogram": {str(n): c for n, c in sorted(tries.items())},
        "refused_attempts_while_down": len(failed_attempts),
        "refused_attempts_peak_1s": max_in_window(failed_attempts)[0],
        "store_drained_after_back_s": rounded(max(drained), 2),
        "platform_has_backlog_after_back_s": rounded(max(delivered), 2),
        "backlog_events_delivered": backlog_events,
        "backlog_peak_events": backlog_peak,
        "drain_rate_per_gateway": {
            "gateways": len(drain_rates),
            "median": rounded(statistics.median(drain_rates), 0) if drain_rates else None,
            "min": rounded(min(drain_rates), 0) if drain_rates else None,
        },
        "checker_msgs_peak_1s": msgs_peak,
        "checker_msgs_steady_per_s": rounded(steady_msgs, 1),
        # mosquitto publishes every connected client's will when it shuts down: the platform
        # sees each gateway go "offline", then "online" again when it has reconnected.
        "status_offline_msgs": len(offline),
        "status_offline_gateways": len({gw for _, gw in offline}),
        "status_offline_before_back": sum(1 for t, _ in offline if t < t_listen),
        "status_online_again_gateways": len(online),
        "mosquitto": {
            "cpu_steady_pct": rounded(cpu_window(samples, "cpu", t_stop - 10, t_stop), 1),
            "cpu_storm_mean_pct": rounded(cpu_window(samples, "cpu", t_listen, storm_end + 1), 1),
            "cpu_storm_peak_1s_pct": rounded(
                cpu_peak_second(samples, "cpu", t_listen, storm_end + 1), 1
            ),
            "rss_before_stop_mib": rounded(before[-1]["rss"] if before else None, 1),
            "rss_after_start_mib": rounded(storm[0]["rss"] if storm else None, 1),
            "rss_storm_peak_mib": rounded(max((s["rss"] for s in storm), default=None), 1),
        },
        "workers": {
            "cpu_steady_pct": rounded(cpu_window(samples, "workers", t_stop - 10, t_stop), 1),
            "cpu_storm_peak_1s_pct": rounded(
                cpu_peak_second(samples, "workers", t_listen, storm_end + 1), 1
            ),
            "loop_lag_steady_max_ms": rounded(1000 * max(steady_lags, default=0.0), 1),
            "loop_lag_storm_max_ms": rounded(1000 * max(lags, default=0.0), 1),
            "loop_lag_storm_p99_ms": rounded(1000 * (quantile(lags, 0.99) or 0.0), 1),
        },
        "timeline": {
            "from_s": rounded(span0 - t_listen, 2),
            "reconnects_per_s_from_back": per_second(rec_abs, t_listen, storm_end + 1),
            "broker_connects_per_epoch_s": sorted(log_round.items()),
            "refused_attempts_per_s_from_stop": per_second(failed_attempts, t_stop, t_listen),
            "checker_msgs_per_s": per_second(
                [t for t in tele if span0 <= t <= span1], span0, span1
            ),
            "backlog": [
                [rounded(t - t_listen, 2), b, c] for t, b, c in mon.backlog if span0 <= t <= span1
            ][::4],
        },
        "reconnect_after_back_s_each": sorted(rounded(x, 2) or 0.0 for x in reconnects),
    }


def analyse(p: Params, raw: dict[str, Any]) -> dict[str, Any]:
    checker: Checker = raw["checker"]
    gws = raw["gateways"]
    lost_by_gw: dict[str, int] = {}
    for g in gws:
        arr = checker.arrivals.get(g["name"], {})
        missing = sum(1 for s in range(1, g["last_seq"] + 1) if s not in arr)
        if missing:
            lost_by_gw[g["name"]] = missing
    names = {g["name"] for g in gws}
    cold = [sec for sec, cid in raw["broker_connects"] if cid in names and sec <= raw["t_all"]]
    cold_count = Counter(cold)
    first_up = [next(t for t, c in g["transitions"] if c) for g in gws if g["transitions"]]
    log_lines: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for f in raw["finals"]:
        for item in f["log"]:
            log_lines[item["template"]] += item["count"]
            examples.setdefault(item["template"], item["example"])
    events = sum(g["last_seq"] for g in gws)
    return {
        "cold_start": {
            "all_connected_after_launch_s": rounded(raw["t_all"] - raw["t_launch"], 2),
            "first_connect_span_s": rounded(max(first_up) - min(first_up), 2) if first_up else None,
            "broker_connects_peak_per_s": max(cold_count.values(), default=0),
            "mosquitto_rss_idle_mib": rounded(raw["rss_idle"], 1),
            "mosquitto_rss_connected_mib": rounded(raw["rss_connected"], 1),
            "mosquitto_kib_per_connected_gateway": rounded(
                1024 * (raw["rss_connected"] - raw["rss_idle"]) / p.gateways, 1
            )
            if raw["rss_connected"] is not None
            else None,
        },
        "rounds": [analyse_round(r, raw) for r in raw["rounds"]],
        "totals": {
            "gateways": len(gws),
            "events_committed": events,
            "events_received_distinct": sum(len(a) for a in checker.arrivals.values()),
            "lost": sum(lost_by_gw.values()),
            "gateways_with_loss": len(lost_by_gw),
            "lost_by_gateway": dict(sorted(lost_by_gw.items())[:20]),
            "duplicates": sum(checker.dups.values()),
            "gateways_with_duplicates": sum(1 for n in checker.dups.values() if n),
            "evicted": sum(g["evicted"] for g in gws),
            "lost_uncommitted": sum(g["lost_uncommitted"] for g in gws),
            "refused": sum(g["refused"] for g in gws),
            "backlog_end": sum(g["backlog"] for g in gws),
            "connects": sum(g["connects"] for g in gws),
            "checker_reconnects": len(checker.connects) - 1,
            "checker_session_restored": all(sp for _, sp in checker.connects[1:]),
            "checker_complete": raw["complete"],
            "checker_bad_payloads": checker.bad,
        },
        "retained_status_after_restarts": raw["retained"],
        "agent_log": [
            {"count": n, "template": k, "example": examples[k]} for k, n in log_lines.most_common()
        ],
    }


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:,}" if isinstance(x, int) else str(x)


def report(p: Params, res: dict[str, Any]) -> str:
    c = res["cold_start"]
    out = [
        f"cold start: all connected {_num(c['all_connected_after_launch_s'])} s after launch; "
        f"broker CONNECTs peak {c['broker_connects_peak_per_s']}/s; mosquitto RSS "
        f"{_num(c['mosquitto_rss_idle_mib'])} MiB idle -> "
        f"{_num(c['mosquitto_rss_connected_mib'])} MiB with {p.gateways} gateways "
        f"(~{_num(c['mosquitto_kib_per_connected_gateway'])} KiB each)",
    ]
    for r in res["rounds"]:
        rc = r["reconnect_after_back_s"]
        m = r["mosquitto"]
        w = r["workers"]
        rows: list[tuple[str, Any]] = [
            ("broker down (stop -> listening again) [s]", r["broker_down_s"]),
            ("gateways reconnected", f"{r['gateways']}/{p.gateways}"),
            (
                "reconnect after broker back: min / median / p90 / max [s]",
                f"{_num(rc['min'])} / {_num(rc['median'])} / {_num(rc['p90'])} / {_num(rc['max'])}",
            ),
            (
                "outage seen by gateways: median / max [s]",
                f"{_num(r['outage_seen_by_gateways_s']['median'])} / "
                f"{_num(r['outage_seen_by_gateways_s']['max'])}",
            ),
            (
                "most reconnections in any 1 s (gateways)",
                f"{r['reconnects_peak_1s']} (at +{_num(r['reconnects_peak_1s_at_s'])} s)",
            ),
            ("most CONNECTs in one second (broker log)", r["broker_connects_peak_per_s"]),
            ("connect tries per gateway (tries: gateways)", r["connect_tries_histogram"]),
            (
                "refused attempts while down: total / peak per s",
                f"{r['refused_attempts_while_down']} / {r['refused_attempts_peak_1s']}",
            ),
            (
                "stores drained (outage events acked) after back [s]",
                r["store_drained_after_back_s"],
            ),
            (
                "platform has every backlog event after back [s]",
                r["platform_has_backlog_after_back_s"],
            ),
            (
                "backlog: events delivered / peak stored",
                f"{r['backlog_events_delivered']:,} / {r['backlog_peak_events']:,}",
            ),
            (
                "drain rate of one gateway: median / min [events/s]",
                f"{_num(r['drain_rate_per_gateway']['median'])} / "
                f"{_num(r['drain_rate_per_gateway']['min'])}",
            ),
            (
                "msgs/s at the checker: steady / peak 1 s",
                f"{_num(r['checker_msgs_steady_per_s'])} / {r['checker_msgs_peak_1s']}",
            ),
            (
                "mosquitto CPU %: steady / storm mean / storm peak 1 s",
                f"{_num(m['cpu_steady_pct'])} / {_num(m['cpu_storm_mean_pct'])} / "
                f"{_num(m['cpu_storm_peak_1s_pct'])}",
            ),
            (
                "mosquitto RSS MiB: before stop / after start / storm peak",
                f"{_num(m['rss_before_stop_mib'])} / {_num(m['rss_after_start_mib'])} / "
                f"{_num(m['rss_storm_peak_mib'])}",
            ),
            (
                "workers CPU %: steady / storm peak 1 s",
                f"{_num(w['cpu_steady_pct'])} / {_num(w['cpu_storm_peak_1s_pct'])}",
            ),
            (
                "worker loop lag max ms: steady / storm",
                f"{_num(w['loop_lag_steady_max_ms'])} / {_num(w['loop_lag_storm_max_ms'])}",
            ),
            (
                "status: gateways seen offline (msgs) / online again",
                f"{r['status_offline_gateways']} ({r['status_offline_msgs']}) / "
                f"{r['status_online_again_gateways']}",
            ),
        ]
        per_s = r["timeline"]["reconnects_per_s_from_back"]
        out += [
            "",
            f"round {r['round']}: broker stopped for {_num(r['broker_down_s'])} s",
            pairs_table(rows, _num),
            "  reconnections per second after the broker was back: "
            + " ".join(f"{i}:{n}" for i, n in enumerate(per_s) if n),
        ]
    t = res["totals"]
    rs = res["retained_status_after_restarts"]
    out += [
        "",
        "totals",
        pairs_table(
            [
                (
                    "events committed / received (distinct)",
                    f"{t['events_committed']:,} / {t['events_received_distinct']:,}",
                ),
                (
                    "lost (seqs 1..last not received)",
                    f"{t['lost']} ({t['gateways_with_loss']} gateways)",
                ),
                ("duplicates", f"{t['duplicates']} ({t['gateways_with_duplicates']} gateways)"),
                (
                    "evicted / lost uncommitted / refused",
                    f"{t['evicted']} / {t['lost_uncommitted']} / {t['refused']}",
                ),
                ("retained statuses after the restarts", f"{rs['retained']} {rs['by_state']}"),
            ],
            _num,
        ),
    ]
    if res["agent_log"]:
        out += ["", "agent warnings/errors (all gateways):"]
        out += [f"  {x['count']:>6}  {x['example']}" for x in res["agent_log"][:8]]
    return "\n".join(out)


def environment(p: Params, raw: dict[str, Any]) -> dict[str, Any]:
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    return {
        "python": platform.python_version(),
        "paho_mqtt": metadata.version("paho-mqtt"),
        "aiosqlite": metadata.version("aiosqlite"),
        "agent": __version__,
        "mosquitto": mosquitto_version(),
        "cpus": os.cpu_count(),
        "mem_mib": mem,
        "machine": platform.machine(),
        "kernel": platform.release(),
        "open_files_limit": list(raw["limits"]),
        "store_dir": p.store_dir,
    }
