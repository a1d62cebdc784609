"""mosquitto on a free loopback port, configured for what the test or benchmark needs.

One class for every use: anonymous or with passwords, TLS with client certificates (a
throwaway CA from `tls.py`), an ACL, persistence (sessions and queued messages kept across
a stop and start), a notice-level log (the CONNECTs it saw), a connection limit. Stopped
and started again, it comes back on the same port with the same files. It is stopped by
the PID we started, never by name, and it never listens on anything but the host it is
given (127.0.0.1 by default).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tests.harness.ports import HOST, free_port, listening
from tests.harness.process import ChildProcess, PeerFailedError, need
from tests.harness.tls import Pki
from tests.harness.waiting import TimedOutError, wait_for


def mosquitto_binary() -> str:
    """The mosquitto executable (PATH first, then /usr/sbin where Debian puts it)."""
    return need("mosquitto", "mosquitto")


def mosquitto_version(binary: str | None = None) -> str:
    """'2.0.11', or '?' if the binary does not say."""
    try:
        out = subprocess.run(
            [binary or mosquitto_binary(), "-h"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for word in out.split():
        if word[:1].isdigit() and "." in word:
            return word
    return "?"


class Broker(ChildProcess):
    """A mosquitto process on a free port of `host`; a context manager (start ... stop).

    folder: its config, log and persistence file; None: a temporary folder made at start()
        and removed at stop() (a benchmark's throwaway broker).
    port: 0 picks a free port now, kept across stop() and start().
    persistent: sessions, queued and retained messages saved at a clean stop (SIGTERM) and
        loaded at start (only then: `autosave_interval 0`).
    tls: listen with TLS, requiring a client certificate signed by its CA;
        identity_as_username: the certificate's CN is the username (for the ACL).
    passwords: username -> password (a mosquitto_passwd file); acl: the ACL file's text.
        Anonymous clients are allowed unless `anonymous` says otherwise or either is given.
    notice_log: log the CONNECTs (`New client connected ...`) as well as warnings and errors.
    max_connections: the listener's limit (default: mosquitto's, none).
    extra: more configuration lines, appended as they are.
    start_attempts: how many times start() starts it, `retry_after` seconds apart, when
        it does not listen (a client elsewhere may briefly hold the port as its
        source port on a shared machine).
    """

    def __init__(
        self,
        folder: Path | None = None,
        *,
        host: str = HOST,
        port: int = 0,
        persistent: bool = False,
        tls: Pki | None = None,
        identity_as_username: bool = False,
        passwords: Mapping[str, str] | None = None,
        acl: str | None = None,
        anonymous: bool | None = None,
        notice_log: bool = True,
        max_connections: int | None = None,
        extra: str = "",
        start_timeout: float = 10.0,
        start_attempts: int = 1,
        retry_after: float = 2.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.binary = mosquitto_binary()
        self.dir = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.host = host
        self.port = port or free_port(host)
        self.persistent = persistent
        self.tls = tls
        self.identity_as_username = identity_as_username
        self.passwords = dict(passwords or {})
        self.acl = acl
        self.anonymous = anonymous if anonymous is not None else not (passwords or acl)
        self.notice_log = notice_log
        self.max_connections = max_connections
        self.extra = extra
        self.start_timeout = start_timeout
        self.start_attempts = start_attempts
        self.retry_after = retry_after
        self.stop_timeout = stop_timeout

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @property
    def log(self) -> Path | None:
        return None if self.dir is None else self.dir / "mosquitto.log"

    def version(self) -> str:
        return mosquitto_version(self.binary)

    def _write_conf(self, d: Path) -> Path:
        """Write mosquitto.conf (and the password and ACL files) in `d`; the conf's path.
        A subclass may add lines to the file it returns."""
        lines = [
            # mosquitto drops privileges to `mosquitto` when started as root, and then
            # cannot write its log in our folder; stay root instead (tests and bench only).
            "user root" if os.geteuid() == 0 else "",
            "per_listener_settings false",
            f"persistence {'true' if self.persistent else 'false'}",
        ]
        if self.persistent:
            lines += [f"persistence_location {d}/", "autosave_interval 0"]
        lines += [
            "max_queued_messages 0",
            "max_inflight_messages 0",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
        ]
        if self.passwords:
            lines.append(f"password_file {self._write_passwords(d)}")
        if self.acl is not None:
            (d / "acl").write_text(self.acl)
            lines.append(f"acl_file {d}/acl")
        lines += [f"log_dest file {d}/mosquitto.log", "log_type error", "log_type warning"]
        if self.notice_log:
            lines += ["log_type notice", "connection_messages true"]
        lines.append(f"listener {self.port} {self.host}")
        if self.max_connections is not None:
            lines.append(f"max_connections {self.max_connections}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate true",
            ]
            if self.identity_as_username:
                lines.append("use_identity_as_username true")
        conf = d / "mosquitto.conf"
        text = "\n".join(line for line in lines if line) + "\n"
        conf.write_text(text + (self.extra.rstrip("\n") + "\n" if self.extra else ""))
        return conf

    def _write_passwords(self, d: Path) -> Path:
        passwd = d / "passwd"
        if not passwd.exists():
            passwd.touch()
            tool = need("mosquitto_passwd", "mosquitto")
            for user, password in self.passwords.items():
                subprocess.run(
                    [tool, "-b", str(passwd), user, password], check=True, capture_output=True
                )
            passwd.chmod(0o644)
        return passwd

    def start(self) -> None:
        """Start it on its port; return once it accepts TCP connections, else PeerFailedError."""
        if self.dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mosquitto-")
            self.dir = Path(self._tmp.name)
        conf = self._write_conf(self.dir)
        self.logs = [self.dir / "mosquitto.log"]
        for attempt in range(1, self.start_attempts + 1):
            # stderr: what mosquitto says before its log is open (a bad config line).
            self.spawn([self.binary, "-c", str(conf)], self.dir / "stderr.log", stderr_only=True)
            try:
                wait_for(self._listening, self.start_timeout, "mosquitto to listen", every=0.005)
                return
            except (TimedOutError, PeerFailedError) as e:
                if attempt == self.start_attempts:
                    tail = self.log_tail()
                    self.stop()  # and its temporary folder: no __exit__ follows a failed start
                    raise PeerFailedError(
                        f"mosquitto on {self.host}:{self.port}: {e}\n{tail}"
                    ) from None
                super().stop()
                time.sleep(self.retry_after)

    def _listening(self) -> bool:
        if not self.alive():
            raise PeerFailedError("mosquitto exited at start")
        return listening(self.host, self.port)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (a persistent broker saves its state), SIGKILL if it lingers; a temporary
        folder goes with it."""
        code = super().stop(self.stop_timeout if timeout is None else timeout)
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None
            self.dir = None
        return code

    def restart(self) -> None:
        """Stop and start again: same port, same folder (a temporary one is kept)."""
        super().stop(self.stop_timeout)
        self.start()

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
