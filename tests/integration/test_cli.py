"""The CLI as admins and scripts run it: a real process, real exit codes, Azurite and the emulator."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from azure.data.tables.aio import TableServiceClient

from emulator.server import EmulatorServer
from tests.workflow_support import run_async


async def _tables(connection_string: str) -> dict[str, int]:
    """Every table and its row count: 'nothing written' is checked against this."""
    counts: dict[str, int] = {}
    async with TableServiceClient.from_connection_string(connection_string) as service:
        async for table in service.list_tables():
            client = service.get_table_client(table.name)
            counts[table.name] = len([e async for e in client.list_entities()])
    return counts


def tables(connection_string: str) -> dict[str, int]:
    return run_async(_tables(connection_string))


def test_init_is_idempotent(cli, storage: str, emulator: EmulatorServer) -> None:
    first = cli("init")
    assert first.code == 0, first.err
    assert first.out.startswith("initialised:")
    second = cli("init")
    assert second.code == 0
    assert second.out.startswith("already initialised:")
    assert tables(storage) == {
        "SmtpGuardState": 1,
        "SmtpGuardExceptions": 0,
        "SmtpGuardPlans": 0,
        "SmtpGuardAudit": 0,
        "SmtpGuardRequests": 0,
        "SmtpGuardIntents": 0,
        "SmtpGuardAuditIndex": 0,
    }


def test_sweep_before_init_is_refused(cli, storage: str, emulator: EmulatorServer) -> None:
    result = cli("sweep", "--full", "--mode", "enforce")
    assert result.code == 3
    assert "install marker" in result.err
    assert tables(storage) == {}  # no table was created by a sweep
    assert emulator.calllog.count(cmdlet="Set-CASMailbox") == 0


def test_report_then_enforce_json(cli, storage: str, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    report = cli("sweep", "--full", "--json")
    assert report.code == 0, report.err
    data = json.loads(report.out)
    assert data["outcome"] == "reported"
    assert data["plan_id"]
    assert len(data["changes"]) == data["planned"] > 0
    enforce = cli("sweep", "--full", "--mode", "enforce", "--json")
    assert enforce.code == 0, enforce.err
    result = json.loads(enforce.out)
    assert result["outcome"] == "completed"
    assert result["applied"] == data["planned"]
    assert all(m.smtp_client_authentication_disabled is True for m in emulator.tenant.snapshot())


def test_human_output_prints_the_plan(cli, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    result = cli("sweep", "--full")
    assert result.code == 0, result.err
    assert "full reconcile in report mode" in result.out
    assert "plan id:" in result.out
    assert "->" in result.out


def test_exceptions_add_list_revoke(cli, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    mailbox = emulator.tenant.snapshot()[3]
    added = cli(
        "exceptions",
        "add",
        "--mailbox",
        mailbox.primary_smtp_address.upper(),
        "--days",
        "30",
        "--reason",
        "Scanner on floor 2",
        "--device",
        "Ricoh IM C3000",
        "--auth",
        "basic",
    )
    assert added.code == 0, added.err
    listed = json.loads(cli("exceptions", "list", "--json").out)
    assert len(listed) == 1
    assert listed[0]["mailbox_guid"] == mailbox.guid
    assert listed[0]["active"] is True
    assert listed[0]["auth_method"] == "basic"
    enforce = cli("sweep", "--full", "--mode", "enforce")
    assert enforce.code == 0, enforce.err
    assert emulator.tenant.find(mailbox.guid).smtp_client_authentication_disabled is False
    sets_before = _set_calls(emulator)
    revoked = cli("exceptions", "revoke", "--mailbox", mailbox.primary_smtp_address)
    assert revoked.code == 0, revoked.err
    assert "SMTP AUTH is off for it now" in revoked.out
    # The one revoke path switches it off at once (the safe direction), audited, with no sweep.
    assert emulator.tenant.find(mailbox.guid).smtp_client_authentication_disabled is True
    assert _set_calls(emulator) == sets_before + 1
    rows = _audit_rows(emulator, f"revoke-{listed[0]['id']}")
    assert [(r["MailboxGuid"], r["Before"], r["After"], r["Reason"]) for r in rows] == [
        (mailbox.guid, "false", "true", "expired")
    ]
    again = cli("sweep", "--full", "--mode", "enforce", "--json")
    assert json.loads(again.out)["by_reason"] == {}
    assert cli("exceptions", "revoke", "--mailbox", mailbox.primary_smtp_address).code == 2


def _set_calls(emulator: EmulatorServer) -> int:
    return sum(1 for e in emulator.calllog.entries() if e["cmdlet"] == "Set-CASMailbox")


def _audit_rows(emulator: EmulatorServer, run_id: str) -> list[dict[str, Any]]:
    from azure.data.tables import TableServiceClient

    with TableServiceClient.from_connection_string(os.environ["AzureWebJobsStorage"]) as service:  # noqa: SIM112
        table = service.get_table_client("SmtpGuardAudit")
        return list(table.query_entities("PartitionKey eq @pk", parameters={"pk": run_id}))


def test_revoke_with_exchange_down_stands_and_says_what_happens_next(cli, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    mailbox = emulator.tenant.snapshot()[4]
    args = ("--days", "30", "--reason", "scanner")
    emulator.tenant.find(mailbox.guid).smtp_client_authentication_disabled = False
    emulator.faults.configure(failing_cmdlets={"Set-CASMailbox": 400})  # Exchange refuses every change
    for mode, expected in (
        ("report", "sweeps are in report mode: switch it off by hand or enforce"),
        ("enforce", "the next enforce sweep switches it off"),
    ):
        assert cli("exceptions", "add", "--mailbox", mailbox.primary_smtp_address, *args).code == 0
        revoked = cli(
            "exceptions",
            "revoke",
            "--mailbox",
            mailbox.primary_smtp_address,
            env={**os.environ, "ENFORCEMENT_MODE": mode},
        )
        assert revoked.code == 1, revoked.err
        assert expected in revoked.err and len(revoked.err.strip().splitlines()) == 1
        listed = json.loads(cli("exceptions", "list", "--json").out)
        assert not any(r["active"] for r in listed)  # the revocation stands
    assert emulator.tenant.find(mailbox.guid).smtp_client_authentication_disabled is False


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--mailbox", "not-an-address", "--days", "30", "--reason", "x"], "mailbox"),
        (["--mailbox", "a@contoso.com", "--days", "0", "--reason", "x"], "days"),
        (["--mailbox", "a@contoso.com", "--days", "-4", "--reason", "x"], "days"),
        (["--mailbox", "a@contoso.com", "--days", "181", "--reason", "x"], "days"),
        (["--mailbox", "a@contoso.com", "--days", "ten", "--reason", "x"], "days"),
        (["--mailbox", "a@contoso.com", "--days", "30", "--reason", "   "], "reason"),
        (["--mailbox", "a@contoso.com", "--days", "30", "--reason", "x", "--auth", "ntlm"], "auth"),
        (["--mailbox", "a@contoso.com", "--days", "30", "--reason", "bad\x07bell"], "reason"),
        (["--mailbox", "nobody@contoso.onmicrosoft.com", "--days", "30", "--reason", "x"], "mailbox"),
    ],
)
def test_exceptions_add_rejects_bad_input(cli, storage: str, emulator: EmulatorServer, args, field) -> None:
    assert cli("init").code == 0
    before = tables(storage)
    result = cli("exceptions", "add", *args)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"error: {field}:")
    assert tables(storage) == before


def test_bad_setting_is_named(cli, app_env: dict[str, str]) -> None:
    result = cli("sweep", env={**app_env, "MAX_CHANGES_PER_RUN": "many"})
    assert result.code == 2
    assert (
        result.err.strip() == "error: setting MAX_CHANGES_PER_RUN is invalid: expected a whole number from 1 to 1000000"
    )


def test_unknown_mode_is_a_one_line_usage_error(cli) -> None:
    result = cli("sweep", "--mode", "yolo")
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1
    assert "--mode" in result.err


def test_confirm_plan_needs_enforce(cli) -> None:
    assert cli("init").code == 0
    result = cli("sweep", "--confirm-plan", "x", "--mode", "report")
    assert result.code == 2
    assert "--confirm-plan" in result.err
