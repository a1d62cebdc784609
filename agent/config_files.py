"""The files a site config names, checked the way the agent will use them.

TLS files are loaded as the publisher loads them, secrets must not be readable by other
users, and a password must not cross the network in plain text (mqtt://) unless the config
says so. This module reads files; it never opens a port or a connection.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import Problem

if TYPE_CHECKING:
    from agent.config import MqttSection
    from agent.config_sections import PrivacySection


def resolve_path(base: Path, p: Path) -> Path:
    """A config's path: as written when absolute, else taken from the config's folder."""
    return p if p.is_absolute() else (base / p)


class FileChecks:
    """The file checks of the config's checker (agent.config._Checker)."""

    file: str
    problems: list[Problem]
    warnings: list[Problem]

    def add(self, entry: str, message: str) -> None:
        self.problems.append(Problem(self.file, entry, message))

    def check_files(self, m: MqttSection, pk: PrivacySection, base: Path) -> None:
        """Every file of [mqtt] and [privacy]: there, readable, not world-readable, usable."""
        for key in ("ca_file", "cert_file", "key_file", "password_file"):
            value = getattr(m, key)
            if value is not None and not resolve_path(base, value).is_file():
                self.add(f"mqtt.{key}", f"file {str(value)!r} does not exist or is not a file")
            elif value is not None and not os.access(resolve_path(base, value), os.R_OK):
                self.add(f"mqtt.{key}", f"file {str(value)!r} is not readable by this user")
        for entry, secret in (
            ("mqtt.password_file", m.password_file),
            ("mqtt.key_file", m.key_file),
            ("privacy.card_key_file", pk.card_key_file),
        ):
            if secret is not None:
                self.check_secret(entry, resolve_path(base, secret))
        if m.password_file is not None and m.password_env is not None:
            self.add("mqtt.password_env", "give password_file or password_env, not both")
        if (m.cert_file is None) != (m.key_file is None):
            self.add("mqtt.cert_file", "a client certificate needs both cert_file and key_file")
        if (m.cert_file or m.ca_file) and not m.address.tls:
            self.add("mqtt.url", "TLS files are set but the URL is mqtt://; use mqtts://")
        if m.reconnect_min > m.reconnect_max:
            self.add("mqtt.reconnect_min", "must not be larger than reconnect_max")
        self.check_plaintext(m)
        if m.password_env is not None and m.password_env not in os.environ:
            self.add(
                "mqtt.password_env",
                f"environment variable {m.password_env!r} is not set in this environment",
            )
        self.check_tls(m, base)
        card_key = pk.card_key_file
        if (
            pk.card_id == "hash"
            and card_key is not None
            and not resolve_path(base, card_key).is_file()
        ):
            self.add("privacy.card_key_file", f"file {str(pk.card_key_file)!r} does not exist")

    def read_token(self, entry: str, path: Path | None) -> str | None:
        """A bearer token from its file (a secret: not readable by every user), or None."""
        if path is None:
            return None
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            self.add(entry, f"cannot read {str(path)!r}: {why}")
            return None
        self.check_secret(entry, path)
        if len(token) < 16 or not token.isprintable() or " " in token:
            self.add(
                entry,
                f"{str(path)!r} must hold one token of at least 16 printable characters, "
                "no spaces (e.g. `head -c 24 /dev/urandom | base64 > FILE`)",
            )
            return None
        return token

    def check_plaintext(self, m: MqttSection) -> None:
        """A password over mqtt:// crosses the network readable by anyone on the path."""
        if m.address.tls or (m.password_file is None and m.password_env is None):
            return
        where = "mqtt.password_file" if m.password_file is not None else "mqtt.password_env"
        if m.allow_plaintext_password:
            self.warnings.append(
                Problem(self.file, where, "the password is sent in plain text (mqtt://)")
            )
            return
        self.add(
            where,
            "a password over mqtt:// is sent in plain text: use mqtts://, or set "
            "allow_plaintext_password = true in [mqtt] on a network you trust",
        )

    def check_secret(self, entry: str, path: Path) -> None:
        """A secret file must not be readable by other users (like ssh's private keys)."""
        try:
            mode = path.stat().st_mode
        except OSError:
            return  # reported as missing elsewhere
        if mode & 0o007:
            self.add(
                entry,
                f"{str(path)!r} is readable by every user on this machine; "
                f"run: chmod 600 {path} (or 640 with the agent's group)",
            )

    def check_tls(self, m: MqttSection, base: Path) -> None:
        """Load the TLS files the way the publisher will, so `check` catches bad PEM."""
        if not m.address.tls:
            return
        ca = resolve_path(base, m.ca_file) if m.ca_file else None
        if ca is not None and ca.is_file():
            try:
                ssl.create_default_context(cafile=str(ca))
            except (ssl.SSLError, ValueError) as e:
                self.add("mqtt.ca_file", f"{str(m.ca_file)!r} is not a PEM CA certificate ({e})")
        if m.cert_file and m.key_file:
            cert = resolve_path(base, m.cert_file)
            key = resolve_path(base, m.key_file)
            if cert.is_file() and key.is_file():
                try:
                    ssl.create_default_context().load_cert_chain(str(cert), str(key))
                except (ssl.SSLError, ValueError) as e:
                    self.add(
                        "mqtt.cert_file",
                        f"{str(m.cert_file)!r} and {str(m.key_file)!r} are not a matching PEM "
                        f"certificate and private key ({e})",
                    )
