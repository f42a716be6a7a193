"""Table Storage for exceptions, plans, the audit trail and sweep state (azure-data-tables, async).

Tables are created only by `initialise` (the CLI's `init`), which also writes the install marker.
Every other path requires the marker, so a wrong connection string pointing at an empty account is
refused rather than read as "no exceptions".
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import cache
from types import TracebackType
from typing import Any, Final, Self, TypeVar, get_type_hints

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from shared.errors import (
    DailyLimitError,
    InputError,
    NotInstalledError,
    PendingLimitError,
    RefusedError,
    StoreError,
    WrongTenantError,
    first_line,
)
from shared.reconcile import AuthMethod, Change, ExceptionRecord, ExceptionStatus
from shared.records import AuditEntry, PlanStatus, RunSummary, StoredPlan, tri_state
from shared.settings import StorageConfig
from shared.transport import transport_options
from shared.workflow_records import ExceptionRequest, NotificationKind, OutboxItem, OutboxStatus, RequestStatus

logger = logging.getLogger(__name__)

STATE_TABLE: Final = "SmtpGuardState"
EXCEPTIONS_TABLE: Final = "SmtpGuardExceptions"
PLANS_TABLE: Final = "SmtpGuardPlans"
AUDIT_TABLE: Final = "SmtpGuardAudit"
# Requests and their notification outbox share a partition (the request id), so a decision and the
# notification it owes are written in one transaction. The one exception is the approval notice
# written at submission, which is filed under its requester (see _outbox_entity).
WORKFLOW_TABLE: Final = "SmtpGuardRequests"
TABLES: Final = (STATE_TABLE, EXCEPTIONS_TABLE, PLANS_TABLE, AUDIT_TABLE, WORKFLOW_TABLE)
PENDING_PARTITION: Final = "pending-mailbox"  # in WORKFLOW_TABLE: one row per mailbox with a pending request
# A request's approval notice, filed under its requester in a numbered slot of the day (see _outbox_entity).
APPROVAL_NOTICE_PREFIX: Final = f"outbox-{NotificationKind.APPROVAL_REQUEST.value}-"
# A submission whose request row has not appeared after this has failed: its reservation is freed and
# its notices are dropped (until then they wait for it).
CLAIM_GRACE: Final = timedelta(minutes=5)
# In a requester's partition: one row per pending request of theirs, in slots 00 up to the cap.
PENDING_SLOT_PREFIX: Final = "pending-request-"
MAX_REMEMBERED_REQUESTERS: Final = 10_000  # per worker: where each requester's next free daily slot likely is
SCHEMA_VERSION: Final = 1
TRANSACTION_LIMIT: Final = 100  # entities per table transaction
PLAN_CHUNK_CHARS: Final = 30_000  # a string property holds at most 32K characters
_STORE_RETRIES: Final = {"retry_total": 3, "retry_backoff_factor": 0.4}
# Inserts answer 204 with the ETag instead of echoing the entity, which the SDK would then parse.
_NO_ECHO: Final = {"response_preference": "return-no-content"}


@dataclass(frozen=True, slots=True)
class InstallMarker:
    tenant_id: str
    installed_at: datetime
    installed_by: str
    schema_version: int


@dataclass(frozen=True, slots=True)
class SweepState:
    """Where incremental sweeps resume, for one enforcement mode."""

    watermark: datetime | None
    full_pending: bool


@dataclass(frozen=True, slots=True)
class NoticeRef:
    """Which row a due notification was read from, and its version: what save_notification updates.

    Saving goes back to that row rather than to the key the item would get today, so a row written
    under an earlier key layout is marked sent too, instead of being sent again on every run.
    """

    partition_key: str
    row_key: str
    etag: str


class Store:
    def __init__(self, service: TableServiceClient) -> None:
        self._service = service
        self._tables: dict[str, TableClient] = {}  # building a client builds its whole pipeline
        self._next_slots: dict[str, tuple[str, int]] = {}  # requester -> (UTC day, first slot to try)
        self._csrf_secret: bytes | None = None
        self._pending_hints: dict[str, int] = {}  # requester -> the pending slot to try first

    @classmethod
    def from_config(cls, config: StorageConfig, credential: AsyncTokenCredential) -> Store:
        if config.connection_string is not None:
            try:
                service = TableServiceClient.from_connection_string(
                    config.connection_string, **_STORE_RETRIES, **transport_options()
                )
            except ValueError as err:
                raise StoreError(f"AzureWebJobsStorage is not a valid connection string: {err}") from None
        else:
            assert config.table_endpoint is not None
            service = TableServiceClient(
                config.table_endpoint, credential=credential, **_STORE_RETRIES, **transport_options()
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

    def _table(self, name: str) -> TableClient:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = self._service.get_table_client(name)
        return table

    # -- install marker ------------------------------------------------------------------------------

    async def initialise(self, tenant_id: str, installed_by: str) -> tuple[InstallMarker, bool]:
        """Create the tables and the marker. Idempotent; refuses a store that belongs to another tenant.

        Returns the marker and whether this call created it.
        """
        async with _storage_errors("create the tables"):
            for name in TABLES:
                await self._service.create_table_if_not_exists(name)
        try:
            return await self.require_marker(tenant_id), False
        except NotInstalledError:
            pass
        marker = InstallMarker(tenant_id, datetime.now(UTC), installed_by, SCHEMA_VERSION)
        async with _storage_errors("write the install marker"):
            try:
                await self._table(STATE_TABLE).create_entity(
                    {
                        "PartitionKey": "install",
                        "RowKey": "marker",
                        "TenantId": marker.tenant_id,
                        "InstalledAt": marker.installed_at,
                        "InstalledBy": marker.installed_by,
                        "SchemaVersion": marker.schema_version,
                    },
                    **_NO_ECHO,
                )
            except ResourceExistsError:  # another init won the race; check it is ours
                return await self.require_marker(tenant_id), False
        return marker, True

    async def csrf_secret(self) -> bytes:
        """The key that signs CSRF tokens: made once per install by an insert-only write, so every
        worker agrees on it and an existing install needs no new step. Never logged."""
        if self._csrf_secret is None:
            table = self._table(STATE_TABLE)
            async with _storage_errors("read the CSRF key"):
                try:
                    entity = await table.get_entity("install", "csrf-secret")
                except ResourceNotFoundError:
                    entity = {"PartitionKey": "install", "RowKey": "csrf-secret", "Key": secrets.token_urlsafe(32)}
                    try:
                        await table.create_entity(entity, **_NO_ECHO)
                    except ResourceExistsError:  # another worker made it first: use theirs
                        entity = await table.get_entity("install", "csrf-secret")
            self._csrf_secret = base64.urlsafe_b64decode(entity["Key"] + "==")
        return self._csrf_secret

    async def require_marker(self, tenant_id: str) -> InstallMarker:
        """The install marker, or NotInstalledError / WrongTenantError. Called before any sweep."""
        hint = "run `python -m shared.cli init` against the right storage account first"
        try:
            entity = await self._table(STATE_TABLE).get_entity("install", "marker")
        except ResourceNotFoundError:
            raise NotInstalledError(f"this storage account has no SMTP AUTH Guard install marker: {hint}") from None
        except AzureError as err:
            raise StoreError(f"table storage could not be read (install marker): {first_line(err)}") from None
        if entity.get("TenantId") != tenant_id:
            raise WrongTenantError(
                f"the install marker names tenant {entity.get('TenantId')}, not {tenant_id}: "
                "AzureWebJobsStorage points at another install's storage"
            )
        return InstallMarker(
            tenant_id=entity["TenantId"],
            installed_at=entity["InstalledAt"],
            installed_by=entity.get("InstalledBy", ""),
            schema_version=int(entity.get("SchemaVersion", 0)),
        )

    # -- exceptions ----------------------------------------------------------------------------------

    async def list_exceptions(self) -> list[ExceptionRecord]:
        """Every exception record. Raises StoreError on any failure: never read a failure as 'none'."""
        async with _storage_errors("read the exceptions"):
            return [_exception_from_entity(e) async for e in self._table(EXCEPTIONS_TABLE).list_entities()]

    async def grant_exception(self, record: ExceptionRecord, created_by: str) -> list[ExceptionRecord]:
        """The one grant path: insert `record`, and supersede the mailbox's older approved records, atomically.

        Storage only: Exchange is never touched here (an approval switches its one mailbox on itself;
        everything else waits for the sweeps). Each superseded record is updated ETag-guarded and only
        its status changes, so who created it stays. A record older than an approved one of the same
        mailbox never supersedes it: it is stored as superseded itself. RefusedError when a record
        with its id exists already (it is never overwritten, so a late repair cannot bring back an
        exception revoked meanwhile), or when a record changed while this ran.
        """
        table = self._table(EXCEPTIONS_TABLE)
        async with _storage_errors("write the exception"):
            approved = [
                e
                async for e in table.query_entities(
                    "PartitionKey eq @pk and Status eq @status",
                    parameters={"pk": record.mailbox_guid, "status": ExceptionStatus.APPROVED.value},
                )
                if e["RowKey"] != record.id
            ]
            older = [e for e in approved if e["ApprovedAt"] <= record.approved_at]
            if len(older) < len(approved):  # a newer grant holds the mailbox
                record = replace(record, status=ExceptionStatus.SUPERSEDED)
            operations: list[Any] = [("create", {**_exception_to_entity(record), "CreatedBy": created_by})]
            operations += [_guarded_merge(e, {"Status": ExceptionStatus.SUPERSEDED.value}) for e in older]
            await _submit(table, operations)
        return [_exception_from_entity(e) for e in older]

    async def revoke_exceptions(
        self, mailbox_guid: str, revoked_by: str, now: datetime, only_id: str | None = None
    ) -> list[ExceptionRecord]:
        """The one revoke path: end the mailbox's approved exceptions (or just `only_id`) now, ETag-guarded.

        Returns what was revoked: nothing when none was approved. RefusedError when one changed while
        this ran (say a renewal superseded it): the caller reads again.
        """
        table = self._table(EXCEPTIONS_TABLE)
        async with _storage_errors("revoke the exception"):
            active = [
                e
                async for e in table.query_entities(
                    "PartitionKey eq @pk and Status eq @status",
                    parameters={"pk": mailbox_guid, "status": ExceptionStatus.APPROVED.value},
                )
                if only_id is None or e["RowKey"] == only_id
            ]
            ended = {"Status": ExceptionStatus.REVOKED.value, "RevokedAt": now, "RevokedBy": revoked_by}
            if active:
                await _submit(table, [_guarded_merge(e, ended) for e in active])
        return [_exception_from_entity({**e, **ended}) for e in active]

    # -- plans ---------------------------------------------------------------------------------------

    async def save_plan(self, plan: StoredPlan) -> None:
        """Chunks first, header last: a plan is visible only once all of it is stored."""
        chunks = _chunk_changes(plan.changes)
        table = self._table(PLANS_TABLE)
        async with _storage_errors("store the plan"):
            entities = [
                {"PartitionKey": plan.plan_id, "RowKey": f"changes-{index:05d}", "Changes": chunk}
                for index, chunk in enumerate(chunks)
            ]
            for start in range(0, len(entities), TRANSACTION_LIMIT):
                await _submit(table, [("upsert", e) for e in entities[start : start + TRANSACTION_LIMIT]])
            await table.upsert_entity(_plan_header(plan, len(chunks)))

    async def load_plan(self, plan_id: str) -> tuple[StoredPlan, str] | None:
        """The plan and the etag of its header, or None when there is no such plan."""
        table = self._table(PLANS_TABLE)
        async with _storage_errors("read the plan"):
            try:
                header = await table.get_entity(plan_id, "plan")
            except ResourceNotFoundError:
                return None
            rows = [
                e
                async for e in table.query_entities(
                    "PartitionKey eq @pk and RowKey ge 'changes-' and RowKey lt 'changes.'",
                    parameters={"pk": plan_id},
                )
            ]
        if len(rows) != int(header.get("Chunks", 0)):
            raise StoreError(f"plan {plan_id} is incomplete in storage ({len(rows)} of {header.get('Chunks')} chunks)")
        changes = [
            Change.from_json(item)
            for row in sorted(rows, key=lambda r: r["RowKey"])
            for item in json.loads(row["Changes"])
        ]
        plan = StoredPlan(
            plan_id=plan_id,
            tenant_id=header["TenantId"],
            created_at=header["CreatedAt"],
            mode=header["Mode"],
            full=bool(header["Full"]),
            status=PlanStatus(header["Status"]),
            scanned=int(header.get("Scanned", 0)),
            org_smtp_auth_disabled=_from_tri_state(header.get("OrgSmtpAuthDisabled", "null")),
            changes=changes,
        )
        return plan, header.metadata["etag"]

    async def claim_plan(self, plan_id: str, etag: str, run_id: str) -> None:
        """Mark a reviewed plan applied, once. A second confirmation of the same plan is refused."""
        async with _storage_errors("mark the plan applied"):
            try:
                await self._table(PLANS_TABLE).update_entity(
                    {
                        "PartitionKey": plan_id,
                        "RowKey": "plan",
                        "Status": PlanStatus.APPLIED.value,
                        "AppliedByRun": run_id,
                    },
                    mode=UpdateMode.MERGE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                raise RefusedError(f"plan {plan_id} was confirmed by another run at the same time") from None

    # -- audit ---------------------------------------------------------------------------------------

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append change rows. `create` fails on an existing row, so the trail is never rewritten."""
        table = self._table(AUDIT_TABLE)
        by_run: dict[str, list[AuditEntry]] = {}
        for entry in entries:
            by_run.setdefault(entry.run_id, []).append(entry)
        async with _storage_errors("write the audit trail"):
            for run_entries in by_run.values():
                for start in range(0, len(run_entries), TRANSACTION_LIMIT):
                    chunk = run_entries[start : start + TRANSACTION_LIMIT]
                    await _submit(table, [("create", _audit_entity(e)) for e in chunk])

    async def write_summary(self, summary: RunSummary) -> None:
        async with _storage_errors("write the run summary"):
            await self._table(AUDIT_TABLE).create_entity(_summary_entity(summary), **_NO_ECHO)

    async def get_exception(self, exception_id: str) -> ExceptionRecord | None:
        async with _storage_errors("read the exception"):
            found = [
                e
                async for e in self._table(EXCEPTIONS_TABLE).query_entities(
                    "RowKey eq @rk", parameters={"rk": exception_id}
                )
            ]
        return _exception_from_entity(found[0]) if found else None

    # -- requests and outbox -------------------------------------------------------------------------

    async def create_request(self, request: ExceptionRequest, notify: Sequence[OutboxItem], daily_limit: int) -> None:
        """Store a new request after its notifications; DailyLimitError when its requester has no slot left today.

        Plain inserts: the approval notice lives in the requester's partition, so no transaction could
        hold it with the request (and the SDK's multipart encoding would cost the worker more CPU than
        the inserts: 2.05 ms against 1.12 ms for two entities, measured). The order keeps the promise
        a transaction would: a stored request always has its notifications. When a later insert fails,
        the notifications already written are removed again, so a failed submission does not use up a
        daily slot; if even that fails (storage down), the sender skips them later.
        """
        table = self._table(WORKFLOW_TABLE)
        written: list[dict[str, Any]] = []
        async with _storage_errors("store the request"):
            try:
                for item in notify:
                    if item.requester_id:
                        written.append(await self._file_approval_notice(table, item, daily_limit))
                        continue
                    entity = _outbox_entity(item)
                    await table.create_entity(entity, **_NO_ECHO)
                    written.append(entity)
                await table.create_entity(
                    {**to_entity(request), "PartitionKey": request.id, "RowKey": "request"}, **_NO_ECHO
                )
            except (AzureError, DailyLimitError):
                for entity in written:
                    with suppress(AzureError):
                        await table.delete_entity(entity["PartitionKey"], entity["RowKey"])
                raise

    async def _file_approval_notice(self, table: TableClient, item: OutboxItem, daily_limit: int) -> dict[str, Any]:
        """Insert the notice into the first free of its requester's `daily_limit` slots of the UTC day.

        The daily rate costs no read in the usual case: an insert that fails on an existing row is the
        check, atomic across workers. The slot this worker used last for the requester is where it
        tries first; only a taken slot costs a read of the day's slots (one key range).
        """
        day = _utc_day(item.created_at)
        hinted_day, slot = self._next_slots.get(item.requester_id, (day, 0))
        if hinted_day != day:
            slot = 0
        for _ in range(daily_limit + 1):  # every lost race means one more slot is taken
            if slot < daily_limit:
                entity = _outbox_entity(replace(item, daily_slot=slot))
                try:
                    await table.create_entity(entity, **_NO_ECHO)
                except ResourceExistsError:
                    pass
                else:
                    self._remember_slot(item.requester_id, day, slot + 1)
                    return entity
            taken = await self._taken_slots(table, item.requester_id, day)
            slot = next((free for free in range(daily_limit) if free not in taken), daily_limit)
            if slot == daily_limit:
                self._remember_slot(item.requester_id, day, daily_limit)
                break
        raise DailyLimitError(f"at most {daily_limit} requests a day (UTC)")

    def _remember_slot(self, requester_id: str, day: str, slot: int) -> None:
        self._remember(self._next_slots, requester_id, (day, slot))

    @staticmethod
    def _remember(hints: dict[str, T], requester_id: str, hint: T) -> None:
        if len(hints) >= MAX_REMEMBERED_REQUESTERS:
            hints.clear()  # only a hint: forgetting costs a read, never a wrong answer
        hints[requester_id] = hint

    async def _taken_slots(self, table: TableClient, requester_id: str, day: str) -> set[int]:
        prefix = _approval_notice_key(day, None)
        taken: set[int] = set()
        async for e in table.query_entities(
            "PartitionKey eq @pk and RowKey gt @start and RowKey lt @end",
            parameters={"pk": _requester_partition(requester_id), "start": prefix, "end": f"{prefix[:-1]}."},
            select=["RowKey"],
        ):
            suffix = e["RowKey"][len(prefix) :]
            if suffix.isdigit():
                taken.add(int(suffix))
        return taken

    async def get_request(self, request_id: str) -> tuple[ExceptionRequest, str] | None:
        async with _storage_errors("read the request"):
            try:
                entity = await self._table(WORKFLOW_TABLE).get_entity(request_id, "request")
            except ResourceNotFoundError:
                return None
        return from_entity(ExceptionRequest, entity), entity.metadata["etag"]

    async def query_requests(self, odata_filter: str, parameters: dict[str, Any]) -> list[ExceptionRequest]:
        async with _storage_errors("read the requests"):
            return [
                from_entity(ExceptionRequest, e)
                async for e in self._table(WORKFLOW_TABLE).query_entities(
                    f"RowKey eq 'request' and ( {odata_filter} )", parameters=parameters
                )
            ]

    async def update_request(self, request: ExceptionRequest, etag: str, notify: Sequence[OutboxItem] = ()) -> None:
        """Replace the request if nobody changed it since `etag`, and enqueue `notify`, atomically.

        Raises RefusedError when someone else changed it first (two approvers at once).
        """
        table = self._table(WORKFLOW_TABLE)
        operations: list[Any] = [
            (
                "update",
                {**to_entity(request), "PartitionKey": request.id, "RowKey": "request"},
                {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified},
            )
        ]
        operations += [("upsert", _outbox_entity(item)) for item in notify]
        async with _storage_errors("update the request"):
            await _submit(table, operations)

    async def claim_mailbox(self, mailbox_guid: str, request_id: str, now: datetime) -> str | None:
        """Reserve a mailbox for one pending request: None when reserved, else the id of the request holding it.

        An insert that fails on an existing row makes two simultaneous submissions for one mailbox
        produce exactly one pending request. A reservation is taken over, ETag-guarded, only when its
        request is no longer pending, or was never stored (its submission failed) and the claim is older
        than CLAIM_GRACE: a release that was lost never blocks a mailbox for long.
        """
        table = self._table(WORKFLOW_TABLE)
        entity = {"PartitionKey": PENDING_PARTITION, "RowKey": mailbox_guid, "RequestId": request_id, "ClaimedAt": now}
        async with _storage_errors("reserve the mailbox"):
            return await self._claim_row(table, entity, now)

    async def release_mailbox(self, mailbox_guid: str, request_id: str) -> None:
        """End a request's reservation of its mailbox (only its own). Losing this is harmless: see claim."""
        table = self._table(WORKFLOW_TABLE)
        async with _storage_errors("release the mailbox"):
            try:
                current = await table.get_entity(PENDING_PARTITION, mailbox_guid)
            except ResourceNotFoundError:
                return
            if current.get("RequestId") == request_id:
                with suppress(ResourceNotFoundError, ResourceModifiedError):
                    await table.delete_entity(
                        PENDING_PARTITION,
                        mailbox_guid,
                        etag=current.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )

    async def claim_pending_slot(self, requester_id: str, request_id: str, now: datetime, limit: int) -> None:
        """Take one of the requester's `limit` pending-request slots, or raise PendingLimitError.

        The same insert-only reservation as a mailbox's (see claim_mailbox): a slot whose request was
        decided or lapsed, or never stored, is taken over; so is one whose release was lost.
        """
        table = self._table(WORKFLOW_TABLE)
        start = self._pending_hints.get(requester_id, 0) % limit
        async with _storage_errors("reserve a pending-request slot"):
            for slot in [*range(start, limit), *range(start)]:  # where this worker last found one free first
                entity = {
                    "PartitionKey": _requester_partition(requester_id),
                    "RowKey": f"{PENDING_SLOT_PREFIX}{slot:02d}",
                    "RequestId": request_id,
                    "ClaimedAt": now,
                }
                if await self._claim_row(table, entity, now) is None:
                    self._remember(self._pending_hints, requester_id, slot + 1)
                    return
        raise PendingLimitError(f"you already have {limit} pending requests: wait for a decision on one of them")

    async def release_pending_slot(self, requester_id: str, request_id: str) -> None:
        """Give back the requester's slot held by this request. Losing this is harmless: see the claim."""
        table = self._table(WORKFLOW_TABLE)
        async with _storage_errors("release the pending-request slot"):
            async for row in table.query_entities(
                "PartitionKey eq @pk and RowKey gt @start and RowKey lt @end",
                parameters={
                    "pk": _requester_partition(requester_id),
                    "start": PENDING_SLOT_PREFIX,
                    "end": f"{PENDING_SLOT_PREFIX[:-1]}.",
                },
            ):
                if row.get("RequestId") == request_id:
                    with suppress(ResourceNotFoundError, ResourceModifiedError):
                        await table.delete_entity(
                            row["PartitionKey"],
                            row["RowKey"],
                            etag=row.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified,
                        )

    async def _claim_row(self, table: TableClient, entity: dict[str, Any], now: datetime) -> str | None:
        for _ in range(3):
            with suppress(_ReservationVanished):  # the holder gave the row back while we looked
                return await _claim(table, entity, now, self.get_request)
        raise StoreError("could not reserve: the reservation kept changing; try again")

    async def enqueue(self, item: OutboxItem) -> bool:
        """Enqueue a notification once; False when it was enqueued before (reminders go out once)."""
        async with _storage_errors("enqueue the notification"):
            try:
                await self._table(WORKFLOW_TABLE).create_entity(_outbox_entity(item), **_NO_ECHO)
            except ResourceExistsError:
                return False
        return True

    async def due_notifications(self, now: datetime) -> list[tuple[OutboxItem, NoticeRef]]:
        async with _storage_errors("read the outbox"):
            rows = [
                e
                async for e in self._table(WORKFLOW_TABLE).query_entities(
                    "RowKey ge 'outbox-' and RowKey lt 'outbox.' and Status eq @pending and NextAttemptAt le @now",
                    parameters={"pending": OutboxStatus.PENDING.value, "now": now},
                )
            ]
        return [(_outbox_from_entity(e), NoticeRef(e["PartitionKey"], e["RowKey"], e.metadata["etag"])) for e in rows]

    async def save_notification(self, item: OutboxItem, ref: NoticeRef) -> NoticeRef:
        entity = {**_outbox_entity(item), "PartitionKey": ref.partition_key, "RowKey": ref.row_key}
        async with _storage_errors("update the outbox"):
            try:
                metadata = await self._table(WORKFLOW_TABLE).update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=ref.etag, match_condition=MatchConditions.IfNotModified
                )
            except ResourceModifiedError:
                raise RefusedError("another sender handled this notification") from None
        return replace(ref, etag=str(metadata["etag"]))

    async def list_audit(self, run_id: str) -> list[dict[str, Any]]:
        async with _storage_errors("read the audit trail"):
            return [
                dict(e)
                async for e in self._table(AUDIT_TABLE).query_entities("PartitionKey eq @pk", parameters={"pk": run_id})
            ]

    # -- sweep state ---------------------------------------------------------------------------------

    async def sweep_state(self, mode: str) -> SweepState:
        async with _storage_errors("read the sweep state"):
            try:
                entity = await self._table(STATE_TABLE).get_entity("sweep", f"watermark-{mode}")
            except ResourceNotFoundError:
                return SweepState(watermark=None, full_pending=True)
        return SweepState(watermark=entity.get("Watermark"), full_pending=bool(entity.get("FullPending", False)))

    async def save_sweep_state(self, mode: str, state: SweepState, run_id: str) -> None:
        entity: dict[str, Any] = {
            "PartitionKey": "sweep",
            "RowKey": f"watermark-{mode}",
            "FullPending": state.full_pending,
            "UpdatedByRun": run_id,
        }
        if state.watermark is not None:
            entity["Watermark"] = state.watermark
        async with _storage_errors("save the sweep state"):
            await self._table(STATE_TABLE).upsert_entity(entity, mode=UpdateMode.MERGE)

    @asynccontextmanager
    async def lease(self, holder: str, duration: timedelta, now: Callable[[], datetime]) -> AsyncIterator[None]:
        """Hold the tenant's sweep lease, or raise RefusedError naming the run that holds it.

        An ETag-guarded row with an expiry: a crashed run blocks others only until it expires. A live
        run renews it every third of `duration`, however long its listing takes.
        """
        table = self._table(STATE_TABLE)
        async with _storage_errors("take the sweep lease"):
            etag = await _take_lease(table, holder, now() + duration, now())
        done = asyncio.Event()

        async def renew() -> None:
            nonlocal etag
            while not done.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), duration.total_seconds() / 3)
                    return
                entity = {"PartitionKey": "sweep", "RowKey": "lease", "Holder": holder, "ExpiresAt": now() + duration}
                try:
                    metadata = await table.update_entity(
                        entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
                except (ResourceModifiedError, ResourceNotFoundError):
                    logger.error("SMTP AUTH Guard: run %s lost the sweep lease to another run", holder)
                    return
                except AzureError as err:  # try again at the next tick, before the lease runs out
                    logger.warning("SMTP AUTH Guard: run %s could not renew its lease: %s", holder, first_line(err))
                    continue
                etag = str(metadata["etag"])

        renewal = asyncio.create_task(renew())
        try:
            yield
        finally:
            done.set()
            await renewal
            async with _storage_errors("release the sweep lease"):
                with suppress(ResourceNotFoundError, ResourceModifiedError):  # expired and taken over
                    await table.delete_entity(
                        "sweep", "lease", etag=etag, match_condition=MatchConditions.IfNotModified
                    )


async def _take_lease(table: TableClient, holder: str, expires: datetime, now: datetime) -> str:
    entity = {"PartitionKey": "sweep", "RowKey": "lease", "Holder": holder, "ExpiresAt": expires}
    try:
        current = await table.get_entity("sweep", "lease")
    except ResourceNotFoundError:
        try:
            metadata = await table.create_entity(entity, **_NO_ECHO)
        except ResourceExistsError:
            raise RefusedError("another sweep took the lease at the same moment; this run stops") from None
        return str(metadata["etag"])
    if current["ExpiresAt"] > now:
        raise RefusedError(
            f"another sweep ({current['Holder']}) holds the lease until {current['ExpiresAt']:%Y-%m-%d %H:%M:%S}Z; "
            "this run stops"
        )
    try:  # expired: take it over, unless someone else does first
        metadata = await table.update_entity(
            entity,
            mode=UpdateMode.REPLACE,
            etag=current.metadata["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    except ResourceModifiedError:
        raise RefusedError("another sweep took over the expired lease first; this run stops") from None
    return str(metadata["etag"])


# -- entity mapping -----------------------------------------------------------------------------------

T = TypeVar("T")


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def to_entity(record: Any) -> dict[str, Any]:
    """A dataclass as table properties (PascalCase); enums as their values; None left out."""
    entity: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None:
            continue
        entity[_pascal(f.name)] = value.value if isinstance(value, Enum) else value
    return entity


@cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_entity(cls: type[T], entity: dict[str, Any]) -> T:
    hints = _type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        key = _pascal(f.name)
        if key not in entity:
            continue
        value = entity[key]
        kind = hints[f.name]
        if isinstance(kind, type) and issubclass(kind, Enum):
            value = kind(value)
        values[f.name] = value
    return cls(**values)


class _ReservationVanished(Exception):
    """The reservation row was deleted between two steps of a claim: try the claim again."""


async def _claim(
    table: TableClient,
    entity: dict[str, Any],
    now: datetime,
    get_request: Callable[[str], Awaitable[tuple[ExceptionRequest, str] | None]],
) -> str | None:
    """One attempt of a reservation (a mailbox's, or a requester's slot).

    _ReservationVanished when the row went away meanwhile.
    """
    try:
        await table.create_entity(entity, **_NO_ECHO)
        return None
    except ResourceExistsError:
        try:
            current = await table.get_entity(entity["PartitionKey"], entity["RowKey"])
        except ResourceNotFoundError:
            raise _ReservationVanished from None
    holder = str(current.get("RequestId", ""))
    loaded = await get_request(holder) if holder else None
    if loaded is None and now - current.get("ClaimedAt", now) < CLAIM_GRACE:
        return holder  # its submission is still being written
    if loaded is not None and loaded[0].status is RequestStatus.PENDING and now < loaded[0].expires_at:
        return holder  # a lapsed request can no longer be approved, so it holds nothing
    try:
        unchanged = {"etag": current.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
        await table.update_entity(entity, mode=UpdateMode.REPLACE, **unchanged)
    except ResourceNotFoundError:
        raise _ReservationVanished from None
    except ResourceModifiedError:
        return str((await table.get_entity(entity["PartitionKey"], entity["RowKey"])).get("RequestId", ""))
    return None


def _requester_partition(requester_id: str) -> str:
    return f"requester-{requester_id}"


def _utc_day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d")


def _approval_notice_key(day: str, slot: int | None) -> str:
    """`outbox-approval-request-{day}-{slot}`; with no slot, the prefix of that day's keys."""
    return f"{APPROVAL_NOTICE_PREFIX}{day}-" if slot is None else f"{APPROVAL_NOTICE_PREFIX}{day}-{slot:04d}"


def _outbox_entity(item: OutboxItem) -> dict[str, Any]:
    """Where a notification lives: beside what it is about, keyed by kind (so it is enqueued once).

    A request's approval notice is filed under its requester instead, in one of the day's numbered
    slots: taking a free slot is the daily rate (see Store._file_approval_notice). Either way its row
    key starts with "outbox-", which is how the sender finds due notifications.
    """
    if item.requester_id:
        keys = {
            "PartitionKey": _requester_partition(item.requester_id),
            "RowKey": _approval_notice_key(_utc_day(item.created_at), item.daily_slot),
        }
    else:
        keys = {"PartitionKey": item.about, "RowKey": f"outbox-{item.kind.value}"}
    return {**to_entity(item), **keys}


def _outbox_from_entity(entity: dict[str, Any]) -> OutboxItem:
    if "About" not in entity:  # written before `about` was stored: it lived beside what it is about
        entity = {**entity, "About": entity["PartitionKey"]}
    return from_entity(OutboxItem, entity)


def _exception_to_entity(record: ExceptionRecord) -> dict[str, Any]:
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


def _exception_from_entity(entity: dict[str, Any]) -> ExceptionRecord:
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
    )


def _chunk_changes(changes: Iterable[Change]) -> list[str]:
    chunks: list[str] = []
    current: list[str] = []
    size = 2
    for change in changes:
        item = json.dumps(change.to_json(), separators=(",", ":"))
        if current and size + len(item) + 1 > PLAN_CHUNK_CHARS:
            chunks.append("[" + ",".join(current) + "]")
            current, size = [], 2
        current.append(item)
        size += len(item) + 1
    if current or not chunks:
        chunks.append("[" + ",".join(current) + "]")
    return chunks


def _plan_header(plan: StoredPlan, chunks: int) -> dict[str, Any]:
    return {
        "PartitionKey": plan.plan_id,
        "RowKey": "plan",
        "TenantId": plan.tenant_id,
        "CreatedAt": plan.created_at,
        "Mode": plan.mode,
        "Full": plan.full,
        "Status": plan.status.value,
        "Scanned": plan.scanned,
        "ChangeCount": len(plan.changes),
        "Counts": json.dumps(plan.counts()),
        "OrgSmtpAuthDisabled": tri_state(plan.org_smtp_auth_disabled),
        "Chunks": chunks,
    }


def _from_tri_state(value: str) -> bool | None:
    return None if value == "null" else value == "true"


def _audit_entity(entry: AuditEntry) -> dict[str, Any]:
    change = entry.change
    return {
        "PartitionKey": entry.run_id,
        "RowKey": f"change-{change.guid}",
        "MailboxGuid": change.guid,
        "MailboxAddress": change.address,
        "Before": tri_state(change.before),
        "After": tri_state(change.after),
        "Reason": change.reason.value,
        "Actor": entry.actor.object_id,
        "ActorAppId": entry.actor.app_id,
        "PlanId": entry.plan_id or "",
        "At": entry.at,
    }


def _summary_entity(summary: RunSummary) -> dict[str, Any]:
    return {
        "PartitionKey": summary.run_id,
        "RowKey": "summary",
        "TenantId": summary.tenant_id,
        "Mode": summary.mode,
        "Full": summary.full,
        "Outcome": summary.outcome.value,
        "StartedAt": summary.started_at,
        "FinishedAt": summary.finished_at or datetime.now(UTC),
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
        "Message": summary.message[:30_000],
        "Errors": json.dumps(summary.errors[:50])[:30_000],
    }


def _guarded_merge(entity: Any, changes: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A transaction's update of only `changes`, refused if the entity changed since it was read."""
    keys = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
    unchanged = {"etag": entity.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
    return ("update", {**keys, **changes}, {"mode": UpdateMode.MERGE, **unchanged})


async def _submit(table: TableClient, operations: list[Any]) -> None:
    try:
        await table.submit_transaction(operations)
    except TableTransactionError as err:
        if getattr(err, "status_code", None) == 412:
            raise RefusedError("a stored record changed while it was being updated; try again") from None
        if getattr(err, "error_code", None) == "EntityAlreadyExists":
            raise RefusedError("the record exists already") from None
        raise


@asynccontextmanager
async def _storage_errors(action: str) -> AsyncIterator[None]:
    """Turn SDK failures into one StoreError that says what could not be done."""
    try:
        yield
    except (RefusedError, InputError):
        raise
    except ResourceNotFoundError as err:
        raise NotInstalledError(
            f"could not {action}: a table is missing ({first_line(err)}); run `python -m shared.cli init`"
        ) from None
    except AzureError as err:
        raise StoreError(f"could not {action} in table storage: {first_line(err)}") from None
