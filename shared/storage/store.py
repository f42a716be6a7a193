"""The one object that opens Table Storage and gives access to every repository.

Built by shared.bootstrap, once per process: each repository shares its table clients, so the
pipeline and its connections are built once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from azure.data.tables.aio import TableServiceClient

from shared.storage.audit import AuditRepository
from shared.storage.exceptions import ExceptionRepository
from shared.storage.intents import IntentRepository
from shared.storage.outbox import OutboxRepository
from shared.storage.plans import PlanRepository
from shared.storage.policy_assignments import PolicyAssignmentRepository
from shared.storage.requests import RequestRepository
from shared.storage.state import StateRepository
from shared.storage.tables import TableClients
from shared.storage.usage import UsageReportRepository


class Store:
    """`store.exceptions.grant(...)`, `store.state.lease(...)`: one repository per aggregate."""

    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        tables = TableClients(service)
        self.state = StateRepository(tables)
        self.exceptions = ExceptionRepository(tables)
        self.plans = PlanRepository(tables)
        self.audit = AuditRepository(tables)
        self.intents = IntentRepository(tables)
        self.outbox = OutboxRepository(tables)
        self.requests = RequestRepository(tables, self.outbox)
        self.usage = UsageReportRepository(tables)
        self.policy_assignments = PolicyAssignmentRepository(tables)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._service.close()
