"""The notification outbox in SmtpGuardRequests, with the requesters' daily approval slots.

A notification lives beside what it is about, keyed by kind, so it is enqueued once. A request's
approval notice is filed under its requester instead, in one of the day's numbered slots: taking a
free slot is the daily rate. Either way its row key starts with "outbox-", which is how the sender
finds due notifications.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError
from azure.data.tables import UpdateMode

from shared.errors import DailyLimitError, RefusedError
from shared.model.notifications import NotificationKind, OutboxItem, OutboxStatus
from shared.storage.entities import from_entity, to_entity
from shared.storage.hints import Hints
from shared.storage.tables import (
    NO_ECHO,
    OUTBOX_RANGE,
    WORKFLOW_TABLE,
    TableClients,
    approval_notice_key,
    outbox_row,
    prefix_range,
    requester_partition,
    storage_errors,
    unchanged_since,
    utc_day,
)

_APPROVAL = NotificationKind.APPROVAL_REQUEST.value


@dataclass(frozen=True, slots=True)
class NoticeRef:
    """Which row a due notification was read from, and its version: what `save` updates.

    Saving goes back to that row rather than to the key the item would get today, so a row written
    under an earlier key layout is marked sent too, instead of being sent again on every run.
    """

    partition_key: str
    row_key: str
    etag: str


class OutboxRepository:
    def __init__(self, tables: TableClients) -> None:
        self._tables = tables
        self._next_slots: Hints[tuple[str, int]] = Hints()  # requester -> (UTC day, first slot to try)

    async def enqueue(self, item: OutboxItem) -> bool:
        """Enqueue a notification once; False when it was enqueued before (reminders go out once)."""
        async with storage_errors("enqueue the notification"):
            try:
                await self._tables[WORKFLOW_TABLE].create_entity(_entity(item), **NO_ECHO)
            except ResourceExistsError:
                return False
        return True

    async def due(self, now: datetime) -> list[tuple[OutboxItem, NoticeRef]]:
        first, after = OUTBOX_RANGE
        async with storage_errors("read the outbox"):
            rows = [
                e
                async for e in self._tables[WORKFLOW_TABLE].query_entities(
                    "RowKey ge @first and RowKey lt @after and Status eq @pending and NextAttemptAt le @now",
                    parameters={"first": first, "after": after, "pending": OutboxStatus.PENDING.value, "now": now},
                )
            ]
        return [(_from_entity(e), NoticeRef(e["PartitionKey"], e["RowKey"], e.metadata["etag"])) for e in rows]

    async def save(self, item: OutboxItem, ref: NoticeRef) -> NoticeRef:
        entity = {**_entity(item), "PartitionKey": ref.partition_key, "RowKey": ref.row_key}
        async with storage_errors("update the outbox"):
            try:
                metadata = await self._tables[WORKFLOW_TABLE].update_entity(
                    entity, mode=UpdateMode.REPLACE, **unchanged_since(ref.etag)
                )
            except ResourceModifiedError:
                raise RefusedError("another sender handled this notification") from None
        return replace(ref, etag=str(metadata["etag"]))

    def upserts(self, items: Sequence[OutboxItem]) -> list[Any]:
        """Transaction operations that enqueue `items` beside the request they are about."""
        return [("upsert", _entity(item)) for item in items]

    async def file_all(self, items: Sequence[OutboxItem], daily_limit: int) -> list[NoticeRef]:
        """Insert a submission's notices, its approval notice in a free daily slot; all or none.

        DailyLimitError when the requester has no slot left today. When an insert fails, the notices
        already written are removed again, so a failed submission does not use up a daily slot.
        """
        table = self._tables[WORKFLOW_TABLE]
        written: list[NoticeRef] = []
        try:
            for item in items:
                if item.requester_id:
                    written.append(await self._file_approval_notice(item, daily_limit))
                    continue
                entity = _entity(item)
                await table.create_entity(entity, **NO_ECHO)
                written.append(NoticeRef(entity["PartitionKey"], entity["RowKey"], ""))
        except (AzureError, DailyLimitError):
            await self.withdraw(written)
            raise
        return written

    async def withdraw(self, refs: Sequence[NoticeRef]) -> None:
        """Remove notices of a submission that failed; if even that fails, the sender skips them later."""
        for ref in refs:
            with suppress(AzureError):
                await self._tables[WORKFLOW_TABLE].delete_entity(ref.partition_key, ref.row_key)

    async def _file_approval_notice(self, item: OutboxItem, daily_limit: int) -> NoticeRef:
        """Insert the notice into the first free of its requester's `daily_limit` slots of the UTC day.

        The daily rate costs no read in the usual case: an insert that fails on an existing row is the
        check, atomic across workers. The slot this worker used last for the requester is where it
        tries first; only a taken slot costs a read of the day's slots (one key range).
        """
        table = self._tables[WORKFLOW_TABLE]
        day = utc_day(item.created_at)
        hinted_day, slot = self._next_slots.get(item.requester_id, (day, 0))
        if hinted_day != day:
            slot = 0
        for _ in range(daily_limit + 1):  # every lost race means one more slot is taken
            if slot < daily_limit:
                entity = _entity(replace(item, daily_slot=slot))
                try:
                    await table.create_entity(entity, **NO_ECHO)
                except ResourceExistsError:
                    pass
                else:
                    self._next_slots.remember(item.requester_id, (day, slot + 1))
                    return NoticeRef(entity["PartitionKey"], entity["RowKey"], "")
            taken = await self._taken_slots(item.requester_id, day)
            slot = next((free for free in range(daily_limit) if free not in taken), daily_limit)
            if slot == daily_limit:
                self._next_slots.remember(item.requester_id, (day, daily_limit))
                break
        raise DailyLimitError(f"at most {daily_limit} requests a day (UTC)")

    async def _taken_slots(self, requester_id: str, day: str) -> set[int]:
        prefix = approval_notice_key(_APPROVAL, day, None)
        start, end = prefix_range(prefix)
        taken: set[int] = set()
        async for e in self._tables[WORKFLOW_TABLE].query_entities(
            "PartitionKey eq @pk and RowKey gt @start and RowKey lt @end",
            parameters={"pk": requester_partition(requester_id), "start": start, "end": end},
            select=["RowKey"],
        ):
            suffix = e["RowKey"][len(prefix) :]
            if suffix.isdigit():
                taken.add(int(suffix))
        return taken


def _entity(item: OutboxItem) -> dict[str, Any]:
    if item.requester_id:
        keys = {
            "PartitionKey": requester_partition(item.requester_id),
            "RowKey": approval_notice_key(_APPROVAL, utc_day(item.created_at), item.daily_slot),
        }
    else:
        keys = {"PartitionKey": item.about, "RowKey": outbox_row(item.kind.value)}
    return {**to_entity(item), **keys}


def _from_entity(entity: dict[str, Any]) -> OutboxItem:
    if "About" not in entity:  # written before `about` was stored: it lived beside what it is about
        entity = {**entity, "About": entity["PartitionKey"]}
    return from_entity(OutboxItem, entity)
