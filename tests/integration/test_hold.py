"""The enforcement hold (`pause` / `resume`): the brake that stops every sweep from applying."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.data.tables.aio import TableClient

from emulator.server import EmulatorServer
from shared.model.actor import Actor
from shared.model.runs import RunOutcome
from shared.settings import EnforcementMode, load_settings
from shared.storage import Store
from shared.sweep import hold
from shared.sweep.engine import SweepRequest, run_sweep
from tests.workflow_support import People, call, decide_through_the_link, submitted_request

ADMIN = Actor(object_id="0f6b1d2e-0000-4000-8000-00000000ad01", app_id="")


def batches(emulator: EmulatorServer) -> int:
    return emulator.calllog.count(cmdlet="$batch", kind="batch")


async def _rows(storage: str, table: str, odata: str) -> list[dict[str, Any]]:
    async with TableClient.from_connection_string(storage, table) as client:
        return [dict(e) async for e in client.query_entities(odata)]


def test_paused_enforce_sweeps_plan_apply_nothing_and_exit_3(cli: Any, storage: str, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    paused = cli("pause", "--reason", "change freeze for the printer migration")
    assert paused.code == 0 and paused.out.startswith("paused: enforcement is paused by"), paused.err
    again = cli("pause", "--reason", "another reason")
    assert again.code == 0 and "already paused" in again.out and "printer migration" in again.out  # the first stays

    swept = cli("sweep", "--full", "--mode", "enforce", "--json")
    assert swept.code == 3, swept.err
    summary = json.loads(swept.out)
    assert summary["outcome"] == "paused" and summary["applied"] == 0 and summary["planned"] > 0
    assert summary["hold"]["reason"] == "change freeze for the printer migration" and summary["hold"]["held_by"]
    assert "enforcement is paused by" in swept.err and "printer migration" in swept.err
    assert emulator.calllog.count(cmdlet="Set-CASMailbox") == 0
    confirm = cli("sweep", "--full", "--mode", "enforce", "--confirm-plan", summary["plan_id"])
    assert confirm.code == 3 and "resume" in confirm.err
    report = cli("sweep", "--full", "--mode", "report", "--json")
    assert report.code == 0 and json.loads(report.out)["hold"]["reason"].startswith("change freeze")
    assert emulator.calllog.count(cmdlet="Set-CASMailbox") == 0
    assert asyncio.run(_rows(storage, "SmtpGuardState", "RowKey ge 'watermark-'")) == []  # no watermark moved

    assert cli("resume").out.startswith("resumed: lifted the hold")
    assert cli("resume").out.startswith("not paused")
    events = asyncio.run(_rows(storage, "SmtpGuardAudit", "RowKey eq 'hold'"))
    assert sorted(e["Action"] for e in events) == ["pause", "resume"]  # once each: the repeats changed nothing
    assert all(e["Reason"] == "change freeze for the printer migration" for e in events)
    enforced = cli("sweep", "--full", "--mode", "enforce", "--json")
    assert enforced.code == 0 and json.loads(enforced.out)["hold"] is None
    assert all(m.smtp_client_authentication_disabled is True for m in emulator.tenant.snapshot())


def test_pause_needs_a_reason(cli: Any, emulator: EmulatorServer) -> None:
    assert cli("init").code == 0
    refused = cli("pause", "--reason", "   ")
    assert refused.code == 2 and "--reason: is required" in refused.err
    assert cli("resume").out.startswith("not paused")


@pytest.mark.usefixtures("app_env")
async def test_a_running_apply_stops_before_its_next_batch_once_paused(
    emulator: EmulatorServer, store: Store, storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.tenant.seed(1500, rng_seed=7, disabled_true=0.2)  # enough changes for an apply of seconds
    monkeypatch.setenv("MAX_CHANGES_PER_RUN", "100000")
    await store.state.initialise(emulator.tenant.tenant_id, "test")
    emulator.faults.configure(latency_ms=100, concurrency_limit=2)
    request = SweepRequest(full=True, mode=EnforcementMode.ENFORCE)
    running = asyncio.create_task(run_sweep(load_settings(), request))
    async with asyncio.timeout(30):
        while batches(emulator) < 5:
            assert not running.done(), running.result().message
            await asyncio.sleep(0.02)
    await hold.pause(store, emulator.tenant.tenant_id, ADMIN, "stop now", datetime.now(UTC))
    at_pause = batches(emulator)
    summary = await asyncio.wait_for(running, 60)

    assert summary.outcome is RunOutcome.PARTIAL and 0 < summary.applied < summary.planned
    assert summary.hold is not None and summary.hold.reason == "stop now"
    assert "enforcement hold" in summary.message
    # In flight when the hold was set, plus at most HOLD_POLL (0.5 s) of batches at 2 at once and 100 ms each.
    assert batches(emulator) - at_pause <= 14
    watermarks = await _rows(storage, "SmtpGuardState", "RowKey eq 'watermark-enforce'")
    assert [w.get("Watermark") for w in watermarks] in ([], [None])  # a full run owed, no watermark moved


async def test_health_shows_only_that_a_hold_stands_and_approvals_still_act(
    people: People, emulator: EmulatorServer, store: Store
) -> None:
    before = await call("health", "GET", "/api/health")
    assert before.json()["enforcement_hold"] is False
    await hold.pause(store, emulator.tenant.tenant_id, ADMIN, "secret reason of the change board", datetime.now(UTC))
    await asyncio.sleep(5.1)  # health keeps its answer for 5 s
    after = await call("health", "GET", "/api/health")
    assert after.status == 200 and after.json()["enforcement_hold"] is True
    assert "secret reason" not in after.text and ADMIN.object_id not in after.text

    request_id = await submitted_request(people)
    await decide_through_the_link(people, emulator, request_id)  # an approval acts on its one mailbox
    assert emulator.tenant.find(people.printer.guid).smtp_client_authentication_disabled is False


@pytest.mark.usefixtures("app_env")
async def test_a_run_that_loses_its_lease_stops_before_its_next_batch(
    emulator: EmulatorServer, store: Store, storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.tenant.seed(1500, rng_seed=7, disabled_true=0.2)
    monkeypatch.setenv("MAX_CHANGES_PER_RUN", "100000")
    monkeypatch.setenv("SWEEP_LEASE_SECONDS", "15")  # a heartbeat every 3.75 s
    await store.state.initialise(emulator.tenant.tenant_id, "test")
    emulator.faults.configure(latency_ms=200, concurrency_limit=2)
    running = asyncio.create_task(run_sweep(load_settings(), SweepRequest(full=True, mode=EnforcementMode.ENFORCE)))
    async with asyncio.timeout(30):
        while batches(emulator) < 3:
            assert not running.done(), running.result().message
            await asyncio.sleep(0.02)
    async with TableClient.from_connection_string(storage, "SmtpGuardState") as table:
        await table.delete_entity("sweep", "lease")  # as if another run had taken it over
    summary = await asyncio.wait_for(running, 60)
    assert summary.outcome is RunOutcome.PARTIAL and 0 < summary.applied < summary.planned
    assert "the sweep lease could not be renewed" in summary.message


@pytest.mark.usefixtures("app_env")
async def test_a_hold_set_during_the_listing_stops_the_very_first_batch(
    emulator: EmulatorServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.tenant.seed(1500, rng_seed=7, disabled_true=0.2)
    monkeypatch.setenv("MAX_CHANGES_PER_RUN", "100000")
    await store.state.initialise(emulator.tenant.tenant_id, "test")
    emulator.faults.configure(latency_ms=400)  # a listing slow enough to pause in
    running = asyncio.create_task(run_sweep(load_settings(), SweepRequest(full=True, mode=EnforcementMode.ENFORCE)))
    async with asyncio.timeout(30):
        while emulator.calllog.count(cmdlet="Get-CASMailbox") < 1:
            assert not running.done(), running.result().message
            await asyncio.sleep(0.01)
    await hold.pause(store, emulator.tenant.tenant_id, ADMIN, "during the listing", datetime.now(UTC))
    summary = await asyncio.wait_for(running, 60)
    assert batches(emulator) == 0 and summary.applied == 0
    assert summary.hold is not None and "enforcement hold" in summary.message
