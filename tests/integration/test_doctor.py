"""`doctor`: every right named when it is missing, in both of Exchange's forms, and nothing changed."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from emulator.identity import RESOURCE_ROLES
from emulator.server import EmulatorServer
from shared.microsoft.rights import EXCHANGE_RIGHTS, ExchangeRight
from shared.rollout.doctor import Check, Level, run_doctor
from shared.storage import Store
from tests.workflow_support import People

pytestmark = pytest.mark.usefixtures("people")


def _state(emulator: EmulatorServer) -> Any:
    tenant = emulator.tenant
    mailboxes = sorted((m.guid, m.smtp_client_authentication_disabled) for m in tenant.snapshot())
    return mailboxes, dict(tenant.user_authentication_policies), len(tenant.sent_mail)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


async def test_healthy_is_all_ok_and_changes_nothing(emulator: EmulatorServer, cli: Any, people: People) -> None:
    before = _state(emulator)
    env = {**os.environ}  # the people fixture's NOTIFY_FROM and APPROVER_GROUP_ID, as the app has them
    result = cli("doctor", env={k: v for k, v in env.items() if k not in ("PYTEST_CURRENT_TEST",)})
    assert result.code == 0, result.out + result.err
    lines = result.out.splitlines()
    assert all(line.startswith("ok ") for line in lines), result.out
    names = [line.split(":", 1)[0][5:] for line in lines]
    assert names[:3] == ["settings", "storage", "enforcement hold"]
    assert {f"Exchange {r.cmdlet}" for r in EXCHANGE_RIGHTS} <= set(names)
    assert {"Exchange token", "Graph token", "clock", "Graph permissions", "Mail.Send as NOTIFY_FROM"} <= set(names)
    assert _state(emulator) == before  # no mailbox, user or mail changed
    tried = [e for e in emulator.calllog.entries() if e["cmdlet"] == "Set-CASMailbox"]
    assert tried and all(e["status"] == 404 and emulator.tenant.find(str(e["identity"])) is None for e in tried)

    as_json = json.loads(cli("doctor", "--json", env=env).out)
    assert {c["level"] for c in as_json} == {"ok"} and len(as_json) == len(lines)


@pytest.mark.parametrize("right", EXCHANGE_RIGHTS, ids=lambda r: r.cmdlet)
async def test_each_missing_cmdlet_is_named_in_both_of_exchanges_forms(
    emulator: EmulatorServer, right: ExchangeRight
) -> None:
    tenant = emulator.tenant
    tenant.exchange_role_cmdlets = {r.cmdlet for r in EXCHANGE_RIGHTS} - {right.cmdlet}
    outside = _by_name(await run_doctor())[f"Exchange {right.cmdlet}"]
    assert outside.level is Level.FAIL and outside.blocks is right.required
    assert f"{right.cmdlet} is outside the app's management role (CommandNotFoundException)" in outside.detail

    tenant.exchange_role_cmdlets = None
    emulator.faults.configure(failing_cmdlets={right.cmdlet: 403})
    checks = await run_doctor()
    refused = _by_name(checks)[f"Exchange {right.cmdlet}"]
    assert refused.level is Level.FAIL and f"the app may not run {right.cmdlet} (HTTP 403)" in refused.detail
    others = [c for c in checks if c.name.startswith("Exchange ") and c.name != f"Exchange {right.cmdlet}"]
    assert all(c.level is Level.OK for c in others), others


async def test_a_bad_setting_is_a_fail_line(cli: Any, app_env: dict[str, str]) -> None:
    result = cli("doctor", env={**app_env, "EXCHANGE_CONCURRENCY": "lots"})
    assert result.code == 1
    assert result.out.startswith("FAIL settings: setting EXCHANGE_CONCURRENCY is invalid")
    assert len(result.out.splitlines()) == 1


async def test_graph_permissions_p1_mail_scope_and_the_hold(emulator: EmulatorServer, store: Store) -> None:
    tenant = emulator.tenant
    tenant.app_roles["graph"] = [r for r in RESOURCE_ROLES["graph"] if r != "User.Read.All"]
    graph = _by_name(await run_doctor())["Graph permissions"]
    assert graph.level is Level.FAIL and graph.blocks and "missing User.Read.All" in graph.detail

    tenant.app_roles["graph"] = [r for r in RESOURCE_ROLES["graph"] if r != "AuditLog.Read.All"]
    checks = _by_name(await run_doctor())
    assert checks["Graph permissions"].level is Level.WARN and "AuditLog.Read.All" in checks["Graph permissions"].detail
    assert checks["sign-in logs"].level is Level.WARN and not checks["sign-in logs"].blocks

    del tenant.app_roles["graph"]
    tenant.premium = False
    tenant.mail_send_scope = {"someone.else@contoso.com"}
    from shared.model.actor import Actor
    from shared.model.clock import utc_now
    from shared.sweep import hold

    await hold.pause(store, tenant.tenant_id, Actor("admin", ""), "change freeze", utc_now())
    checks = _by_name(await run_doctor())
    assert checks["sign-in logs"].level is Level.WARN and "no Entra ID P1" in checks["sign-in logs"].detail
    assert checks["Mail.Send as NOTIFY_FROM"].level is Level.FAIL and checks["Mail.Send as NOTIFY_FROM"].blocks
    assert checks["enforcement hold"].level is Level.WARN and "change freeze" in checks["enforcement hold"].detail
