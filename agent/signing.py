"""Signed commands: the district signs, gateways verify (Ed25519, the `cryptography` package).

A signed command carries `"sig": {"kid": KEY_ID, "ed25519": BASE64}` beside its fields. What
is signed is not the message's bytes (a JSON library may re-order or re-space them) but the
canonical bytes of the command *and the topic it was sent on*:

    b"campus-cmd-v1\\n" + topic (UTF-8) + b"\\n" + JSON of the command without "sig",
    keys sorted, no whitespace, UTF-8 (not \\u-escaped), numbers as JSON writes them

so a command signed for one device, gateway or school cannot be replayed at another, and
its id, ts and expires (replay and age checks) are covered. Gateways hold only public keys,
several at once (a key id each: add the new key everywhere, sign with it, then remove the
old one). `campus-agent keygen` and `campus-agent sign` are the district's side.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# `cryptography` (OpenSSL's bindings, ~8 MB resident) is imported only by a gateway that has
# keys configured, or by the district's tools: these functions import it when called.

DOMAIN = b"campus-cmd-v1\n"
SIG_FIELD = "sig"


class SignatureError(Exception):
    """Why a command's signature is not acceptable (told to the district in the reply)."""


def canonical_bytes(topic: str, command: Mapping[str, Any]) -> bytes:
    """What is signed: the domain, the topic and the command without its signature."""
    body = {k: v for k, v in command.items() if k != SIG_FIELD}
    return DOMAIN + topic.encode() + b"\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """A public key from 32 raw bytes in base64, or a PEM 'PUBLIC KEY' block."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see above
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM key is not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("not base64 (expected 32 bytes of an Ed25519 public key)") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_text(key: Ed25519PublicKey) -> str:
    """The base64 of the raw 32 bytes (what the gateway's config takes)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see above

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def verify(
    topic: str, command: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]
) -> str | None:
    """The key id that signed this command; None if unsigned; SignatureError if bad."""
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - see above

    sig = command.get(SIG_FIELD)
    if sig is None:
        return None
    if not isinstance(sig, dict) or set(sig) != {"kid", "ed25519"}:
        raise SignatureError('"sig" must be {"kid": KEY_ID, "ed25519": BASE64}')
    kid, value = sig["kid"], sig["ed25519"]
    if not isinstance(kid, str) or not isinstance(value, str):
        raise SignatureError('"sig" kid and ed25519 must be strings')
    key = keys.get(kid)
    if key is None:
        raise SignatureError(f"unknown signing key {kid[:64]!r}")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise SignatureError("signature is not base64") from None
    try:
        key.verify(raw, canonical_bytes(topic, command))
    except InvalidSignature:
        raise SignatureError(f"signature does not verify with key {kid!r}") from None
    return kid


def sign(
    topic: str, command: Mapping[str, Any], key: Ed25519PrivateKey, kid: str
) -> dict[str, Any]:
    """The command with its `sig` (any earlier one replaced)."""
    body = {k: v for k, v in command.items() if k != SIG_FIELD}
    value = base64.b64encode(key.sign(canonical_bytes(topic, body))).decode()
    return {**body, SIG_FIELD: {"kid": kid, "ed25519": value}}


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 private key (`campus-agent keygen`, or
    `openssl genpkey -algorithm ed25519`)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see above
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")  # noqa: TRY004 - a bad file
    return key


def new_private_key_pem() -> tuple[bytes, Ed25519PublicKey]:
    """A new private key (PKCS#8 PEM, unencrypted) and its public key."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see above
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, key.public_key()
