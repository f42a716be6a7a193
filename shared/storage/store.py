"""The one object that opens Table Storage and gives access to every repository.

Opened once per process (see shared.bootstrap): each repository shares its table clients, so the
pipeline and its connections are built once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from azure.core.credentials_async import AsyncTokenCredential
from azure.data.tables.aio import TableServiceClient

from shared.errors import StoreError
from shared.settings import StorageConfig
from shared.storage.audit import AuditRepository
from shared.storage.exceptions import ExceptionRepository
from shared.storage.outbox import OutboxRepository
from shared.storage.plans import PlanRepository
from shared.storage.requests import RequestRepository
from shared.storage.state import StateRepository
from shared.storage.tables import STORE_RETRIES, TableClients
from shared.transport import transport_options


class Store:
    """`store.exceptions.grant(...)`, `store.state.lease(...)`: one repository per aggregate."""

    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        tables = TableClients(service)
        self.state = StateRepository(tables)
        self.exceptions = ExceptionRepository(tables)
        self.plans = PlanRepository(tables)
        self.audit = AuditRepository(tables)
        self.outbox = OutboxRepository(tables)
        self.requests = RequestRepository(tables, self.outbox)

    @classmethod
    def from_config(cls, config: StorageConfig, credential: AsyncTokenCredential) -> Store:
        if config.connection_string is not None:
            try:
                service = TableServiceClient.from_connection_string(
                    config.connection_string, **STORE_RETRIES, **transport_options()
                )
            except ValueError as err:
                raise StoreError(f"AzureWebJobsStorage is not a valid connection string: {err}") from None
        else:
            assert config.table_endpoint is not None
            service = TableServiceClient(
                config.table_endpoint, credential=credential, **STORE_RETRIES, **transport_options()
            )
        return cls(service)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._service.close()
