"""Firmware update of a bridge node, host side: FW_BEGIN, chunks, verify, commit, reboot.

Stop-and-wait: every FW_* request is answered by FW_STATUS (or a NACK) before the next is
sent. It resumes where the node stands (FW_STATUS.next_offset), so running it again with the
same image after a broken link continues the transfer. It never touches the serial port
itself: it speaks through `Host.fw_request`. It imports `host`, never the other way round:
callers (the bridge driver) call `run_update(host, …)` themselves. `read_image` reads an
image file safely (a regular file within a size cap; never a FIFO or device that would block
or never end).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from firmware_bridge.codes import FwState, NackReason
from firmware_bridge.errors import FirmwareError, ImageRejectedError, LinkDownError, NodeNackError
from firmware_bridge.host import Host, NodeInfo
from firmware_bridge.messages import FwAbort, FwBegin, FwChunk, FwCommit, FwVerify

CHUNK = 200  # bytes of image per FW_CHUNK (PROTOCOL.md: at most 200)
MAX_VERSION = 255  # UTF-8 bytes of FW_BEGIN's version (a PROTOCOL.md `str`)
REBOOT_TIMEOUT = 30.0  # s for the HELLO after FW_COMMIT

ProgressCallback = Callable[[str, int, int], Awaitable[None]]


def check_version(version: str) -> str:
    """The version if FW_BEGIN can carry it; FirmwareError otherwise."""
    size = len(version.encode())
    if not version or size > MAX_VERSION:
        raise FirmwareError(f"firmware version must be 1 to {MAX_VERSION} UTF-8 bytes, not {size}")
    return version


def read_image(path: Path, max_size: int) -> bytes:
    """The bytes of the image file at `path` (already resolved and checked to be inside the
    firmware folder), or FirmwareError saying why it cannot be sent.

    It blocks on disk I/O: call it in a thread. The file is opened without following a
    symlink (one swapped in after the caller resolved the path) and without blocking (a FIFO
    with no writer would wait forever), then checked with fstat before anything is read: a
    regular file of 1 to `max_size` bytes. A file that grows while read is refused too.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise FirmwareError(f"cannot open firmware file {path.name!r}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FirmwareError(
                f"firmware file {path.name!r} is not a regular file (a FIFO, device or folder)"
            )
        if not 0 < st.st_size <= max_size:
            raise FirmwareError(
                f"firmware file {path.name!r} is {st.st_size} bytes: "
                f"it must be 1 to {max_size} bytes"
            )
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_size:
                raise FirmwareError(f"firmware file {path.name!r} grew past {max_size} bytes")
            chunks.append(chunk)
    except OSError as e:
        raise FirmwareError(f"cannot read firmware file {path.name!r}: {e.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


async def run_update(
    host: Host, image: bytes, version: str, progress: ProgressCallback | None = None
) -> int:
    """Send `image` to the node, verify and commit it, and wait for the node to boot it.

    One update at a time per host (it holds `host.fw_lock`). Returns the offset it started
    from (0 for a fresh transfer).

    Raises:
        FirmwareError: the node rejected the image (sha256, size, state) or booted another
            version (rollback); the staged image is aborted where it can be.
        LinkDownError: the link went down; call again to resume.
    """
    async with host.fw_lock:
        return await _transfer(host, image, version, progress)


async def _transfer(
    host: Host, image: bytes, version: str, progress: ProgressCallback | None
) -> int:
    async def report(state: str, done: int) -> None:
        if progress is not None:
            await progress(state, done, len(image))

    digest = hashlib.sha256(image).digest()
    try:
        status = await host.fw_request(FwBegin(len(image), digest, version))
    except NodeNackError as e:
        raise FirmwareError(f"node refused the update: {e}") from None
    start = offset = status.next_offset
    if status.state == FwState.RECEIVING:
        await report("transferring", offset)
        while offset < len(image):
            chunk = image[offset : offset + CHUNK]
            try:
                status = await host.fw_request(FwChunk(offset, chunk))
            except NodeNackError as e:
                await _abort(host)
                raise FirmwareError(f"node refused a chunk at {offset}: {e}") from None
            if status.state != FwState.RECEIVING:
                raise FirmwareError(f"node left the transfer (state {FwState(status.state).name})")
            offset = status.next_offset
            await report("transferring", offset)
        await report("verifying", offset)
        try:
            status = await host.fw_request(FwVerify())
        except NodeNackError as e:
            await _abort(host)
            if e.reason == NackReason.VERIFY_FAILED:
                raise ImageRejectedError(
                    "node rejected the image: its sha256 does not match"
                ) from None
            raise FirmwareError(str(e)) from None
    if status.state != FwState.VERIFIED:
        raise FirmwareError(f"node is in state {FwState(status.state).name}, not VERIFIED")
    await report("committing", len(image))
    booted: asyncio.Future[NodeInfo] = host.expect_hello()
    try:
        status = await host.fw_request(FwCommit())
    except NodeNackError as e:
        raise FirmwareError(str(e)) from None
    await report("rebooting", len(image))
    try:
        async with asyncio.timeout(REBOOT_TIMEOUT):
            info = await booted
    except TimeoutError:
        raise LinkDownError(
            f"node did not say HELLO within {REBOOT_TIMEOUT:g}s of FW_COMMIT"
        ) from None
    if info.fw_version != version:
        raise FirmwareError(
            f"node booted firmware {info.fw_version!r}, not {version!r} (rolled back)"
        )
    return start


async def _abort(host: Host) -> None:
    with contextlib.suppress(NodeNackError, LinkDownError):
        await host.fw_request(FwAbort())
