"""SmtpGuardAudit: one partition per run, a row per change made and the run's summary.

Rows are only ever inserted (`create` fails on an existing row), so the trail is never rewritten.
SmtpGuardAuditIndex points into it: by UTC day (the runs of a day) and by mailbox (the runs that
changed an address). An index row is derived from its keys alone, so writing one again changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableTransactionError

from shared.errors import RefusedError
from shared.model.actor import Actor
from shared.model.auth_policy import AuditedPolicyChange, PolicyChange
from shared.model.clock import utc_now
from shared.model.hold import Hold
from shared.model.runs import AuditedChange, AuditEntry, RunSummary, from_tri_state, tri_state
from shared.storage.hints import MAX_REMEMBERED
from shared.storage.tables import (
    AUDIT_INDEX_TABLE,
    AUDIT_TABLE,
    CHANGE_ROW_RANGE,
    HOLD_EVENT_ROW,
    NO_ECHO,
    POLICY_ROW_RANGE,
    PROPERTY_CHARS,
    SUMMARY_ROW,
    TRANSACTION_LIMIT,
    UNINDEXED_PARTITION,
    TableClients,
    audit_change_row,
    audit_policy_row,
    day_partition,
    mailbox_index_key,
    prefix_range,
    storage_errors,
    submit,
)

_SUMMARY_ERRORS = 50  # the first errors of a run are kept in its summary; the rest are in the log


@dataclass(slots=True)
class MailboxPointers:
    """A mailbox's rows in the index: the runs that changed it, the requests about it, its GUIDs."""

    runs: list[tuple[str, str]] = field(default_factory=list)  # (run id, mailbox GUID)
    requests: list[str] = field(default_factory=list)
    guids: set[str] = field(default_factory=set)


class AuditRepository:
    def __init__(self, tables: TableClients) -> None:
        self._tables = tables
        self._indexed: set[str] = set()  # `{day}/{run}` index rows this worker wrote or found

    async def append(self, entries: Sequence[AuditEntry], *, index_mailboxes: bool = True) -> None:
        """Append change rows, each run's in transactions of its own partition, and index them.

        The day index is written first, so an export by date never misses a row. A sweep passes
        `index_mailboxes=False`: it marks itself unindexed, and the next run indexes it (index_run).
        """
        table = self._tables[AUDIT_TABLE]
        by_run: dict[str, list[AuditEntry]] = {}
        for entry in entries:
            by_run.setdefault(entry.run_id, []).append(entry)
        async with storage_errors("write the audit trail"):
            for run_id, run_entries in by_run.items():
                await self._index_days(run_id, {day_partition(e.at) for e in run_entries})
                for start in range(0, len(run_entries), TRANSACTION_LIMIT):
                    chunk = [_change_entity(e) for e in run_entries[start : start + TRANSACTION_LIMIT]]
                    try:
                        await submit(table, [("create", entity) for entity in chunk])
                    except RefusedError:  # some exist already (a later run recovered them): insert the rest
                        await self._insert_missing(chunk)
                if index_mailboxes:
                    await self.index_mailboxes(run_id, [(e.change.address, e.change.guid) for e in run_entries])

    async def append_policy_changes(
        self,
        run_id: str,
        changes: Sequence[PolicyChange],
        actor: Actor,
        at: datetime,
        *,
        plan_id: str | None = None,
        recovered: bool = False,
    ) -> None:
        """Append `policy-{guid}` rows for authentication-policy changes, indexed by day and by mailbox.

        They are few (one per OAuth-only exception at most), so they are indexed at once.
        """
        entities = [_policy_entity(run_id, c, actor, at, plan_id, recovered) for c in changes]
        if not entities:
            return
        async with storage_errors("write the audit trail"):
            await self._index_days(run_id, {day_partition(at)})
            for start in range(0, len(entities), TRANSACTION_LIMIT):
                chunk = entities[start : start + TRANSACTION_LIMIT]
                try:
                    await submit(self._tables[AUDIT_TABLE], [("create", entity) for entity in chunk])
                except RefusedError:
                    await self._insert_missing(chunk)
        await self.index_mailboxes(run_id, [(c.address, c.guid) for c in changes])

    async def policy_changes(self, run_id: str) -> list[AuditedPolicyChange]:
        """A run's policy rows."""
        first, after = POLICY_ROW_RANGE
        async with storage_errors("read the run's audit rows"):
            return [
                _audited_policy(e)
                async for e in self._tables[AUDIT_TABLE].query_entities(
                    "PartitionKey eq @pk and RowKey ge @first and RowKey lt @after",
                    parameters={"pk": run_id, "first": first, "after": after},
                )
            ]

    async def policy_history(self, pointers: MailboxPointers) -> list[AuditedPolicyChange]:
        """The policy rows of the runs a mailbox's index points at, oldest first."""
        found: list[AuditedPolicyChange] = []
        async with storage_errors("read the audit trail"):
            for run, guid in pointers.runs:
                with suppress(ResourceNotFoundError):  # a run that changed SMTP AUTH only
                    found.append(
                        _audited_policy(await self._tables[AUDIT_TABLE].get_entity(run, audit_policy_row(guid)))
                    )
        return sorted(found, key=lambda c: (c.at, c.run_id))

    async def index_mailboxes(self, run_id: str, mailboxes: Iterable[tuple[str, str]]) -> None:
        """Index a run's change rows by mailbox: `mailboxes` holds (address, GUID) pairs.

        One upsert per row, grouped by partition into full transactions: a 20,000-change run costs
        about as many transactions as its change rows. Upserts, so indexing a run again is harmless.
        A store not yet upgraded has no index table: the rows are left for `init` to index.
        """
        by_partition: dict[str, dict[str, dict[str, Any]]] = {}
        for address, guid in mailboxes:
            partition, prefix = mailbox_index_key(address)
            row = {"PartitionKey": partition, "RowKey": f"{prefix}{run_id}", "RunId": run_id, "MailboxGuid": guid}
            by_partition.setdefault(partition, {})[row["RowKey"]] = row | {"MailboxAddress": address}
        async with storage_errors("index the audit trail by mailbox"):
            for rows in by_partition.values():
                entities = list(rows.values())
                for start in range(0, len(entities), TRANSACTION_LIMIT):
                    chunk = entities[start : start + TRANSACTION_LIMIT]
                    try:
                        await submit(self._tables[AUDIT_INDEX_TABLE], [("upsert", e) for e in chunk])
                    except (ResourceNotFoundError, TableTransactionError) as err:
                        if getattr(err, "status_code", None) != 404:
                            raise
                        return  # a store not yet upgraded, as in _index_days: init indexes these rows

    async def mark_unindexed(self, run_id: str) -> None:
        """Before a sweep writes its first change row: until index_run, readers scan its partition."""
        async with storage_errors("mark the run for the mailbox index"):
            await self._tables[AUDIT_INDEX_TABLE].upsert_entity({"PartitionKey": UNINDEXED_PARTITION, "RowKey": run_id})

    async def unindexed_runs(self) -> list[str]:
        async with storage_errors("read the audit index"):
            return [
                e["RowKey"]
                async for e in self._tables[AUDIT_INDEX_TABLE].query_entities(
                    "PartitionKey eq @pk", parameters={"pk": UNINDEXED_PARTITION}, select=["RowKey"]
                )
            ]

    async def index_run(self, run_id: str) -> int:
        """Index every change row of a run by mailbox, then clear its mark; returns the rows indexed."""
        rows = await self._mailboxes_of(run_id)
        await self.index_mailboxes(run_id, rows)
        async with storage_errors("clear the run's mark for the mailbox index"):
            with suppress(ResourceNotFoundError):
                await self._tables[AUDIT_INDEX_TABLE].delete_entity(UNINDEXED_PARTITION, run_id)
        return len(rows)

    async def _mailboxes_of(self, run_id: str) -> list[tuple[str, str]]:
        """(address, GUID) of every change row of a run."""
        first, after = CHANGE_ROW_RANGE
        async with storage_errors("read the run's audit rows"):
            return [
                (str(e.get("MailboxAddress", "")), str(e.get("MailboxGuid", "")))
                async for e in self._tables[AUDIT_TABLE].query_entities(
                    "PartitionKey eq @pk and RowKey ge @first and RowKey lt @after",
                    parameters={"pk": run_id, "first": first, "after": after},
                    select=["MailboxAddress", "MailboxGuid"],
                )
            ]

    async def _insert_missing(self, entities: list[dict[str, Any]]) -> None:
        """One by one, keeping the rows already there: the trail is never rewritten, and none is lost."""
        for entity in entities:
            with suppress(ResourceExistsError):
                await self._tables[AUDIT_TABLE].create_entity(entity, **NO_ECHO)

    async def _index_days(self, run_id: str, days: set[str]) -> None:
        """An insert-only row per day and run, before the rows it points to: an export never misses one."""
        for day in sorted(days):
            key = f"{day}/{run_id}"
            if key in self._indexed:
                continue
            try:
                await self._tables[AUDIT_INDEX_TABLE].create_entity({"PartitionKey": day, "RowKey": run_id}, **NO_ECHO)
            except ResourceExistsError:
                pass
            except ResourceNotFoundError:
                # A store not yet upgraded (schema 1) has no index table; an approval or revocation must
                # still get its audit row. The upgrade indexes every row written before it (index_existing).
                return
            if len(self._indexed) >= MAX_REMEMBERED:
                self._indexed.clear()
            self._indexed.add(key)

    async def changed_mailboxes(self, run_id: str) -> set[str]:
        """The GUIDs of the mailboxes that have a change row in the run."""
        first, after = CHANGE_ROW_RANGE
        async with storage_errors("read the run's audit rows"):
            return {
                e["RowKey"][len(first) :]
                async for e in self._tables[AUDIT_TABLE].query_entities(
                    "PartitionKey eq @pk and RowKey ge @first and RowKey lt @after",
                    parameters={"pk": run_id, "first": first, "after": after},
                    select=["RowKey"],
                )
            }

    async def export(
        self,
        *,
        run_id: str | None = None,
        address: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AsyncIterator[AuditedChange]:
        """Change rows, streamed: by mailbox through its index, else run by run through the day index.

        Neither reads the whole table. A run still applying is in the mailbox index once its apply ends.
        """
        if address is not None:
            async for change in self.history(address):
                if (run_id is None or change.run_id == run_id) and _within(change.at, since, until):
                    yield change
            return
        first, after = CHANGE_ROW_RANGE
        odata = "PartitionKey eq @pk and RowKey ge @first and RowKey lt @after"
        parameters: dict[str, Any] = {"first": first, "after": after}
        if since is not None:
            odata, parameters["since"] = f"{odata} and At ge @since", since
        if until is not None:
            odata, parameters["until"] = f"{odata} and At lt @until", until
        runs = [run_id] if run_id is not None else await self._indexed_runs(since, until)
        async with storage_errors("read the audit trail"):
            for run in runs:
                async for e in self._tables[AUDIT_TABLE].query_entities(odata, parameters={**parameters, "pk": run}):
                    yield _audited(e)

    async def index_request(self, address: str, mailbox_guid: str, request_id: str) -> None:
        """Point a mailbox's index at a request about it; written before the request, so none is missed."""
        partition, prefix = mailbox_index_key(address)
        row = {"PartitionKey": partition, "RowKey": f"{prefix}request-{request_id}", "RequestId": request_id}
        row |= {"MailboxGuid": mailbox_guid, "MailboxAddress": address}
        async with storage_errors("index the request by mailbox"):
            with suppress(ResourceNotFoundError):  # a store not yet upgraded: init indexes its requests
                await self._tables[AUDIT_INDEX_TABLE].upsert_entity(row)

    async def pointers(self, address: str) -> MailboxPointers:
        """What the mailbox index holds for an address: one range query, whatever the table's size."""
        partition, prefix = mailbox_index_key(address)
        first, after = prefix_range(prefix)
        found = MailboxPointers()
        async with storage_errors("read the audit index"):
            async for e in self._tables[AUDIT_INDEX_TABLE].query_entities(
                "PartitionKey eq @pk and RowKey ge @first and RowKey lt @after",
                parameters={"pk": partition, "first": first, "after": after},
                select=["RunId", "RequestId", "MailboxGuid"],
            ):
                guid = str(e.get("MailboxGuid") or "")
                found.guids.add(guid)
                if e.get("RequestId"):
                    found.requests.append(str(e["RequestId"]))
                elif e.get("RunId"):
                    found.runs.append((str(e["RunId"]), guid))
        for run_id in await self.unindexed_runs():  # not yet indexed: read through (rarely more than one)
            wanted = address.strip().lower()
            for run_address, guid in await self._mailboxes_of(run_id):
                if run_address.lower() == wanted and (run_id, guid) not in found.runs:
                    found.runs.append((run_id, guid))
                    found.guids.add(guid)
        return found

    async def history(self, address: str, pointers: MailboxPointers | None = None) -> AsyncIterator[AuditedChange]:
        """Every change made to `address`, oldest first: one index query, then one read per run listed.

        The reads grow with the mailbox's own history, never with the table.
        """
        pointers = pointers or await self.pointers(address)
        changes: list[AuditedChange] = []
        async with storage_errors("read the audit trail"):
            for run, guid in pointers.runs:
                try:
                    changes.append(_audited(await self._tables[AUDIT_TABLE].get_entity(run, audit_change_row(guid))))
                except ResourceNotFoundError:
                    continue  # indexed, and its row is not there: nothing was recorded for it
        for change in sorted(changes, key=lambda c: (c.at, c.run_id)):
            yield change

    async def _indexed_runs(self, since: datetime | None, until: datetime | None) -> list[str]:
        """The runs of the days in [since, until], from the index (one small partition a day)."""
        odata, parameters = "PartitionKey ge @first and PartitionKey lt @after", {"first": "day-", "after": "day."}
        if since is not None:
            parameters["first"] = day_partition(since)
        if until is not None:
            parameters["after"] = f"{day_partition(until)}."  # through the whole of that day
        async with storage_errors("read the audit index"):
            rows = self._tables[AUDIT_INDEX_TABLE].query_entities(odata, parameters=parameters, select=["RowKey"])
            return sorted({e["RowKey"] async for e in rows})

    async def index_existing(self) -> int:
        """Index the change rows written before the indexes existed (an upgrade): one scan, once."""
        days: dict[str, set[str]] = {}
        mailboxes: dict[str, list[tuple[str, str]]] = {}
        first, after = CHANGE_ROW_RANGE
        async with storage_errors("index the audit trail"):
            async for e in self._tables[AUDIT_TABLE].query_entities(
                "RowKey ge @first and RowKey lt @after",
                parameters={"first": first, "after": after},
                select=["PartitionKey", "At", "MailboxAddress", "MailboxGuid"],
            ):
                days.setdefault(e["PartitionKey"], set()).add(day_partition(e["At"]))
                mailboxes.setdefault(e["PartitionKey"], []).append((e["MailboxAddress"], e["MailboxGuid"]))
            for run_id, run_days in days.items():
                await self._index_days(run_id, run_days)
                await self.index_mailboxes(run_id, mailboxes[run_id])
        return len(days)

    async def has_summary(self, run_id: str) -> bool:
        async with storage_errors("read the run summary"):
            try:
                await self._tables[AUDIT_TABLE].get_entity(run_id, SUMMARY_ROW, select=["RowKey"])
            except ResourceNotFoundError:
                return False
        return True

    async def write_summary(self, summary: RunSummary) -> None:
        async with storage_errors("write the run summary"):
            await self._tables[AUDIT_TABLE].create_entity(_summary_entity(summary), **NO_ECHO)

    async def record_hold(self, event_id: str, action: str, hold: Hold, actor: Actor, at: datetime) -> None:
        """Audit a pause or a resume: partition `{action}-...` (`event_id`), one `hold` row, insert-only."""
        entity = {"PartitionKey": event_id, "RowKey": HOLD_EVENT_ROW, "Action": action, "HeldBy": hold.held_by}
        entity |= {"Reason": hold.reason, "HeldAt": hold.held_at, "Actor": actor.object_id, "ActorAppId": actor.app_id}
        async with storage_errors(f"audit the {action}"):
            await self._tables[AUDIT_TABLE].create_entity({**entity, "At": at}, **NO_ECHO)

    async def of_run(self, run_id: str) -> list[dict[str, Any]]:
        """A run's rows as stored: its changes and its summary."""
        async with storage_errors("read the audit trail"):
            return [
                dict(e)
                async for e in self._tables[AUDIT_TABLE].query_entities(
                    "PartitionKey eq @pk", parameters={"pk": run_id}
                )
            ]


def _change_entity(entry: AuditEntry) -> dict[str, Any]:
    change = entry.change
    return {
        "PartitionKey": entry.run_id,
        "RowKey": audit_change_row(change.guid),
        "MailboxGuid": change.guid,
        "MailboxAddress": change.address,
        "Before": tri_state(change.before),
        "After": tri_state(change.after),
        "Reason": change.reason.value,
        "Actor": entry.actor.object_id,
        "ActorAppId": entry.actor.app_id,
        "PlanId": entry.plan_id or "",
        "At": entry.at,
        **({"Recovered": True} if entry.recovered else {}),
    }


def _policy_entity(
    run_id: str, change: PolicyChange, actor: Actor, at: datetime, plan_id: str | None, recovered: bool
) -> dict[str, Any]:
    return {
        "PartitionKey": run_id,
        "RowKey": audit_policy_row(change.guid),
        "MailboxGuid": change.guid,
        "MailboxAddress": change.address,
        "BeforePolicy": change.before,
        "AfterPolicy": change.after,
        "Reason": change.reason.value,
        "Actor": actor.object_id,
        "ActorAppId": actor.app_id,
        "PlanId": plan_id or "",
        "At": at,
        **({"Recovered": True} if recovered else {}),
    }


def _audited_policy(entity: Any) -> AuditedPolicyChange:
    return AuditedPolicyChange(
        run_id=entity["PartitionKey"],
        at=entity["At"],
        mailbox=entity.get("MailboxAddress", ""),
        mailbox_guid=entity.get("MailboxGuid", ""),
        before=entity.get("BeforePolicy", ""),
        after=entity.get("AfterPolicy", ""),
        reason=entity.get("Reason", ""),
        actor=entity.get("Actor", ""),
        recovered=bool(entity.get("Recovered", False)),
    )


def _summary_entity(summary: RunSummary) -> dict[str, Any]:
    return {
        "PartitionKey": summary.run_id,
        "RowKey": SUMMARY_ROW,
        "TenantId": summary.tenant_id,
        "Mode": summary.mode,
        "Full": summary.full,
        "Outcome": summary.outcome.value,
        "StartedAt": summary.started_at,
        "FinishedAt": summary.finished_at or utc_now(),
        "Actor": summary.actor.object_id if summary.actor else "",
        "ActorAppId": summary.actor.app_id if summary.actor else "",
        "Scanned": summary.scanned,
        "Planned": summary.planned,
        "Applied": summary.applied,
        "Failed": summary.failed,
        "Remaining": summary.remaining,
        "PlanId": summary.plan_id or "",
        "OrgSmtpAuthDisabled": tri_state(summary.org_smtp_auth_disabled),
        "Counts": json.dumps(summary.by_reason),
        "Message": summary.message[:PROPERTY_CHARS],
        "Errors": json.dumps(summary.errors[:_SUMMARY_ERRORS])[:PROPERTY_CHARS],
        **_hold_properties(summary.hold),
        **({"UndoesRun": summary.undoes} if summary.undoes else {}),
    }


def _hold_properties(hold: Hold | None) -> dict[str, Any]:
    """The enforcement hold a run found: who, since when and why (absent when there was none)."""
    if hold is None:
        return {}
    return {"HeldBy": hold.held_by, "HoldReason": hold.reason[:PROPERTY_CHARS], "HeldAt": hold.held_at}


def _within(at: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or at >= since) and (until is None or at < until)


def _audited(entity: Any) -> AuditedChange:
    return AuditedChange(
        run_id=entity["PartitionKey"],
        at=entity["At"],
        mailbox=entity.get("MailboxAddress", ""),
        mailbox_guid=entity.get("MailboxGuid", ""),
        before=from_tri_state(entity.get("Before", "null")),
        after=from_tri_state(entity.get("After", "null")),
        reason=entity.get("Reason", ""),
        actor=entity.get("Actor", ""),
        recovered=bool(entity.get("Recovered", False)),
    )
