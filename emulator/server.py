"""The aiohttp app, and EmulatorServer: HTTPS on loopback in a background thread with its own loop."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Self

from aiohttp import web

from devservices.lifecycle import Service

from .calllog import CallLog
from .certs import EmulatorCerts, create_certs
from .control import ControlRoutes, loopback_only
from .exchange import ExchangeRoutes
from .faults import Faults
from .graph import GraphRoutes
from .identity import identity_routes
from .tenant import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Tenant


def build_app(tenant: Tenant, faults: Faults, calllog: CallLog) -> web.Application:
    # client_max_size: a page-sized request body is tiny, but the control API may take bulk JSON.
    app = web.Application(middlewares=[loopback_only], client_max_size=16 * 1024 * 1024)
    app.add_routes(identity_routes(tenant))
    app.add_routes(ExchangeRoutes(tenant, faults, calllog).routes())
    app.add_routes(GraphRoutes(tenant, faults, calllog).routes())
    app.add_routes(ControlRoutes(tenant, faults, calllog).routes())
    return app


class EmulatorServer(Service):
    """Start/stop an emulator on 127.0.0.1; also a context manager.

    `port=0` picks a free port. `ca_path=None` writes the CA into a private temp directory.
    `reuse_ca=True` keeps an existing CA at `ca_path` (see certs.ensure_ca), so a process that
    trusted it before start (SSL_CERT_FILE read at aiohttp import) keeps trusting it.
    """

    def __init__(
        self,
        tenant: Tenant | None = None,
        faults: Faults | None = None,
        calllog: CallLog | None = None,
        *,
        port: int = 0,
        ca_path: str | Path | None = None,
        host: str = "127.0.0.1",
        reuse_ca: bool = False,
    ) -> None:
        self.tenant = tenant if tenant is not None else Tenant()
        self.faults = faults if faults is not None else Faults()
        self.calllog = calllog if calllog is not None else CallLog()
        self.host = host
        self._reuse_ca = reuse_ca
        self._requested_port = port
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if ca_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="emulator-ca-")
            ca_path = Path(self._tmpdir.name) / "emulator-ca.pem"
        self.ca_path = Path(ca_path).resolve()
        self.certs: EmulatorCerts | None = None
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the emulator is not running")
        return f"https://{self.host}:{self.port}"

    @property
    def authority_host(self) -> str:
        return self.base_url

    @property
    def exchange_endpoint(self) -> str:
        return f"{self.base_url}/exchange"

    @property
    def graph_endpoint(self) -> str:
        return f"{self.base_url}/graph"

    def env(self, client_id: str = DEFAULT_CLIENT_ID, client_secret: str = DEFAULT_CLIENT_SECRET) -> dict[str, str]:
        """The settings an app needs to reach this emulator (and nothing else)."""
        return {
            "AZURE_TENANT_ID": self.tenant.tenant_id,
            "AZURE_CLIENT_ID": client_id,
            "AZURE_CLIENT_SECRET": client_secret,
            "AZURE_AUTHORITY_HOST": self.authority_host,
            "EXCHANGE_ENDPOINT": self.exchange_endpoint,
            "GRAPH_ENDPOINT": self.graph_endpoint,
            "SSL_CERT_FILE": str(self.ca_path),
            "REQUESTS_CA_BUNDLE": str(self.ca_path),
        }

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this emulator's CA (for test clients)."""
        if self.certs is None:
            raise RuntimeError("the emulator is not running")
        return self.certs.client_ssl_context()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            return self
        self.certs = create_certs(self.ca_path, reuse=self._reuse_ca)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as exc:  # surfaced to the caller of start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="m365-emulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    async def _start_site(self) -> None:
        assert self.certs is not None
        app = build_app(self.tenant, self.faults, self.calllog)
        # access_log=None: logging every request costs real time on the benchmark's hot path.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner, self.host, self._requested_port, ssl_context=self.certs.server_ssl_context(), backlog=512
        )
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        loop = self._loop
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._runner = None
        self.port = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
