"""The one composition root: the credential, the store, the Exchange client and the Graph client.

The sweep, the CLI, the HTTP handlers and health all get their clients here, built the same way:
- `connect(settings)` opens the credential, store and Exchange client for one run (a sweep, a CLI
  command) and closes them when it ends;
- `clients()` gives the workflow's long-lived set: one per event loop and settings, so tokens and
  connections are reused across invocations (the Functions worker keeps its process and loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from azure.core.credentials_async import AsyncTokenCredential
from azure.data.tables.aio import TableServiceClient

from shared.errors import StoreError
from shared.microsoft.exchange import ExchangeClient
from shared.microsoft.identity import build_credential
from shared.microsoft.transport import transport_options
from shared.settings import Settings, WorkflowSettings, load_settings, load_workflow_settings
from shared.storage import Store
from shared.storage.tables import STORE_RETRIES

if TYPE_CHECKING:
    from shared.microsoft.graph import GraphClient


# The install marker is checked again after this long; between checks, a verified store stays trusted.
MARKER_RECHECK: Final = 300.0


def open_store(settings: Settings, credential: AsyncTokenCredential) -> Store:
    """The store on AzureWebJobsStorage: a connection string (Azurite, keys) or a keyless endpoint."""
    config = settings.storage
    options = {**STORE_RETRIES, **transport_options()}
    if config.connection_string is not None:
        try:
            service = TableServiceClient.from_connection_string(config.connection_string, **options)
        except ValueError as err:
            raise StoreError(f"AzureWebJobsStorage is not a valid connection string: {err}") from None
    else:
        assert config.table_endpoint is not None
        service = TableServiceClient(config.table_endpoint, credential=credential, **options)
    return Store(service)


def open_exchange(settings: Settings, credential: AsyncTokenCredential) -> ExchangeClient:
    return ExchangeClient(
        settings.exchange_endpoint, settings.tenant_id, credential, concurrency=settings.exchange_concurrency
    )


def open_graph(settings: Settings, credential: AsyncTokenCredential) -> GraphClient:
    from shared.microsoft.graph import GraphClient  # msgraph-sdk is large: import it only where Graph is used

    return GraphClient(settings.graph_endpoint, credential)


@dataclass(frozen=True, slots=True)
class Connections:
    """What one run needs: who it acts as, where its state lives, and the Exchange it changes."""

    credential: AsyncTokenCredential
    store: Store
    exchange: ExchangeClient


@asynccontextmanager
async def connect(settings: Settings, credential: AsyncTokenCredential | None = None) -> AsyncIterator[Connections]:
    """Open the clients of one run; a credential passed in stays open, one built here is closed."""
    async with AsyncExitStack() as stack:
        if credential is None:
            credential = build_credential()
            stack.push_async_callback(credential.close)  # type: ignore[attr-defined]
        store = await stack.enter_async_context(open_store(settings, credential))
        exchange = await stack.enter_async_context(open_exchange(settings, credential))
        yield Connections(credential, store, exchange)


@dataclass(slots=True)
class Clients:
    settings: Settings
    workflow: WorkflowSettings
    credential: AsyncTokenCredential
    store: Store
    exchange: ExchangeClient
    graph: GraphClient
    marker_checked_at: float = field(default=-MARKER_RECHECK)
    # The anonymous health answer, kept briefly so that a burst of probes costs one storage read.
    health: tuple[float, Any] | None = None
    health_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def require_installed(self) -> None:
        """The install marker check, at most every MARKER_RECHECK seconds per process and settings."""
        if time.monotonic() - self.marker_checked_at < MARKER_RECHECK:
            return
        await self.store.state.require_marker(self.settings.tenant_id)
        self.marker_checked_at = time.monotonic()


_cache: dict[tuple[int, Settings, WorkflowSettings], Clients] = {}


async def clients() -> Clients:
    """The workflow's clients for the current settings; SettingsError names a bad setting."""
    settings, workflow = load_settings(), load_workflow_settings()
    key = (id(asyncio.get_running_loop()), settings, workflow)
    found = _cache.get(key)
    if found is None:
        credential = build_credential()
        found = Clients(
            settings=settings,
            workflow=workflow,
            credential=credential,
            store=open_store(settings, credential),
            exchange=open_exchange(settings, credential),
            graph=open_graph(settings, credential),
        )
        _cache[key] = found
    return found


async def close_all() -> None:
    """For tests and the local host's shutdown: close every cached client."""
    while _cache:
        _, found = _cache.popitem()
        await found.exchange.close()
        await found.store.close()
        await found.credential.close()  # type: ignore[attr-defined]
