"""A serial card reader on a pty (or any serial port): valid frames for given card numbers, as
the profile's reader writes them, at a rate or in bursts, with injected faults.

    python -m drivers.card_serial.simulator --port PTY --profile rdm6300 \
        --card 0x0A0012D687 --card 1234567 --count 100 --rate 50 --burst 10 \
        --garbage 3 --bad-checksum 2 --half-frame 1

Cards come from --card (decimal or 0x-hex, repeatable) and/or --cards-file (one a line, '#'
comments); --count reads cycle through them (default: each card once). --repeat sends each
read that many times back to back (a card held on an RDM6300). Faults are spread evenly
among the reads. At the end one JSON line on stdout says what was sent (the card numbers
are test data, but they are not printed: counts only). Test and demo tooling: never run it
against a real reader's port.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import serial  # type: ignore[import-untyped]

from agent.profiles import load_profile_file, shipped_profiles
from drivers.card_serial.frames import FrameSpec, encode

GARBAGE = b"\xff\x00noise\x7f"


def load_spec(profile: str) -> FrameSpec:
    path = shipped_profiles().get(profile) or Path(profile)
    point = load_profile_file(path).point("card")
    if point is None or point.wire is None:
        raise SystemExit(f"{profile}: not a card_serial profile")
    return FrameSpec.model_validate(point.wire)


def parse_card(text: str) -> int:
    text = text.strip()
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def fault_frame(spec: FrameSpec, kind: str, value: int, bits: int | None) -> bytes:
    """One faulty frame: garbage bytes, a wrong checksum (or parity), or a frame cut short."""
    if kind == "garbage":
        return GARBAGE + (bytes([spec.end]) if spec.start is None else b"")
    good = encode(spec, value, bits=bits)
    if kind == "half":
        if spec.start is None:  # a line cut short by the reader (power dip): garbage
            return good[: len(good) // 2] + bytes([spec.end])
        return good[: len(good) // 2]  # the next frame's start cuts it
    if spec.checksum == "xor":  # the last checksum digit changed
        i = len(good) - 2
        return good[:i] + (b"0" if good[i : i + 1] != b"0" else b"1") + good[i + 1 :]
    if spec.wiegand:  # the last (odd parity) bit flipped
        body = good.rstrip(b"\r\n" + bytes([spec.end]))
        flipped = body[:-1] + (b"1" if body[-1:] == b"0" else b"0")
        return flipped + good[len(body) :]
    raise SystemExit("this profile has no checksum or parity to break")


def plan(args: argparse.Namespace, cards: list[int]) -> list[tuple[str, int]]:
    """The sequence of (what, card) to send: 'ok' reads with the faults spread among them."""
    count = args.count if args.count is not None else len(cards)
    reads: list[tuple[str, int]] = [("ok", cards[i % len(cards)]) for i in range(count)]
    faults = (
        ["garbage"] * args.garbage + ["checksum"] * args.bad_checksum + ["half"] * args.half_frame
    )
    if not faults:
        return reads
    out: list[tuple[str, int]] = []
    step = max(1, len(reads) // (len(faults) + 1))
    for i, r in enumerate(reads):
        if faults and i and i % step == 0:
            out.append((faults.pop(0), cards[0]))
        out.append(r)
    out += [(f, cards[0]) for f in faults]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m drivers.card_serial.simulator")
    ap.add_argument("--port", required=True, help="serial port or pty to write to")
    ap.add_argument("--profile", required=True, help="card_serial profile id or file")
    ap.add_argument("--baudrate", type=int, default=9600)
    ap.add_argument("--card", action="append", default=[], help="a card number (0x.. or decimal)")
    ap.add_argument("--cards-file", type=Path, help="card numbers, one a line")
    ap.add_argument("--count", type=int, help="reads to send (cycling the cards)")
    ap.add_argument("--repeat", type=int, default=1, help="each read sent N times")
    ap.add_argument("--rate", type=float, default=0.0, help="reads per second (0: at once)")
    ap.add_argument("--burst", type=int, default=1, help="reads sent back to back per tick")
    ap.add_argument("--direction", choices=["in", "out"], default="in")
    ap.add_argument("--wiegand-bits", type=int, choices=[26, 34], help="Wiegand length")
    ap.add_argument("--garbage", type=int, default=0, help="garbage chunks to inject")
    ap.add_argument("--bad-checksum", type=int, default=0, help="frames with a bad checksum")
    ap.add_argument("--half-frame", type=int, default=0, help="frames cut short")
    ap.add_argument("--hold", type=float, default=0.0, help="keep the port open this long after")
    args = ap.parse_args(argv)
    spec = load_spec(args.profile)
    cards = [parse_card(c) for c in args.card]
    if args.cards_file is not None:
        for text in args.cards_file.read_text().splitlines():
            entry = text.split("#", 1)[0].strip()
            if entry:
                cards.append(parse_card(entry))
    if not cards:
        ap.error("give at least one --card or a --cards-file")
    sent = {"reads": 0, "frames": 0, "garbage": 0, "checksum": 0, "half": 0}
    started = time.monotonic()
    with serial.Serial(args.port, args.baudrate, timeout=1) as port:
        ticks = 0
        for what, card in plan(args, cards):
            if what == "ok":
                frame = encode(spec, card, bits=args.wiegand_bits, direction=args.direction)
                port.write(frame * args.repeat)
                sent["reads"] += 1
                sent["frames"] += args.repeat
                if args.rate > 0 and sent["reads"] % args.burst == 0:
                    ticks += 1
                    delay = started + ticks * args.burst / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            else:
                port.write(fault_frame(spec, what, card, args.wiegand_bits))
                sent[what] += 1
        port.flush()
        if args.hold > 0:
            time.sleep(args.hold)
    sent_s = round(time.monotonic() - started, 3)
    sys.stdout.write(json.dumps({"sent": sent, "seconds": sent_s}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
