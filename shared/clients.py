"""The workflow's long-lived clients: one set per event loop and settings, so tokens and connections
are reused across invocations (the Functions worker keeps its process and loop between calls)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from azure.core.credentials_async import AsyncTokenCredential

from shared.exchange import ExchangeClient
from shared.identity import build_credential
from shared.settings import WorkflowSettings, load_workflow_settings
from shared.store import Store

if TYPE_CHECKING:
    from shared.graph import GraphClient


# The install marker is checked again after this long; between checks, a verified store stays trusted.
MARKER_RECHECK: Final = 300.0


@dataclass(slots=True)
class Clients:
    settings: WorkflowSettings
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
        await self.store.require_marker(self.settings.base.tenant_id)
        self.marker_checked_at = time.monotonic()


_cache: dict[tuple[int, WorkflowSettings], Clients] = {}


async def clients() -> Clients:
    """Clients for the current settings; SettingsError names a bad setting."""
    settings = load_workflow_settings()
    key = (id(asyncio.get_running_loop()), settings)
    found = _cache.get(key)
    if found is None:
        from shared.graph import GraphClient  # msgraph-sdk is large: import only when the workflow runs

        credential = build_credential()
        base = settings.base
        found = Clients(
            settings=settings,
            credential=credential,
            store=Store.from_config(base.storage, credential),
            exchange=ExchangeClient(
                base.exchange_endpoint, base.tenant_id, credential, concurrency=base.exchange_concurrency
            ),
            graph=GraphClient(base.graph_endpoint, credential),
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
