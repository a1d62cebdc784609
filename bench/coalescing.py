"""Coalescing: the Modbus read requests one poll of each shipped profile costs (pure, no I/O).

For every shipped modbus profile, the requests `plan_reads` groups its points into with the
profile's `max_gap`, against one request per point (`max_gap = -1`) and against
adjacent-only merging (`max_gap = 0`), and the registers (or bits) those requests read.
The first table of `python -m bench modbus` (bench/modbus.py), and its result file's
`coalescing`.
"""

from __future__ import annotations

from typing import Any

from agent.profiles import Profile, load_profile_file, shipped_profiles
from bench.report import fixed_table
from drivers.modbus.codec import BIT_TABLES, ReadBlock, Register, plan_reads


def register_points(profile: Profile) -> list[tuple[str, Register]]:
    """A profile's points as the driver reads them (drivers/modbus/driver.py _points_of)."""
    return [(p.name, Register.model_validate(p.wire)) for p in profile.points if p.wire is not None]


def read_size(blocks: list[ReadBlock]) -> tuple[int, int]:
    """(registers, bits) the blocks read."""
    regs = sum(b.count for b in blocks if b.table not in BIT_TABLES)
    bits = sum(b.count for b in blocks if b.table in BIT_TABLES)
    return regs, bits


def block_name(b: ReadBlock) -> str:
    """'input 0x0156+2': table, start (hex above 255, as maker manuals write them), count."""
    start = f"0x{b.start:04X}" if b.start > 255 else str(b.start)
    return f"{b.table} {start}+{b.count}"


def coalescing_row(profile: Profile) -> dict[str, Any]:
    """Requests and registers one poll of `profile` costs, with and without block reads."""
    points = register_points(profile)
    gap = profile.defaults.max_gap
    planned = plan_reads(points, gap)
    adjacent = plan_reads(points, 0)
    regs, bits = read_size(planned)
    useful_regs = sum(r.width for _, r in points if r.table not in BIT_TABLES)
    # Several bit points of one register (`bit = n`) need that register once.
    distinct_regs = len(
        {
            (r.table, r.address + i)
            for _, r in points
            if r.table not in BIT_TABLES
            for i in range(r.width)
        }
    )
    useful_bits = sum(1 for _, r in points if r.table in BIT_TABLES)
    per_point = len(points)
    interval = profile.defaults.poll_interval
    return {
        "profile": profile.id,
        "points": per_point,
        "max_gap": gap,
        "poll_interval_s": interval,
        "requests_per_point": per_point,  # max_gap = -1
        "requests_adjacent": len(adjacent),  # max_gap = 0
        "requests": len(planned),  # the profile's max_gap
        "saved_per_poll": per_point - len(planned),  # what the driver's requests_saved adds
        "saved_percent": round(100 * (per_point - len(planned)) / per_point, 1),
        "registers_read": regs,
        "registers_useful": useful_regs,
        "registers_distinct": distinct_regs,
        "registers_extra": regs - distinct_regs,  # holes read to merge requests
        "bits_read": bits,
        "bits_useful": useful_bits,
        "blocks": [block_name(b) for b in planned],
    }


def coalescing() -> list[dict[str, Any]]:
    """One row per shipped modbus profile."""
    rows = []
    for path in shipped_profiles().values():
        profile = load_profile_file(path)
        if profile.driver == "modbus":
            rows.append(coalescing_row(profile))
    return rows


def coalescing_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "profile",
        "points",
        "max_gap",
        "req/poll",
        "gap=0",
        "1/point",
        "saved",
        "regs read (useful)",
        "bits read",
        "blocks",
    )
    body = [
        (
            r["profile"],
            str(r["points"]),
            str(r["max_gap"]),
            str(r["requests"]),
            str(r["requests_adjacent"]),
            str(r["requests_per_point"]),
            f"{r['saved_per_poll']} ({r['saved_percent']:.0f}%)",
            f"{r['registers_read']} ({r['registers_distinct']})" if r["registers_read"] else "-",
            str(r["bits_read"]) if r["bits_read"] else "-",
            ", ".join(r["blocks"]),
        )
        for r in rows
    ]
    total_points = sum(r["points"] for r in rows)
    total_req = sum(r["requests"] for r in rows)
    body.append(
        (
            "all (one device each)",
            str(total_points),
            "",
            str(total_req),
            str(sum(r["requests_adjacent"] for r in rows)),
            str(total_points),
            f"{total_points - total_req} ({100 * (total_points - total_req) / total_points:.0f}%)",
            "",
            "",
            "",
        )
    )
    return fixed_table(head, body, left=(0, 9))
