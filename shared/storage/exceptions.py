"""SmtpGuardExceptions: approved, expiring exceptions, one partition per mailbox.

The one grant path and the one revoke path live here; both are ETag-guarded transactions within the
mailbox's partition, so a renewal racing a revocation ends in one consistent state.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from shared.model.exception_records import AuthMethod, ExceptionRecord, ExceptionStatus
from shared.storage.tables import EXCEPTIONS_TABLE, TableClients, guarded_merge, storage_errors, submit


class ExceptionRepository:
    def __init__(self, tables: TableClients) -> None:
        self._tables = tables

    async def all(self) -> list[ExceptionRecord]:
        """Every exception record. Raises StoreError on any failure: never read a failure as 'none'."""
        async with storage_errors("read the exceptions"):
            return [_from_entity(e) async for e in self._tables[EXCEPTIONS_TABLE].list_entities()]

    async def of_mailbox(self, mailbox_guid: str) -> list[ExceptionRecord]:
        """Every record of one mailbox, whatever its status: one partition."""
        async with storage_errors("read the mailbox's exceptions"):
            return [
                _from_entity(e)
                async for e in self._tables[EXCEPTIONS_TABLE].query_entities(
                    "PartitionKey eq @pk", parameters={"pk": mailbox_guid}
                )
            ]

    async def get(self, exception_id: str) -> ExceptionRecord | None:
        async with storage_errors("read the exception"):
            found = [
                e
                async for e in self._tables[EXCEPTIONS_TABLE].query_entities(
                    "RowKey eq @rk", parameters={"rk": exception_id}
                )
            ]
        return _from_entity(found[0]) if found else None

    async def grant(self, record: ExceptionRecord, created_by: str) -> list[ExceptionRecord]:
        """The one grant path: insert `record`, and supersede the mailbox's older approved records, atomically.

        Storage only: Exchange is never touched here (an approval switches its one mailbox on itself;
        everything else waits for the sweeps). Each superseded record is updated ETag-guarded and only
        its status changes, so who created it stays. A record older than an approved one of the same
        mailbox never supersedes it: it is stored as superseded itself. RefusedError when a record
        with its id exists already (it is never overwritten, so a late repair cannot bring back an
        exception revoked meanwhile), or when a record changed while this ran.
        """
        table = self._tables[EXCEPTIONS_TABLE]
        async with storage_errors("write the exception"):
            approved = [e for e in await self._approved(record.mailbox_guid) if e["RowKey"] != record.id]
            older = [e for e in approved if e["ApprovedAt"] <= record.approved_at]
            if len(older) < len(approved):  # a newer grant holds the mailbox
                record = replace(record, status=ExceptionStatus.SUPERSEDED)
            operations: list[Any] = [("create", {**_to_entity(record), "CreatedBy": created_by})]
            operations += [guarded_merge(e, {"Status": ExceptionStatus.SUPERSEDED.value}) for e in older]
            await submit(table, operations)
        return [_from_entity(e) for e in older]

    async def revoke(
        self, mailbox_guid: str, revoked_by: str, now: datetime, only_id: str | None = None
    ) -> list[ExceptionRecord]:
        """The one revoke path: end the mailbox's approved exceptions (or just `only_id`) now, ETag-guarded.

        Returns what was revoked: nothing when none was approved. RefusedError when one changed while
        this ran (say a renewal superseded it): the caller reads again.
        """
        table = self._tables[EXCEPTIONS_TABLE]
        async with storage_errors("revoke the exception"):
            active = [e for e in await self._approved(mailbox_guid) if only_id is None or e["RowKey"] == only_id]
            ended = {"Status": ExceptionStatus.REVOKED.value, "RevokedAt": now, "RevokedBy": revoked_by}
            if active:
                await submit(table, [guarded_merge(e, ended) for e in active])
        return [_from_entity({**e, **ended}) for e in active]

    async def _approved(self, mailbox_guid: str) -> list[Any]:
        return [
            e
            async for e in self._tables[EXCEPTIONS_TABLE].query_entities(
                "PartitionKey eq @pk and Status eq @status",
                parameters={"pk": mailbox_guid, "status": ExceptionStatus.APPROVED.value},
            )
        ]


def _to_entity(record: ExceptionRecord) -> dict[str, Any]:
    return {
        "PartitionKey": record.mailbox_guid,
        "RowKey": record.id,
        "MailboxAddress": record.mailbox_address,
        "Status": record.status.value,
        "ExpiresAt": record.expires_at,
        "Reason": record.reason,
        "Owner": record.owner,
        "OwnerId": record.owner_id,
        "Device": record.device,
        "AuthMethod": record.auth_method.value,
        "ApprovedBy": record.approved_by,
        "ApprovedAt": record.approved_at,
    }


def _from_entity(entity: dict[str, Any]) -> ExceptionRecord:
    return ExceptionRecord(
        id=entity["RowKey"],
        mailbox_guid=entity["PartitionKey"],
        mailbox_address=entity["MailboxAddress"],
        status=ExceptionStatus(entity["Status"]),
        expires_at=entity["ExpiresAt"],
        reason=entity.get("Reason", ""),
        owner=entity.get("Owner", ""),
        owner_id=entity.get("OwnerId", ""),
        device=entity.get("Device", ""),
        auth_method=AuthMethod(entity.get("AuthMethod", AuthMethod.OAUTH.value)),
        approved_by=entity.get("ApprovedBy", ""),
        approved_at=entity["ApprovedAt"],
        revoked_at=entity.get("RevokedAt"),
        revoked_by=entity.get("RevokedBy", ""),
    )
