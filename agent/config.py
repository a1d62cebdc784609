"""The site config (agent.toml): typed, validated models and the `check` messages.

Every problem is reported at once, each naming the file, the entry and what to do. Unknown
keys are errors. This module reads files; it never opens a port or a connection.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent import registry
from agent.cards import CardKey
from agent.config_files import FileChecks, resolve_path
from agent.config_sections import (
    AlarmsSection,
    CommandsSection,
    PrivacySection,
    StatusPageSection,
)
from agent.contract import TOPIC_ROOT
from agent.driver import Driver
from agent.errors import ConfigError, Problem, ProfileError
from agent.profiles import (
    ID_PATTERN,
    Profile,
    load_profile_file,
    parse_profile,
    pydantic_problems,
    shipped_profiles,
)
from agent.sample import BoundDevice, BusSpec
from agent.units import (
    DAY,
    HOUR,
    MINUTE,
    Duration,
    KiB,
    MiB,
    Size,
    TiB,
    duration_check,
    duration_range,
    number_range,
    size_range,
)
from agent.validation import CONFIG_FOLDER

if TYPE_CHECKING:
    pass

# Devices of these profile categories hand the core card reads (agent/cards.py).
CARD_CATEGORIES = frozenset({"card", "classboard", "ble"})
DEFAULT_PATH = Path("/etc/campus-agent/agent.toml")
TOPIC_SAFE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


# The range of every duration and size of the config, each with the reason a user reads.
_STATUS_INTERVAL = duration_range(1.0, DAY, "the status is re-published at least this often")
_DRAIN_TIMEOUT = duration_range(0, 5 * MINUTE, "the unit's TimeoutStopSec must be longer")
_KEEPALIVE = duration_range(5.0, 18 * HOUR, "MQTT allows at most 65535 s; below 5 s it is noise")
_CONNECT_TIMEOUT = duration_range(
    1.0, 5 * MINUTE, "a CONNACK comes within seconds, even over a WAN"
)
_RECONNECT_MIN = duration_range(0.1, HOUR, "quicker would hammer a broker that is down")
_RECONNECT_MAX = duration_range(0.1, HOUR, "a gateway must try again at least once an hour")
_RECONNECT_PROBE = duration_range(0.2, HOUR, "more often only spins the CPU", off=True)
_RECONNECT_SPREAD = duration_range(0, HOUR, "longer keeps the gateway offline for nothing")
_MAX_SIZE = size_range(256 * KiB, TiB, "the cap on the store's files on disk, e.g. '512MiB'")
_COMMIT_INTERVAL = duration_range(0.001, 1.0, "an alarm waits this long for its transaction")
_TELEMETRY_DELAY = duration_range(0, 10.0, "a crash loses up to this much telemetry")
_MAX_PACKET = size_range(2 * KiB, 16 * MiB, "a command is at most [commands] max_payload")
_AUDIT_KEEP = number_range(100, 1_000_000, "audit events kept unsent, oldest dropped first")

check_poll_interval = duration_check(0.01, DAY, "quicker reads the device in a busy loop")
PollInterval = Annotated[Duration, AfterValidator(check_poll_interval)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Strict):
    school: str = Field(pattern=TOPIC_SAFE)
    gateway: str = Field(pattern=TOPIC_SAFE)
    topic_prefix: str = TOPIC_ROOT
    status_interval: Annotated[Duration, _STATUS_INTERVAL] = 30.0
    # Where `campus-agent status` reads the local status; default: beside the store. Put it
    # on another file system (/run/campus-agent/status.json) so a full disk cannot hide it.
    status_file: Path | None = None
    drain_timeout: Annotated[Duration, _DRAIN_TIMEOUT] = 5.0

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError(f"{v!r} is not a topic prefix: no '+', '#', or leading/trailing '/'")
        return v


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is, parsed from the config's URL."""

    tls: bool
    host: str
    port: int


def parse_broker_url(url: str) -> BrokerAddress:
    """mqtt://host:1883, mqtts://host:8883, mqtt://[::1]:1883 -> BrokerAddress."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(
            f"{url!r}: the broker URL must start with mqtt:// or mqtts:// "
            "(e.g. 'mqtts://broker.example:8883')"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number between 1 and 65535") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: no host; write mqtts://HOST:PORT (IPv6 as [::1])")
    if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
        raise ValueError(
            f"{url!r}: only scheme, host and port belong in the URL; "
            "put credentials in username/password_file"
        )
    tls = parts.scheme == "mqtts"
    return BrokerAddress(tls=tls, host=host, port=port or (8883 if tls else 1883))


class MqttSection(_Strict):
    url: str
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    keepalive: Annotated[Duration, _KEEPALIVE] = 30.0
    connect_timeout: Annotated[Duration, _CONNECT_TIMEOUT] = 10.0
    window: int = Field(default=200, ge=1, le=10000)
    reconnect_min: Annotated[Duration, _RECONNECT_MIN] = 1.0
    reconnect_max: Annotated[Duration, _RECONNECT_MAX] = 60.0
    # While the broker cannot be reached, a TCP connect to its port every reconnect_probe
    # (0: never) ends the backoff as soon as it listens again; the reconnection then waits a
    # random part of reconnect_spread, so that a district does not come back all at once.
    reconnect_probe: Annotated[Duration, _RECONNECT_PROBE] = 1.0
    reconnect_spread: Annotated[Duration, _RECONNECT_SPREAD] = 1.0
    # Sending a password over mqtt:// puts it on the wire in plain text: refused unless set.
    allow_plaintext_password: bool = False
    # MQTT 5: the largest packet we accept, told to the broker in CONNECT; it never sends a
    # bigger one (a command is at most [commands] max_payload). 3.1.1 has no such field: the
    # broker's own limit (mosquitto `max_packet_size`) is then the only guard (docs/scaling.md).
    max_packet_size: Annotated[Size, _MAX_PACKET] = 20 * KiB

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_broker_url(v)
        return v

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.url)


class StoreSection(_Strict):
    path: Path = Path("/var/lib/campus-agent/outbox.db")
    max_size: Annotated[Size, _MAX_SIZE] = 512 * 1024**2
    commit_interval: Annotated[Duration, _COMMIT_INTERVAL] = 0.005
    # Telemetry alone may wait this long to be committed with others (alarms never wait).
    telemetry_delay: Annotated[Duration, _TELEMETRY_DELAY] = 0.05
    synchronous: Literal["full", "normal"] = "full"
    # Audit events (who commanded what) are never evicted to make room for other events;
    # they are kept up to this many, and up to a quarter of max_size, oldest dropped first.
    audit_keep: Annotated[int, _AUDIT_KEEP] = 20_000


class _BusBase(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    id: str = Field(pattern=ID_PATTERN)
    driver: str


class _DeviceBase(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    id: str = Field(pattern=ID_PATTERN)
    profile: str | dict[str, Any]
    bus: str
    address: int | str | None = None
    location: dict[str, Any] = Field(default_factory=dict)
    poll_interval: PollInterval | None = None

    @field_validator("location")
    @classmethod
    def _location(cls, v: dict[str, Any]) -> dict[str, str | int]:
        # Copied into every event's JSON, whose readers keep integers exact up to 2**53.
        for key, x in v.items():
            whole = isinstance(x, int) and not isinstance(x, bool) and abs(x) <= 2**53
            if not (isinstance(x, str) or whole):
                raise ValueError(
                    f"{key}: give text or a whole number between -2**53 and 2**53 "
                    '(e.g. building = "A", floor = 1)'
                )
        return v


class _Site(_Strict):
    agent: AgentSection
    mqtt: MqttSection
    store: StoreSection = StoreSection()
    privacy: PrivacySection = PrivacySection()
    commands: CommandsSection = CommandsSection()
    alarms: AlarmsSection = AlarmsSection()
    status_page: StatusPageSection = StatusPageSection()
    profile_dirs: list[Path] = Field(default_factory=list)
    buses: list[_BusBase] = Field(default_factory=list)
    devices: list[_DeviceBase] = Field(default_factory=list)

    @model_validator(mode="after")
    def _packet_fits_a_command(self) -> _Site:
        need = self.commands.max_payload + 1024  # the topic and properties of a command
        if self.mqtt.protocol == "5" and self.mqtt.max_packet_size < need:
            raise ValueError(
                f"[mqtt] max_packet_size ({self.mqtt.max_packet_size}) must be at least "
                f"[commands] max_payload + 1KiB ({need}): the broker would never deliver "
                "the largest command"
            )
        return self


@dataclass(frozen=True)
class SiteConfig:
    """A validated site config, with every device's profile and driver options resolved."""

    path: Path
    agent: AgentSection
    mqtt: MqttSection
    store: StoreSection
    privacy: PrivacySection
    commands: CommandsSection
    buses: tuple[BusSpec, ...]
    devices: tuple[BoundDevice, ...]
    alarms: AlarmsSection = field(default_factory=AlarmsSection)
    card_key: CardKey | None = None
    status_page: StatusPageSection = field(default_factory=StatusPageSection)
    status_token: str | None = field(default=None, repr=False)  # never logged
    # What `check` prints (and `run` logs) as a warning: allowed, but worth a second look.
    warnings: tuple[Problem, ...] = ()

    def device(self, device_id: str) -> BoundDevice | None:
        """The device with this id, or None."""
        for d in self.devices:
            if d.id == device_id:
                return d
        return None

    def password(self) -> str | None:
        """The broker password, from its file or environment variable (never logged)."""
        if self.mqtt.password_file is not None:
            try:
                return self.mqtt.password_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
                problem = Problem(str(self.path), "mqtt.password_file", f"cannot read it: {why}")
                raise ConfigError([problem]) from None
        if self.mqtt.password_env is not None:
            return os.environ.get(self.mqtt.password_env)
        return None


def _one_of(names: list[str]) -> str:
    return ", ".join(names) if names else "(none)"


class _Checker(FileChecks):
    """Collects every problem in one pass over a config."""

    def __init__(self, path: Path, shown: str) -> None:
        self.path = path
        self.file = shown
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.profile_files: dict[str, str] = {}

    def profile_for(
        self, entry: str, ref: str | dict[str, Any], base: Path, dirs: list[Path]
    ) -> Profile | None:
        try:
            if isinstance(ref, dict):
                return parse_profile(ref, f"{self.file}: {entry}")
            if ref.endswith(".toml") or "/" in ref:
                profile = load_profile_file(resolve_path(base, Path(ref)))
                self.profile_files[profile.id] = str(resolve_path(base, Path(ref)))
                return profile
            # The site's own profile folders win over the shipped profiles.
            known: dict[str, Path] = dict(shipped_profiles())
            for d in dirs:
                known.update(shipped_profiles(d))
            if ref not in known:
                self.add(
                    entry,
                    f"profile {ref!r} not found (known: {_one_of(sorted(known))}); "
                    "give a shipped id or a path to a .toml file",
                )
                return None
            self.profile_files[ref] = str(known[ref])
            return load_profile_file(known[ref])
        except ProfileError as e:
            self.problems.extend(e.problems)
            return None

    def driver_options(
        self, entry: str, model: type[BaseModel], extra: dict[str, Any]
    ) -> BaseModel | None:
        try:
            # Path keys of a driver (agent.validation.ConfigPath) resolve against this folder.
            return model.model_validate(extra, context={CONFIG_FOLDER: self.path.parent})
        except ValidationError as e:
            self.problems.extend(pydantic_problems(self.file, e, prefix=entry))
            return None


def _extras(model: BaseModel) -> dict[str, Any]:
    return dict(model.model_extra or {})


def driver_profile_problems(cls: type[Driver], profile: Profile) -> list[tuple[str, str]]:
    """(field, message) pairs from the driver's own check of a profile."""
    return list(cls.check_profile(profile))


def profile_driver_class(profile: Profile) -> type[Driver] | None:
    """A registered driver class that reads this profile's `driver`, or None."""
    return registry.profile_driver_class(profile.driver)


def _known_actions(devices: list[BoundDevice], dirs: list[Path]) -> set[str]:
    """CATEGORY.ACTION of every known profile, DEVICE.ACTION of every configured device."""
    known = {f"{d.id}.{a.name}" for d in devices for a in d.profile.actions}
    profiles = [d.profile for d in devices]
    files: dict[str, Path] = {}
    for d in [*dirs, None]:
        files.update(shipped_profiles(d) if d is not None else shipped_profiles())
    for file in files.values():
        try:
            profiles.append(load_profile_file(file))
        except ProfileError:
            continue  # reported where a device uses it
    known |= {f"{p.category}.{a.name}" for p in profiles for a in p.actions}
    return known


def load_config(path: Path | str) -> SiteConfig:
    """Read, validate and resolve a site config; raise ConfigError listing every problem."""
    path = Path(path)
    shown = str(path)  # messages name the file as the user wrote it
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([Problem(str(path), "", "file not found")]) from None
    except OSError as e:
        raise ConfigError([Problem(str(path), "", f"cannot read: {e.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(path), "", "not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem(str(path), "", f"not valid TOML: {e}")]) from None
    try:
        site = _Site.model_validate(data)
    except ValidationError as e:
        raise ConfigError(pydantic_problems(str(path), e)) from None

    # Absolute once, here: every relative path is taken from the config file's folder
    # exactly once, whatever the working directory (`--config run/agent.toml`).
    path = Path(os.path.abspath(path))
    c = _Checker(path, shown)
    base = path.parent
    c.check_files(site.mqtt, site.privacy, base)
    page = site.status_page
    if page.token_file is not None:
        page = page.model_copy(update={"token_file": resolve_path(base, page.token_file)})
    status_token = c.read_token("status_page.token_file", page.token_file)
    dirs = [resolve_path(base, d) for d in site.profile_dirs]

    buses: list[BusSpec] = []
    bus_drivers: dict[str, type[Driver] | None] = {}
    for i, b in enumerate(site.buses):
        entry = f"buses[{i}]"
        if b.id in bus_drivers:
            c.add(f"{entry}.id", f"duplicate bus id {b.id!r}; bus ids must be unique")
            continue
        cls = registry.driver_class(b.driver)
        if cls is None:
            c.add(
                f"{entry}.driver",
                f"unknown driver {b.driver!r}; drivers are: {_one_of(registry.driver_keys())}",
            )
            bus_drivers[b.id] = None
            continue
        bus_drivers[b.id] = cls
        opts = c.driver_options(entry, cls.bus_model, _extras(b))
        if opts is not None:
            buses.append(BusSpec(id=b.id, driver=b.driver, options=opts))

    devices: list[BoundDevice] = []
    seen: set[str] = set()
    checked_profiles: set[str] = set()
    for i, d in enumerate(site.devices):
        entry = f"devices[{i}]"
        if d.id in seen:
            c.add(f"{entry}.id", f"duplicate device id {d.id!r}; device ids must be unique")
            continue
        seen.add(d.id)
        if d.bus not in bus_drivers:
            c.add(
                f"{entry}.bus",
                f"no bus named {d.bus!r}; buses are: {_one_of([b.id for b in site.buses])}",
            )
            continue
        profile = c.profile_for(f"{entry}.profile", d.profile, base, dirs)
        cls = bus_drivers[d.bus]
        if profile is None or cls is None:
            continue
        if profile.driver != cls.profile_driver:
            c.add(
                f"{entry}.profile",
                f"profile {profile.id!r} is for {profile.driver!r} devices, but bus {d.bus!r} "
                f"uses driver {cls.key!r}; put the device on a {profile.driver} bus",
            )
            continue
        opts = c.driver_options(entry, cls.device_model, _extras(d))
        if opts is None:
            continue
        if profile.id not in checked_profiles:
            checked_profiles.add(profile.id)
            where = c.profile_files.get(profile.id, f"{c.file}: {entry}.profile")
            c.problems += [Problem(where, f, m) for f, m in driver_profile_problems(cls, profile)]
        poll = d.poll_interval or profile.defaults.poll_interval
        try:
            check_poll_interval(poll)
        except ValueError as e:
            c.add(f"{entry}.poll_interval", f"the profile's poll_interval: {e}")
            continue
        bound = BoundDevice(
            id=d.id,
            profile=profile,
            bus=d.bus,
            address=d.address,
            poll_interval=poll,
            location=dict(d.location),
            options=opts,
        )
        device_problems = cls.check_device(bound)
        for f, m in device_problems:
            c.add(f"{entry}.{f}", m)
        if not device_problems:
            devices.append(bound)

    known_actions = _known_actions(devices, dirs)
    for i, rule in enumerate(site.commands.allow):
        if rule not in known_actions:
            c.add(
                f"commands.allow[{i}]",
                f"{rule!r} matches no action of a configured device or a known profile; "
                "write CATEGORY.ACTION or DEVICE-ID.ACTION, e.g. "
                + _one_of(sorted(known_actions)[:6]),
            )

    card_devices = [d.id for d in devices if d.profile.category in CARD_CATEGORIES]
    if site.privacy.card_id == "raw":
        c.warnings.append(
            Problem(
                shown,
                "privacy.card_id",
                'card numbers are sent in clear ("raw"): students\' personal data leaves '
                "the gateway; only with a lawful basis (docs/privacy.md)",
            )
        )
    if card_devices and site.privacy.card_id == "hash" and site.privacy.card_key_file is None:
        c.add(
            "privacy.card_key_file",
            f"required: card readers are configured ({', '.join(card_devices[:3])}) and card "
            "numbers are hashed with the school's key (docs/privacy.md)",
        )
    if c.problems:
        raise ConfigError(c.problems)
    mqtt = site.mqtt.model_copy(
        update={
            k: resolve_path(base, getattr(site.mqtt, k))
            for k in ("ca_file", "cert_file", "key_file", "password_file")
            if getattr(site.mqtt, k) is not None
        }
    )
    store = site.store.model_copy(update={"path": resolve_path(base, site.store.path)})
    status_file = site.agent.status_file or store.path.with_name(store.path.name + ".status.json")
    agent = site.agent.model_copy(update={"status_file": resolve_path(base, status_file)})
    privacy = site.privacy
    card_key = None
    if privacy.card_key_file is not None:
        key_file = resolve_path(base, privacy.card_key_file)
        privacy = privacy.model_copy(update={"card_key_file": key_file})
        if privacy.card_id == "hash":
            try:
                card_key = CardKey.load(key_file, privacy.card_key_id)
            except ConfigError as e:
                raise ConfigError(
                    [Problem(shown, p.entry, p.message) for p in e.problems]
                ) from None
    return SiteConfig(
        path=path,
        agent=agent,
        mqtt=mqtt,
        store=store,
        privacy=privacy,
        card_key=card_key,
        commands=site.commands,
        alarms=site.alarms,
        status_page=page,
        status_token=status_token,
        buses=tuple(buses),
        devices=tuple(devices),
        warnings=tuple(c.warnings),
    )
