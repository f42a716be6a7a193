"""`exceptions show`: a mailbox's requests, decisions, grants, revocations and changes, in order,
read through the mailbox index with a number of storage reads that does not grow with the tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from emulator.server import EmulatorServer
from shared.model.actor import Actor
from shared.model.mailbox import Change, ChangeReason
from shared.model.runs import AuditEntry
from shared.storage import Store
from tests.workflow_support import People, decide_through_the_link, revoke_through_the_api, submitted_request


async def _history_reads(storage: str, address: str) -> tuple[int, list[str]]:
    """How many storage requests `mailbox_history` makes, and the kinds of the events it finds."""
    from azure.data.tables.aio import TableServiceClient

    from shared.bootstrap import open_exchange, open_graph
    from shared.microsoft.identity import build_credential
    from shared.rollout.history import mailbox_history
    from shared.settings import load_settings

    settings, credential, sent = load_settings(), build_credential(), []
    service = TableServiceClient.from_connection_string(storage, raw_request_hook=lambda r: sent.append(r))
    async with Store(service) as counted, open_exchange(settings, credential) as exchange:
        history = await mailbox_history(
            counted,
            exchange,
            open_graph(settings, credential),
            tenant_id=settings.tenant_id,
            address=address,
            now=datetime.now(UTC),
        )
    await credential.close()
    return len(sent), [e.kind for e in history.events]


async def _drop_request_pointer(storage: str, request_id: str) -> int:
    from azure.data.tables.aio import TableClient

    async with TableClient.from_connection_string(storage, "SmtpGuardAuditIndex") as table:
        rows = [e async for e in table.query_entities("RequestId eq @id", parameters={"id": request_id})]
        for row in rows:
            await table.delete_entity(row["PartitionKey"], row["RowKey"])
    return len(rows)


async def test_show_lists_a_mailbox_history_in_order(
    people: People, emulator: EmulatorServer, store: Store, storage: str, cli: Any
) -> None:
    printer, tenant = people.printer, emulator.tenant
    request_id = await submitted_request(people)
    assert await _drop_request_pointer(storage, request_id) == 1  # as if storage failed just after the request
    await decide_through_the_link(people, emulator, request_id)  # the decision indexes it again
    revoked = await revoke_through_the_api(request_id, people.approver)
    assert revoked.status == 200, revoked.text
    tenant.find(printer.guid).smtp_client_authentication_disabled = False  # switched on by hand: drift
    swept = cli("sweep", "--full", "--mode", "enforce", "--json")
    assert swept.code == 0, swept.err
    tenant.add_signin(
        printer.external_directory_object_id, when=datetime.now(UTC) - timedelta(hours=3), ip="198.51.100.7"
    )
    tenant.add_signin(printer.external_directory_object_id, status_error_code=50126, ip="192.0.2.66")

    shown = cli("exceptions", "show", "--mailbox", printer.primary_smtp_address.upper(), "--json")
    assert shown.code == 0, shown.err
    history = json.loads(shown.out)
    kinds = [e["kind"] for e in history["events"]]
    assert kinds == ["requested", "approved", "granted", "change", "revoked", "change", "change"]
    changes = [e for e in history["events"] if e["kind"] == "change"]
    assert [c["ref"] for c in changes[:2]] == [f"approval-{request_id}", f"revoke-{request_id}"]
    assert (
        "false -> true (expired)" in changes[2]["detail"]
    )  # its exception had ended and changes[2]["ref"] == json.loads(swept.out)["run_id"]
    assert [e["at"] for e in history["events"]] == sorted(e["at"] for e in history["events"])
    assert (history["signins"], history["failures"], history["ips"]) == (1, 1, ["198.51.100.7"])

    text = cli("exceptions", "show", "--mailbox", printer.primary_smtp_address)
    assert text.code == 0 and "revoked" in text.out and "Failed sign-ins" in text.out and "192.0.2.66" not in text.out

    reads, found = await _history_reads(storage, printer.primary_smtp_address)
    assert found == kinds
    actor, now = Actor("admin", ""), datetime.now(UTC)
    for n in range(30):  # the audit table grows; this mailbox's history does not
        others = [
            Change(f"{n:08d}-0000-4000-8000-{i:012d}", f"m{n}.{i}@contoso.com", False, True, ChangeReason.DRIFT)
            for i in range(20)
        ]
        await store.audit.append([AuditEntry(f"20261201T{n:06d}Z-other{n:03d}", c, actor, now) for c in others])
    assert await _history_reads(storage, printer.primary_smtp_address) == (reads, kinds)
