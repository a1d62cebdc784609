"""The agent process: supervision of drivers, the pipeline's wiring, signals and status.

One supervised task per bus; a failing driver is restarted with backoff and its devices
reported offline, then online again. SIGTERM drains in-flight work and exits 0; SIGHUP
reloads the config without losing a stored event (a bad new config is refused and the
old one keeps running). This module never imports a driver by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agent import __version__, registry
from agent.cards import CardPipeline, CardRead
from agent.clock import ClockState
from agent.command_gate import CommandGate
from agent.commands import CURRENT_COMMAND, CommandRouter
from agent.config import SiteConfig, load_config
from agent.contract import Code, CommandOutcome, Kind, NewEvent, Origin, status_details
from agent.driver import Driver
from agent.errors import ActionError, ConfigError, Problem, StoreError
from agent.points import DevicePoints, StormLimit
from agent.publisher import Publisher
from agent.sample import BoundDevice, BusSpec, Quality, Sample, Value
from agent.status_live import LiveView
from agent.status_page import StatusPage, page_status
from agent.store import Store
from agent.store_schema import EXIT_STORE_TOO_NEW, StoreTooNewError

log = logging.getLogger(__name__)

RESTART_MIN = 1.0
RESTART_MAX = 15.0  # a bus whose cable is back is tried again within 15 s
BUS_STOP_GRACE, BUS_STOP_TRIES = 5.0, 3  # a stopped bus's cleanup time; re-cancels 1 s apart


def status_path(config: SiteConfig) -> Path:
    """Where the running agent writes its local status (read by `campus-agent status`)."""
    assert config.agent.status_file is not None  # noqa: S101 - load_config always sets it
    return config.agent.status_file


@dataclass
class DeviceState:
    online: bool | None = None
    since: float = field(default_factory=time.time)
    reason: str = ""


class _Sink:
    """The DeviceSink one bus's driver writes to."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def sample(self, sample: Sample) -> None:
        a = self.agent
        points = a.points.get(sample.device)
        if points is None:
            return
        state = a.devices.get(sample.device)
        # A failed read (an exception reply, a timeout) is no reading: only a good one
        # brings a device online.
        if state is not None and state.online is not True and sample.quality is not Quality.BAD:
            a.set_available(sample.device, online=True, reason="")
        for ev in points.events(sample):
            await a.store.add_wait(ev)

    async def availability(
        self,
        device: str,
        *,
        online: bool,
        reason: str = "",
        info: Mapping[str, Value] | None = None,
    ) -> None:
        self.agent.set_available(device, online=online, reason=reason, info=dict(info or {}))

    async def card(self, read: CardRead) -> None:
        await self.agent.card(read)

    async def action_failed(self, device: str, action: str, reason: str) -> None:
        a = self.agent
        bound = a.config.device(device)
        # The command id: the background task was started by the router's call to `act`,
        # and a task keeps the context it was created in.
        command = CommandOutcome(Code.ACTION_FAILED, reason[:500]).record(
            CURRENT_COMMAND.get(), action
        )
        log.warning("action failed in the background: device=%s action=%s", device, action)
        await a.store.add_wait(
            NewEvent(
                kind=Kind.AUDIT,
                device=device,
                category=bound.profile.category if bound else "gateway",
                profile=bound.profile.id if bound else "gateway",
                ts=time.time(),
                body={"command": command},
            )
        )


class Agent:
    """Wires config, store, publisher, drivers and commands together; runs until stopped."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.origin = Origin(config.agent.topic_prefix, config.agent.school, config.agent.gateway)
        self.started = time.time()
        self.store = Store(
            config.store.path,
            self.origin,
            max_size=config.store.max_size,
            commit_interval=config.store.commit_interval,
            telemetry_delay=config.store.telemetry_delay,
            synchronous=config.store.synchronous,
            audit_keep=config.store.audit_keep,
            clock=ClockState("auto"),
        )
        self.live = LiveView()  # the status page's last values, alarms, errors, tails
        self.store.on_commit = self.live.committed
        self.page: StatusPage | None = None
        self.router = CommandRouter(
            config,
            act=self._act,
            remember=self.store.remember_command,
            note_outcome=self.store.note_command_outcome,
            reply=self._reply,
            record=self.store.add,
        )
        self.gate = CommandGate(
            config.commands,
            self.origin,
            handle=self.router.handle,
            reply=self._reply,
            known=lambda device: self.config.device(device) is not None,
            record=self.store.add,
        )
        self.publisher = Publisher(
            config.mqtt,
            self.origin,
            self.store,
            password=config.password(),
            status=self.public_status,
            on_command=self.gate.offer,
        )
        self.cards = CardPipeline(
            mode=config.privacy.card_id,
            key=config.card_key,
            match=config.privacy.card_match,
            window=config.privacy.dedup_window,
            category_of=self._category_of,
        )
        self._card_timer: asyncio.TimerHandle | None = None
        self.points: dict[str, DevicePoints] = {}
        self.devices: dict[str, DeviceState] = {}
        self.drivers: dict[str, Driver] = {}
        self.bus_tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: Counter[str] = Counter()
        self.stopped_bus_stats: dict[str, dict[str, Any]] = {}
        self.reloads = 0
        self.last_reload_error: str | None = None
        self._stop = asyncio.Event()
        self._status_dirty = False

    # ---- devices -----------------------------------------------------------------

    def set_available(
        self, device: str, *, online: bool, reason: str, info: dict[str, Value] | None = None
    ) -> None:
        """Record a device's availability; emit a state event when it changes."""
        st = self.devices.get(device)
        points = self.points.get(device)
        if st is None or points is None or st.online is online:
            return
        st.online, st.since, st.reason = online, time.time(), reason
        if online:
            log.info("device online: device=%s", device)
        else:
            log.warning("device offline: device=%s reason=%s", device, reason)
        self.store.add(
            points.availability(time.time(), online=online, reason=reason, info=info or {})
        )
        self._status_dirty = True

    # ---- cards ---------------------------------------------------------------------

    def _category_of(self, device: str) -> tuple[str, str, dict[str, Any] | None] | None:
        """What an access event says of its device: category, profile, location (the
        board's class or the gate, from the config)."""
        d = self.config.device(device)
        return (d.profile.category, d.profile.id, dict(d.location) or None) if d else None

    async def card(self, read: CardRead) -> None:
        """A card read from a driver: through the privacy pipeline into the store."""
        if self.config.device(read.device) is None:
            return
        events, wake_at = self.cards.offer(read)
        for ev in events:
            await self.store.add_wait(ev)
        if wake_at is not None and self._card_timer is None:
            delay = max(0.0, wake_at - time.time())
            self._card_timer = asyncio.get_running_loop().call_later(delay, self._cards_due)

    def _cards_due(self, *, everything: bool = False) -> None:
        """Send the reads whose de-duplication window closed; re-arm for the next one."""
        self._card_timer = None
        for ev in self.cards.due(time.time(), everything=everything):
            self.store.add(ev)
        nxt = self.cards.next_due()
        if nxt is not None and not everything:
            delay = max(0.0, nxt - time.time())
            self._card_timer = asyncio.get_running_loop().call_later(delay, self._cards_due)

    def _bind(self, devices: Sequence[BoundDevice]) -> None:
        for d in devices:
            if d.id not in self.points or self.points[d.id].device != d:
                if (old := self.points.get(d.id)) is not None:
                    for event in old.tick(time.time(), final=True):  # a storm's held edges
                        self.store.add(event)
                self.points[d.id] = DevicePoints(d, self._storm_limit())
            self.devices.setdefault(d.id, DeviceState())

    def _storm_limit(self) -> StormLimit:
        a = self.config.alarms
        return StormLimit(a.storm_rate, a.storm_burst, a.storm_report)

    async def _supervise(self, bus: BusSpec, devices: tuple[BoundDevice, ...]) -> None:
        cls = registry.driver_class(bus.driver)
        if cls is None:  # checked at load; kept for a driver uninstalled under us
            log.error("no driver %r for bus %s", bus.driver, bus.id)
            return
        sink = _Sink(self)
        attempt = 0
        while True:
            started = time.monotonic()
            driver = cls(bus, devices)
            self.drivers[bus.id] = driver
            try:
                await driver.run(sink)
                reason = "driver stopped"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the supervisor is where driver faults end
                reason = _describe(e)
            self.restarts[bus.id] += 1
            log.error("driver failed, restarting: bus=%s reason=%r", bus.id, reason)
            for d in devices:
                self.set_available(d.id, online=False, reason=reason)
            attempt = 1 if time.monotonic() - started > 60 else attempt + 1
            step = min(RESTART_MAX, RESTART_MIN * 2 ** (attempt - 1))
            await asyncio.sleep(step / 2 + random.uniform(0, step / 2))

    def _start_bus(self, bus: BusSpec) -> None:
        devices = tuple(d for d in self.config.devices if d.bus == bus.id)
        if not devices:
            log.info("bus %s has no devices; not started", bus.id)
            return
        self._bind(devices)
        self.bus_tasks[bus.id] = asyncio.create_task(
            self._supervise(bus, devices), name=f"driver[{bus.id}]"
        )

    async def _stop_bus(self, bus_id: str) -> None:
        task = self.bus_tasks.pop(bus_id, None)
        driver = self.drivers.pop(bus_id, None)
        if driver is not None and (stats := driver.stats()):
            self.stopped_bus_stats[bus_id] = stats
        if task is not None:
            task.cancel()
            task.cancel()  # a swallowed cancel (3.11's wait_for): cancel again after a grace
            done, _ = await asyncio.wait({task}, timeout=BUS_STOP_GRACE)
            for _ in range(BUS_STOP_TRIES):
                if done:
                    break
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=1.0)
            if not done:
                log.error("bus %s did not stop when cancelled; left behind", bus_id)

    # ---- commands ------------------------------------------------------------------

    async def _act(
        self, device: BoundDevice, action: str, args: Mapping[str, Any]
    ) -> Mapping[str, Value]:
        driver = self.drivers.get(device.bus)
        if driver is None:
            raise ActionError(f"bus {device.bus!r} is not running")
        return await driver.act(device, action, args)

    def _reply(self, topic: str, payload: bytes, correlation: bytes | None) -> bool:
        return self.publisher.publish_direct(topic, payload, correlation)

    # ---- reload --------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config; apply bus/device/command changes; keep the old one on error."""
        try:
            new = load_config(self.config.path)
        except ConfigError as e:
            self.last_reload_error = str(e)
            log.error("config reload refused, keeping the running config:\n%s", e)
            return False
        for section in ("agent", "mqtt", "store", "privacy", "status_page"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("config reload: [%s] changed; restart the agent to apply it", section)
        # Those sections keep running as they are until a restart; show what runs.
        new = dataclasses.replace(
            new,
            agent=self.config.agent,
            mqtt=self.config.mqtt,
            store=self.config.store,
            privacy=self.config.privacy,
            card_key=self.config.card_key,
            status_page=self.config.status_page,
            status_token=self.config.status_token,
        )
        old_buses = {b.id: b for b in self.config.buses}
        new_buses = {b.id: b for b in new.buses}
        old_devs = {b: tuple(d for d in self.config.devices if d.bus == b) for b in old_buses}
        new_devs = {b: tuple(d for d in new.devices if d.bus == b) for b in new_buses}
        self.config = new
        self.router.reconfigure(new)
        self.gate.configure(new.commands)
        for bus_id, old_bus in old_buses.items():
            if bus_id not in new_buses or (
                old_bus != new_buses[bus_id] or old_devs[bus_id] != new_devs[bus_id]
            ):
                await self._stop_bus(bus_id)
        live = {d.id for d in new.devices}
        self.live.forget(live)
        for dev in list(self.devices):
            if dev not in live:
                del self.devices[dev]
                if (gone := self.points.pop(dev, None)) is not None:
                    for event in gone.tick(time.time(), final=True):
                        self.store.add(event)
        for bus_id, bus in new_buses.items():
            if bus_id not in self.bus_tasks:
                self._start_bus(bus)
        await self.publisher.retry_refused()
        self.reloads += 1
        self.last_reload_error = None
        self._status_dirty = True
        log.info("config reloaded: buses=%d devices=%d", len(new.buses), len(new.devices))
        return True

    # ---- status --------------------------------------------------------------------

    def public_status(self) -> dict[str, Any]:
        """The retained status document (also the base of the local status file)."""
        s = self.store.stats
        p = self.publisher.stats
        return status_details(
            version=__version__,
            uptime=time.time() - self.started,
            backlog=s.backlog,
            oldest_unsent_age=self._oldest_age,
            evicted=s.evicted,
            lost_uncommitted=s.lost_uncommitted,
            store_recovered=s.recovered,
            publish_rate=p.rate,
            refused=p.refused,
            last_refusal=p.last_refusal,
            parked=s.parked,
            status_topic_refused=p.status_refused,
            devices={d: (st.online, st.since, st.reason) for d, st in self.devices.items()},
        )

    _oldest_age: float | None = None

    @property
    def oldest_age(self) -> float | None:
        """The age of the oldest unsent event (s), as of the last status round."""
        return self._oldest_age

    def local_status(self) -> dict[str, Any]:
        """Everything `campus-agent status` shows."""
        s = self.store.stats
        p = self.publisher.stats
        doc = self.public_status()
        doc.update(
            {
                "pid": os.getpid(),
                "written": time.time(),
                "school": self.config.agent.school,
                "gateway": self.config.agent.gateway,
                "broker": {
                    "url": self.config.mqtt.url,
                    "connected": p.connected,
                    "since": p.since,
                    "connects": p.connects,
                    "last_error": p.last_error,
                    "inflight": p.inflight,
                    "published": p.published,
                    "acked": p.acked,
                    "refusals": dict(p.refusals_by_reason),
                    "probes_answered": p.probes_answered,
                },
                "store": {
                    "path": str(self.store.path),
                    "used_bytes": s.used_bytes,
                    "max_size": self.store.max_size,
                    "committed": s.committed,
                    "transactions": s.transactions,
                    "committed_by_priority": dict(s.committed_by_priority),
                    "last_seq": self.store.last_seq,
                    "lost_uncommitted": s.lost_uncommitted,
                    "last_error": s.last_error,
                    "recovered": s.recovered,
                    "schema_version": s.schema_version,
                    "upgraded": s.upgraded,
                },
                "commands": {**self.router.status(), **self.gate.status()},
                "cards": self.cards.status(),
                "driver_restarts": dict(self.restarts),
                "buses": {
                    **self.stopped_bus_stats,
                    **{
                        bus_id: stats
                        for bus_id, driver in sorted(self.drivers.items())
                        if (stats := driver.stats())
                    },
                },
                "reloads": self.reloads,
                "last_reload_error": self.last_reload_error,
                "status_page": self.page.status() if self.page else {"enabled": False},
            }
        )
        return doc

    async def _status_loop(self) -> None:
        path = status_path(self.config)
        tmp = path.with_name(path.name + ".tmp")
        last_public = 0.0
        status_error: OSError | None = None
        while True:
            now = time.time()
            for points in self.points.values():  # alarm storms end even if samples stop
                for event in points.tick(now):
                    self.store.add(event)
            self._oldest_age = await self.store.oldest_age()
            if self._oldest_age is not None:
                self._oldest_age = round(self._oldest_age, 1)
            try:
                tmp.write_bytes(orjson.dumps(self.local_status(), option=orjson.OPT_INDENT_2))
                tmp.replace(path)
                status_error = None
            except OSError as e:
                # A full disk must not stop the agent; the MQTT status still goes out.
                if status_error is None:
                    log.warning("cannot write the status file %s: %s", path, e.strerror)
                status_error = e
            now = time.monotonic()
            if self._status_dirty or now - last_public >= self.config.agent.status_interval:
                self.publisher.publish_status()
                self._status_dirty = False
                last_public = now
            _sd_notify(b"WATCHDOG=1")
            await asyncio.sleep(1.0)

    # ---- lifecycle -----------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        loop = asyncio.get_running_loop()
        try:
            await self.store.open()
        except StoreTooNewError as e:
            # A downgrade: the store is left as it is; restarting will not fix it.
            log.error("%s", e)
            return EXIT_STORE_TOO_NEW
        except StoreError as e:
            # A folder this user cannot write: restarting will not fix it (exit 2).
            raise ConfigError([Problem(str(self.config.path), "store.path", str(e))]) from None
        if self.store.stats.recovered:
            self._status_dirty = True
        await self._start_page()  # before the drivers: nothing else logs while it starts
        for b in self.config.buses:
            self._start_bus(b)
        for d in self.config.devices:
            self.devices.setdefault(d.id, DeviceState())
        core = [
            asyncio.create_task(self.store.run(), name="store.commit"),
            asyncio.create_task(self.publisher.run(), name="publisher"),
            asyncio.create_task(self._status_loop(), name="status"),
            asyncio.create_task(self.gate.run(), name="commands"),
        ]
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            t = asyncio.create_task(self.reload(), name="reload")
            reloads.add(t)
            t.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        log.info(
            "agent started: version=%s school=%s gateway=%s devices=%d store=%s page=%s",
            __version__,
            self.config.agent.school,
            self.config.agent.gateway,
            len(self.config.devices),
            self.config.store.path,
            self.page.shown() if self.page else "off",
        )
        _sd_notify(b"READY=1")
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stopper, *core], return_when=asyncio.FIRST_COMPLETED)
        crashed = [t for t in core if t in done]
        _sd_notify(b"STOPPING=1")
        await self._shutdown(core)
        for t in crashed:
            if not t.cancelled() and t.exception() is not None:
                log.error("core task %s failed: %r", t.get_name(), t.exception())
                return 1
        return 0

    async def _start_page(self) -> None:
        """The local status page, when enabled; a failure to listen is logged, not fatal."""
        section = self.config.status_page
        if not section.enabled:
            return
        logging.getLogger().addHandler(self.live.errors)
        refresh = section.refresh
        self.page = StatusPage(
            section, self.config.status_token, self.live, lambda: page_status(self, refresh)
        )
        await self.page.start()

    async def _shutdown(self, core: list[asyncio.Task[Any]]) -> None:
        log.info("stopping: draining in-flight events")
        self.gate.flush_audit()  # commands dropped since the last summary are audited too
        if self._card_timer is not None:
            self._card_timer.cancel()
        self._cards_due(everything=True)  # reads still in their de-duplication window
        for bus_id in list(self.bus_tasks):
            await self._stop_bus(bus_id)
        with contextlib.suppress(Exception):
            await self.store.commit_now()
        drained = await self.publisher.drain(self.config.agent.drain_timeout)
        with contextlib.suppress(Exception):
            await self.store.commit_now()
        await self.publisher.stop()
        if self.page is not None:
            await self.page.stop()
            logging.getLogger().removeHandler(self.live.errors)
        for t in core:
            t.cancel()
        for t in core:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.store.close()
        with contextlib.suppress(OSError):
            status_path(self.config).write_bytes(
                orjson.dumps({**self.local_status(), "pid": None, "stopped": time.time()})
            )
        log.info("stopped: drained=%s backlog=%d", drained, self.store.stats.backlog)


def _describe(e: BaseException) -> str:
    """'DriverError: port /dev/ttyUSB0 vanished', looking inside a TaskGroup's group."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"


def _sd_notify(message: bytes) -> None:
    """Tell systemd (Type=notify) we are ready / alive; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message, addr)


def run_agent(config: SiteConfig) -> int:
    """Run the agent in a fresh event loop."""
    return asyncio.run(Agent(config).run())
