"""The digital class board driver: the gateway as the boards' local hub (aiohttp server).

One bus is one listening endpoint (`listen`, loopback by default; a wildcard address only
with `allow_all_interfaces = true`). Its devices are the boards (a board profile: the one
with a `protocol` point; `token_file`, `class`, location) and one hub device (profile
classboard-hub) that takes the district's notice commands. A board's heartbeat gives its
state and telemetry points; a board silent for `offline_after` heartbeat intervals is
offline with the reason, and online again at its next request. Swipes go to the privacy
pipeline as CardReads (reader "board"); the driver never logs, keeps or sends a card number.
Notices and receipts live in the driver's own SQLite file (`notices_db`), see notices.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.cards import CardNumber, CardRead
from agent.driver import DeviceSink, Driver, Problems
from agent.errors import ActionError, DriverError
from agent.profiles import Profile
from agent.sample import BoundDevice, BusSpec, Sample, Value
from agent.units import DAY, Duration, KiB, MiB, Size, duration_range, size_range
from agent.validation import ConfigPath, model_problems
from drivers.classboard import dialect
from drivers.classboard.api import Api, BoardState, Bucket
from drivers.classboard.notices import Board, Notice, NoticeBook, NoticeError, parse_notice

log = logging.getLogger(__name__)
MIN_TOKEN = 16
NAME = r"^[A-Za-z0-9._-]{1,64}$"


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8480' or '[::1]:8480' -> (host, port); ValueError when it is not."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("give HOST:PORT, e.g. 127.0.0.1:8480 or [::1]:8480")
    return host, int(port)


class ClassboardBus(BaseModel):
    """Keys of a `driver = "classboard"` [[buses]] entry: the listening endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    listen: str = "127.0.0.1:8480"
    # 0.0.0.0 / :: (every interface) is refused unless this says so: boards on the school
    # LAN need it, a test or a gateway behind a reverse proxy does not.
    allow_all_interfaces: bool = False
    notices_db: ConfigPath = Field(default="classboard-notices.db", validate_default=True)
    max_body: Annotated[Size, size_range(KiB, MiB, "a batch of 500 swipes is ~40 KiB")] = 64 * KiB
    rate: float = Field(default=5.0, gt=0, le=1000)  # requests a second per board
    burst: int = Field(default=30, ge=1, le=10000)
    poll_timeout: Annotated[
        Duration, duration_range(1.0, 55.0, "below the 60 s idle timeout of most proxies")
    ] = 25.0
    swipe_max_age: Annotated[
        Duration, duration_range(60.0, 7 * DAY, "boards buffer swipes for days at most")
    ] = 7 * DAY
    max_batch: int = Field(default=500, ge=1, le=5000)

    @model_validator(mode="after")
    def _listen(self) -> ClassboardBus:
        host, _ = split_listen(self.listen)
        try:
            wildcard = ipaddress.ip_address(host).is_unspecified
        except ValueError:
            raise ValueError(f"listen: {host!r} is not an IP address") from None
        if wildcard and not self.allow_all_interfaces:
            raise ValueError(
                f"listen: {host} is every interface of the gateway; name one address "
                "(the school LAN's) or set allow_all_interfaces = true"
            )
        return self


class ClassboardDevice(BaseModel):
    """Keys a classboard [[devices]] entry may add."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    # A board's token (0600, at least 16 characters); a relative path is from the config's
    # folder. The hub device has none.
    token_file: ConfigPath | None = None
    klass: str | None = Field(default=None, alias="class", pattern=NAME)
    # The vendor's device number, where the board posts one (default: the device id).
    device_number: str | None = Field(default=None, min_length=1, max_length=64)


def read_token(path: str) -> bytes:
    """A board's token from its file; ValueError (no token in the message) when unusable."""
    try:
        st = os.stat(path)
        token = Path(path).read_bytes().strip()
    except OSError as e:
        raise ValueError(f"token file {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"token file {path} is readable by other users: chmod 600 it")
    if len(token) < MIN_TOKEN or not token.isascii() or b" " in token:
        raise ValueError(f"token file {path}: at least {MIN_TOKEN} printable characters")
    return token


class ClassboardDriver(Driver):
    """A hub of class boards on one listening endpoint."""

    key: ClassVar[str] = "classboard"
    profile_driver: ClassVar[str] = "classboard"
    bus_model: ClassVar[type[BaseModel]] = ClassboardBus
    device_model: ClassVar[type[BaseModel]] = ClassboardDevice
    point_wire: ClassVar[type[BaseModel] | None] = dialect.BoardWire

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        super().__init__(bus, devices)
        self.options: ClassboardBus = bus.options
        self.boards: dict[str, BoardState] = {}
        self.hub: BoundDevice | None = None
        for d in devices:
            if dialect.board_profile(d.profile):
                opts: ClassboardDevice = d.options
                loc = d.location
                building = loc.get("building")
                self.boards[d.id] = BoardState(
                    id=d.id,
                    board=Board(d.id, opts.klass, None if building is None else str(building)),
                    dialect=dialect.Dialect(d.profile),
                    device_number=opts.device_number or d.id,
                    room=None if loc.get("room") is None else str(loc.get("room")),
                )
            elif self.hub is None:
                self.hub = d
        self.counts: Counter[str] = Counter()
        self._book: NoticeBook | None = None
        self._sink: DeviceSink | None = None
        self.started = time.time()

    # ---- `check` time: no I/O ------------------------------------------------------------

    @classmethod
    def check_profile(cls, profile: Profile) -> Problems:
        problems: Problems = []
        for i, p in enumerate(profile.points):
            if p.wire is not None:
                problems += model_problems(dialect.BoardWire, p.wire, f"points[{i}].wire")
        if dialect.board_profile(profile):
            problems += dialect.problems(profile)
            for name in ("notice_id", "notice_status"):
                if profile.point(name) is None:
                    problems.append(("points", f"a board profile needs a state point {name!r}"))
        else:
            names = {a.name for a in profile.actions}
            if not {"notice_post", "notice_revoke"} <= names:
                problems.append(
                    ("actions", "a hub profile declares notice_post and notice_revoke; a board "
                     "profile has a point with `wire.api`")
                )  # fmt: skip
        return problems

    @classmethod
    def check_device(cls, device: BoundDevice) -> Problems:
        opts: ClassboardDevice = device.options
        if dialect.board_profile(device.profile):
            if opts.token_file is None:
                return [("token_file", "a board needs its token file (0600)")]
            return []
        if opts.token_file is not None or opts.klass is not None:
            return [("token_file", "the hub device has no token_file or class; boards do")]
        return []

    # ---- for the API ---------------------------------------------------------------------

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def book(self) -> NoticeBook:
        assert self._book is not None  # noqa: S101 - set before the server starts
        return self._book

    async def seen(self, b: BoardState, values: Mapping[str, Value]) -> None:
        """A board spoke (any authenticated request): online, and its heartbeat values."""
        assert self._sink is not None  # noqa: S101 - set before the server starts
        now = time.time()
        b.last_seen = now
        if b.online is not True:
            b.online = True
            await self._sink.availability(b.id, online=True)
            log.info("class board %s: online", b.id)
            values = {b.dialect.protocol_point: b.dialect.profile.id, **values}
        if values:
            await self._sink.sample(Sample(b.id, now, dict(values)))

    async def card(self, b: BoardState, ts: float, number: CardNumber) -> None:
        assert self._sink is not None  # noqa: S101
        await self._sink.card(
            CardRead(
                device=b.id,
                ts=ts,
                number=number,
                format=b.dialect.api.card.format,
                reader="board",
                place={"class": b.board.klass} if b.board.klass else {},
            )
        )

    async def delivered(self, b: BoardState, notices: list[Notice], now: float) -> None:
        """Notices sent to a board: a `fetched` receipt for each the first time."""
        for n in notices:
            if await self.book().receipt(n.id, b.id, "fetched", now):
                await self._receipt_event(b.id, n.id, "fetched", now)

    async def receipted(self, b: BoardState, nid: str, status: str) -> bool:
        now = time.time()
        new = await self.book().receipt(nid, b.id, status, now)
        if new:
            await self._receipt_event(b.id, nid, status, now)
        return new

    async def _receipt_event(self, board: str, nid: str, status: str, ts: float) -> None:
        assert self._sink is not None  # noqa: S101
        self.count(f"receipts_{status}")
        await self._sink.sample(Sample(board, ts, {"notice_id": nid, "notice_status": status}))

    # ---- running -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["boards_online"] = sum(1 for b in self.boards.values() if b.online)
        out["polls_waiting"] = sum(b.polls for b in self.boards.values())
        if self._book is not None:
            out["notices_active"] = self._book.active(time.time())
        return out

    async def run(self, sink: DeviceSink) -> None:
        self._sink = sink
        for b in self.boards.values():
            opts: ClassboardDevice = next(d for d in self.devices if d.id == b.id).options
            b.bucket = Bucket(self.options.rate, self.options.burst)
            try:
                b.token = read_token(str(opts.token_file))
            except ValueError as e:
                b.token, b.token_problem = None, str(e)
                log.error("class board %s: %s", b.id, e)
        book = NoticeBook(Path(self.options.notices_db))
        try:
            await book.open()
        except Exception as e:  # noqa: BLE001 - sqlite3 and OS errors alike: say which file
            raise DriverError(f"notices_db {self.options.notices_db}: {e}") from None
        self._book = book
        host, port = split_listen(self.options.listen)
        # shutdown_timeout: at stop, requests still running (a board's long-poll waits up to
        # poll_timeout) are cut after a second, not waited for (aiohttp's default: 60 s).
        runner = web.AppRunner(
            Api(self).app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, reuse_address=True)
            try:
                await site.start()
            except OSError as e:
                raise DriverError(f"cannot listen on {self.options.listen}: {e.strerror}") from None
            log.info("classboard hub listening on %s", self.options.listen)
            if self.hub is not None:
                await sink.availability(self.hub.id, online=True)
                await self._hub_sample()
            await self._watch()
        finally:
            await runner.cleanup()
            await book.close()
            self._book = None

    async def _hub_sample(self) -> None:
        if self.hub is not None and self._sink is not None and self._book is not None:
            n = self._book.active(time.time())
            await self._sink.sample(Sample(self.hub.id, time.time(), {"notices_active": n}))

    async def _watch(self) -> None:
        """Every second: boards silent too long go offline; notices that start or end now
        wake the long polls; notices that expired undelivered get their receipts."""
        assert self._sink is not None  # noqa: S101
        book = self.book()
        boundary = book.next_change(time.time())
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for b in self.boards.values():
                api = b.dialect.api
                limit = api.heartbeat_interval * api.offline_after
                last = b.last_seen if b.last_seen is not None else self.started
                if b.online is not False and now - last > limit:
                    b.online = False
                    if b.token_problem:
                        reason = b.token_problem
                    elif b.last_seen is None:
                        reason = "no heartbeat since the gateway started"
                    else:
                        reason = (
                            f"no heartbeat for {now - last:.0f} s "
                            f"(every {api.heartbeat_interval:g} s expected)"
                        )
                    await self._sink.availability(b.id, online=False, reason=reason)
            if boundary is not None and now >= boundary:
                book.notify()
                for board, nid in await book.expire(now, (b.board for b in self.boards.values())):
                    await self._receipt_event(board, nid, "expired", now)
                await self._hub_sample()
            boundary = book.next_change(now)

    async def act(
        self, device: BoundDevice, action: str, args: Mapping[str, Any]
    ) -> Mapping[str, Value]:
        if self.hub is None or device.id != self.hub.id or self._book is None:
            raise ActionError(f"{device.id!r} takes no notice commands; the hub device does")
        book = self._book
        now = time.time()
        if action == "notice_post":
            try:
                notice = parse_notice(dict(args), now)
            except NoticeError as e:
                raise ActionError(str(e)) from None
            notice = await book.post(notice)
            boards = [b.id for b in self.boards.values() if notice.for_board(b.board)]
            log.info("notice %s (%s) posted for %d boards", notice.id, notice.level, len(boards))
            await self._hub_sample()
            return {"id": notice.id, "rev": notice.rev, "boards": len(boards)}
        if action == "notice_revoke":
            nid = args.get("id")
            if not isinstance(nid, str) or not await book.revoke(nid):
                raise ActionError("no such notice, or already revoked")
            await self._hub_sample()
            return {"id": nid, "revoked": True}
        raise ActionError(f"the hub has no action {action!r}")
