"""Exception requests in SmtpGuardRequests, with the reservations that keep them few.

A mailbox has at most one pending request (a row in `pending-mailbox`), and a requester at most
REQUEST_PENDING_PER_REQUESTER (numbered slots in their partition). Both are insert-only
reservations: an insert that fails on an existing row is the check, atomic across workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any, Final

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared.errors import PendingLimitError, StoreError
from shared.model.notifications import OutboxItem
from shared.model.requests import ExceptionRequest, RequestStatus
from shared.storage.entities import from_entity, to_entity
from shared.storage.hints import Hints
from shared.storage.outbox import OutboxRepository
from shared.storage.tables import (
    NO_ECHO,
    PENDING_PARTITION,
    PENDING_SLOT_PREFIX,
    REQUEST_ROW,
    WORKFLOW_TABLE,
    TableClients,
    pending_slot_row,
    prefix_range,
    requester_partition,
    storage_errors,
    submit,
    unchanged_since,
)

# A submission whose request row has not appeared after this has failed: its reservation is freed and
# its notices are dropped (until then they wait for it).
CLAIM_GRACE: Final = timedelta(minutes=5)


class _ReservationVanished(Exception):
    """The reservation row was deleted between two steps of a claim: try the claim again."""


class RequestRepository:
    def __init__(self, tables: TableClients, outbox: OutboxRepository) -> None:
        self._tables = tables
        self._outbox = outbox
        self._pending_hints: Hints[int] = Hints()  # requester -> the pending slot to try first

    @property
    def _table(self) -> TableClient:
        return self._tables[WORKFLOW_TABLE]

    async def create(self, request: ExceptionRequest, notify: Sequence[OutboxItem], daily_limit: int) -> None:
        """Store a new request after its notifications; DailyLimitError when its requester has no slot left today.

        Plain inserts: the approval notice lives in the requester's partition, so no transaction could
        hold it with the request (and the SDK's multipart encoding would cost the worker more CPU than
        the inserts: 2.05 ms against 1.12 ms for two entities, measured). The order keeps the promise
        a transaction would: a stored request always has its notifications. When the request's insert
        fails, its notifications are removed again, so a failed submission does not use up a daily slot.
        """
        async with storage_errors("store the request"):
            written = await self._outbox.file_all(notify, daily_limit)
            try:
                await self._table.create_entity(_entity(request), **NO_ECHO)
            except AzureError:
                await self._outbox.withdraw(written)
                raise

    async def get(self, request_id: str) -> tuple[ExceptionRequest, str] | None:
        async with storage_errors("read the request"):
            try:
                entity = await self._table.get_entity(request_id, REQUEST_ROW)
            except ResourceNotFoundError:
                return None
        return from_entity(ExceptionRequest, entity), entity.metadata["etag"]

    async def query(self, odata_filter: str, parameters: dict[str, Any]) -> list[ExceptionRequest]:
        async with storage_errors("read the requests"):
            return [
                from_entity(ExceptionRequest, e)
                async for e in self._table.query_entities(
                    f"RowKey eq '{REQUEST_ROW}' and ( {odata_filter} )", parameters=parameters
                )
            ]

    async def every(self) -> list[ExceptionRequest]:
        """Every request ever stored (a scan: for the upgrade that indexes them, once)."""
        return await self.query("RowKey eq @rk", {"rk": REQUEST_ROW})

    async def update(self, request: ExceptionRequest, etag: str, notify: Sequence[OutboxItem] = ()) -> None:
        """Replace the request if nobody changed it since `etag`, and enqueue `notify`, atomically.

        Raises RefusedError when someone else changed it first (two approvers at once).
        """
        operations: list[Any] = [("update", _entity(request), {"mode": UpdateMode.REPLACE, **unchanged_since(etag)})]
        operations += self._outbox.upserts(notify)
        async with storage_errors("update the request"):
            await submit(self._table, operations)

    async def claim_mailbox(self, mailbox_guid: str, request_id: str, now: datetime) -> str | None:
        """Reserve a mailbox for one pending request: None when reserved, else the id of the request holding it.

        An insert that fails on an existing row makes two simultaneous submissions for one mailbox
        produce exactly one pending request. A reservation is taken over, ETag-guarded, only when its
        request is no longer pending, or was never stored (its submission failed) and the claim is older
        than CLAIM_GRACE: a release that was lost never blocks a mailbox for long.
        """
        entity = {"PartitionKey": PENDING_PARTITION, "RowKey": mailbox_guid, "RequestId": request_id, "ClaimedAt": now}
        async with storage_errors("reserve the mailbox"):
            return await self._claim_row(entity, now)

    async def release_mailbox(self, mailbox_guid: str, request_id: str) -> None:
        """End a request's reservation of its mailbox (only its own). Losing this is harmless: see claim."""
        async with storage_errors("release the mailbox"):
            try:
                current = await self._table.get_entity(PENDING_PARTITION, mailbox_guid)
            except ResourceNotFoundError:
                return
            if current.get("RequestId") == request_id:
                await self._delete_unchanged(current)

    async def claim_pending_slot(self, requester_id: str, request_id: str, now: datetime, limit: int) -> None:
        """Take one of the requester's `limit` pending-request slots, or raise PendingLimitError.

        The same insert-only reservation as a mailbox's (see claim_mailbox): a slot whose request was
        decided or lapsed, or never stored, is taken over; so is one whose release was lost.
        """
        start = self._pending_hints.get(requester_id, 0) % limit
        async with storage_errors("reserve a pending-request slot"):
            for slot in [*range(start, limit), *range(start)]:  # where this worker last found one free first
                entity = {
                    "PartitionKey": requester_partition(requester_id),
                    "RowKey": pending_slot_row(slot),
                    "RequestId": request_id,
                    "ClaimedAt": now,
                }
                if await self._claim_row(entity, now) is None:
                    self._pending_hints.remember(requester_id, slot + 1)
                    return
        raise PendingLimitError(f"you already have {limit} pending requests: wait for a decision on one of them")

    async def release_pending_slot(self, requester_id: str, request_id: str) -> None:
        """Give back the requester's slot held by this request. Losing this is harmless: see the claim."""
        start, end = prefix_range(PENDING_SLOT_PREFIX)
        async with storage_errors("release the pending-request slot"):
            async for row in self._table.query_entities(
                "PartitionKey eq @pk and RowKey gt @start and RowKey lt @end",
                parameters={"pk": requester_partition(requester_id), "start": start, "end": end},
            ):
                if row.get("RequestId") == request_id:
                    await self._delete_unchanged(row)

    async def _delete_unchanged(self, row: Any) -> None:
        with suppress(ResourceNotFoundError, ResourceModifiedError):  # taken over meanwhile: not ours now
            await self._table.delete_entity(row["PartitionKey"], row["RowKey"], **unchanged_since(row.metadata["etag"]))

    async def _claim_row(self, entity: dict[str, Any], now: datetime) -> str | None:
        for _ in range(3):
            with suppress(_ReservationVanished):  # the holder gave the row back while we looked
                return await self._claim_once(entity, now)
        raise StoreError("could not reserve: the reservation kept changing; try again")

    async def _claim_once(self, entity: dict[str, Any], now: datetime) -> str | None:
        """One attempt of a reservation; _ReservationVanished when the row went away meanwhile."""
        table = self._table
        try:
            await table.create_entity(entity, **NO_ECHO)
            return None
        except ResourceExistsError:
            try:
                current = await table.get_entity(entity["PartitionKey"], entity["RowKey"])
            except ResourceNotFoundError:
                raise _ReservationVanished from None
        holder = str(current.get("RequestId", ""))
        loaded = await self.get(holder) if holder else None
        if loaded is None and now - current.get("ClaimedAt", now) < CLAIM_GRACE:
            return holder  # its submission is still being written
        if loaded is not None and loaded[0].status is RequestStatus.PENDING and now < loaded[0].expires_at:
            return holder  # a lapsed request can no longer be approved, so it holds nothing
        try:
            await table.update_entity(entity, mode=UpdateMode.REPLACE, **unchanged_since(current.metadata["etag"]))
        except ResourceNotFoundError:
            raise _ReservationVanished from None
        except ResourceModifiedError:
            return str((await table.get_entity(entity["PartitionKey"], entity["RowKey"])).get("RequestId", ""))
        return None


def _entity(request: ExceptionRequest) -> dict[str, Any]:
    return {**to_entity(request), "PartitionKey": request.id, "RowKey": REQUEST_ROW}
