"""An install made by the previous version (schema 1) is refused by sweeps until `init` upgrades it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.data.tables.aio import TableServiceClient

from emulator.server import EmulatorServer
from tests.workflow_support import run_async

# What the previous version's `init` created: five tables and a marker at schema version 1.
OLD_TABLES = ("SmtpGuardState", "SmtpGuardExceptions", "SmtpGuardPlans", "SmtpGuardAudit", "SmtpGuardRequests")


async def _install_as_schema_1(storage: str, tenant_id: str, kept: Any) -> None:
    now = datetime.now(UTC)
    async with TableServiceClient.from_connection_string(storage) as service:
        for name in OLD_TABLES:
            await service.create_table(name)
        await service.get_table_client("SmtpGuardState").create_entity(
            {
                "PartitionKey": "install",
                "RowKey": "marker",
                "TenantId": tenant_id,
                "InstalledAt": now - timedelta(days=40),
            }
            | {"InstalledBy": "old-install", "SchemaVersion": 1}
        )
        await service.get_table_client("SmtpGuardExceptions").create_entity(
            {"PartitionKey": kept.guid, "RowKey": "old-exception", "MailboxAddress": kept.primary_smtp_address}
            | {"Status": "approved", "ExpiresAt": now + timedelta(days=20), "Reason": "scanner", "Owner": ""}
            | {"Device": "", "AuthMethod": "oauth", "ApprovedBy": "old-admin", "ApprovedAt": now - timedelta(days=10)}
        )


async def _table_names(storage: str) -> set[str]:
    async with TableServiceClient.from_connection_string(storage) as service:
        return {table.name async for table in service.list_tables()}


def test_a_schema_1_store_refuses_sweeps_until_init_then_keeps_its_rows(
    cli: Any, storage: str, emulator: EmulatorServer
) -> None:
    kept = emulator.tenant.snapshot()[3]
    emulator.tenant.find(kept.guid).smtp_client_authentication_disabled = False  # on, by its exception
    run_async(_install_as_schema_1(storage, emulator.tenant.tenant_id, kept))

    refused = cli("sweep", "--full", "--mode", "enforce", "--json")
    assert refused.code == 3, refused.err
    assert json.loads(refused.out)["outcome"] == "refused"
    assert "schema version 1" in refused.err and "python -m shared.cli init" in refused.err
    assert emulator.calllog.count(cmdlet="Set-CASMailbox") == 0

    upgraded = cli("init")
    assert upgraded.code == 0, upgraded.err
    assert upgraded.out.startswith("upgraded:") and "schema version 2" in upgraded.out
    assert {"SmtpGuardIntents", "SmtpGuardAuditIndex"} <= run_async(_table_names(storage))
    assert cli("init").out.startswith("already initialised:")

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
