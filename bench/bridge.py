"""Firmware bridge figures from the bytes on the wire (the real encoder, no I/O).

Protocol overhead per DATA frame, and how long a firmware image takes at a given baud rate:
every FW_* request is answered by an FW_STATUS before the next is sent (stop-and-wait), so the
time is the sum of both directions' bytes at 10 bits per byte (8N1), plus the node's flash time,
which is not counted here. A pty does not limit the rate, so this is computed, not timed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from firmware_bridge.frame import FwState, encode_frame
from firmware_bridge.messages import (
    Data,
    FwBegin,
    FwChunk,
    FwCommit,
    FwStatus,
    FwVerify,
    Point,
    Value,
    message_frame,
)

CHUNK = 200
RESULTS = Path(__file__).parent / "results"


def wire(message: object, seq: int = 1) -> int:
    """Bytes on the wire for one message (COBS, header, CRC and delimiter included)."""
    return len(encode_frame(message_frame(message, seq)))  # type: ignore[arg-type]


def firmware_bytes(size: int) -> dict[str, int]:
    image = bytes(size)
    digest = hashlib.sha256(image).digest()
    down = wire(FwBegin(size, digest, "2.0.0"))
    up = wire(FwStatus(FwState.RECEIVING, 0))
    offset = 0
    while offset < size:
        n = min(CHUNK, size - offset)
        down += wire(FwChunk(offset, image[offset : offset + n]))
        offset += n
        up += wire(FwStatus(FwState.RECEIVING, offset))
    for request, state in ((FwVerify(), FwState.VERIFIED), (FwCommit(), FwState.COMMITTED)):
        down += wire(request)
        up += wire(FwStatus(state, size))
    return {"host_to_node": down, "node_to_host": up, "chunks": -(-size // CHUNK)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench bridge", description=__doc__)
    parser.add_argument("--size", type=int, default=256 * 1024, help="image bytes (256 KiB)")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--out", type=Path, default=RESULTS / "bridge.json")
    parser.add_argument(
        "--quick", action="store_true", help="accepted for `python -m bench --quick`"
    )
    args = parser.parse_args(argv)
    rows = []
    for n in (1, 4, 10):
        payload = wire(Data(tuple(Point(i, Value("float32", 21.5)) for i in range(n))))
        rows.append(
            {
                "points": n,
                "type": "float32",
                "wire_bytes": payload,
                "value_bytes": 4 * n,
                "overhead_bytes": payload - 4 * n,
            }
        )
    fw = firmware_bytes(args.size)
    total = fw["host_to_node"] + fw["node_to_host"]
    seconds = total * 10 / args.baud
    print(f"{'DATA frame':12} {'points':>6} {'wire bytes':>10} {'value bytes':>11} {'overhead':>8}")
    for r in rows:
        cells = (
            f"{r['points']:6} {r['wire_bytes']:10} {r['value_bytes']:11} {r['overhead_bytes']:8}"
        )
        print(f"{'float32':12} {cells}")
    print(f"\nfirmware image {args.size} bytes at {args.baud} baud (8N1), stop-and-wait:")
    down, up = fw["host_to_node"], fw["node_to_host"]
    print(f"  chunks {fw['chunks']}, host->node {down} B, node->host {up} B")
    print(
        f"  on the wire {total} B = {total / args.size:.3f} x the image; {seconds:.1f} s "
        f"(payload alone: {args.size * 10 / args.baud:.1f} s)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "data_frames": rows,
                "firmware": {
                    **fw,
                    "size": args.size,
                    "baud": args.baud,
                    "wire_bytes": total,
                    "seconds": seconds,
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
