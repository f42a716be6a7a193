"""OAuth-only exceptions: Basic SMTP blocked by an authentication policy, assigned and put back by the
sweeps (OAUTH_ONLY_POLICY), reported first, capped, audited and undone like any other change."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from azure.data.tables.aio import TableClient

from emulator.server import EmulatorServer
from emulator.tenant import Tenant
from shared.model.auth_policy import APP_POLICY_NAME
from shared.model.clock import utc_now
from shared.settings import load_settings
from shared.sweep.engine import SweepRequest, run_sweep

APP = {"Name": APP_POLICY_NAME, "AllowBasicAuthSmtp": False}
LEGACY = {"Name": "Legacy", "AllowBasicAuthSmtp": True}
STRICT = {"Name": "Strict", "AllowBasicAuthSmtp": False}
PLAIN, LEGACY_USER, STRICT_USER, BASIC, NONE = (
    "plain@contoso.com",  # no policy of its own, no organisation default: Basic allowed
    "legacy@contoso.com",  # its own policy allows Basic SMTP
    "strict@contoso.com",  # its own policy blocks Basic SMTP already
    "basic@contoso.com",  # a Basic exception: no policy wanted
    "none@contoso.com",  # no exception
)


@pytest.fixture
def tenant() -> Tenant:
    t = Tenant()
    for address in (PLAIN, LEGACY_USER, STRICT_USER, BASIC):  # SMTP AUTH on: their exceptions need it
        t.add_mailbox(address, smtp=False)
    t.add_mailbox(NONE, smtp=True)
    t.authentication_policies = [dict(APP), dict(LEGACY), dict(STRICT)]
    t.assign_authentication_policy(LEGACY_USER, "Legacy")
    t.assign_authentication_policy(STRICT_USER, "Strict")
    return t


def _policies(tenant: Tenant) -> dict[str, str | None]:
    return {m.primary_smtp_address: tenant.user_authentication_policies.get(m.guid) for m in tenant.snapshot()}


def _set_users(emulator: EmulatorServer) -> int:
    return emulator.calllog.count(cmdlet="Set-User")


async def _rows(storage: str, table: str, odata: str) -> list[dict[str, Any]]:
    async with TableClient.from_connection_string(storage, table) as client:
        return [dict(e) async for e in client.query_entities(odata)]


def _assignments(storage: str) -> dict[str, dict[str, Any]]:
    rows = asyncio.run(_rows(storage, "SmtpGuardState", "PartitionKey eq 'oauth-only'"))
    return {r["Address"]: r for r in rows}


def _policy_rows(storage: str, run_id: str) -> list[dict[str, Any]]:
    rows = asyncio.run(_rows(storage, "SmtpGuardAudit", f"PartitionKey eq '{run_id}'"))
    return sorted((r for r in rows if r["RowKey"].startswith("policy-")), key=lambda r: r["MailboxAddress"])


def _grant(cli: Any) -> None:
    assert cli("init").code == 0
    for address, auth in ((PLAIN, "oauth"), (LEGACY_USER, "oauth"), (STRICT_USER, "oauth"), (BASIC, "basic")):
        added = cli("exceptions", "add", "--mailbox", address, "--days", "30", "--reason", "MFP", "--auth", auth)
        assert added.code == 0, added.err


def _sweep(cli: Any, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("sweep", "--full", *args, "--json", env=env)
    return result.code, json.loads(result.out)


def test_off_changes_nothing(cli: Any, emulator: EmulatorServer, storage: str, app_env: dict[str, str]) -> None:
    _grant(cli)
    before = _policies(emulator.tenant)
    code, swept = _sweep(cli, app_env, "--mode", "enforce")  # OAUTH_ONLY_POLICY unset: off
    assert code == 0 and swept["outcome"] == "completed" and swept["policy_changes"] == []
    assert _policies(emulator.tenant) == before and _set_users(emulator) == 0
    assert emulator.calllog.count(cmdlet="Get-User") == 0  # not even read
    assert _assignments(storage) == {}


def test_report_plans_without_applying(
    cli: Any, emulator: EmulatorServer, storage: str, app_env: dict[str, str]
) -> None:
    _grant(cli)
    before = _policies(emulator.tenant)
    # The setting in report mode: planned and shown in an enforce run, never applied, not counted.
    code, swept = _sweep(cli, {**app_env, "OAUTH_ONLY_POLICY": "report"}, "--mode", "enforce")
    assert code == 0 and swept["outcome"] == "completed" and swept["policy_report_only"] is True
    planned = {(c["address"], c["before"], c["after"], c["reason"]) for c in swept["policy_changes"]}
    assert planned == {
        (PLAIN, "", APP_POLICY_NAME, "oauth-only"),
        (LEGACY_USER, "Legacy", APP_POLICY_NAME, "oauth-only"),
    }
    assert swept["planned"] == 0 and swept["applied"] == 0
    # A report run with the setting enforced: counted in the plan, stored with it, not applied.
    text = cli("sweep", "--full", env={**app_env, "OAUTH_ONLY_POLICY": "enforce"})
    assert text.code == 0 and "authentication policies of OAuth-only exceptions" in text.out
    assert f"{LEGACY_USER:<44} 'Legacy' -> '{APP_POLICY_NAME}' oauth-only" in text.out
    code, reported = _sweep(cli, {**app_env, "OAUTH_ONLY_POLICY": "enforce"}, "--mode", "report")
    assert reported["outcome"] == "reported" and reported["planned"] == 2
    assert reported["by_reason"] == {"oauth-only": 2}
    plan = asyncio.run(_rows(storage, "SmtpGuardPlans", f"PartitionKey eq '{reported['plan_id']}'"))
    stored = [json.loads(r["Changes"]) for r in plan if r["RowKey"].startswith("policies-")]
    assert {c["address"] for chunk in stored for c in chunk} == {PLAIN, LEGACY_USER}
    assert _policies(emulator.tenant) == before and _set_users(emulator) == 0 and _assignments(storage) == {}


def test_enforce_assigns_keeps_what_blocks_and_restores_on_revoke_and_on_expiry(
    cli: Any, emulator: EmulatorServer, storage: str, app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = emulator.tenant
    env = {**app_env, "OAUTH_ONLY_POLICY": "enforce"}
    _grant(cli)
    code, swept = _sweep(cli, env, "--mode", "enforce")
    assert code == 0 and swept["outcome"] == "completed" and swept["applied"] == 2, swept
    assert _policies(tenant) == {
        PLAIN: APP_POLICY_NAME,
        LEGACY_USER: APP_POLICY_NAME,
        STRICT_USER: "Strict",  # blocks already: kept
        BASIC: None,  # a Basic exception: no block wanted
        NONE: None,
    }
    rows = _policy_rows(storage, swept["run_id"])
    assert [(r["MailboxAddress"], r["BeforePolicy"], r["AfterPolicy"], r["Reason"]) for r in rows] == [
        (LEGACY_USER, "Legacy", APP_POLICY_NAME, "oauth-only"),
        (PLAIN, "", APP_POLICY_NAME, "oauth-only"),
    ]
    held = _assignments(storage)
    assert {a: (r["Previous"], r["RunId"], r["Pending"]) for a, r in held.items()} == {
        PLAIN: ("", swept["run_id"], ""),
        LEGACY_USER: ("Legacy", swept["run_id"], ""),
    }
    shown = cli("exceptions", "show", "--mailbox", LEGACY_USER)
    assert f"authentication policy 'Legacy' -> '{APP_POLICY_NAME}' (oauth-only)" in shown.out, shown.out
    assigned_at = held[LEGACY_USER]["AssignedAt"]
    assert f"assigned {assigned_at:%Y-%m-%d %H:%M}Z (it can take up to 24 hours to apply)" in shown.out
    as_json = json.loads(cli("exceptions", "show", "--mailbox", LEGACY_USER, "--json").out)
    assert as_json["policy_assignment"]["previous"] == "Legacy"

    quiet = _set_users(emulator)
    code, again = _sweep(cli, env, "--mode", "enforce")
    assert again["planned"] == 0 and _set_users(emulator) == quiet  # nothing to do twice

    assert cli("exceptions", "revoke", "--mailbox", LEGACY_USER, env=env).code == 0
    code, restored = _sweep(cli, env, "--mode", "enforce")
    assert code == 0 and restored["by_reason"].get("exception-ended") == 1, restored
    assert _policies(tenant)[LEGACY_USER] == "Legacy" and LEGACY_USER not in _assignments(storage)
    (row,) = _policy_rows(storage, restored["run_id"])
    assert (row["BeforePolicy"], row["AfterPolicy"], row["Reason"]) == (APP_POLICY_NAME, "Legacy", "exception-ended")

    monkeypatch.setenv("OAUTH_ONLY_POLICY", "enforce")
    monkeypatch.setenv("ENFORCEMENT_MODE", "enforce")
    later = utc_now() + timedelta(days=31)  # every exception has expired
    summary = asyncio.run(run_sweep(load_settings(), SweepRequest(full=True), clock=lambda: later))
    assert summary.outcome.value == "completed", summary.message
    assert _policies(tenant)[PLAIN] is None and _assignments(storage) == {}  # back to no policy of its own
    assert _policies(tenant)[STRICT_USER] == "Strict"  # never the app's: never touched


def test_does_not_restore_over_a_policy_someone_else_assigned(
    cli: Any, emulator: EmulatorServer, storage: str, app_env: dict[str, str]
) -> None:
    tenant = emulator.tenant
    env = {**app_env, "OAUTH_ONLY_POLICY": "enforce"}
    _grant(cli)
    assert _sweep(cli, env, "--mode", "enforce")[1]["applied"] == 2
    tenant.assign_authentication_policy(PLAIN, "Strict")  # another admin's choice
    assert cli("exceptions", "revoke", "--mailbox", PLAIN, env=env).code == 0
    quiet = _set_users(emulator)
    result = cli("sweep", "--full", "--mode", "enforce", env=env)
    assert result.code == 0, result.err
    assert f"note: {PLAIN}: its exception ended, and its policy is now 'Strict'" in result.out
    assert _policies(tenant)[PLAIN] == "Strict" and _set_users(emulator) == quiet
    assert PLAIN not in _assignments(storage)  # theirs now: never put back later either


def test_undo_puts_the_previous_policies_back(
    cli: Any, emulator: EmulatorServer, storage: str, app_env: dict[str, str]
) -> None:
    tenant = emulator.tenant
    env = {**app_env, "OAUTH_ONLY_POLICY": "enforce"}
    _grant(cli)
    before = _policies(tenant)
    _, swept = _sweep(cli, env, "--mode", "enforce")
    planned = json.loads(cli("undo", "--run", swept["run_id"], "--json", env=env).out)
    assert planned["planned"] == 2 and {c["after"] for c in planned["policy_changes"]} == {"", "Legacy"}
    assert _policies(tenant) != before  # planning changes nothing
    undone = cli(
        "undo", "--run", swept["run_id"], "--mode", "enforce", "--confirm-plan", planned["plan_id"], "--json", env=env
    )
    result = json.loads(undone.out)
    assert undone.code == 0 and result["applied"] == 2, undone.err
    assert _policies(tenant) == before and _assignments(storage) == {}
    assert {r["Reason"] for r in _policy_rows(storage, result["run_id"])} == {"undo"}
    assert cli("resume").code == 0


def test_the_cap_counts_policy_changes(cli: Any, emulator: EmulatorServer, app_env: dict[str, str]) -> None:
    env = {**app_env, "OAUTH_ONLY_POLICY": "enforce", "MAX_CHANGES_PER_RUN": "1"}
    _grant(cli)
    code, capped = _sweep(cli, env, "--mode", "enforce")
    assert code == 3 and capped["outcome"] == "over-cap" and capped["planned"] == 2
    assert _set_users(emulator) == 0
    code, confirmed = _sweep(cli, env, "--mode", "enforce", "--confirm-plan", capped["plan_id"])
    assert code == 0 and confirmed["applied"] == 2, confirmed
    assert _policies(emulator.tenant)[PLAIN] == APP_POLICY_NAME


def test_a_missing_app_policy_is_said_once_and_the_run_goes_on(
    cli: Any, emulator: EmulatorServer, app_env: dict[str, str]
) -> None:
    emulator.tenant.authentication_policies = [dict(LEGACY), dict(STRICT)]
    env = {**app_env, "OAUTH_ONLY_POLICY": "enforce"}
    _grant(cli)
    result = cli("sweep", "--full", "--mode", "enforce", env=env)
    assert result.code == 0, result.err
    assert result.out.count(f"the authentication policy '{APP_POLICY_NAME}' does not exist") == 1
    assert f'New-AuthenticationPolicy -Name "{APP_POLICY_NAME}"' in result.out and _set_users(emulator) == 0
    doctor = cli("doctor", env=env)
    assert f"FAIL app authentication policy: '{APP_POLICY_NAME}' does not exist" in doctor.out


def test_a_change_that_landed_before_the_run_died_is_audited_by_the_next(
    cli: Any, emulator: EmulatorServer, storage: str, app_env: dict[str, str]
) -> None:
    """The record is stored pending before Set-User; here the run died right after Exchange applied it."""
    tenant = emulator.tenant
    env = {**app_env, "OAUTH_ONLY_POLICY": "enforce"}
    _grant(cli)
    guid = tenant.find(PLAIN).guid
    dead_run = "20261202T010000Z-deadbeef"
    entity = {"PartitionKey": "oauth-only", "RowKey": guid, "Address": PLAIN, "Previous": ""}
    entity |= {"Pending": "assign", "PendingRun": dead_run, "PendingAt": utc_now()}

    async def died() -> None:
        async with TableClient.from_connection_string(storage, "SmtpGuardState") as table:
            await table.upsert_entity(entity)

    asyncio.run(died())
    tenant.assign_authentication_policy(PLAIN, APP_POLICY_NAME)  # the Set-User had landed
    code, swept = _sweep(cli, env, "--mode", "enforce")
    assert code == 0 and [c["address"] for c in swept["policy_changes"]] == [LEGACY_USER]
    (row,) = _policy_rows(storage, dead_run)
    assert (row["MailboxAddress"], row["AfterPolicy"], row["Recovered"]) == (PLAIN, APP_POLICY_NAME, True)
    assert _assignments(storage)[PLAIN]["Pending"] == "" and _assignments(storage)[PLAIN]["RunId"] == dead_run


def test_a_refused_set_user_is_partial_and_does_not_hold_the_sweeps_back(
    cli: Any, emulator: EmulatorServer, storage: str, app_env: dict[str, str]
) -> None:
    tenant = emulator.tenant
    env = {**app_env, "OAUTH_ONLY_POLICY": "enforce"}
    _grant(cli)
    tenant.exchange_role_cmdlets = {"Get-CASMailbox", "Set-CASMailbox", "Get-TransportConfig", "Get-Recipient"}
    tenant.exchange_role_cmdlets |= {"Get-User", "Get-AuthenticationPolicy", "Get-OrganizationConfig"}
    code, swept = _sweep(cli, env, "--mode", "enforce")
    assert code == 1 and swept["outcome"] == "partial" and swept["failed"] == 2, swept
    assert any("CommandNotFoundException" in e or "Set-User" in e for e in swept["errors"]), swept["errors"]
    assert _policies(tenant)[PLAIN] is None and _policy_rows(storage, swept["run_id"]) == []
    state = asyncio.run(_rows(storage, "SmtpGuardState", "PartitionKey eq 'sweep'"))
    (watermark,) = [r for r in state if r["RowKey"] == "watermark-enforce"]
    assert watermark["Watermark"] and not watermark["FullPending"]  # the SMTP AUTH sweeps go on

    tenant.exchange_role_cmdlets = None  # the right granted: the next run settles and assigns
    code, fixed = _sweep(cli, env, "--mode", "enforce")
    assert code == 0 and fixed["applied"] == 2 and _policies(tenant)[PLAIN] == APP_POLICY_NAME
    assert {r["Pending"] for r in _assignments(storage).values()} == {""}
