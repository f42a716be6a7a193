"""The one grant path and the one revoke path, against Azurite (and the emulator's call log)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.data.tables.aio import TableClient

from emulator.server import EmulatorServer
from shared.errors import RefusedError
from shared.model.exception_records import AuthMethod, ExceptionRecord, ExceptionStatus
from shared.storage import Store
from shared.storage.tables import EXCEPTIONS_TABLE

GUID = "6f1c2b7e-0000-4000-8000-00000000beef"


def _record(approved_at: datetime, **overrides: Any) -> ExceptionRecord:
    values: dict[str, Any] = dict(
        id=str(uuid.uuid4()),
        mailbox_guid=GUID,
        mailbox_address="scanner@contoso.com",
        status=ExceptionStatus.APPROVED,
        expires_at=approved_at + timedelta(days=30),
        reason="scanner",
        owner="",
        device="MFP",
        auth_method=AuthMethod.OAUTH,
        approved_by="admin",
        approved_at=approved_at,
    )
    values.update(overrides)
    return ExceptionRecord(**values)


async def _rows(storage: str) -> dict[str, dict[str, Any]]:
    async with TableClient.from_connection_string(storage, EXCEPTIONS_TABLE) as table:
        return {
            e["RowKey"]: dict(e) async for e in table.query_entities("PartitionKey eq @pk", parameters={"pk": GUID})
        }


async def test_a_superseded_record_keeps_its_creator(store: Store, storage: str) -> None:
    await store.state.initialise("tenant", "test")
    now = datetime.now(UTC)
    first, second = _record(now - timedelta(hours=1)), _record(now)
    await store.exceptions.grant(first, created_by="alice")
    superseded = await store.exceptions.grant(second, created_by="bob")
    assert [r.id for r in superseded] == [first.id]
    rows = await _rows(storage)
    assert rows[first.id]["Status"] == "superseded" and rows[first.id]["CreatedBy"] == "alice"
    assert rows[second.id]["Status"] == "approved" and rows[second.id]["CreatedBy"] == "bob"


async def test_an_older_grant_never_supersedes_a_newer_one(store: Store, storage: str) -> None:
    await store.state.initialise("tenant", "test")
    now = datetime.now(UTC)
    newer, late_repair = _record(now), _record(now - timedelta(days=2))
    await store.exceptions.grant(newer, created_by="bob")
    assert await store.exceptions.grant(late_repair, created_by="repair") == []
    rows = await _rows(storage)
    assert rows[newer.id]["Status"] == "approved"
    assert rows[late_repair.id]["Status"] == "superseded"  # kept as history, never active


async def test_a_renewal_racing_a_revocation_ends_in_one_consistent_state(store: Store, storage: str) -> None:
    await store.state.initialise("tenant", "test")
    for round_ in range(6):
        now = datetime.now(UTC)
        await store.exceptions.revoke(GUID, "cleanup", now)
        current = _record(now - timedelta(minutes=1))
        await store.exceptions.grant(current, created_by="admin")
        renewal = _record(now)
        results = await asyncio.gather(
            store.exceptions.grant(renewal, created_by="approver"),
            store.exceptions.revoke(GUID, "admin", now),
            return_exceptions=True,
        )
        assert all(not isinstance(r, BaseException) or isinstance(r, RefusedError) for r in results), results
        rows = await _rows(storage)
        statuses = {rows[current.id]["Status"], rows.get(renewal.id, {}).get("Status")}
        approved = [k for k, v in rows.items() if v["Status"] == "approved"]
        assert len(approved) <= 1, (round_, rows)
        # Either the renewal came after the revocation (it holds the mailbox), or the revocation ended
        # both, or one of them was refused and changed nothing: never a half-done mix.
        assert statuses in (
            {"revoked", "approved"},  # revoked, then renewed
            {"superseded", "revoked"},  # renewed, then the renewal revoked
            {"superseded", "approved"},  # the revocation refused (it raced the supersede)
            {"revoked", None},  # the renewal refused (it raced the revocation)
        ), (round_, statuses)


async def test_no_grant_path_writes_to_exchange(cli: Any, emulator: EmulatorServer) -> None:
    def sets() -> int:
        return sum(1 for e in emulator.calllog.entries() if e["cmdlet"] == "Set-CASMailbox")

    assert cli("init").code == 0
    mailbox = emulator.tenant.snapshot()[5]
    before = sets()
    for _ in range(2):  # a grant, then a grant that supersedes it
        added = cli("exceptions", "add", "--mailbox", mailbox.primary_smtp_address, "--days", "5", "--reason", "x")
        assert added.code == 0, added.err
    assert sets() == before
