"""A campus MCU node in Python, speaking the firmware bridge (PROTOCOL.md) on a serial port.

Two kinds, matching the profiles in `device_profiles/bridge/`:

- `fence`: an e-fence controller. DATA (voltage, armed) every `--data-every`; zone 1 alarm
  EVENTs toggling every `--alarm-every` (sent with NEEDS_ACK, retransmitted until ACKed);
  actions 0 = arm, 1 = disarm.
- `sensor`: temperature, humidity and battery DATA.

Both accept firmware updates into `--fw-dir` (state kept there, so an interrupted update
resumes after a restart; the image is checked with sha256), send HEARTBEATs, and reopen the
port when it goes away. Fault injection for tests: `--drop-acks N` ignores the first N ACKs
of EVENTs (so they are retransmitted), `--garbage-every S` writes noise, a truncated frame
and a frame with a bad CRC every S seconds. `--stats FILE` writes counters as JSON.

    python -m firmware_bridge.simulator --port /dev/pts/7 --kind fence --stats sim.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import serial_asyncio_fast

from firmware_bridge.codes import ActionStatus, Flags, FwState, MsgType, NackReason
from firmware_bridge.errors import FrameError
from firmware_bridge.frame import Decoder, Frame, cobs_encode, encode_frame, frame_bytes
from firmware_bridge.messages import (
    ACKED_TYPES,
    Ack,
    Action,
    ActionResult,
    Data,
    Event,
    FwAbort,
    FwBegin,
    FwChunk,
    FwCommit,
    FwStatus,
    FwVerify,
    Heartbeat,
    Hello,
    Message,
    Nack,
    Point,
    Value,
    Welcome,
    decode_message,
    message_frame,
)

log = logging.getLogger("firmware_bridge.simulator")

SLOT_SIZE = 1 << 20  # the node's update slot
HELLO_EVERY = 2.0
ACK_TIMEOUT = 0.5
MAX_TRANSMISSIONS = 5
HEARTBEAT = 5.0
HOST_SILENCE = 15.0
ARM, DISARM = 0, 1


@dataclass
class Firmware:
    """The update slot, persisted in a directory as `state.json` + `image.bin`."""

    dir: Path
    running: str
    state: int = FwState.IDLE
    size: int = 0
    sha256: str = ""
    version: str = ""
    corrupt_writes: int = 0

    @classmethod
    def load(cls, directory: Path, default_version: str) -> Firmware:
        directory.mkdir(parents=True, exist_ok=True)
        fw = cls(directory, default_version)
        path = directory / "state.json"
        if path.exists():
            doc = json.loads(path.read_text())
            fw.running = doc["running"]
            fw.state, fw.size, fw.sha256, fw.version = (
                doc["state"],
                doc["size"],
                doc["sha256"],
                doc["version"],
            )
        return fw

    @property
    def image(self) -> Path:
        return self.dir / "image.bin"

    @property
    def next_offset(self) -> int:
        if self.state not in (FwState.RECEIVING, FwState.VERIFIED, FwState.COMMITTED):
            return 0
        return self.image.stat().st_size if self.image.exists() else 0

    def save(self) -> None:
        doc = {
            "running": self.running,
            "state": int(self.state),
            "size": self.size,
            "sha256": self.sha256,
            "version": self.version,
        }
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.dir / "state.json")

    def status(self) -> FwStatus:
        return FwStatus(int(self.state), self.next_offset)

    def handle(self, msg: Message) -> FwStatus | NackReason:
        """One FW_* request, as the table in PROTOCOL.md section 6 says."""
        committed = self.state == FwState.COMMITTED
        if isinstance(msg, FwBegin):
            if committed:
                return NackReason.BAD_STATE
            if msg.size > SLOT_SIZE:
                return NackReason.TOO_LARGE
            same = msg.size == self.size and msg.sha256.hex() == self.sha256
            if not (same and self.state in (FwState.RECEIVING, FwState.VERIFIED)):
                self.state, self.size, self.sha256 = FwState.RECEIVING, msg.size, msg.sha256.hex()
                self.version = msg.version
                self.image.write_bytes(b"")
                self.save()
            return self.status()
        if isinstance(msg, FwChunk):
            if self.state != FwState.RECEIVING:
                return NackReason.BAD_STATE
            if msg.offset == self.next_offset:
                if msg.offset + len(msg.data) > self.size:
                    return NackReason.BAD_PAYLOAD
                data = msg.data
                if self.corrupt_writes > 0 and data:
                    self.corrupt_writes -= 1  # fault injection: a bad flash write
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                with self.image.open("ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            return self.status()
        if isinstance(msg, FwVerify):
            if self.state == FwState.VERIFIED:
                return self.status()
            if self.state != FwState.RECEIVING or self.next_offset != self.size:
                return NackReason.BAD_STATE
            if hashlib.sha256(self.image.read_bytes()).hexdigest() != self.sha256:
                return NackReason.VERIFY_FAILED
            self.state = FwState.VERIFIED
            self.save()
            return self.status()
        if isinstance(msg, FwCommit):
            if self.state not in (FwState.VERIFIED, FwState.COMMITTED):
                return NackReason.BAD_STATE
            self.state = FwState.COMMITTED
            self.save()
            return self.status()
        if committed:
            return NackReason.BAD_STATE
        self.state, self.size, self.sha256 = FwState.ROLLED_BACK, 0, ""  # FW_ABORT
        self.image.write_bytes(b"")
        self.save()
        return self.status()

    def boot(self) -> None:
        """After COMMITTED: run the new image."""
        self.running = self.version
        self.state, self.size, self.sha256 = FwState.IDLE, 0, ""
        self.image.write_bytes(b"")
        self.save()


@dataclass
class Stats:
    hellos: int = 0
    welcomes: int = 0
    data: int = 0
    events: int = 0  # EVENTs created (one seq each)
    event_transmissions: int = 0
    event_seqs: list[int] = field(default_factory=list)
    acks_dropped: int = 0
    undelivered: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    duplicate_actions: int = 0
    garbage_sent: int = 0
    nacks_received: int = 0
    fw_begins: list[list[int]] = field(default_factory=list)  # [state, next_offset] answered
    fw_chunks: int = 0
    fw_verify_failed: int = 0
    reboots: int = 0
    sessions: int = 0


class Node:
    """The simulated node: one session per opened port, state kept across sessions."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.kind: str = args.kind
        self.stats = Stats()
        self.fw = Firmware.load(Path(args.fw_dir), args.fw_version)
        self.fw.corrupt_writes = args.corrupt_writes
        self.armed = True
        self.zone = False
        self.seq = 0
        self.drop_acks: int = args.drop_acks
        self.writer: asyncio.StreamWriter | None = None
        self.welcomed = False
        self.last_tx = 0.0
        self.last_rx = 0.0
        self.pending: deque[Message] = deque()  # NEEDS_ACK frames waiting to be sent
        self.wake = asyncio.Event()
        self.ack: asyncio.Future[Ack | Nack] | None = None
        self.ack_seq = -1
        self.window: deque[int] = deque(maxlen=32)
        self.hello_now = asyncio.Event()
        self.held_until_welcome = -1
        self.rebooted = asyncio.Event()

    # ---- wire ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.writer is not None:
            self.writer.write(data)
            self.last_tx = time.monotonic()

    def send(self, msg: Message, *, seq: int | None = None, retransmit: bool = False) -> int:
        if seq is None:
            seq, self.seq = self.seq, (self.seq + 1) & 0xFFFF
        self.write(encode_frame(message_frame(msg, seq, retransmit=retransmit)))
        return seq

    async def run(self) -> None:
        asyncio.create_task(self.write_stats(), name="stats")  # noqa: RUF006 - lives as long as run
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.args.port, baudrate=self.args.baudrate
                )
            except OSError:
                await asyncio.sleep(0.2)
                continue
            self.stats.sessions += 1
            log.info("port open: %s", self.args.port)
            self.writer = writer
            try:
                await self.boot_loop(reader)
            except OSError as e:
                log.info("port closed: %s", e)
            finally:
                self.writer = None
                with contextlib.suppress(OSError, RuntimeError):
                    writer.close()
            await asyncio.sleep(0.2)

    async def boot_loop(self, reader: asyncio.StreamReader) -> None:
        """Run the node's tasks; a reboot (after FW_COMMIT) starts them all afresh."""
        decoder = Decoder()
        while True:
            self.welcomed = False
            self.rebooted.clear()
            tasks = [
                asyncio.create_task(coro)
                for coro in (self.hello_loop(), self.sender(), self.producer(), self.garbage())
            ]
            reading = asyncio.create_task(self.reader(reader, decoder))
            rebooted = asyncio.create_task(self.rebooted.wait())
            try:
                await asyncio.wait({reading, rebooted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in [*tasks, reading, rebooted]:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
            if reading.done() and not reading.cancelled():
                reading.result()  # raises the OSError that ended it

    async def reader(self, reader: asyncio.StreamReader, decoder: Decoder) -> None:
        while True:
            data = await reader.read(4096)
            if not data:
                raise OSError("end of file")
            for frame in decoder.feed(data):
                await self.on_frame(frame)

    # ---- session -------------------------------------------------------------------

    async def hello_loop(self) -> None:
        """HELLO every 2 s until welcomed; HEARTBEAT when idle; HELLO again after silence."""
        last_hello = -1e9
        while True:
            now = time.monotonic()
            if not self.welcomed:
                if now - last_hello >= HELLO_EVERY or self.hello_now.is_set():
                    self.hello_now.clear()
                    last_hello = now
                    self.stats.hellos += 1
                    uid = bytes.fromhex(self.args.uid)
                    self.send(Hello(1, 1, uid, f"campus-{self.kind}-node", self.fw.running))
            elif now - self.last_rx > HOST_SILENCE:
                log.info("host silent: HELLO again")
                self.welcomed = False
                continue
            elif now - self.last_tx >= HEARTBEAT:
                self.send(Heartbeat())
            await asyncio.sleep(0.05)

    async def on_frame(self, frame: Frame) -> None:
        self.last_rx = time.monotonic()
        try:
            msg = decode_message(frame)
        except FrameError as e:
            if self.welcomed and frame.type not in (MsgType.ACK, MsgType.NACK):
                self.send(Nack(frame.seq, int(e.reason or NackReason.BAD_PAYLOAD)))
            return
        if isinstance(msg, Welcome):
            self.stats.welcomes += 1
            self.welcomed = True
            self.window.clear()
            return
        if isinstance(msg, Nack) and msg.reason == NackReason.HELLO_REQUIRED:
            self.welcomed = False
            self.hello_now.set()
            return
        if not self.welcomed:
            return
        if isinstance(msg, Ack | Nack):
            if isinstance(msg, Nack):
                self.stats.nacks_received += 1
            if self.ack is not None and msg.seq == self.ack_seq and not self.ack.done():
                self.ack.set_result(msg)
            return
        if frame.type in ACKED_TYPES:
            if frame.flags & Flags.RETRANSMIT and frame.seq in self.window:
                self.stats.duplicate_actions += 1
                self.send(Ack(frame.seq))
                return
            if frame.seq in self.window:
                self.window.remove(frame.seq)
            self.window.append(frame.seq)
        if isinstance(msg, Action):
            self.on_action(frame.seq, msg)
        elif isinstance(msg, FwBegin | FwChunk | FwVerify | FwCommit | FwAbort):
            await self.on_firmware(frame.seq, msg)
        # TIME_SYNC, HEARTBEAT: nothing to answer.

    def on_action(self, seq: int, msg: Action) -> None:
        if self.kind != "fence" or msg.action_id not in (ARM, DISARM):
            self.send(Nack(seq, NackReason.UNKNOWN_ACTION))
            return
        if msg.args:
            self.send(Nack(seq, NackReason.BAD_PAYLOAD))
            return
        self.send(Ack(seq))
        name = "arm" if msg.action_id == ARM else "disarm"
        self.stats.actions[name] = self.stats.actions.get(name, 0) + 1
        if self.armed == (msg.action_id == ARM):
            result = ActionResult(seq, ActionStatus.REJECTED, f"already {name}ed")
        else:
            self.armed = msg.action_id == ARM
            result = ActionResult(seq, ActionStatus.OK, f"{name}ed")
        self.queue(result)
        self.queue_data()

    async def on_firmware(self, seq: int, msg: Message) -> None:
        answer = self.fw.handle(msg)
        if isinstance(msg, FwBegin):
            nxt = answer.next_offset if isinstance(answer, FwStatus) else -1
            state = answer.state if isinstance(answer, FwStatus) else -1
            self.stats.fw_begins.append([state, nxt])
        elif isinstance(msg, FwChunk):
            self.stats.fw_chunks += 1
        elif isinstance(msg, FwVerify) and answer == NackReason.VERIFY_FAILED:
            self.stats.fw_verify_failed += 1
        if isinstance(answer, FwStatus):
            self.send(answer)
        else:
            self.send(Nack(seq, int(answer)))
        if isinstance(msg, FwCommit) and answer == FwStatus(FwState.COMMITTED, self.fw.size):
            await asyncio.sleep(0.2)
            self.reboot()

    def reboot(self) -> None:
        log.info("rebooting into firmware %r", self.fw.version)
        self.fw.boot()
        self.stats.reboots += 1
        self.seq = 0
        self.pending.clear()
        self.held_until_welcome = -1
        self.rebooted.set()

    # ---- what the node says --------------------------------------------------------

    def queue(self, msg: Message) -> None:
        self.pending.append(msg)
        self.wake.set()

    def queue_data(self) -> None:
        if not self.welcomed:
            return
        points: tuple[Point, ...]
        if self.kind == "fence":
            points = (Point(0, Value("int16", 812)), Point(3, Value("bool", self.armed)))
        else:
            t = 215 + int(time.time()) % 5
            points = (
                Point(0, Value("int16", t)),
                Point(1, Value("uint32", 455)),
                Point(2, Value("float32", 3.25)),
            )
        self.stats.data += 1
        self.send(Data(points))

    async def producer(self) -> None:
        next_data = next_alarm = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_data:
                next_data = now + self.args.data_every
                self.queue_data()
            if self.kind == "fence" and self.args.alarm_every and now >= next_alarm:
                next_alarm = now + self.args.alarm_every
                if self.welcomed:
                    self.zone = not self.zone
                    self.queue(Event((Point(1, Value("bool", self.zone)),)))
            await asyncio.sleep(0.02)

    async def sender(self) -> None:
        """Stop-and-wait: one NEEDS_ACK frame in flight, 5 transmissions 500 ms apart."""
        while True:
            while (
                not self.pending
                or not self.welcomed
                or self.held_until_welcome == self.stats.welcomes
            ):
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self.wake.wait()
            msg = self.pending[0]
            seq, self.seq = self.seq, (self.seq + 1) & 0xFFFF
            is_event = isinstance(msg, Event)
            if is_event:
                self.stats.events += 1
                self.stats.event_seqs.append(seq)
            delivered = False
            for attempt in range(MAX_TRANSMISSIONS):
                self.ack_seq = seq
                self.ack = asyncio.get_running_loop().create_future()
                self.send(msg, seq=seq, retransmit=attempt > 0)
                if is_event:
                    self.stats.event_transmissions += 1
                try:
                    async with asyncio.timeout(ACK_TIMEOUT):
                        answer = await self.ack
                except TimeoutError:
                    continue
                if isinstance(answer, Ack) and is_event and self.drop_acks > 0:
                    self.drop_acks -= 1
                    self.stats.acks_dropped += 1
                    await asyncio.sleep(ACK_TIMEOUT)  # as if the ACK was lost
                    continue
                delivered = True
                break
            if not delivered:
                self.stats.undelivered += 1
                if is_event:
                    # Kept, and sent again (as a new frame) after the next WELCOME.
                    self.held_until_welcome = self.stats.welcomes
                    continue
            self.pending.popleft()

    async def garbage(self) -> None:
        every = self.args.garbage_every
        if not every:
            return
        while True:
            await asyncio.sleep(every)
            if not self.welcomed:
                continue
            raw = frame_bytes(message_frame(Heartbeat(), 0x7777))
            bad_crc = raw[:-1] + bytes([raw[-1] ^ 0x5A])
            self.write(b"\x13\x37noise\xff\xfe\x00")  # noise: a COBS error
            self.write(cobs_encode(raw[:5]) + b"\x00")  # a truncated frame: too short
            self.write(cobs_encode(bad_crc) + b"\x00")  # a bad CRC
            self.stats.garbage_sent += 3

    async def write_stats(self) -> None:
        path = self.args.stats
        if not path:
            return
        while True:
            doc: dict[str, Any] = {
                **self.stats.__dict__,
                "armed": self.armed,
                "running": self.fw.running,
                "fw_state": int(self.fw.state),
                "welcomed": self.welcomed,
            }
            _write_json(Path(path), doc)
            await asyncio.sleep(0.1)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write atomically (a reader never sees half a file); small, so fine on the loop."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    """Command line: run one simulated node until interrupted."""
    p = argparse.ArgumentParser(prog="python -m firmware_bridge.simulator", description=__doc__)
    p.add_argument("--port", required=True, help="serial port or pty path")
    p.add_argument("--baudrate", type=int, default=115200)
    p.add_argument("--kind", choices=("fence", "sensor"), default="sensor")
    p.add_argument("--uid", default="0102030405060708", help="8 bytes in hex")
    p.add_argument("--fw-version", default="1.0.0", help="firmware running at first start")
    p.add_argument("--fw-dir", default="sim-fw", help="where the update slot is kept")
    p.add_argument("--data-every", type=float, default=0.5, help="seconds between DATA")
    p.add_argument("--alarm-every", type=float, default=2.0, help="fence: zone 1 toggles, 0 never")
    p.add_argument("--drop-acks", type=int, default=0, help="ignore the first N ACKs of EVENTs")
    p.add_argument("--garbage-every", type=float, default=0.0, help="seconds between noise bursts")
    p.add_argument(
        "--corrupt-writes", type=int, default=0, help="flip a byte in the first N chunks stored"
    )
    p.add_argument("--stats", default="", help="write counters as JSON to this file")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Node(args).run())


if __name__ == "__main__":
    main()
