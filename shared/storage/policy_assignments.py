"""The app's authentication policy assigned to users (OAuth-only exceptions): what to put back.

Rows live in the state table's `oauth-only` partition, one per mailbox GUID. A row is written, marked
pending, before its Set-User is sent, so a run that dies after Exchange applied it still knows the
previous assignment; see PolicyAssignment.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from shared.model.auth_policy import PolicyAssignment, PolicyChange
from shared.storage.tables import OAUTH_ONLY_PARTITION, STATE_TABLE, TableClients, storage_errors


class PolicyAssignmentRepository:
    def __init__(self, tables: TableClients) -> None:
        self._tables = tables

    async def all(self) -> dict[str, PolicyAssignment]:
        """Every assignment, by mailbox GUID. Raises StoreError: a sweep that cannot read them fails closed."""
        async with storage_errors("read the authentication policy assignments"):
            return {
                e["RowKey"]: _assignment(e)
                async for e in self._tables[STATE_TABLE].query_entities(
                    "PartitionKey eq @pk", parameters={"pk": OAUTH_ONLY_PARTITION}
                )
            }

    async def of_mailbox(self, guid: str) -> PolicyAssignment | None:
        async with storage_errors("read the authentication policy assignment"):
            try:
                return _assignment(await self._tables[STATE_TABLE].get_entity(OAUTH_ONLY_PARTITION, guid))
            except ResourceNotFoundError:
                return None

    async def intend(self, change: PolicyChange, run_id: str, at: datetime) -> None:
        """Before a Set-User is sent: the record, pending. `Previous` is the change's side that is not
        the app's policy (what an assignment replaces, or what a restore puts back)."""
        assigning = change.assigns_app_policy
        entity = {
            "PartitionKey": OAUTH_ONLY_PARTITION,
            "RowKey": change.guid,
            "Address": change.address,
            "Previous": change.before if assigning else change.after,
            "Pending": "assign" if assigning else "restore",
            "PendingRun": run_id,
            "PendingAt": at,
        }
        async with storage_errors("record the authentication policy assignment"):
            await self._tables[STATE_TABLE].upsert_entity(entity)  # merge: a restore keeps AssignedAt

    async def landed(self, change: PolicyChange, run_id: str, at: datetime) -> None:
        """After the change is audited: an assignment holds from `at`; a restore ends the record."""
        if not change.assigns_app_policy:
            await self.forget([change.guid])
            return
        entity = {
            "PartitionKey": OAUTH_ONLY_PARTITION,
            "RowKey": change.guid,
            "Address": change.address,
            "Previous": change.before,
            "AssignedAt": at,
            "RunId": run_id,
            "Pending": "",
            "PendingRun": "",
        }
        async with storage_errors("record the authentication policy assignment"):
            await self._tables[STATE_TABLE].upsert_entity(entity)

    async def unpend(self, assignments: Iterable[PolicyAssignment]) -> None:
        """Clear the pending mark of restores that never landed: the assignment holds as it was."""
        async with storage_errors("record the authentication policy assignment"):
            for a in assignments:
                entity = {"PartitionKey": OAUTH_ONLY_PARTITION, "RowKey": a.guid, "Pending": "", "PendingRun": ""}
                await self._tables[STATE_TABLE].upsert_entity(entity)

    async def forget(self, guids: Iterable[str]) -> None:
        async with storage_errors("delete the authentication policy assignment"):
            for guid in guids:
                with suppress(ResourceNotFoundError):
                    await self._tables[STATE_TABLE].delete_entity(OAUTH_ONLY_PARTITION, guid)


def _assignment(entity: Any) -> PolicyAssignment:
    return PolicyAssignment(
        guid=str(entity["RowKey"]),
        address=str(entity.get("Address", "")),
        previous=str(entity.get("Previous") or ""),
        assigned_at=entity.get("AssignedAt"),
        run_id=str(entity.get("RunId", "")),
        pending=str(entity.get("Pending") or ""),
        pending_run=str(entity.get("PendingRun") or ""),
    )
