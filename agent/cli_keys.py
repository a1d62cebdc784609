"""`campus-agent keygen` and `campus-agent sign`: the district's side of signed commands.

keygen writes a new Ed25519 private key (PEM, mode 0600; it never leaves the district) and
prints the public key line for the gateways' `[[commands.keys]]`. sign prints a command,
signed for the topic it will be published on, as one line of JSON for `mosquitto_pub -s`
or any MQTT client. Neither talks to a broker.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from agent.contract import rfc3339, uuid7
from agent.signing import load_private_key, new_private_key_pem, public_key_text, sign
from agent.units import parse_duration


def cmd_keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    pem, public = new_private_key_pem()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"keygen: {out} exists; not overwriting a key", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"keygen: cannot create {out}: {e.strerror}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    print(f"private key written to {out} (keep it at the district; gateways never see it)")
    print("the gateways' agent.toml:\n")
    print(f'[[commands.keys]]\nid = "{args.kid}"\npublic_key = "{public_key_text(public)}"')
    return 0


def _command(args: argparse.Namespace) -> dict[str, Any]:
    if args.command_file is not None:
        text = (
            sys.stdin.buffer.read()
            if str(args.command_file) == "-"
            else args.command_file.read_bytes()
        )
        doc = orjson.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("the command must be a JSON object")
        return doc
    if not args.action:
        raise ValueError("give --action (and --args) or --command FILE")
    now = time.time()
    cmd: dict[str, Any] = {"id": uuid7(int(now * 1000)), "action": args.action, "ts": rfc3339(now)}
    if args.args:
        extra = orjson.loads(args.args)
        if not isinstance(extra, dict):
            raise ValueError("--args must be a JSON object")
        cmd["args"] = extra
    if args.expires_in:
        cmd["expires"] = rfc3339(now + parse_duration(args.expires_in))
    return cmd


def cmd_sign(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(args.key)
        doc = _command(args)
    except (OSError, ValueError, orjson.JSONDecodeError) as e:
        print(f"sign: {e}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(orjson.dumps(sign(args.topic, doc, key, args.kid)) + b"\n")
    return 0


def register(sub: Any) -> None:
    """Add `keygen` and `sign` to campus-agent's subcommands."""
    p = sub.add_parser("keygen", help="create a district signing key (Ed25519) for commands")
    p.add_argument("--out", type=Path, required=True, help="the private key file to create")
    p.add_argument("--kid", default="district-1", help="the key's id in the gateways' config")
    p.set_defaults(fn=cmd_keygen)
    p = sub.add_parser("sign", help="sign a command for the topic it will be published on")
    p.add_argument("--key", type=Path, required=True, help="the district's private key (PEM)")
    p.add_argument("--kid", required=True, help="the key's id, as the gateways know it")
    p.add_argument("--topic", required=True, help="the command topic it will be published on")
    p.add_argument("--action", help="build a command: its action (id and ts are made)")
    p.add_argument("--args", help="the action's args, a JSON object")
    p.add_argument("--expires-in", help="the command expires after this long, e.g. 60s")
    p.add_argument(
        "--command", dest="command_file", type=Path, help="sign this JSON file (-: stdin)"
    )
    p.set_defaults(fn=cmd_sign)
