"""A real OSDP card reader for tests: libosdp's PeripheralDevice in its own process, on a pty.

`OsdpReader` starts `python -m tests.harness.osdp_pd` on one end of a socat pty pair (or a
bus relay), Secure Channel enforced with the SCBK it is given, and drives it through a file:
`card(...)`, `keys(...)` and `status(...)` append one JSON line to `inbox.jsonl`, which the
process submits as OSDP events (osdp_RAW, osdp_KEYPAD, osdp_LSTATR) once the Secure Channel
is up. What it receives from the control panel (LED, buzzer, KEYSET...) and its SC state
come back as JSON lines in its log (`commands()`, `sc_active()`). Stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Any

from tests.harness.process import ChildProcess
from tests.harness.waiting import wait_for


class OsdpReader(ChildProcess):
    """One PD: address, key (16 bytes), the tty it talks on."""

    def __init__(self, folder: Path, port: Path, address: int, scbk: bytes) -> None:
        super().__init__()
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.address = address
        self.scbk = scbk
        self.inbox = folder / "inbox.jsonl"
        self.starts = 0

    def start(self) -> None:
        self.inbox.write_text("")
        self.starts += 1
        cmd = [sys.executable, "-m", "tests.harness.osdp_pd", "--port", str(self.port)]
        cmd += ["--addr", str(self.address), "--scbk", self.scbk.hex(), "--inbox", str(self.inbox)]
        self.spawn(cmd, self.dir / f"pd-{self.starts}.log", env={**os.environ})

    def kill(self) -> None:
        """The reader loses power (SIGKILL)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def _send(self, **doc: Any) -> None:
        with self.inbox.open("a") as f:
            f.write(json.dumps(doc) + "\n")

    def card(
        self, data: bytes, bits: int, *, fmt: int = 1, reader: int = 0, direction: int = 0
    ) -> None:
        """A card presented: `bits` bits MSB-first in `data` (fmt 1: Wiegand, 0: raw)."""
        self._send(event="card", data=data.hex(), bits=bits, fmt=fmt, reader=reader, dir=direction)

    def keys(self, digits: str) -> None:
        self._send(event="keys", data=digits)

    def status(self, *, tamper: bool, power: bool = False) -> None:
        self._send(event="status", tamper=int(tamper), power=int(power))

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def commands(self) -> list[dict[str, Any]]:
        """What the CP sent this reader (all starts)."""
        return [d["cmd"] for d in self.lines() if d.get("kind") == "cmd"]

    def sc_active(self) -> bool:
        """The Secure Channel of the current start is up."""
        log = self.dir / f"pd-{self.starts}.log"
        states = [
            json.loads(ln)["sc"]
            for ln in (log.read_text().splitlines() if log.exists() else [])
            if ln.startswith('{"kind": "sc"')
        ]
        return bool(states) and states[-1]

    def wait_sc(self, timeout: float = 30) -> None:
        wait_for(self.sc_active, timeout, f"the Secure Channel of PD {self.address}")


# ---- the process ----------------------------------------------------------------------------


def _channel(path: str) -> Any:
    import osdp

    class Pty(osdp.Channel):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(self.fd)

        def read(self, max_bytes: int) -> bytes:
            try:
                return os.read(self.fd, max_bytes)
            except OSError:
                return b""

        def write(self, buf: bytes) -> int:
            try:
                return os.write(self.fd, buf)
            except OSError:
                return 0

        def flush(self) -> None:
            with contextlib.suppress(termios.error):
                termios.tcflush(self.fd, termios.TCIFLUSH)

    return Pty()


def _out(kind: str, **kw: Any) -> None:
    print(json.dumps({"kind": kind, **kw}, default=lambda b: b.hex()), flush=True)


def main() -> None:
    import osdp

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", required=True)
    ap.add_argument("--addr", type=int, required=True)
    ap.add_argument("--scbk", required=True)
    ap.add_argument("--inbox", required=True)
    a = ap.parse_args()
    info = osdp.PDInfo(
        a.addr,
        _channel(a.port),
        scbk=bytes.fromhex(a.scbk),
        flags=[osdp.LibFlag.EnforceSecure],
        name=f"pd{a.addr}",
    )
    cap = osdp.Capability
    caps = osdp.PDCapabilities(
        [
            (cap.LEDControl, 1, 1),
            (cap.AudibleControl, 1, 1),
            (cap.CardDataFormat, 1, 1),
            (cap.Readers, 1, 2),
            (cap.CommunicationSecurity, 1, 1),
        ]
    )

    def on_command(cmd: dict[str, Any]) -> tuple[int, Any]:
        _out("cmd", cmd=cmd)
        return 0, None

    pd = osdp.PeripheralDevice(
        info, caps, log_level=osdp.LogLevel.Error, command_handler=on_command
    )
    pd.start()
    _out("started", addr=a.addr)
    inbox = Path(a.inbox)
    done = 0
    sc = False
    while True:
        time.sleep(0.02)
        now_sc = pd.is_sc_active()
        if now_sc != sc:
            sc = now_sc
            _out("sc", sc=sc)
        if not sc:
            continue
        lines = inbox.read_text().splitlines()
        for line in lines[done:]:
            doc = json.loads(line)
            if doc["event"] == "card":
                ev = {
                    "event": osdp.Event.CardRead,
                    "reader_no": doc["reader"],
                    "direction": doc["dir"],
                    "format": doc["fmt"],
                    "length": doc["bits"],
                    "data": bytes.fromhex(doc["data"]),
                }
            elif doc["event"] == "keys":
                ev = {"event": osdp.Event.KeyPress, "reader_no": 0, "data": doc["data"].encode()}
            else:
                report = bytes([doc["tamper"], doc["power"]])
                ev = {
                    "event": osdp.Event.Status,
                    "type": osdp.StatusReportType.Local,
                    "report": report,
                }
            _out("submitted", event=doc["event"], ok=pd.submit_event(ev))
        done = len(lines)


if __name__ == "__main__":
    main()
