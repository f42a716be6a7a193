"""Start and stop Azurite's table service (installed from npm by `npm ci`) on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final, Self

from devservices.lifecycle import Service, stop_process

REPO: Final = Path(__file__).resolve().parent.parent
AZURITE_TABLE: Final = REPO / "node_modules" / ".bin" / "azurite-table"
# Azurite's well-known development account and key (public, documented by Microsoft).
DEV_ACCOUNT: Final = "devstoreaccount1"
DEV_ACCOUNT_KEY: Final = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def table_connection_string(port: int) -> str:
    # 127.0.0.1, not localhost: azure-data-tables takes localhost on a non-default port for Cosmos.
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};"
        f"AccountKey={DEV_ACCOUNT_KEY};TableEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT}"
    )


class Azurite(Service):
    """Azurite's table service in memory; a context manager that always stops it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def connection_string(self) -> str:
        return table_connection_string(self.port)

    def start(self, timeout: float = 30) -> Self:
        if not AZURITE_TABLE.exists():
            raise AzuriteError(f"Azurite is not installed at {AZURITE_TABLE}: run `npm ci` (make does it)")
        self._workdir = Path(tempfile.mkdtemp(prefix="azurite-"))
        self._process = subprocess.Popen(  # noqa: S603 - a fixed local binary
            [
                str(AZURITE_TABLE),
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                str(self.port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableProductStyleUrl",
                "--silent",
                "--disableTelemetry",  # it would otherwise report usage to Microsoft over the internet
            ],
            cwd=self._workdir,  # Azurite writes its debug files beside itself
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    if self._process.poll() is None:  # running but not listening: reading stderr would block
                        self._process.kill()
                        self._process.wait()
                    detail = self._process.stderr.read().decode()[:500] if self._process.stderr else ""
                    self.stop()
                    raise AzuriteError(f"Azurite did not start on port {self.port}: {detail}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, timeout=10)
            self._process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
