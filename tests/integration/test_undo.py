"""`undo`: put back what a sweep run did, through a reviewed plan, under the enforcement hold."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.data.tables.aio import TableClient

from emulator.server import EmulatorServer


def sets(emulator: EmulatorServer) -> int:
    return emulator.calllog.count(cmdlet="Set-CASMailbox")


async def _rows(storage: str, table: str, odata: str) -> list[dict[str, Any]]:
    async with TableClient.from_connection_string(storage, table) as client:
        return [dict(e) async for e in client.query_entities(odata)]


def test_undo_restores_the_exact_before_through_a_reviewed_plan(
    cli: Any, emulator: EmulatorServer, storage: str, app_env: dict[str, str]
) -> None:
    tenant = emulator.tenant
    env = {**app_env, "MAX_CHANGES_PER_RUN": "100000"}
    assert cli("init").code == 0
    before = {m.guid: m.smtp_client_authentication_disabled for m in tenant.snapshot()}
    swept = json.loads(cli("sweep", "--full", "--mode", "enforce", "--json", env=env).out)
    assert swept["outcome"] == "completed" and swept["applied"] > 5
    run = swept["run_id"]
    moved = next(g for g, v in before.items() if v is None)  # a mailbox someone changes by hand since
    tenant.find(moved).smtp_client_authentication_disabled = False

    planned = cli("undo", "--run", run, "--json")
    assert planned.code == 0, planned.err
    plan = json.loads(planned.out)
    assert plan["outcome"] == "reported" and plan["plan_id"] and plan["undoes"] == run
    assert plan["planned"] == swept["applied"] - 1 and tenant.find(moved).primary_smtp_address in plan["skipped"]
    quiet = sets(emulator)
    unconfirmed = cli("undo", "--run", run, "--mode", "enforce", "--json")
    assert unconfirmed.code == 3 and json.loads(unconfirmed.out)["outcome"] == "refused"
    other = cli("sweep", "--full", "--mode", "report", "--json")  # a sweep's plan is not an undo plan
    for wrong in (json.loads(other.out)["plan_id"], "20261201T000000Z-00000000"):
        refused = cli("undo", "--run", run, "--mode", "enforce", "--confirm-plan", wrong)
        assert refused.code == 3 and "nothing applied" in refused.err, refused.err
    assert sets(emulator) == quiet  # nothing was applied by any of them

    undone = cli(
        "undo", "--run", run, "--mode", "enforce", "--confirm-plan", plan["plan_id"],
        "--grant-days", "30", "--reason", "printer fleet moves to OAuth", "--json",
    )  # fmt: skip
    assert undone.code == 0, undone.err
    result = json.loads(undone.out)
    assert result["outcome"] == "completed" and result["applied"] == plan["planned"] and result["hold"]
    now = {m.guid: m.smtp_client_authentication_disabled for m in tenant.snapshot()}
    assert now == {**before, moved: False}  # the exact before, null included; the hand-made change kept
    rows = asyncio.run(_rows(storage, "SmtpGuardAudit", f"PartitionKey eq '{result['run_id']}'"))
    changes = [r for r in rows if r["RowKey"].startswith("change-")]
    assert len(changes) == plan["planned"] and {r["Reason"] for r in changes} == {"undo"}
    (pause,) = asyncio.run(_rows(storage, "SmtpGuardAudit", "RowKey eq 'hold' and Action eq 'pause'"))
    assert pause["At"] <= min(r["At"] for r in changes)  # the hold was set before the first change

    quiet = sets(emulator)
    paused = cli("sweep", "--full", "--mode", "enforce", "--json", env=env)
    assert paused.code == 3 and json.loads(paused.out)["outcome"] == "paused" and sets(emulator) == quiet

    assert cli("resume").code == 0
    resumed = cli("sweep", "--full", "--mode", "enforce", "--json", env=env)
    assert resumed.code == 0, resumed.err
    for guid, value in before.items():
        if guid != moved:  # restored to false: their new exceptions keep them on; the rest go off again
            assert tenant.find(guid).smtp_client_authentication_disabled is (value is not False), guid


def test_undo_refuses_approvals_old_and_unknown_runs(cli: Any, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    recent = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ")
    for run, says in (
        ("approval-3f2a0c1e-0000-4000-8000-000000000001", "use `exceptions add` or `exceptions revoke`"),
        ("revoke-3f2a0c1e-0000-4000-8000-000000000001", "use `exceptions add` or `exceptions revoke`"),
        ("20251001T020000Z-1a2b3c4d", "older than 30 days"),
        (f"{recent}-00000000", "changed no mailbox, or is unknown"),
        ("not-a-run", "is not the id of a sweep run"),
        ("20261399T020000Z-1a2b3c4d", "is not the id of a sweep run"),  # shaped like one, no real moment
    ):
        refused = cli("undo", "--run", run)
        assert refused.code == 2 and refused.err.startswith("error: --run:") and says in refused.err, refused.err
    half = cli("undo", "--run", f"{recent}-00000000", "--grant-days", "30")
    assert half.code == 2 and "--reason" in half.err
    report_confirm = cli("undo", "--run", f"{recent}-00000000", "--confirm-plan", "x")
    assert report_confirm.code == 2 and report_confirm.err.startswith("error: --confirm-plan:")
    assert emulator.calllog.count(cmdlet="Set-CASMailbox") == 0
