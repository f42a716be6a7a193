"""Incremental sweep: O(new) listings, watermark, time budget and the one-sweep-at-a-time lease."""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emulator.server import EmulatorServer
from emulator.tenant import Tenant
from shared.model.runs import RunOutcome, RunSummary
from shared.settings import EnforcementMode, load_settings
from shared.storage import Store
from shared.storage.tables import STATE_TABLE
from shared.sweep.engine import SweepRequest, run_sweep

pytestmark = pytest.mark.usefixtures("app_env")


async def sweep(*, full: bool = False, mode: str = "enforce", **kw: Any) -> RunSummary:
    return await run_sweep(load_settings(), SweepRequest(full=full, mode=EnforcementMode(mode)), **kw)


async def enforced_tenant(emulator: EmulatorServer, store: Store) -> None:
    """Installed, and one full enforce run done: the watermark is set and every mailbox is desired."""
    await store.state.initialise(emulator.tenant.tenant_id, "test")
    first = await sweep(full=True)
    assert first.outcome is RunOutcome.COMPLETED, first.message
    emulator.calllog.clear()


def add_new_mailboxes(tenant: Tenant) -> dict[str, str]:
    """New mailboxes of every type, one user created years ago whose mailbox is provisioned today."""
    long_ago = datetime.now(UTC) - timedelta(days=4 * 365)
    added = {
        "user": tenant.add_mailbox("new.starter", smtp=None),
        "shared": tenant.add_mailbox("payroll-scans", type="SharedMailbox", smtp=False),
        "room": tenant.add_mailbox("room-4-12", type="RoomMailbox", smtp=None),
        "equipment": tenant.add_mailbox("van-07", type="EquipmentMailbox", smtp=None),
        "late": tenant.add_mailbox("returning.contractor", smtp=False, when_created=long_ago),
    }
    return {kind: mailbox.guid for kind, mailbox in added.items()}


def listing_calls(emulator: EmulatorServer) -> list[dict[str, Any]]:
    return [e for e in emulator.calllog.entries() if e["cmdlet"] == "Get-CASMailbox" and e["kind"] == "invoke"]


def exchange_calls(emulator: EmulatorServer) -> int:
    return sum(1 for e in emulator.calllog.entries() if e["kind"] in ("invoke", "batch"))


async def test_new_and_late_mailboxes_are_caught_without_paging_the_tenant(
    emulator: EmulatorServer, store: Store
) -> None:
    await enforced_tenant(emulator, store)
    new = add_new_mailboxes(emulator.tenant)

    summary = await sweep()

    assert summary.outcome is RunOutcome.COMPLETED, summary.message
    assert not summary.full
    for guid in new.values():
        assert emulator.tenant.find(guid).smtp_client_authentication_disabled is True
    assert summary.applied == len(new)
    listings = listing_calls(emulator)
    assert len(listings) == 1  # one filtered page, not the tenant
    assert "WhenChangedUTC -ge" in listings[0]["filter"]
    assert summary.scanned < len(emulator.tenant.snapshot())
    assert exchange_calls(emulator) <= math.ceil(len(new) / 1000) + math.ceil(len(new) / 10) + 3


async def test_hand_made_drift_is_reverted_by_the_next_incremental_run(emulator: EmulatorServer, store: Store) -> None:
    await enforced_tenant(emulator, store)
    victim = emulator.tenant.snapshot()[7]
    emulator.tenant.set_smtp(victim.guid, False)  # an admin flips it in the Exchange admin center

    summary = await sweep()

    assert summary.by_reason == {"drift": 1}
    assert emulator.tenant.find(victim.guid).smtp_client_authentication_disabled is True


async def test_persistent_failure_keeps_the_watermark_and_heals(emulator: EmulatorServer, store: Store) -> None:
    await enforced_tenant(emulator, store)
    watermark = (await store.state.sweep_state("enforce")).watermark
    new = add_new_mailboxes(emulator.tenant)
    emulator.faults.configure(failing_cmdlets={"Set-CASMailbox": 400})

    failed = await sweep()

    assert failed.outcome is RunOutcome.PARTIAL
    assert (await store.state.sweep_state("enforce")).watermark == watermark
    emulator.faults.reset()

    healed = await sweep()

    assert healed.outcome is RunOutcome.COMPLETED, healed.message
    assert all(emulator.tenant.find(g).smtp_client_authentication_disabled is True for g in new.values())
    assert (await store.state.sweep_state("enforce")).watermark > watermark


async def test_time_budget_stops_cleanly_and_the_next_run_finishes(
    emulator: EmulatorServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await enforced_tenant(emulator, store)
    fresh = {emulator.tenant.add_mailbox(f"batch.user{i}", smtp=None).guid for i in range(120)}
    emulator.faults.configure(latency_ms=250)  # 12 batches: about 3 s of work for a 2 s budget
    monkeypatch.setenv("EXCHANGE_CONCURRENCY", "1")
    monkeypatch.setenv("SWEEP_TIME_BUDGET_SECONDS", "2")

    first = await sweep()

    assert first.outcome is RunOutcome.PARTIAL
    assert "time budget" in first.message
    assert 0 < first.applied < len(fresh)
    assert first.remaining == len(fresh) - first.applied
    monkeypatch.setenv("SWEEP_TIME_BUDGET_SECONDS", "120")
    emulator.faults.reset()

    second = await sweep()

    assert second.outcome is RunOutcome.COMPLETED, second.message
    assert second.applied == len(fresh) - first.applied
    assert all(emulator.tenant.find(g).smtp_client_authentication_disabled is True for g in fresh)
    sets = Counter(
        e["identity"] for e in emulator.calllog.entries() if e["kind"] == "batch_item" and e["status"] == 200
    )
    assert set(sets) == fresh
    assert max(sets.values()) == 1  # no mailbox was changed twice


async def test_a_stopped_full_run_makes_the_next_sweep_full(
    emulator: EmulatorServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.state.initialise(emulator.tenant.tenant_id, "test")
    for i in range(120):
        emulator.tenant.add_mailbox(f"bulk.user{i}", smtp=None)
    emulator.faults.configure(latency_ms=250)  # 12 batches: about 3 s of work for a 2 s budget
    monkeypatch.setenv("EXCHANGE_CONCURRENCY", "1")
    monkeypatch.setenv("SWEEP_TIME_BUDGET_SECONDS", "2")
    stopped = await sweep(full=True)
    assert stopped.outcome is RunOutcome.PARTIAL
    assert (await store.state.sweep_state("enforce")).full_pending
    assert "listing alone took" not in stopped.message  # it did apply some: no stall to explain

    # A listing that eats the whole budget applies nothing, run after run: the run says what to raise.
    monkeypatch.setenv("SWEEP_TIME_BUDGET_SECONDS", "1")
    emulator.faults.configure(latency_ms=1100)
    stalled = await sweep(full=True)
    assert stalled.outcome is RunOutcome.PARTIAL and stalled.applied == 0
    assert re.search(r"The listing alone took \d+ s of SWEEP_TIME_BUDGET_SECONDS=1: raise it", stalled.message)
    monkeypatch.setenv("SWEEP_TIME_BUDGET_SECONDS", "120")
    emulator.faults.reset()

    resumed = await sweep()  # an incremental request, upgraded to the full run that is owed

    assert resumed.full
    assert resumed.outcome is RunOutcome.COMPLETED, resumed.message
    assert all(m.smtp_client_authentication_disabled is True for m in emulator.tenant.snapshot())
    assert not (await store.state.sweep_state("enforce")).full_pending


async def test_two_sweeps_at_once_make_exactly_one_run(emulator: EmulatorServer, store: Store) -> None:
    await enforced_tenant(emulator, store)
    add_new_mailboxes(emulator.tenant)
    emulator.faults.configure(latency_ms=50)

    results = await asyncio.gather(sweep(), sweep(full=True))

    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes == ["completed", "refused"]
    refused = next(r for r in results if r.outcome is RunOutcome.REFUSED)
    assert "lease" in refused.message


async def test_an_expired_lease_from_a_killed_run_is_taken_over(
    emulator: EmulatorServer, store: Store, storage: str
) -> None:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.data.tables.aio import TableServiceClient

    await enforced_tenant(emulator, store)
    async with TableServiceClient.from_connection_string(storage) as service:
        state = service.get_table_client(STATE_TABLE)
        killed = {"PartitionKey": "sweep", "RowKey": "lease", "Holder": "killed-run"}
        await state.upsert_entity({**killed, "ExpiresAt": datetime.now(UTC) + timedelta(minutes=5)})
        blocked = await sweep()
        assert blocked.outcome is RunOutcome.REFUSED and "killed-run" in blocked.message
        await state.upsert_entity({**killed, "ExpiresAt": datetime.now(UTC) - timedelta(seconds=1)})

        taken = await sweep()

        assert taken.outcome is RunOutcome.COMPLETED, taken.message
        with pytest.raises(ResourceNotFoundError):
            await state.get_entity("sweep", "lease")  # released at the end of the run


async def test_a_live_run_keeps_its_lease_however_long_it_takes(emulator: EmulatorServer, store: Store) -> None:
    from shared.errors import RefusedError

    await store.state.initialise(emulator.tenant.tenant_id, "test")

    def clock() -> datetime:
        return datetime.now(UTC)

    async with store.state.lease("long-run", timedelta(seconds=0.9), clock):
        await asyncio.sleep(1.5)  # longer than the lease: it must have been renewed meanwhile
        with pytest.raises(RefusedError, match="long-run"):
            async with store.state.lease("overlapping-run", timedelta(seconds=0.9), clock):
                pass
    async with store.state.lease("next-run", timedelta(seconds=0.9), clock):
        pass  # released at the end, so the next run goes ahead


async def test_an_exception_granted_or_revoked_between_runs_is_applied_by_the_next_incremental_run(
    emulator: EmulatorServer, store: Store
) -> None:
    # `exceptions add` only writes storage, and so does a revocation whose switch-off could not reach
    # Exchange; the mailbox itself does not change, so the incremental listing would not show it. The
    # next incremental run must still act on it.
    from tests.workflow_support import grant_as_admin

    await enforced_tenant(emulator, store)
    target = next(m for m in emulator.tenant.snapshot() if m.recipient_type_details == "UserMailbox")
    await grant_as_admin(store, target.primary_smtp_address)
    granted = await sweep()
    assert granted.outcome is RunOutcome.COMPLETED and granted.applied == 1, granted.message
    assert emulator.tenant.find(target.guid).smtp_client_authentication_disabled is False

    await store.exceptions.revoke(target.guid, "admin", datetime.now(UTC))  # storage only
    revoked = await sweep()
    assert revoked.outcome is RunOutcome.COMPLETED and revoked.applied == 1, revoked.message
    assert emulator.tenant.find(target.guid).smtp_client_authentication_disabled is True
    assert [c.reason.value for c in revoked.changes] == ["expired"]
