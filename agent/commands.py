"""Commands from the district: validate, authorize, route to a driver, reply, audit.

Only actions that the device's profile declares AND the site's allowlist names are carried
out; expired and replayed requests are refused (replays are remembered in the store, so
across restarts). Every outcome gets a reply with a reason, a counter, and an audit event.
This module never talks to a device itself (it calls the driver's `act`) and never speaks
MQTT: it hands the publisher a plain reply (topic, payload, correlation data).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Annotated, Any

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from agent.config import SiteConfig
from agent.contract import (
    UNKNOWN_DEVICE,
    Code,
    CommandOutcome,
    Kind,
    NewEvent,
    Origin,
    Result,
    device_of,
    reply_document,
)
from agent.errors import ActionError, BadArgumentError
from agent.profiles import Action
from agent.sample import BoundDevice, Value
from agent.signing import SignatureError, verify
from agent.validation import first_error

log = logging.getLogger(__name__)

MAX_PAYLOAD = 16 * 1024  # the default of [commands] max_payload
ACTION_TIMEOUT = 15.0


def _text_only(v: object) -> object:
    if not isinstance(v, str):
        raise ValueError("must be an RFC 3339 date-time string, e.g. '2026-12-05T08:00:00Z'")  # noqa: TRY004 - pydantic wants ValueError
    return v


# The contract says RFC 3339 text; pydantic alone would also take a number of seconds.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_text_only)]


class CommandSignature(BaseModel):
    """An Ed25519 signature of the command's canonical bytes (agent/signing.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kid: str = Field(min_length=1, max_length=64, description="The signing key's id.")
    ed25519: str = Field(min_length=1, max_length=200, description="The signature, base64.")


class CommandRequest(BaseModel):
    """The JSON a district sends on campus/v1/{school}/{gateway}/cmd/{device}."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    action: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    args: dict[str, Any] = Field(default_factory=dict)
    ts: Timestamp
    expires: Timestamp | None = None
    sig: CommandSignature | None = None


class Rejected(Exception):  # noqa: N818 - a control-flow outcome, not an error condition
    """A command refused for a reason the district is told."""

    def __init__(self, code: Code, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# The id of the command whose action is being carried out (None outside one): a driver's
# background task started by `act` inherits it, so a later failure is audited under it.
CURRENT_COMMAND: ContextVar[str | None] = ContextVar("campus_agent_command", default=None)

ActFn = Callable[[BoundDevice, str, Mapping[str, Any]], Awaitable[Mapping[str, Value]]]
# Record a command id until a time: True if new, else the outcome of the first one ("" if
# it has none yet); and note that outcome once known.
Remember = Callable[[str, float], Awaitable[bool | str]]
NoteOutcome = Callable[[str, str], Awaitable[None]]
# Publish a reply: topic, payload, MQTT 5 correlation data (or None); False when offline.
ReplyFn = Callable[[str, bytes, bytes | None], bool]


def check_args(action: Action, args: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a command's args against the profile's declaration."""
    out: dict[str, Any] = {}
    for name in args:
        if name not in action.args:
            raise Rejected(Code.BAD_ARGS, f"unknown argument {name!r} for action {action.name!r}")
    types: dict[str, tuple[type, ...]] = {
        "bool": (bool,),
        "int": (int,),
        "float": (int, float),
        "str": (str,),
    }
    for name, spec in action.args.items():
        if name not in args:
            if spec.required:
                raise Rejected(Code.BAD_ARGS, f"missing argument {name!r}")
            continue
        value = args[name]
        ok = isinstance(value, types[spec.type]) and not (
            spec.type in ("int", "float") and isinstance(value, bool)
        )
        if not ok:
            raise Rejected(Code.BAD_ARGS, f"argument {name!r} must be {spec.type}")
        if isinstance(value, str) and len(value) > spec.max_length:
            raise Rejected(Code.BAD_ARGS, f"argument {name!r} longer than {spec.max_length}")
        out[name] = value
    return out


class CommandRouter:
    """Handles one command message at a time per device, from receipt to audit event."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        act: ActFn,
        remember: Remember,
        note_outcome: NoteOutcome,
        reply: ReplyFn,
        record: Callable[[NewEvent], None],
    ) -> None:
        self.config = config
        self._keys = config.commands.public_keys()
        self._act = act
        self._remember = remember
        self._note_outcome = note_outcome
        self._reply = reply
        self._record = record
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.failed = 0
        self.response_topics_refused = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._origin = Origin(config.agent.topic_prefix, config.agent.school, config.agent.gateway)

    def reconfigure(self, config: SiteConfig) -> None:
        """Use a reloaded config (devices, allowlist, keys) from now on."""
        self.config = config
        self._keys = config.commands.public_keys()

    def status(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "failed": self.failed,
            "rejected": dict(self.rejected),
            "response_topics_refused": self.response_topics_refused,
        }

    async def handle(
        self,
        topic: str,
        payload: bytes,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        """Process one message from the command topic (and its MQTT 5 response topic)."""
        device_id = device_of(topic)
        req: CommandRequest | None = None
        device: BoundDevice | None = None
        extra: dict[str, Any] = {}  # what the audit event adds (the signing key)
        try:
            req, doc = self._parse(payload)
            device = self.config.device(device_id)
            outcome = await self._authorize_and_run(req, doc, topic, device, device_id, extra=extra)
        except Rejected as r:
            outcome = CommandOutcome(r.code, r.detail)
        except Exception as e:  # noqa: BLE001 - every command gets one reply and one audit
            log.warning("command failed in the gateway: device=%r error=%r", device_id[:64], e)
            outcome = CommandOutcome(Code.ACTION_FAILED, f"gateway error: {_short(e)}")
        if outcome.result is Result.OK:
            self.accepted += 1
        elif outcome.result is Result.FAILED:
            self.failed += 1
        else:
            self.rejected[str(outcome.code)] += 1
        log.info(
            "command %s: device=%r action=%r id=%r code=%s",
            outcome.result,
            device_id,
            req.action if req else None,
            req.id if req else None,
            outcome.code,
        )
        self._send_reply(device_id, req, outcome, response_topic, correlation)
        self._audit(device, device_id, req, outcome, extra)

    def _parse(self, payload: bytes) -> tuple[CommandRequest, dict[str, Any]]:
        limit = self.config.commands.max_payload
        if len(payload) > limit:
            raise Rejected(Code.TOO_LARGE, f"command larger than {limit} bytes")
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise Rejected(Code.MALFORMED, "payload is not JSON") from None
        if not isinstance(doc, dict):
            raise Rejected(Code.MALFORMED, "payload must be a JSON object")
        try:
            return CommandRequest.model_validate(doc), doc
        except ValidationError as e:
            raise Rejected(Code.INVALID, first_error(e)) from None

    async def _authorize_and_run(
        self,
        req: CommandRequest,
        doc: dict[str, Any],
        topic: str,
        device: BoundDevice | None,
        device_id: str,
        *,
        extra: dict[str, Any],
    ) -> CommandOutcome:
        if device is None:
            raise Rejected(Code.UNKNOWN_DEVICE, f"no device {device_id!r} on this gateway")
        action = device.profile.action(req.action)
        if action is None:
            raise Rejected(
                Code.UNSUPPORTED,
                f"profile {device.profile.id!r} declares no action {req.action!r}",
            )
        allow = self.config.commands.allow
        if (
            f"{device.profile.category}.{req.action}" not in allow
            and f"{device.id}.{req.action}" not in allow
        ):
            raise Rejected(
                Code.NOT_ALLOWED, f"action {req.action!r} is not allowlisted on this site"
            )
        if (kid := self._check_signature(action, doc, topic)) is not None:
            extra["signed_by"] = kid
        args = check_args(action, req.args)
        now = time.time()
        issued = req.ts.timestamp()
        max_age = self.config.commands.max_age
        skew = self.config.commands.clock_skew
        if issued > now + skew:
            raise Rejected(Code.FROM_FUTURE, "command timestamp is in the future")
        if req.expires is not None and req.expires.timestamp() < now:
            raise Rejected(Code.EXPIRED, "command expired before it arrived")
        if now - issued > max_age:
            raise Rejected(Code.EXPIRED, f"command older than {max_age:g}s")
        keep_until = max(issued + max_age + skew, req.expires.timestamp() if req.expires else 0)
        first = await self._remember(req.id, keep_until)
        if first is not True:
            raise Rejected(
                Code.REPLAYED,
                f"command id {req.id!r} was already received"
                + (f" (its outcome: {first})" if first else ""),
            )
        token = CURRENT_COMMAND.set(req.id)
        try:
            outcome = await self._run(device, req.action, args)
        finally:
            CURRENT_COMMAND.reset(token)
        await self._note_outcome(req.id, str(outcome.code))
        return outcome

    async def _run(
        self, device: BoundDevice, action: str, args: Mapping[str, Any]
    ) -> CommandOutcome:
        lock = self._locks.setdefault(device.id, asyncio.Lock())
        try:
            async with lock, asyncio.timeout(ACTION_TIMEOUT):  # one action at a time per device
                data = await self._act(device, action, args)
        except BadArgumentError as e:
            return CommandOutcome(Code.BAD_ARGS, str(e))
        except ActionError as e:
            return CommandOutcome(Code.ACTION_FAILED, str(e))
        except TimeoutError:
            return CommandOutcome(Code.TIMEOUT, f"device did not complete in {ACTION_TIMEOUT:g}s")
        except Exception as e:  # noqa: BLE001 - a driver bug must still get a reply and audit
            log.warning("driver raised: device=%s action=%s error=%r", device.id, action, e)
            return CommandOutcome(Code.ACTION_FAILED, f"driver error: {_short(e)}")
        return CommandOutcome(Code.OK, "done", data)

    def _check_signature(self, action: Action, doc: dict[str, Any], topic: str) -> str | None:
        """The key id that signed the command (None: unsigned and allowed); else Rejected."""
        cmds = self.config.commands
        mode = cmds.signature_mode
        if cmds.keys and action.signature == "required":
            mode = "required"
        if mode == "off":
            return None
        try:
            kid = verify(topic, doc, self._keys)
        except SignatureError as e:
            raise Rejected(Code.BAD_SIGNATURE, str(e)) from None
        if kid is None and mode == "required":
            why = "this site" if action.signature == "site" else f"action {action.name!r}"
            raise Rejected(Code.UNSIGNED, f"{why} requires a signed command")
        return kid

    def _send_reply(
        self,
        device_id: str,
        req: CommandRequest | None,
        outcome: CommandOutcome,
        response_topic: str | None,
        correlation: bytes | None,
    ) -> None:
        known = self.config.device(device_id) is not None
        body = reply_document(
            outcome,
            req.id if req else None,
            device_id if known else device_id[:64],
            req.action if req else None,
        )
        self._reply(self._origin.reply_topic(device_id if known else UNKNOWN_DEVICE), body, None)
        if response_topic:
            if self._response_topic_allowed(response_topic):
                self._reply(response_topic, body, correlation or None)
            else:
                self.response_topics_refused += 1

    def _response_topic_allowed(self, topic: str) -> bool:
        """Only under the configured prefix (default: this gateway's cmd-reply/): a request
        may not make the gateway publish on another gateway's or the district's topics."""
        prefix = self.config.commands.response_topics or self._origin.reply_prefix
        return (
            topic.startswith(prefix) and len(topic) <= 512 and not any(c in topic for c in "+#\0")
        )

    def _audit(
        self,
        device: BoundDevice | None,
        device_id: str,
        req: CommandRequest | None,
        outcome: CommandOutcome,
        extra: dict[str, Any],
    ) -> None:
        command = outcome.record(req.id if req else None, req.action if req else None)
        if device is None:
            command["requested_device"] = device_id[:64]
        command.update(extra)
        self._record(
            NewEvent(
                kind=Kind.AUDIT,
                device=device.id if device else self.config.agent.gateway,
                category=device.profile.category if device else "gateway",
                profile=device.profile.id if device else "gateway",
                ts=time.time(),
                body={"command": command},
            )
        )


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 200 else text[:197] + "..."
