"""The config sections about commands, alarms, card privacy and the local status page
(agent/config.py has the rest).

Every value has a range with the reason a user reads when it is refused.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.signing import public_key_from_text
from agent.units import (
    DAY,
    HOUR,
    MINUTE,
    Duration,
    KiB,
    MiB,
    Size,
    duration_range,
    number_range,
    size_range,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_MAX_AGE = duration_range(1.0, DAY, "an older command is refused as expired")
_CLOCK_SKEW = duration_range(0, HOUR, "how far ahead of this clock a command's stamp may be")

_DEDUP_WINDOW = duration_range(0, MINUTE, "a card held on a reader is one swipe this long")
_CMD_RATE = number_range(0.1, 1000, "commands handled a second; more is a flood")
_CMD_BURST = number_range(1, 10_000, "commands handled at once before the rate applies")
_CMD_QUEUE = number_range(1, 10_000, "commands waiting; each holds its payload in memory")
_BUSY_REPLIES = number_range(0.1, 100, "busy replies a second during a flood")
_BUSY_AUDIT = duration_range(1.0, HOUR, "one audit event sums up the drops of this long")
_MAX_PAYLOAD = size_range(KiB, MiB, "the largest command; 16KiB holds any profile's")
_STORM_RATE = number_range(0.1, 10_000, "alarm edges a second one device may send")
_STORM_BURST = number_range(1, 100_000, "alarm edges at once, e.g. every zone together")
_STORM_REPORT = duration_range(
    1.0, 10 * MINUTE, "a storming device's latest edges go out this often"
)

_PAGE_REFRESH = duration_range(1.0, 10 * MINUTE, "the page asks for the status this often")

# A device read more often spins the CPU; less often than daily it looks dead.


class PrivacySection(_Strict):
    """Card numbers (agent/cards.py, docs/privacy.md)."""

    card_id: Literal["hash", "raw"] = "hash"
    card_key_file: Path | None = None
    # The key's id in every access event (rotation: the district holds old and new keys);
    # default: a fingerprint of the key.
    card_key_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,32}$")
    # "exact": the number as read; "wiegand26": its low 24 bits (an EM4100 reader and a
    # Wiegand-26 converter then give one physical card the same hash).
    card_match: Literal["exact", "wiegand26"] = "exact"
    dedup_window: Annotated[Duration, _DEDUP_WINDOW] = 2.0


class SigningKey(_Strict):
    """A district public key commands may be signed with (docs/mqtt-api.md, Signed commands)."""

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # 32 raw bytes in base64 (`campus-agent keygen` prints it) or a PEM "PUBLIC KEY" block.
    public_key: str = Field(max_length=2000)

    @field_validator("public_key")
    @classmethod
    def _key(cls, v: str) -> str:
        public_key_from_text(v)
        return v


class CommandsSection(_Strict):
    allow: list[str] = Field(default_factory=list)
    max_age: Annotated[Duration, _MAX_AGE] = 300.0
    clock_skew: Annotated[Duration, _CLOCK_SKEW] = 30.0
    # An MQTT 5 request's response topic is used only under this prefix (default: this
    # gateway's own cmd-reply/); any other is ignored (the reply still goes to cmd-reply/).
    response_topics: str | None = Field(default=None, min_length=1, max_length=200)
    # A flood of commands costs at most this much: `rate` a second (`burst` saved up) and
    # `queue` waiting; the rest is dropped, counted, answered `busy` at most `busy_replies`
    # a second and summed up in one audit event per `busy_audit_interval`.
    rate: Annotated[float, _CMD_RATE] = 10.0
    burst: Annotated[int, _CMD_BURST] = 50
    queue: Annotated[int, _CMD_QUEUE] = 100
    busy_replies: Annotated[float, _BUSY_REPLIES] = 2.0
    busy_audit_interval: Annotated[Duration, _BUSY_AUDIT] = 10.0
    max_payload: Annotated[Size, _MAX_PAYLOAD] = 16 * KiB
    # Ed25519 signatures: required on every command, optional (checked when present), or
    # off. Default: required once a key is configured. A profile's action may require one
    # (`signature = "required"`, e.g. disarm) whenever keys are configured, whatever this says.
    signatures: Literal["required", "optional", "off"] | None = None
    keys: list[SigningKey] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _keys_for_signatures(self) -> CommandsSection:
        if self.signatures in ("required", "optional") and not self.keys:
            raise ValueError(
                f'signatures = "{self.signatures}" needs at least one [[commands.keys]] '
                "(the district's public key)"
            )
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("two [[commands.keys]] have the same id")
        return self

    @property
    def signature_mode(self) -> str:
        """What the site asks of every command: required, optional or off."""
        return self.signatures or ("required" if self.keys else "off")

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {k.id: public_key_from_text(k.public_key) for k in self.keys}

    @field_validator("response_topics")
    @classmethod
    def _response_prefix(cls, v: str | None) -> str | None:
        if v is not None and (any(c in v for c in "+#\0") or v.startswith("/")):
            raise ValueError(f"{v!r} is not a topic prefix: no '+', '#', NUL or leading '/'")
        return v


class AlarmsSection(_Strict):
    """Alarm storms: a device sending more alarm edges than this is coalesced (agent/points.py
    StormLimit): first edges sent, then the latest of each point every `storm_report`."""

    storm_rate: Annotated[float, _STORM_RATE] = 20.0
    storm_burst: Annotated[int, _STORM_BURST] = 40
    storm_report: Annotated[Duration, _STORM_REPORT] = 10.0


class StatusPageSection(_Strict):
    """The local status page and `tail --local` (agent/status_page.py, docs/status-page.md)."""

    enabled: bool = True
    # An IP address: 127.0.0.1 (this machine only), 0.0.0.0 / :: (every interface), or one
    # interface's own address. Anything but loopback needs token_file.
    bind: str = "127.0.0.1"
    port: int = Field(default=8470, ge=1, le=65535)
    refresh: Annotated[Duration, _PAGE_REFRESH] = 5.0
    token_file: Path | None = None

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(
                f"{v[:60]!r} is not an IP address: give '127.0.0.1' (this machine only), "
                "'0.0.0.0' (every IPv4 interface), '::' or one interface's address"
            ) from None
        return v

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.bind).is_loopback

    @model_validator(mode="after")
    def _token_off_loopback(self) -> StatusPageSection:
        if self.enabled and not self.loopback and self.token_file is None:
            raise ValueError(
                f"bind = {self.bind!r} can be reached from the network: set token_file (a file "
                "holding a long random token, mode 600) or bind = '127.0.0.1'"
            )
        return self
