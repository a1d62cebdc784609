"""The firmware bridge driver: one campus MCU node on one serial port (firmware_bridge/host.py).

The node's profile maps the point ids of its DATA and EVENT frames to named points, and
action ids to named actions (`wire = { id = … }`). DATA becomes telemetry and state; an
EVENT carries alarm points, whose edges the core turns into alarm events. The node is
online from its HELLO until it goes silent or the port closes; the host reopens the port by
itself. A `firmware_update` action sends an image from the bus's `firmware_dir` in the
background and reports its progress as the state points `fw_state` and `fw_progress`.
It hands Samples to the core and never builds topics, JSON or SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.driver import DeviceSink, Driver, Problems
from agent.errors import ActionError, BadArgumentError, DriverError
from agent.profiles import Profile
from agent.sample import BoundDevice, BusSpec, Sample
from agent.sample import Value as SampleValue
from agent.units import HOUR, Duration, duration_range
from agent.validation import ConfigPath, one_of
from firmware_bridge.codes import ActionStatus, NackReason
from firmware_bridge.errors import FirmwareError, ImageRejectedError, LinkDownError, NodeNackError
from firmware_bridge.host import Host, NodeInfo, action_status_name
from firmware_bridge.messages import Point, Value, ValueKind
from firmware_bridge.update import check_version, read_image, run_update

log = logging.getLogger(__name__)
BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
VALUE_KINDS: tuple[str, ...] = get_args(ValueKind)
FIRMWARE_ACTION = "firmware_update"
# State points the driver fills itself; a profile declares them without a `wire` table.
DRIVER_POINTS = ("fw_version", "fw_state", "fw_progress")
MAX_IMAGE = 16 << 20
ARG_KINDS: dict[str, ValueKind] = {
    "bool": "bool",
    "int": "int32",
    "float": "float32",
    "str": "string",
}


class BridgeBus(BaseModel):
    """Keys of a `driver = "bridge"` [[buses]] entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    port: ConfigPath  # prefer /dev/serial/by-id/... (stable across reboots)
    baudrate: int = 115200
    heartbeat: Annotated[
        Duration, duration_range(0.1, 60.0, "the node must hear from the host within a minute")
    ] = 5.0
    # The node is offline after this long without a frame.
    silence_timeout: Annotated[
        Duration, duration_range(1.0, HOUR, "shorter flaps on a busy link; longer hides a loss")
    ] = 15.0
    firmware_dir: ConfigPath | None = None  # images `firmware_update` may send; unset: none

    @field_validator("baudrate")
    @classmethod
    def _baud(cls, v: int) -> int:
        return one_of(v, BAUD_RATES, "serial baud rate")


class BridgeDevice(BaseModel):
    """Keys a bridge [[devices]] entry may add (none: the node is the bus)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PointSpec(BaseModel):
    """A point's `wire` table: the point id in DATA/EVENT frames and its wire type."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: int = Field(ge=0, le=255)
    type: str | None = None  # one of VALUE_KINDS; other types are counted and dropped

    @field_validator("type")
    @classmethod
    def _type(cls, v: str | None) -> str | None:
        if v is not None and v not in VALUE_KINDS:
            raise ValueError(
                f"{v!r} is not a bridge value type; use one of {', '.join(VALUE_KINDS)}"
            )
        return v


class ActionSpec(BaseModel):
    """An action's `wire` table: the ACTION id; args go in the profile's declared order."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: int = Field(ge=0, le=255)


class BridgeDriver(Driver):
    """A node on a serial port: DATA/EVENT in, ACTION and firmware updates out."""

    key: ClassVar[str] = "bridge"
    profile_driver: ClassVar[str] = "bridge"
    bus_model: ClassVar[type[BaseModel]] = BridgeBus
    device_model: ClassVar[type[BaseModel]] = BridgeDevice
    point_wire: ClassVar[type[BaseModel] | None] = PointSpec
    action_wire: ClassVar[type[BaseModel] | None] = ActionSpec
    legacy_wire_key: ClassVar[str | None] = "bridge"  # profiles before `wire` said `bridge = {…}`

    def __init__(self, bus: BusSpec, devices: Sequence[BoundDevice]) -> None:
        super().__init__(bus, devices)
        self.options: BridgeBus = bus.options
        self.device = devices[0] if devices else None
        self.points: dict[int, tuple[str, str | None]] = {}
        if self.device is not None:
            for p in self.device.profile.points:
                if p.wire is not None:
                    spec = PointSpec.model_validate(p.wire)
                    self.points[spec.id] = (p.name, spec.type)
        self.host = Host(
            self.options.port,
            self,
            baudrate=self.options.baudrate,
            heartbeat=self.options.heartbeat,
            silence=self.options.silence_timeout,
        )
        self.sink: DeviceSink | None = None
        self.online = asyncio.Event()
        self.unknown_points = 0
        self.type_mismatches = 0
        self.fw_task: asyncio.Task[None] | None = None
        self.fw_updates = {"started": 0, "done": 0, "failed": 0, "resumed": 0}
        self._fw_reported: tuple[str, int] | None = None

    # ---- config checks (called by `check`, no I/O) ------------------------------------

    @classmethod
    def check_profile(cls, profile: Profile) -> Problems:
        """The wire tables (base class), then what only this driver knows: its own points
        and firmware action need none, the others do, and ids are unique."""
        problems = super().check_profile(profile)
        for i, p in enumerate(profile.points):
            if p.wire is None and p.name not in DRIVER_POINTS:
                problems.append(
                    (
                        f"points[{i}].wire",
                        "a bridge point needs `wire = { id = N }` (its point id), "
                        f"unless it is one the driver fills: {', '.join(DRIVER_POINTS)}",
                    )
                )
        for i, a in enumerate(profile.actions):
            if a.name == FIRMWARE_ACTION:
                if a.wire is not None or "file" not in a.args:
                    problems.append(
                        (
                            f"actions[{i}]",
                            "firmware_update is the driver's own action: no `wire` table, "
                            'and args = { file = { type = "str" } }',
                        )
                    )
            elif a.wire is None:
                problems.append((f"actions[{i}].wire", cls.missing_wire("actions")))
        wires = {
            "points": [p.wire for p in profile.points],
            "actions": [a.wire for a in profile.actions],
        }
        for table, entries in wires.items():
            seen: dict[object, int] = {}
            for i, wire in enumerate(entries):
                ident = (wire or {}).get("id")
                if ident is None or isinstance(ident, dict | list):
                    continue
                if ident in seen:
                    problems.append(
                        (
                            f"{table}[{i}].wire.id",
                            f"{table[:-1]} id {ident} is also {table}[{seen[ident]}]",
                        )
                    )
                seen[ident] = i
        return problems

    @classmethod
    def check_device(cls, device: BoundDevice) -> Problems:
        if device.address is not None:
            return [("address", "a bridge node is the whole bus: remove `address`")]
        return []

    # ---- running ---------------------------------------------------------------------

    async def run(self, sink: DeviceSink) -> None:
        """Serve the node until cancelled; the host reopens the port by itself."""
        if len(self.devices) != 1:
            raise DriverError(
                f"bus {self.bus.id}: a bridge bus carries exactly one node, "
                f"but {len(self.devices)} devices name it"
            )
        self.sink = sink
        try:
            await self.host.run()
        finally:
            if self.fw_task is not None:
                self.fw_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.fw_task

    def _values(self, points: tuple[Point, ...]) -> dict[str, SampleValue]:
        out: dict[str, SampleValue] = {}
        for p in points:
            known = self.points.get(p.id)
            if known is None:
                self.unknown_points += 1
                log.debug("unknown point id: bus=%s id=%d", self.bus.id, p.id)
                continue
            name, kind = known
            if kind is not None and kind != p.value.kind:
                self.type_mismatches += 1
                log.debug(
                    "point type differs from the profile: bus=%s point=%s got=%s want=%s",
                    self.bus.id,
                    name,
                    p.value.kind,
                    kind,
                )
                continue
            out[name] = p.value.value
        return out

    async def _sample(self, values: Mapping[str, SampleValue], ts: float) -> None:
        if self.sink is not None and self.device is not None and values:
            await self.sink.sample(Sample(self.device.id, ts, values))

    # NodeListener

    async def node_online(self, info: NodeInfo) -> None:
        """HELLO: report online with what the node said about itself."""
        self.online.set()
        if self.sink is None or self.device is None:
            return
        await self.sink.availability(
            self.device.id,
            online=True,
            info={"model": info.model, "fw_version": info.fw_version, "uid": info.uid.hex()},
        )
        if self.device.profile.point("fw_version") is not None:
            await self._sample({"fw_version": info.fw_version}, time.time())

    async def node_offline(self, reason: str) -> None:
        """Silence or a closed port."""
        self.online.clear()
        info: dict[str, SampleValue] = {}
        if self.fw_task is not None and not self.fw_task.done():
            pct = self._fw_reported[1] if self._fw_reported else 0
            self._fw_reported = ("interrupted", pct)
            info = {"fw_state": "interrupted", "fw_progress": pct}
        if self.sink is not None and self.device is not None:
            await self.sink.availability(self.device.id, online=False, reason=reason, info=info)

    async def data(self, points: tuple[Point, ...], ts: float) -> None:
        """DATA: telemetry and state points."""
        await self._sample(self._values(points), ts)

    async def event(self, points: tuple[Point, ...], ts: float) -> None:
        """EVENT (delivered once per seq by the host): alarm points give alarm edges."""
        await self._sample(self._values(points), ts)

    # ---- actions ---------------------------------------------------------------------

    async def act(
        self, device: BoundDevice, action: str, args: Mapping[str, Any]
    ) -> Mapping[str, SampleValue]:
        """Send ACTION and wait for ACTION_RESULT; or start a firmware update."""
        spec = device.profile.action(action)
        if spec is None:
            raise ActionError(f"{device.id} has no action {action!r}")
        if action == FIRMWARE_ACTION:
            return await self._start_update(args)
        if spec.wire is None:
            raise ActionError(f"profile {device.profile.id!r} gives no bridge id for {action!r}")
        action_id = ActionSpec.model_validate(spec.wire).id
        values = []
        for name, arg in spec.args.items():
            if name in args:
                values.append(Value(ARG_KINDS[arg.type], args[name]))
        try:
            result = await self.host.action(action_id, tuple(values))
        except NodeNackError as e:
            if e.reason == NackReason.UNKNOWN_ACTION:
                raise ActionError(
                    f"the node does not know action {action!r} (id {action_id})"
                ) from None
            raise ActionError(str(e)) from None
        except LinkDownError as e:
            raise ActionError(f"node not reachable: {e}") from None
        if result.status != ActionStatus.OK:
            detail = f": {result.message}" if result.message else ""
            raise ActionError(f"node answered {action_status_name(result.status)}{detail}")
        return {"status": "ok", "message": result.message}

    # ---- firmware update -------------------------------------------------------------

    def _image_path(self, name: str) -> Path:
        if self.options.firmware_dir is None:
            raise ActionError(
                f"bus {self.bus.id} has no firmware_dir: set one to allow firmware updates"
            )
        base = Path(self.options.firmware_dir).resolve()
        path = (base / name).resolve()
        if not path.is_relative_to(base):
            raise ActionError(f"firmware file {name!r} is outside the bus's firmware_dir")
        return path

    async def _start_update(self, args: Mapping[str, Any]) -> Mapping[str, SampleValue]:
        if self.fw_task is not None and not self.fw_task.done():
            raise ActionError("a firmware update is already running on this node")
        path = self._image_path(str(args.get("file", "")))
        try:
            # Checked now, not when FW_BEGIN is built in the background: the district hears
            # of a version the protocol cannot carry in the command's reply.
            version = check_version(str(args.get("version") or path.stem))
        except FirmwareError as e:
            raise BadArgumentError(str(e)) from None
        try:
            # Off the event loop: a 16 MiB image on a slow SD card must not stall the bus.
            image = await asyncio.to_thread(read_image, path, MAX_IMAGE)
        except FirmwareError as e:
            raise ActionError(str(e)) from None
        if not self.online.is_set():
            raise ActionError("the node is offline; try again when it is online")
        self.fw_updates["started"] += 1
        self._fw_reported = None
        self.fw_task = asyncio.create_task(
            self._update(image, version), name=f"bridge.firmware[{self.bus.id}]"
        )
        return {
            "fw_state": "started",
            "size": len(image),
            "version": version,
            "sha256": hashlib.sha256(image).hexdigest(),
        }

    async def _failed(self, reason: str) -> None:
        """The background update failed after the command's `ok`: count it and audit it."""
        self.fw_updates["failed"] += 1
        if self.sink is not None and self.device is not None:
            await self.sink.action_failed(self.device.id, "firmware_update", reason)

    async def _report(self, state: str, pct: int) -> None:
        if (state, pct) == self._fw_reported:
            return
        self._fw_reported = (state, pct)
        await self._sample({"fw_state": state, "fw_progress": pct}, time.time())

    async def _progress(self, state: str, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        await self._report(state, pct - pct % 10 if state == "transferring" else pct)

    async def _update(self, image: bytes, version: str) -> None:
        """Run the update; after a link loss wait for the node and resume (10 times at most)."""
        losses = 0
        while True:
            await self.online.wait()
            try:
                start = await run_update(self.host, image, version, self._progress)
            except LinkDownError as e:
                losses += 1
                pct = self._fw_reported[1] if self._fw_reported else 0
                log.warning("firmware update interrupted: bus=%s reason=%s", self.bus.id, e)
                if self.online.is_set():  # else the offline state event said so
                    await self._report("interrupted", pct)
                if losses > 10:
                    if self.online.is_set():
                        await self._report("failed", pct)
                    await self._failed(f"link lost {losses} times: {e}")
                    return
                await asyncio.sleep(0.5)
                continue
            except FirmwareError as e:
                log.warning("firmware update failed: bus=%s reason=%s", self.bus.id, e)
                await self._report("rejected" if isinstance(e, ImageRejectedError) else "failed", 0)
                await self._failed(str(e))
                return
            except Exception as e:  # noqa: BLE001 - a background task has no caller to tell
                # Anything else (a message the codec refuses, a bug) must not end the task
                # silently with the district still seeing "transferring".
                log.error("firmware update failed: bus=%s error=%r", self.bus.id, e)
                pct = self._fw_reported[1] if self._fw_reported else 0
                await self._report("failed", pct)
                await self._failed(f"{type(e).__name__}: {e}")
                return
            if start:
                self.fw_updates["resumed"] += 1
            self.fw_updates["done"] += 1
            log.info("firmware updated: bus=%s version=%s", self.bus.id, version)
            await self._report("done", 100)
            return

    def stats(self) -> dict[str, Any]:
        """Host counters (frames, garbage, CRC errors, duplicates…) and the driver's own."""
        return {
            **self.host.stats(),
            "unknown_points": self.unknown_points,
            "type_mismatches": self.type_mismatches,
            "fw_updates": dict(self.fw_updates),
        }
