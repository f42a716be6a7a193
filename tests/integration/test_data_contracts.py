"""The stored layouts are contracts: entities as an install writes them today, read and changed by today's code.

tests/integration/fixtures/entities.json holds one or more entities of every kind in docs/storage.md. Each test
loads all of them into a fresh Azurite account, then reads, updates or supersedes them through the
app's `Store` and reads the outcome back raw. A failure here means existing installs would break.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables.aio import TableClient, TableServiceClient

from shared.errors import PendingLimitError, RefusedError, WrongTenantError
from shared.model.actor import Actor
from shared.model.auth_policy import APP_POLICY_NAME, PolicyAssignment, PolicyChange, PolicyReason
from shared.model.exception_records import AuthMethod, ExceptionRecord, ExceptionStatus
from shared.model.mailbox import Change, ChangeReason
from shared.model.notifications import NotificationKind, OutboxItem, OutboxStatus
from shared.model.requests import ExceptionRequest, RequestStatus
from shared.model.runs import AuditEntry, PlanStatus
from shared.storage import TABLES, InstallMarker, InstallStep, Store, SweepState
from shared.storage.entities import from_entity, to_entity
from shared.storage.tables import (
    AUDIT_INDEX_TABLE,
    AUDIT_TABLE,
    EXCEPTIONS_TABLE,
    INTENTS_TABLE,
    PLANS_TABLE,
    SCHEMA_VERSION,
    STATE_TABLE,
    WORKFLOW_TABLE,
)

FIXTURE = Path(__file__).parent / "fixtures" / "entities.json"

# The keys the fixture uses (spelled out here so that a test names the layout it relies on).
TENANT = "8c2f4d1e-6a3b-4f7c-9d2e-1b5a7c9e3f40"
MAILBOX_A = "0a6f3c2e-7b1d-4e5f-9a8b-1c2d3e4f5a60"
MAILBOX_B = "1b7e4d3f-8c2e-4f60-8b9c-2d3e4f5a6b71"
MAILBOX_C = "2c8f5e40-9d3f-4071-9cad-3e4f5a6b7c82"  # reserved by the pending request
A_APPROVED = "5d0b9a7c-3e2f-4a1b-8c6d-7e8f9a0b1c23"
A_SUPERSEDED = "4c9a8b6d-2d1e-4f0a-9b5c-6d7e8f9a0b12"
B_REVOKED = "6e1cab8d-4f3a-4b2c-9d7e-8f9a0b1c2d34"
PLAN_ID = "20261130T020000Z-1a2b3c4d"
RUN_ID = "20261201T020000Z-5e6f7a8b"
REQUEST_ID = "7f2dbc9e-5a4b-4c3d-8e0f-9a0b1c2d3e45"
REQUESTER = "a3b4c5d6-e7f8-4901-8cde-f01234567803"
REQUESTER_PARTITION = f"requester-{REQUESTER}"
APPROVAL_NOTICE_ROW = "outbox-approval-request-20261130-0000"
APPROVER = "f2e3d4c5-b6a7-4890-9bcd-ef0123456702"
THIS_RUN = "20261202T020000Z-0badc0de"
POLICY_RUN = "20261201T030000Z-9c8d7e6f"  # assigned the app's authentication policy to MAILBOX_A
POLICY_PLAN = "20261201T040000Z-2b3c4d5e"  # a plan with an authentication-policy change

_RELATIVE = re.compile(r"@now(?:([+-])(\d+)([dhm]))?")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
_KEYS = ("PartitionKey", "RowKey")

Key = tuple[str, str]


def decode(value: Any, now: datetime) -> Any:
    """The fixture's datetime convention: '@now', '@now+3d' / '@now-10m', or '@2026-11-30T10:00:00Z'."""
    if not isinstance(value, str) or not value.startswith("@"):
        return value
    relative = _RELATIVE.fullmatch(value)
    if relative is None:
        moment = datetime.fromisoformat(value[1:])
        assert moment.tzinfo is not None, f"{value}: a fixture datetime names its zone"
        return moment.astimezone(UTC)
    sign, amount, unit = relative.groups()
    offset = timedelta(**{_UNITS[unit]: int(amount)}) if unit else timedelta()
    return now - offset if sign == "-" else now + offset


@dataclass(frozen=True)
class Loaded:
    """The fixture as stored: every entity by table and keys, with the moment '@now' stood for."""

    now: datetime
    tables: dict[str, dict[Key, dict[str, Any]]]

    def row(self, table: str, partition: str, row: str) -> dict[str, Any]:
        return dict(self.tables[table][partition, row])

    def properties(self, table: str, partition: str, row: str) -> dict[str, Any]:
        return {k: v for k, v in self.row(table, partition, row).items() if k not in _KEYS}


@pytest.fixture
async def contracts(storage: str) -> Loaded:
    """Every fixture entity inserted into this test's (empty) account, as a schema 1 install holds them.

    The fixture fills the five tables of schema 1; the tables later schemas add are created empty.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    document = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert isinstance(document.pop("_about"), str)
    assert set(document) == set(TABLES) - {INTENTS_TABLE, AUDIT_INDEX_TABLE}
    tables: dict[str, dict[Key, dict[str, Any]]] = {}
    async with TableServiceClient.from_connection_string(storage) as service:
        for name in TABLES:
            await service.create_table(name)
            table = service.get_table_client(name)
            tables[name] = {}
            for raw_entity in document.get(name, []):
                entity = {key: decode(value, now) for key, value in raw_entity.items()}
                await table.create_entity(entity)
                tables[name][entity["PartitionKey"], entity["RowKey"]] = entity
    return Loaded(now, tables)


async def stored(storage: str, table: str, partition: str, row: str) -> dict[str, Any] | None:
    """One entity read back raw, or None when there is none."""
    async with TableClient.from_connection_string(storage, table) as client:
        try:
            return dict(await client.get_entity(partition, row))
        except ResourceNotFoundError:
            return None


async def stored_partition(storage: str, table: str, partition: str) -> dict[str, dict[str, Any]]:
    async with TableClient.from_connection_string(storage, table) as client:
        query = client.query_entities("PartitionKey eq @pk", parameters={"pk": partition})
        return {e["RowKey"]: dict(e) async for e in query}


# -- SmtpGuardState -----------------------------------------------------------------------------------


async def test_the_marker_csrf_key_and_watermarks_are_read_as_stored(
    store: Store, storage: str, contracts: Loaded
) -> None:
    marker_row = contracts.row(STATE_TABLE, "install", "marker")
    marker = await store.state.require_marker(TENANT)
    assert marker == InstallMarker(TENANT, marker_row["InstalledAt"], marker_row["InstalledBy"], 1)
    # Today's installs are at schema 1: a sweep refuses them until `init` upgrades the marker in place.
    with pytest.raises(RefusedError, match=r"schema version 1 .* run `python -m shared.cli init`"):
        await store.state.require_current(TENANT)
    upgraded = replace(marker, schema_version=SCHEMA_VERSION)
    assert await store.state.initialise(TENANT, "someone-else") == (upgraded, InstallStep.UPGRADED)
    assert await store.state.initialise(TENANT, "someone-else") == (upgraded, InstallStep.CURRENT)
    assert await store.state.require_current(TENANT) == upgraded
    row = await stored(storage, STATE_TABLE, "install", "marker")
    assert row is not None and (row["SchemaVersion"], row["UpgradedBy"]) == (SCHEMA_VERSION, "someone-else")
    untouched = {k: v for k, v in row.items() if k not in ("SchemaVersion", "UpgradedAt", "UpgradedBy")}
    assert untouched == {k: v for k, v in marker_row.items() if k != "SchemaVersion"}  # only its version moves
    with pytest.raises(WrongTenantError):
        await store.state.require_marker("another-tenant")

    key = contracts.row(STATE_TABLE, "install", "csrf-secret")["Key"]
    secret = await store.state.csrf_secret()
    assert secret == base64.urlsafe_b64decode(key + "=") and len(secret) == 32  # the stored key, not a new one

    for mode in ("report", "enforce"):
        watermark = contracts.row(STATE_TABLE, "sweep", f"watermark-{mode}")["Watermark"]
        assert await store.state.sweep_state(mode) == SweepState(watermark=watermark, full_pending=False)

    for row in ("csrf-secret", "watermark-report", "watermark-enforce"):
        partition = "install" if row == "csrf-secret" else "sweep"
        assert await stored(storage, STATE_TABLE, partition, row) == contracts.row(STATE_TABLE, partition, row)


async def test_a_saved_watermark_merges_into_the_stored_row(store: Store, storage: str, contracts: Loaded) -> None:
    later = contracts.now - timedelta(minutes=3)
    await store.state.save_sweep_state("enforce", SweepState(watermark=later, full_pending=True), THIS_RUN)
    assert await store.state.sweep_state("enforce") == SweepState(watermark=later, full_pending=True)
    row = await stored(storage, STATE_TABLE, "sweep", "watermark-enforce")
    merged = {"Watermark": later, "FullPending": True, "UpdatedByRun": THIS_RUN}
    assert row == {**contracts.row(STATE_TABLE, "sweep", "watermark-enforce"), **merged}
    assert await store.state.sweep_state("report") == SweepState(
        contracts.row(STATE_TABLE, "sweep", "watermark-report")["Watermark"], False
    )


async def test_the_expired_lease_is_taken_over_and_deleted_at_the_end(
    store: Store, storage: str, contracts: Loaded
) -> None:
    assert contracts.row(STATE_TABLE, "sweep", "lease")["ExpiresAt"] < contracts.now
    duration = timedelta(minutes=15)
    async with store.state.lease(THIS_RUN, duration, lambda: contracts.now):
        held = await stored(storage, STATE_TABLE, "sweep", "lease")
        assert held is not None
        assert (held["Holder"], held["ExpiresAt"]) == (THIS_RUN, contracts.now + duration)
        with pytest.raises(RefusedError, match=THIS_RUN):  # and now it holds the others off
            async with store.state.lease("20261202T020100Z-00000000", duration, lambda: contracts.now):
                pass
    assert await stored(storage, STATE_TABLE, "sweep", "lease") is None


# -- SmtpGuardExceptions ------------------------------------------------------------------------------


async def test_every_stored_exception_is_mapped(store: Store, contracts: Loaded) -> None:
    records = {r.id: r for r in await store.exceptions.all()}
    assert set(records) == {A_APPROVED, A_SUPERSEDED, B_REVOKED}
    for (guid, exception_id), row in contracts.tables[EXCEPTIONS_TABLE].items():
        assert records[exception_id] == ExceptionRecord(
            id=exception_id,
            mailbox_guid=guid,
            mailbox_address=row["MailboxAddress"],
            status=ExceptionStatus(row["Status"]),
            expires_at=row["ExpiresAt"],
            reason=row["Reason"],
            owner=row["Owner"],
            device=row["Device"],
            auth_method=AuthMethod(row["AuthMethod"]),
            approved_by=row["ApprovedBy"],
            approved_at=row["ApprovedAt"],
            revoked_at=row.get("RevokedAt"),
            revoked_by=row.get("RevokedBy", ""),
            owner_id=row["OwnerId"],
        )
    assert records[A_APPROVED].is_active(contracts.now)
    assert not records[B_REVOKED].is_active(contracts.now) and records[B_REVOKED].revoked_at is not None
    assert await store.exceptions.get(B_REVOKED) == records[B_REVOKED]


async def test_a_grant_supersedes_the_stored_record_and_a_revoke_ends_it(
    store: Store, storage: str, contracts: Loaded
) -> None:
    now = contracts.now
    current = await store.exceptions.get(A_APPROVED)
    assert current is not None
    renewal = replace(
        current, id=str(uuid.uuid4()), reason="renewed", expires_at=now + timedelta(days=30), approved_at=now
    )
    superseded = await store.exceptions.grant(renewal, created_by=APPROVER)
    assert [r.id for r in superseded] == [A_APPROVED]
    rows = await stored_partition(storage, EXCEPTIONS_TABLE, MAILBOX_A)
    assert set(rows) == {A_APPROVED, A_SUPERSEDED, renewal.id}
    old = contracts.row(EXCEPTIONS_TABLE, MAILBOX_A, A_APPROVED)
    assert rows[A_APPROVED] == {**old, "Status": "superseded"}  # CreatedBy and everything else stay
    assert rows[A_SUPERSEDED] == contracts.row(EXCEPTIONS_TABLE, MAILBOX_A, A_SUPERSEDED)
    assert rows[renewal.id].keys() == old.keys()  # today's grant writes the fixture's layout
    assert rows[renewal.id]["Status"] == "approved" and rows[renewal.id]["CreatedBy"] == APPROVER

    revoked = await store.exceptions.revoke(MAILBOX_A, "admin-oid", now, only_id=renewal.id)
    assert [(r.id, r.status, r.revoked_at) for r in revoked] == [(renewal.id, ExceptionStatus.REVOKED, now)]
    after = await stored_partition(storage, EXCEPTIONS_TABLE, MAILBOX_A)
    ended = {"Status": "revoked", "RevokedAt": now, "RevokedBy": "admin-oid"}
    assert after[renewal.id] == {**rows[renewal.id], **ended}
    assert after[A_APPROVED] == rows[A_APPROVED] and after[A_SUPERSEDED] == rows[A_SUPERSEDED]
    assert await store.exceptions.revoke(MAILBOX_B, "admin-oid", now) == []  # already revoked: untouched
    assert await stored(storage, EXCEPTIONS_TABLE, MAILBOX_B, B_REVOKED) == contracts.row(
        EXCEPTIONS_TABLE, MAILBOX_B, B_REVOKED
    )


# -- SmtpGuardPlans -----------------------------------------------------------------------------------


async def test_a_chunked_plan_is_loaded_in_order_and_claimed_once(
    store: Store, storage: str, contracts: Loaded
) -> None:
    chunks = [json.loads(contracts.row(PLANS_TABLE, PLAN_ID, f"changes-{i:05d}")["Changes"]) for i in (0, 1)]
    loaded = await store.plans.load(PLAN_ID)
    assert loaded is not None
    plan, etag = loaded
    assert [c.to_json() for c in plan.changes] == chunks[0] + chunks[1]
    assert [c.reason for c in plan.changes] == [ChangeReason.NULL, ChangeReason.DRIFT, ChangeReason.EXCEPTION]
    first = Change("3d9a6f51-ae40-4182-8dbe-4f5a6b7c8d93", "legacy-printer@contoso.com", None, True, ChangeReason.NULL)
    assert plan.changes[0] == first
    for i, part in enumerate((plan.changes[:2], plan.changes[2:])):  # the very text today's writer makes
        text = json.dumps([c.to_json() for c in part], separators=(",", ":"))
        assert contracts.row(PLANS_TABLE, PLAN_ID, f"changes-{i:05d}")["Changes"] == text
    header = contracts.row(PLANS_TABLE, PLAN_ID, "plan")
    expected = (PLAN_ID, TENANT, header["CreatedAt"], "enforce", True)
    assert (plan.plan_id, plan.tenant_id, plan.created_at, plan.mode, plan.full) == expected
    assert (plan.status, plan.scanned, plan.org_smtp_auth_disabled) == (PlanStatus.OVER_CAP, 60, True)
    assert json.loads(header["Counts"]) == plan.counts()

    await store.plans.claim(PLAN_ID, etag, THIS_RUN)
    applied = {"Status": "applied", "AppliedByRun": THIS_RUN}
    assert await stored(storage, PLANS_TABLE, PLAN_ID, "plan") == {**header, **applied}
    with pytest.raises(RefusedError):  # a second confirmation of the same plan
        await store.plans.claim(PLAN_ID, etag, "20261202T030000Z-11111111")
    reloaded = await store.plans.load(PLAN_ID)
    assert reloaded is not None and reloaded[0].status is PlanStatus.APPLIED


# -- SmtpGuardAudit -----------------------------------------------------------------------------------


async def test_a_runs_audit_rows_are_read_and_only_ever_added_to(store: Store, storage: str, contracts: Loaded) -> None:
    fixture_rows = sorted(
        (e for (pk, _), e in contracts.tables[AUDIT_TABLE].items() if pk == RUN_ID), key=lambda e: e["RowKey"]
    )
    assert len(fixture_rows) == 3
    assert sorted(await store.audit.of_run(RUN_ID), key=lambda e: e["RowKey"]) == fixture_rows

    change = Change("5fbc8173-c062-43a4-8fd0-6b7c8d9eafb5", "late@contoso.com", None, True, ChangeReason.NULL)
    actor = Actor("9d8c7b6a-5f4e-4d3c-8b2a-190817263544", "0f1e2d3c-4b5a-4968-8776-655443322110")
    await store.audit.append([AuditEntry(RUN_ID, change, actor, contracts.now)])

    rows = {e["RowKey"]: e for e in await store.audit.of_run(RUN_ID)}
    assert len(rows) == 4
    for old in fixture_rows:
        assert rows[old["RowKey"]] == old
    new = rows[f"change-{change.guid}"]
    assert new.keys() == rows[f"change-{MAILBOX_B}"].keys()  # today's writer keeps the fixture's layout
    written = (new["MailboxGuid"], new["Before"], new["After"], new["Reason"], new["Actor"], new["At"])
    assert written == (change.guid, "null", "true", "null", actor.object_id, contracts.now)
    # An existing row is never rewritten: appending it again (a late writer after a settle) keeps it.
    other = Actor("00000000-0000-4000-8000-000000000bad", "")
    await store.audit.append([AuditEntry(RUN_ID, change, other, contracts.now + timedelta(minutes=1))])
    assert {e["RowKey"]: e for e in await store.audit.of_run(RUN_ID)} == rows


# -- OAuth-only exceptions: assignments, policy rows and plan chunks ------------------------------------


async def test_a_stored_policy_assignment_is_read_and_ended_by_its_restore(
    store: Store, storage: str, contracts: Loaded
) -> None:
    held = contracts.row(STATE_TABLE, "oauth-only", MAILBOX_A)
    assert await store.policy_assignments.all() == {
        MAILBOX_A: PolicyAssignment(MAILBOX_A, "scanner@contoso.com", "Legacy", held["AssignedAt"], POLICY_RUN)
    }
    restore = PolicyChange(MAILBOX_A, "scanner@contoso.com", APP_POLICY_NAME, "Legacy", PolicyReason.EXCEPTION_ENDED)
    await store.policy_assignments.intend(restore, THIS_RUN, contracts.now)
    pending = await stored(storage, STATE_TABLE, "oauth-only", MAILBOX_A)
    assert pending is not None and pending.keys() == held.keys()  # today's writer keeps the layout
    assert (pending["Pending"], pending["PendingRun"], pending["Previous"]) == ("restore", THIS_RUN, "Legacy")
    assert pending["AssignedAt"] == held["AssignedAt"]  # merged: when it was assigned stays
    await store.policy_assignments.landed(restore, THIS_RUN, contracts.now)
    assert await stored(storage, STATE_TABLE, "oauth-only", MAILBOX_A) is None


async def test_a_runs_policy_rows_are_read_and_only_ever_added_to(
    store: Store, storage: str, contracts: Loaded
) -> None:
    old = contracts.row(AUDIT_TABLE, POLICY_RUN, f"policy-{MAILBOX_A}")
    (row,) = await store.audit.policy_changes(POLICY_RUN)
    assert (row.mailbox_guid, row.mailbox, row.before, row.after, row.reason, row.at) == (
        MAILBOX_A, "scanner@contoso.com", "Legacy", APP_POLICY_NAME, "oauth-only", old["At"],
    )  # fmt: skip
    actor = Actor("9d8c7b6a-5f4e-4d3c-8b2a-190817263544", "0f1e2d3c-4b5a-4968-8776-655443322110")
    again = PolicyChange(MAILBOX_A, "scanner@contoso.com", "", APP_POLICY_NAME, PolicyReason.OAUTH_ONLY)
    other = PolicyChange(MAILBOX_B, "app-relay@contoso.com", "", APP_POLICY_NAME, PolicyReason.OAUTH_ONLY)
    await store.audit.append_policy_changes(POLICY_RUN, [again, other], actor, contracts.now)
    rows = await stored_partition(storage, AUDIT_TABLE, POLICY_RUN)
    assert rows[f"policy-{MAILBOX_A}"] == old  # never rewritten
    assert rows[f"policy-{MAILBOX_B}"].keys() == old.keys()


async def test_a_plans_policy_chunk_is_loaded(store: Store, contracts: Loaded) -> None:
    loaded = await store.plans.load(POLICY_PLAN)
    assert loaded is not None
    plan = loaded[0]
    chunk = contracts.row(PLANS_TABLE, POLICY_PLAN, "policies-00000")["Changes"]
    assert plan.changes == [] and json.dumps([c.to_json() for c in plan.policy_changes], separators=(",", ":")) == chunk
    assert json.loads(contracts.row(PLANS_TABLE, POLICY_PLAN, "plan")["Counts"]) == plan.counts()
    # A plan stored before policy changes existed has none.
    older = await store.plans.load(PLAN_ID)
    assert older is not None and older[0].policy_changes == []


# -- SmtpGuardRequests: requests and their reservations ----------------------------------------------


async def test_the_stored_request_is_mapped_field_for_field(store: Store, contracts: Loaded) -> None:
    loaded = await store.requests.get(REQUEST_ID)
    assert loaded is not None
    request, etag = loaded
    assert etag
    assert to_entity(request) == contracts.properties(WORKFLOW_TABLE, REQUEST_ID, "request")
    assert (request.id, request.mailbox_guid, request.requester_id) == (REQUEST_ID, MAILBOX_C, REQUESTER)
    assert request.status is RequestStatus.PENDING and request.expires_at > contracts.now
    assert request.decided_at is None and request.exception_expires_at is None
    pending = await store.requests.query("Status eq @status", {"status": "pending"})
    assert [r.id for r in pending] == [REQUEST_ID]


async def test_a_decision_replaces_the_request_and_writes_its_notice(
    store: Store, storage: str, contracts: Loaded
) -> None:
    now = contracts.now
    loaded = await store.requests.get(REQUEST_ID)
    assert loaded is not None
    request, etag = loaded
    decided = replace(
        request,
        status=RequestStatus.APPROVED,
        token_hash="",
        decided_by=APPROVER,
        decided_by_upn="approver@contoso.com",
        decided_at=now,
        decision_comment="ok until the new MFP",
        approved_days=30,
        exception_expires_at=now + timedelta(days=30),
    )
    notice = OutboxItem(REQUEST_ID, NotificationKind.DECISION, OutboxStatus.PENDING, now, now)
    await store.requests.update(decided, etag, [notice])

    row = await stored(storage, WORKFLOW_TABLE, REQUEST_ID, "request")
    assert row is not None
    assert from_entity(ExceptionRequest, row) == decided
    assert (row["Status"], row["DecidedAt"], row["TokenHash"]) == ("approved", now, "")
    expected = {**contracts.properties(WORKFLOW_TABLE, REQUEST_ID, "request"), **to_entity(decided)}
    assert {k: v for k, v in row.items() if k not in _KEYS} == expected
    outbox = await stored(storage, WORKFLOW_TABLE, REQUEST_ID, "outbox-decision")
    assert outbox is not None and from_entity(OutboxItem, outbox) == notice
    with pytest.raises(RefusedError):  # a second approver with the same read
        await store.requests.update(replace(request, status=RequestStatus.DENIED), etag)


async def test_the_stored_reservations_hold_and_are_released(store: Store, storage: str, contracts: Loaded) -> None:
    other = str(uuid.uuid4())
    reservation = contracts.row(WORKFLOW_TABLE, "pending-mailbox", MAILBOX_C)
    slot = contracts.row(WORKFLOW_TABLE, REQUESTER_PARTITION, "pending-request-00")
    assert await store.requests.claim_mailbox(MAILBOX_C, other, contracts.now) == REQUEST_ID
    with pytest.raises(PendingLimitError):  # its one slot is held by the pending request
        await store.requests.claim_pending_slot(REQUESTER, other, contracts.now, limit=1)
    await store.requests.release_mailbox(MAILBOX_C, other)  # not its reservation: kept
    await store.requests.release_pending_slot(REQUESTER, other)
    assert await stored(storage, WORKFLOW_TABLE, "pending-mailbox", MAILBOX_C) == reservation
    assert await stored(storage, WORKFLOW_TABLE, REQUESTER_PARTITION, "pending-request-00") == slot

    await store.requests.release_mailbox(MAILBOX_C, REQUEST_ID)
    await store.requests.release_pending_slot(REQUESTER, REQUEST_ID)
    assert await stored(storage, WORKFLOW_TABLE, "pending-mailbox", MAILBOX_C) is None
    remaining = await stored_partition(storage, WORKFLOW_TABLE, REQUESTER_PARTITION)
    assert set(remaining) == {APPROVAL_NOTICE_ROW}  # the approval notice beside the slot is not touched
    assert await store.requests.claim_mailbox(MAILBOX_C, other, contracts.now) is None  # free now


# -- SmtpGuardRequests: the outbox ------------------------------------------------------------------


async def test_due_notices_are_found_and_marked_sent_where_they_are(
    store: Store, storage: str, contracts: Loaded
) -> None:
    due = {(ref.partition_key, ref.row_key): (item, ref) for item, ref in await store.outbox.due(contracts.now)}
    approval = (REQUESTER_PARTITION, APPROVAL_NOTICE_ROW)
    assert set(due) == {(REQUEST_ID, "outbox-decision"), approval, (f"exception-{B_REVOKED}", "outbox-revoked")}
    for (partition, row), (item, _) in due.items():
        assert to_entity(item) == contracts.properties(WORKFLOW_TABLE, partition, row)
    item, ref = due[approval]
    notice = contracts.row(WORKFLOW_TABLE, *approval)
    kind, pending = NotificationKind.APPROVAL_REQUEST, OutboxStatus.PENDING
    assert item == OutboxItem(
        REQUEST_ID, kind, pending, notice["CreatedAt"], notice["NextAttemptAt"], requester_id=REQUESTER
    )

    sent = replace(item, status=OutboxStatus.SENT, sent_at=contracts.now, attempts=item.attempts + 1)
    saved = await store.outbox.save(sent, ref)
    assert (saved.partition_key, saved.row_key) == approval and saved.etag != ref.etag
    rows = await stored_partition(storage, WORKFLOW_TABLE, REQUESTER_PARTITION)
    assert set(rows) == {"pending-request-00", APPROVAL_NOTICE_ROW}  # the very row, no new one
    marked = {"Status": "sent", "SentAt": contracts.now, "Attempts": 1}
    assert rows[APPROVAL_NOTICE_ROW] == {**notice, **marked}
    assert {(r.partition_key, r.row_key) for _, r in await store.outbox.due(contracts.now)} == set(due) - {approval}
    with pytest.raises(RefusedError):  # the read it was sent from is spent
        await store.outbox.save(sent, ref)
