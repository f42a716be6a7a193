"""A throwaway CA (trustme) and a loopback server certificate.

Imports nothing heavy on purpose: a test conftest can call `ensure_ca()` and set SSL_CERT_FILE
*before* aiohttp is imported. aiohttp builds its default SSL context once, at import, so a
SSL_CERT_FILE set later in the same process is never read (see README).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class EmulatorCerts:
    ca: trustme.CA
    server_cert: trustme.LeafCert
    ca_path: Path

    def server_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only this emulator (for tests and scripts)."""
        return ssl.create_default_context(cafile=str(self.ca_path))


def _key_path(ca_path: Path) -> Path:
    return ca_path.with_name(ca_path.name + ".key")


def ensure_ca(ca_path: str | Path) -> trustme.CA:
    """Load the CA at `ca_path` (+ `.key`) if both exist, else create and write them.

    Lets a process trust the CA before the emulator starts, and keeps it stable across restarts.
    """
    path = Path(ca_path)
    key = _key_path(path)
    if path.is_file() and key.is_file():
        return trustme.CA.from_pem(path.read_bytes(), key.read_bytes())
    ca = trustme.CA(organization_name="SMTP AUTH Guard emulator")
    path.parent.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(path))
    # A throwaway test CA, but still: owner-only.
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ca.private_key_pem.bytes())
    return ca


def create_certs(ca_path: str | Path, *, reuse: bool = False) -> EmulatorCerts:
    """A CA (fresh, or the existing one when `reuse`) and a cert for 127.0.0.1, localhost and ::1."""
    path = Path(ca_path)
    if not reuse:
        path.unlink(missing_ok=True)
        _key_path(path).unlink(missing_ok=True)
    ca = ensure_ca(path)
    leaf = ca.issue_cert("127.0.0.1", "localhost", "::1")
    return EmulatorCerts(ca=ca, server_cert=leaf, ca_path=path)
