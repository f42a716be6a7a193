"""An install made by an earlier version (schema 1 or 2) is refused by sweeps until `init` upgrades it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables.aio import TableServiceClient

from emulator.server import EmulatorServer
from tests.workflow_support import run_async

# What earlier versions' `init` created: five tables at schema 1, then the intents and the index at 2.
SCHEMA_1 = ("SmtpGuardState", "SmtpGuardExceptions", "SmtpGuardPlans", "SmtpGuardAudit", "SmtpGuardRequests")
OLD_TABLES = {1: SCHEMA_1, 2: (*SCHEMA_1, "SmtpGuardIntents", "SmtpGuardAuditIndex")}


async def _install_as_schema_1(storage: str, tenant_id: str, kept: Any, version: int = 1) -> None:
    now = datetime.now(UTC)
    async with TableServiceClient.from_connection_string(storage) as service:
        for name in OLD_TABLES[version]:
            await service.create_table(name)
        await service.get_table_client("SmtpGuardState").create_entity(
            {
                "PartitionKey": "install",
                "RowKey": "marker",
                "TenantId": tenant_id,
                "InstalledAt": now - timedelta(days=40),
            }
            | {"InstalledBy": "old-install", "SchemaVersion": version}
        )
        # A change an earlier run recorded, before the mailbox index existed.
        await service.get_table_client("SmtpGuardAudit").create_entity(
            {"PartitionKey": "20261001T000000Z-0ldrun00", "RowKey": f"change-{kept.guid}", "MailboxGuid": kept.guid}
            | {"MailboxAddress": kept.primary_smtp_address, "Before": "null", "After": "false", "Reason": "exception"}
            | {"Actor": "old-admin", "ActorAppId": "", "PlanId": "", "At": now - timedelta(days=10)}
        )
        await service.get_table_client("SmtpGuardExceptions").create_entity(
            {"PartitionKey": kept.guid, "RowKey": "old-exception", "MailboxAddress": kept.primary_smtp_address}
            | {"Status": "approved", "ExpiresAt": now + timedelta(days=20), "Reason": "scanner", "Owner": ""}
            | {"Device": "", "AuthMethod": "oauth", "ApprovedBy": "old-admin", "ApprovedAt": now - timedelta(days=10)}
        )


async def _table_names(storage: str) -> set[str]:
    async with TableServiceClient.from_connection_string(storage) as service:
        return {table.name async for table in service.list_tables()}


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_store_refuses_sweeps_until_init_then_keeps_and_indexes_its_rows(
    cli: Any, storage: str, emulator: EmulatorServer, version: int
) -> None:
    kept = emulator.tenant.snapshot()[3]
    emulator.tenant.find(kept.guid).smtp_client_authentication_disabled = False  # on, by its exception
    run_async(_install_as_schema_1(storage, emulator.tenant.tenant_id, kept, version))

    refused = cli("sweep", "--full", "--mode", "enforce", "--json")
    assert refused.code == 3, refused.err
    assert json.loads(refused.out)["outcome"] == "refused"
    assert f"schema version {version}" in refused.err and "python -m shared.cli init" in refused.err
    assert emulator.calllog.count(cmdlet="Set-CASMailbox") == 0

    upgraded = cli("init")
    assert upgraded.code == 0, upgraded.err
    assert upgraded.out.startswith("upgraded:") and "schema version 3" in upgraded.out
    assert {"SmtpGuardIntents", "SmtpGuardAuditIndex"} <= run_async(_table_names(storage))
    assert cli("init").out.startswith("already initialised:")
    history = json.loads(cli("audit", "export", "--mailbox", kept.primary_smtp_address.upper()).out)
    assert [(r["run_id"], r["after"]) for r in history] == [("20261001T000000Z-0ldrun00", False)]  # by the index

    swept = cli("sweep", "--full", "--mode", "enforce", "--json")
    assert swept.code == 0, swept.err
    assert json.loads(swept.out)["outcome"] == "completed"
    assert emulator.tenant.find(kept.guid).smtp_client_authentication_disabled is False  # its old exception holds
    others = [m for m in emulator.tenant.snapshot() if m.guid != kept.guid]
    assert all(m.smtp_client_authentication_disabled is True for m in others)


async def test_an_approval_on_a_schema_1_store_still_gets_its_audit_row(
    storage: str, emulator: EmulatorServer, store: Any
) -> None:
    from shared.model.actor import Actor
    from shared.model.mailbox import Change, ChangeReason
    from shared.model.runs import AuditEntry

    kept = emulator.tenant.snapshot()[3]
    await _install_as_schema_1(storage, emulator.tenant.tenant_id, kept)  # no index table yet
    change = Change(kept.guid, kept.primary_smtp_address, True, False, ChangeReason.EXCEPTION)
    await store.audit.append([AuditEntry("approval-1", change, Actor("approver", ""), datetime.now(UTC))])
    rows = await store.audit.of_run("approval-1")
    assert [row["RowKey"] for row in rows] == [f"change-{kept.guid}"]
