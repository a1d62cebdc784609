"""The C reference in firmware_bridge/c against the Python implementation.

Builds and runs the C unit tests (plain and with ASan/UBSan), feeds the same pseudo-random
streams to the C decoder and to the Python `Decoder` and compares frames and counters, and
drives `example_node` over a pseudo-terminal with the Python message layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import pytest

from firmware_bridge.codes import Flags
from firmware_bridge.frame import Decoder, Frame, encode_frame, frame_bytes
from firmware_bridge.messages import (
    Ack,
    Action,
    ActionResult,
    Data,
    Event,
    FwBegin,
    FwChunk,
    FwCommit,
    FwStatus,
    FwVerify,
    Hello,
    Message,
    Welcome,
    decode_message,
    message_frame,
)

# make builds firmware_bridge/c in place, as tests/test_bridge_c_node.py does: one xdist worker.
pytestmark = pytest.mark.xdist_group("bridge-c-build")

C_DIR = Path(__file__).parent.parent / "firmware_bridge" / "c"
BUILD = C_DIR / "build"
M = TypeVar("M", bound=Message)
SEEDS = (1, 2, 3, 42, 20240601)


def _need_toolchain() -> None:
    missing = [tool for tool in ("gcc", "make") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: install them (Debian/Ubuntu: "
            "`sudo apt-get install gcc make`) to build firmware_bridge/c"
        )


def _make(target: str) -> str:
    _need_toolchain()
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(C_DIR), target],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"make {target} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def c_tests() -> str:
    return _make("test")


def _summary(out: str) -> str:
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, 0 failed", last), out[-2000:]
    assert int(last.split()[0]) > 0
    return last


def test_c_unit_tests(c_tests: str) -> None:
    _summary(c_tests)


def test_c_unit_tests_asan() -> None:
    _summary(_make("asan"))


@pytest.mark.parametrize("seed", SEEDS)
def test_random_stream_same_as_python(c_tests: str, seed: int, tmp_path: Path) -> None:
    del c_tests
    stream_file = tmp_path / f"stream-{seed}.bin"
    proc = subprocess.run(
        [str(BUILD / "test_cbridge"), "--stream", str(seed), str(stream_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report = json.loads(proc.stdout)
    data = stream_file.read_bytes()
    assert len(data) == report["bytes"]

    whole = Decoder()
    frames = whole.feed(data)
    assert asdict(whole.stats) == report["counters"]
    assert [frame_bytes(f)[:-2].hex() for f in frames] == report["frames_hex"]
    assert report["counters"]["frames"] == len(report["frames_hex"])

    # the same in uneven pieces gives the same result
    pieces = Decoder()
    got, pos, step = [], 0, 1
    while pos < len(data):
        got += pieces.feed(data[pos : pos + step])
        pos += step
        step = step % 97 + 1
    assert pieces.stats == whole.stats
    assert got == frames


# --------------------------------------------------------------------------- example_node


class _Host:
    """A minimal host over the pty master: Python Decoder + messages."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.decoder = Decoder()
        self.seq = 0
        self.pending: list[Frame] = []

    def send(self, message: Message, *, seq: int | None = None) -> int:
        if seq is None:
            seq = self.seq
            self.seq += 1
        os.write(self.fd, encode_frame(message_frame(message, seq)))
        return seq

    def recv(self, want: type[M], timeout: float = 5.0) -> tuple[Frame, M]:
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                frame = self.pending.pop(0)
                msg = decode_message(frame)
                if isinstance(msg, Event) and frame.flags & Flags.NEEDS_ACK:
                    self.send(Ack(frame.seq))
                if isinstance(msg, want) and type(msg) is want:
                    return frame, msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {want.__name__} from example_node")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self.pending += self.decoder.feed(os.read(self.fd, 4096))


def test_example_node_over_pty(tmp_path: Path) -> None:
    _make("example")
    master, slave = os.openpty()
    fw_out = tmp_path / "fw.bin"
    proc = subprocess.Popen(
        [str(BUILD / "example_node"), os.ttyname(slave), "--fw-out", str(fw_out)],
        stderr=subprocess.PIPE,
    )
    try:  # the slave stays open here too: closing it before the child opens it gives EIO
        host = _Host(master)
        _, hello = host.recv(Hello)
        assert (hello.model, hello.fw_version, hello.proto_min) == ("c-example-node", "1.0.0", 1)
        host.send(Welcome(1, 1_700_000_000_000))
        frame, data = host.recv(Data)
        assert frame.flags == 0
        assert [(p.id, p.value.kind) for p in data.points] == [(0, "int16"), (1, "bool")]
        door = data.points[1].value.value
        frame, event = host.recv(Event)
        assert frame.flags & Flags.NEEDS_ACK
        assert [(p.id, p.value.kind, p.value.value) for p in event.points] == [(2, "bool", True)]

        action_seq = host.send(Action(0))
        frame, result = host.recv(ActionResult)
        assert (result.action_seq, result.status) == (action_seq, 0)
        host.send(Ack(frame.seq))
        for _ in range(3):
            _, data = host.recv(Data)
            if data.points[1].value.value != door:
                break
        assert data.points[1].value.value is (not door)

        image = bytes((i * 13 + 5) & 0xFF for i in range(1000))
        host.send(FwBegin(len(image), hashlib.sha256(image).digest(), "1.1.0"))
        _, status = host.recv(FwStatus)
        assert (status.state, status.next_offset) == (1, 0)
        for off in range(0, len(image), 200):
            host.send(FwChunk(off, image[off : off + 200]))
            _, status = host.recv(FwStatus)
            assert status.next_offset == off + len(image[off : off + 200])
        host.send(FwVerify())
        _, status = host.recv(FwStatus)
        assert status.state == 2
        host.send(FwCommit())
        _, status = host.recv(FwStatus)
        assert (status.state, status.next_offset) == (3, len(image))
        deadline = time.monotonic() + 5
        while not (fw_out.exists() and fw_out.stat().st_size == len(image)):
            assert time.monotonic() < deadline, "example_node did not write the image"
            time.sleep(0.05)
        assert fw_out.read_bytes() == image
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
            os.close(slave)
    assert rc == 0, proc.stderr.read().decode() if proc.stderr else ""
