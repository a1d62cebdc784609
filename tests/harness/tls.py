"""A throwaway certificate authority and the certificates a TLS test or benchmark needs.

`make_pki(folder)` makes, with the openssl command, a CA (`ca.pem`/`ca.key`), the broker's
certificate (`server`, for 127.0.0.1, ::1 and localhost) and one client certificate per
name asked for, EC P-256, valid two days; `other_cas` are CAs nobody uses (for "not
trusted" cases). Keys are written unencrypted in `folder`: never use them for anything but
a test or a benchmark.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness.process import need

EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([need("openssl", "openssl"), *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    """A throwaway CA: {name}.pem / {name}.key in d."""
    _openssl("req", "-x509", *EC, "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN={name}", cwd=d)  # fmt: skip


def make_cert(d: Path, ca: str, name: str, cn: str, *, server: bool) -> None:
    """A certificate signed by `ca`: {name}.pem / {name}.key in d."""
    _openssl("req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
    lines = ["basicConstraints=CA:FALSE", "authorityKeyIdentifier=keyid,issuer"]
    if server:
        lines += ["subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost", "extendedKeyUsage=serverAuth"]
    else:
        lines += ["extendedKeyUsage=clientAuth"]
    (d / f"{name}.ext").write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)  # fmt: skip


@dataclass(frozen=True)
class Pki:
    """The files of `make_pki`: the CA, the broker's certificate, the clients' ones."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    def client(self, name: str) -> dict[str, str]:
        """A client's files as the Subscriber's `tls` takes them: ca, cert, key."""
        return {
            "ca": str(self.ca),
            "cert": str(self.dir / f"{name}.pem"),
            "key": str(self.dir / f"{name}.key"),
        }


def make_pki(
    d: Path,
    clients: Mapping[str, str],
    *,
    other_cas: Sequence[str] = (),
) -> Pki:
    """The CA `ca`, the broker's `server` certificate, and `clients` (file name -> CN)."""
    d.mkdir(parents=True, exist_ok=True)
    make_ca(d, "ca")
    for other in other_cas:
        make_ca(d, other)
    make_cert(d, "ca", "server", "localhost", server=True)
    for name, cn in clients.items():
        make_cert(d, "ca", name, cn, server=False)
    return Pki(d)
