"""campus-agent: run | check | status | tail | doctor | firmware | profiles | keys.

The only module that configures logging and prints. Exit codes: 0 ok, 1 runtime failure,
2 bad config or usage, 3 agent not running (status).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from agent import __version__, cli_keys
from agent.config import (
    DEFAULT_PATH,
    SiteConfig,
    driver_profile_problems,
    load_config,
    profile_driver_class,
)
from agent.contract import COMMAND_REPLY, STATUS, TOPIC_ROOT, Kind, Origin, body_of, topic_level
from agent.errors import ConfigError
from agent.profiles import Profile, load_profile_file, shipped_profiles

EXIT_CONFIG = 2
RUN_UMASK = 0o027
EXIT_NOT_RUNNING = 3


def _setup_logging(level: str) -> None:
    """Lines on stderr. Under systemd stderr is the journal: journald stamps each line and
    reads its priority from a `<N>` prefix (sd-daemon(3)), so `journalctl -p warning` works;
    elsewhere we add the time ourselves. One line per state change, never one per event."""
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    logging.getLogger("aiosqlite").setLevel(logging.INFO)


def _stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM to the device and inode of the journal stream it gave us;
    it is ours only if stderr is still that stream (systemd.exec(5))."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino))


class _JournalFormatter(logging.Formatter):
    """`<N>` syslog priorities: debug 7, info 6, warning 4, error 3, critical 2."""

    def format(self, record: logging.LogRecord) -> str:
        n = record.levelno
        priority = (
            7
            if n <= logging.DEBUG
            else 6
            if n <= logging.INFO
            else 4
            if n <= logging.WARNING
            else 3
            if n <= logging.ERROR
            else 2
        )
        return f"<{priority}>{record.levelname} {super().format(record)}"


def _load(path: Path) -> SiteConfig | None:
    try:
        return load_config(path)
    except ConfigError as e:
        _print_problems(path, e)
        return None


def _print_problems(path: Path, e: ConfigError) -> None:
    n = len(e.problems)
    print(f"{path}: {n} problem{'s' if n != 1 else ''}:", file=sys.stderr)
    for p in e.problems:
        print(f"  {p}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    for w in config.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(
        f"{args.config}: ok ({_plural(len(config.buses), 'bus')}, "
        f"{_plural(len(config.devices), 'device')}, "
        f"broker {config.mqtt.url})"
    )
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def cmd_run(args: argparse.Namespace) -> int:
    from agent.runtime import run_agent

    # What the agent creates (store, WAL, status file) is not for other users, also where
    # no systemd unit sets UMask= (a stricter umask of the caller is kept).
    os.umask(os.umask(RUN_UMASK) | RUN_UMASK)
    _setup_logging(args.log_level)
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    for w in config.warnings:
        logging.getLogger("agent.config").warning("%s", w)
    # A ConfigError at start-up (a read-only store folder, an unreadable password file):
    # restarting will not fix it; main() exits 2, the unit's RestartPreventExitStatus.
    return run_agent(config)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def cmd_status(args: argparse.Namespace) -> int:
    from agent.runtime import status_path

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    path = status_path(config)
    try:
        doc: dict[str, Any] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        print(f"agent: not running (no status at {path})")
        return EXIT_NOT_RUNNING
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    pid = doc.get("pid")
    running = (
        isinstance(pid, int) and _alive(pid) and time.time() - float(doc.get("written", 0)) < 10
    )
    if args.json:
        return 0 if running else EXIT_NOT_RUNNING
    b = doc.get("broker", {})
    s = doc.get("store", {})
    head = "running" if running else "NOT RUNNING (last known state below)"
    print(f"agent:    {head}, version {doc.get('version')}, up {_age(doc.get('uptime'))}")
    conn = "connected" if b.get("connected") else "DISCONNECTED"
    err = f" — last error: {b['last_error']}" if b.get("last_error") else ""
    print(f"broker:   {conn} to {b.get('url')}{err}")
    print(
        f"backlog:  {doc.get('backlog')} events waiting, "
        f"oldest {_age(doc.get('oldest_unsent_age'))}"
        f"; publishing {doc.get('publish_rate')} events/s"
    )
    ev = doc.get("evicted", {})
    print(
        "evicted:  "
        + ", ".join(f"{k} {v}" for k, v in ev.items())
        + f" (store {_mb(s.get('used_bytes', 0))} of {_mb(s.get('max_size', 0))},"
        + f" schema v{s.get('schema_version', '?')})"
    )
    if up := s.get("upgraded"):
        print(
            f"store:    upgraded at this start from schema v{up.get('from_version')} to "
            f"v{up.get('to_version')}; copy of the old store: {up.get('backup') or 'none'}"
        )
    ref = doc.get("refused", {})
    if ref.get("count") or ref.get("parked"):
        # `count` is since this start; `parked` is what the store still holds back.
        last = f", last: {ref['last']}" if ref.get("last") else ""
        print(
            f"refused:  {ref.get('count', 0)} events refused by the broker since start, "
            f"{ref.get('parked', 0)} parked (kept; sent again after SIGHUP/`systemctl reload` "
            f"or an hour after the last retry){last}"
        )
    if ref.get("status_topic"):
        print(f"refused:  the broker refuses the status topic: {ref['status_topic']}")
    if s.get("recovered"):
        r = s["recovered"]
        print(f"store:    DAMAGED FILE moved to {r.get('moved_to')} ({r.get('reason')})")
    if s.get("last_error"):
        print(f"store:    ERROR {s['last_error']}")
    if doc.get("last_reload_error"):
        print("reload:   the last SIGHUP was refused; the old config is running")
    page = doc.get("status_page") or {}
    if page.get("url"):
        print(
            f"page:     {page['url']}"
            if page.get("listening")
            else f"page:     NOT SERVED: {page.get('error')}"
        )
    cards = doc.get("cards") or {}
    if cards.get("reads") or cards.get("card_id") == "raw":
        how = (
            "SENT IN CLEAR (card_id = raw)"
            if cards.get("card_id") == "raw"
            else f"hashed with key {cards.get('key_id')}"
        )
        print(
            f"cards:    {cards.get('reads', 0)} reads, {cards.get('events', 0)} access events, "
            f"{cards.get('duplicates', 0)} duplicates merged; numbers {how}"
        )
    print("devices:")
    for dev, st in doc.get("devices", {}).items():
        state = {True: "online", False: "OFFLINE", None: "unknown"}[st.get("online")]
        reason = f" ({st['reason']})" if st.get("reason") else ""
        print(f"  {dev:24} {state}{reason}")
    return 0 if running else EXIT_NOT_RUNNING


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 10e6 else f"{n / 1e6:.0f} MB"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# C0 controls (ESC among them), DEL and C1 controls (CSI 0x9b...): from the wire they could
# move the cursor, recolour or clear the operator's terminal, or fake a line. Shown escaped.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """`text` with every control character written as a visible `\\xNN` escape."""
    return text.translate(_CONTROLS)


def describe(topic: str, payload: bytes, prefix: str = TOPIC_ROOT) -> str:
    """One readable line for an event or status message, as the district sees it."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return f"{topic} <{len(payload)} bytes, not JSON>"
    if not isinstance(doc, dict):
        return f"{topic} {payload[:80]!r}"
    parts = topic.split("/")
    level = topic_level(topic, prefix)
    if level == STATUS:
        if doc.get("state") != "online":
            return f"status    {doc.get('state')}"
        return f"status    online backlog={doc.get('backlog')} rate={doc.get('publish_rate')}/s"
    kind = doc.get("kind") or (parts[-2] if len(parts) >= 2 else "?")
    who = f"{doc.get('category', '?')}/{doc.get('device', parts[-1])}"
    head = f"{kind:9} {who:24} seq={doc.get('seq')} {doc.get('ts', '')}"
    if kind == "telemetry":
        units = doc.get("units", {})
        vals = " ".join(f"{k}={v}{units.get(k, '')}" for k, v in doc.get("values", {}).items())
        q = doc.get("quality")
        return f"{head} {vals}" + (f" quality={q}" if q != "good" else "")
    if kind == "alarm":
        zone = f" zone={doc['zone']}" if "zone" in doc else ""
        return (
            f"{head} {doc.get('alarm')} {str(doc.get('state')).upper()} {doc.get('severity')}{zone}"
        )
    if kind == "state":
        return f"{head} " + " ".join(f"{k}={v}" for k, v in body_of(doc).items())
    if kind == "access":
        card = doc.get("card") or {}
        shown = (
            f"card={card['hash'][:12]}… key={card.get('key_id')}"
            if "hash" in card
            else f"card=RAW:{card.get('raw')}"
        )
        where = " ".join(f"{k}={doc[k]}" for k in ("door", "direction") if k in doc)
        return (
            f"{head} {doc.get('result')} {shown} {card.get('format')}/{card.get('bits')} "
            f"reader={doc.get('reader')} reads={doc.get('reads')} {where}".rstrip()
        )
    if kind == "audit":
        c = doc.get("command", {})
        return f"{head} command {c.get('action')} -> {c.get('result')} ({c.get('reason')})"
    if level == COMMAND_REPLY:
        return (
            f"reply     {parts[-1]:24} id={doc.get('id')} {doc.get('result')}: {doc.get('reason')}"
        )
    return f"{head} {payload[:120]!r}"


def _origin(config: SiteConfig) -> Origin:
    return Origin(config.agent.topic_prefix, config.agent.school, config.agent.gateway)


def _client_for(config: SiteConfig, role: str) -> Any:
    """A paho client with the site's broker settings (TLS, credentials), not connected."""
    from agent.mqtt_client import make_client

    client_id = f"{config.agent.school}.{config.agent.gateway}.{role}-{os.getpid()}"
    return make_client(config.mqtt, client_id, config.password())


def _serve(client: Any, config: SiteConfig, *, interrupted: int) -> int | None:
    """Connect and run paho's loop until the callbacks disconnect: None, or the exit code
    when it was interrupted (Ctrl-C) or could not connect."""
    address = config.mqtt.address
    try:
        client.connect(address.host, address.port, keepalive=30)
        client.loop_forever()
    except KeyboardInterrupt:
        return interrupted
    except OSError as e:
        print(f"cannot reach {config.mqtt.url}: {e}", file=sys.stderr)
        return 1
    return None


def cmd_tail(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    m = config.mqtt
    origin = _origin(config)
    if args.local:
        from agent.cli_local import tail_local

        return tail_local(args, config, describe=describe, printable=printable)
    client = _client_for(config, "tail")
    seen = 0
    refused: list[str] = []

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        if rc.is_failure:
            print(f"broker refused: {rc}", file=sys.stderr)
            refused.append(str(rc))
            c.disconnect()
            return
        c.subscribe(origin.everything, qos=1)
        print(f"tail: listening on {origin.everything} at {m.url}", file=sys.stderr, flush=True)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal seen
        if args.kind and topic_level(msg.topic, origin.prefix) != args.kind:
            return
        if args.raw:
            line = f"{msg.topic} {msg.payload.decode(errors='replace')}"
        else:
            line = describe(msg.topic, bytes(msg.payload), origin.prefix)
        print(printable(line), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            c.disconnect()

    client.on_connect = on_connect
    client.on_message = on_message
    failed = _serve(client, config, interrupted=0)
    return failed if failed is not None else (1 if refused else 0)


def _profile_problems(path: Path) -> tuple[Profile | None, list[str]]:
    try:
        profile = load_profile_file(path)
    except ConfigError as e:
        return None, [str(p) for p in e.problems]
    cls = profile_driver_class(profile)
    if cls is None:
        return profile, [f"{path}: driver: no installed driver reads {profile.driver!r} profiles"]
    return profile, [f"{path}: {f}: {m}" for f, m in driver_profile_problems(cls, profile)]


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent import doctor

    checks = doctor.run_checks(args.config, user=args.user, unit=args.unit, timeout=args.timeout)
    if args.json:
        print(orjson.dumps(doctor.as_json(checks), option=orjson.OPT_INDENT_2).decode())
        return doctor.worst(checks)
    text, code = doctor.report(checks)
    print(text)
    return code


def cmd_profiles(args: argparse.Namespace) -> int:
    shipped = shipped_profiles()
    if args.action == "list":
        print(f"{'id':24} {'category':10} {'driver':10} vendor / model")
        for pid, path in shipped.items():
            profile, problems = _profile_problems(path)
            if profile is None:
                print(f"{pid:24} BROKEN: {problems[0]}")
                continue
            model = f"{profile.vendor} / {profile.model}"
            print(f"{pid:24} {profile.category:10} {profile.driver:10} {model}")
        return 0
    if args.action == "check":
        if not args.target:
            print("profiles check: give a profile file", file=sys.stderr)
            return EXIT_CONFIG
        _, problems = _profile_problems(Path(args.target))
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            return EXIT_CONFIG
        print(f"{args.target}: ok")
        return 0
    target = args.target or ""
    found: Path | None = shipped.get(target)
    if found is None and target.endswith(".toml"):
        found = Path(target)
    if found is None or not found.exists():
        print(f"no profile {target!r}; known: {', '.join(shipped)}", file=sys.stderr)
        return EXIT_CONFIG
    profile, problems = _profile_problems(found)
    if profile is None or problems:
        print("\n".join(problems), file=sys.stderr)
        return EXIT_CONFIG
    print(f"{profile.id}: {profile.vendor} {profile.model} ({profile.category}, {profile.driver})")
    print(f"source: {profile.source}")
    d = profile.defaults
    print(
        f"defaults: poll {d.poll_interval:g}s, heartbeat {d.heartbeat:g}s, deadband {d.deadband:g}"
    )
    print("points:")
    for p in profile.points:
        where = " ".join(f"{k}={v}" for k, v in (p.wire or {}).items())
        scale = f" x{p.scale:g}" if p.scale != 1 else ""
        extra = f" {p.severity} zone={p.zone}" if p.kind == "alarm" else ""
        print(f"  {p.name:20} {p.kind:9} {p.unit or '':6}{scale}{extra}  [{where}]")
    if profile.actions:
        print("actions:")
        for a in profile.actions:
            print(f"  {a.name:20} {a.description}")
    return 0


def cmd_firmware(args: argparse.Namespace) -> int:
    """Ask the running agent (through the broker, allowlisted and audited like any command)
    to update a bridge node, and follow its progress until it is done or fails."""
    import uuid
    from datetime import UTC, datetime

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    device = config.device(args.device)
    if device is None or device.profile.action("firmware_update") is None:
        print(f"{args.device!r} is not a device with a firmware_update action", file=sys.stderr)
        return EXIT_CONFIG
    origin = _origin(config)
    cid = f"cli-fw-{uuid.uuid4().hex[:12]}"
    fw_args: dict[str, str] = {"file": args.file}
    if args.version:
        fw_args["version"] = args.version
    request = {
        "id": cid,
        "action": "firmware_update",
        "args": fw_args,
        "ts": datetime.now(UTC).isoformat(),
    }
    client = _client_for(config, "firmware")
    outcome: list[int] = []

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        if rc.is_failure:
            print(f"broker refused: {rc}", file=sys.stderr)
            outcome.append(1)
            c.disconnect()
            return
        c.subscribe(
            [
                (origin.reply_topic(args.device), 1),
                (origin.kind_filter(Kind.STATE, args.device), 1),
            ]
        )
        c.publish(origin.command_topic(args.device), orjson.dumps(request), qos=1)

    def on_message(c: Any, u: Any, msg: Any) -> None:
        try:
            doc = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if msg.topic == origin.reply_topic(args.device) and doc.get("id") == cid:
            if doc.get("result") != "ok":
                print(f"refused: {doc.get('code')}: {doc.get('reason')}", file=sys.stderr)
                outcome.append(1)
                c.disconnect()
            else:
                print(f"update started: {args.file} ({doc.get('data', {}).get('size')} bytes)")
        elif "fw_state" in doc and not msg.retain:
            state, pct = doc.get("fw_state"), doc.get("fw_progress")
            print(f"{args.device}: {state} {pct}%", flush=True)
            if state in ("done", "failed", "rejected"):
                outcome.append(0 if state == "done" else 1)
                c.disconnect()

    client.on_connect = on_connect
    client.on_message = on_message
    failed = _serve(client, config, interrupted=130)
    return failed if failed is not None else (outcome[0] if outcome else 1)


def doctor_user() -> str | None:
    """The service user when it exists here, else None (this process's own user)."""
    import pwd

    try:
        return pwd.getpwnam("campus-agent").pw_name
    except KeyError:
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campus-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", type=Path, default=DEFAULT_PATH, help="site config (agent.toml)")
        return p

    p = add("run", "run the agent")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(fn=cmd_run)
    add("check", "validate the config and every profile it names").set_defaults(fn=cmd_check)
    p = add("status", "show the running agent's state (broker, backlog, devices)")
    p.add_argument("--json", action="store_true", help="print the whole status document")
    p.set_defaults(fn=cmd_status)
    p = add("tail", "print this gateway's events as the district sees them")
    p.add_argument("--count", type=int, default=0, help="exit after this many messages")
    p.add_argument("--kind", help="only this kind (telemetry, alarm, access, state, audit)")
    p.add_argument("--raw", action="store_true", help="print topic and JSON payload")
    p.add_argument(
        "--local",
        action="store_true",
        help="read the running agent's own stream (its status page), not the broker",
    )
    p.set_defaults(fn=cmd_tail)
    p = add("doctor", "check this gateway: config, store, disk, ports, broker, clock, unit")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument(
        "--user",
        default=doctor_user(),
        help="judge file access as this user (default: campus-agent when it exists)",
    )
    p.add_argument("--unit", type=Path, help="the unit file to check (default: the installed one)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per network check")
    p.set_defaults(fn=cmd_doctor)
    p = add("firmware", "update a firmware-bridge node from a file in its bus's firmware_dir")
    p.add_argument("device", help="the device id of the node")
    p.add_argument("file", help="the image's file name inside the bus's firmware_dir")
    p.add_argument("--version", help="the version the image reports after it boots")
    p.set_defaults(fn=cmd_firmware)
    p = sub.add_parser("profiles", help="list, show or check device profiles")
    p.add_argument("action", choices=["list", "show", "check"])
    p.add_argument("target", nargs="?", help="a profile id (show) or a profile file (check)")
    p.set_defaults(fn=cmd_profiles)
    cli_keys.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except ConfigError as e:
        _print_problems(getattr(args, "config", Path("campus-agent")), e)
        return EXIT_CONFIG
    return code


if __name__ == "__main__":
    sys.exit(main())
