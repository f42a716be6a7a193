"""Full reconcile against Azurite and the tenant emulator, through the real SDK stacks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emulator.server import EmulatorServer
from emulator.tenant import Tenant
from shared.model.runs import PlanStatus, RunOutcome, RunSummary
from shared.settings import EnforcementMode, load_settings
from shared.storage import Store
from shared.sweep.engine import SweepRequest, run_sweep
from tests.workflow_support import grant_as_admin

pytestmark = pytest.mark.usefixtures("app_env")


async def sweep(mode: str | None = None, *, full: bool = True, confirm: str | None = None, **kw: Any) -> RunSummary:
    request = SweepRequest(full=full, mode=EnforcementMode(mode) if mode else None, confirm_plan=confirm)
    return await run_sweep(load_settings(), request, **kw)


async def install(store: Store, tenant_id: str) -> None:
    await store.state.initialise(tenant_id, "test")


def set_calls(emulator: EmulatorServer) -> int:
    return sum(1 for e in emulator.calllog.entries() if e["cmdlet"] == "Set-CASMailbox" and e["kind"] != "batch")


def states(tenant: Tenant) -> dict[str, bool | None]:
    return {m.guid: m.smtp_client_authentication_disabled for m in tenant.snapshot()}


async def test_report_mode_changes_nothing_and_stores_the_plan(emulator: EmulatorServer, store: Store) -> None:
    await install(store, emulator.tenant.tenant_id)
    before = states(emulator.tenant)
    expected = {g for g, v in before.items() if v is not True}

    summary = await sweep()

    assert summary.outcome is RunOutcome.REPORTED
    assert set_calls(emulator) == 0
    assert states(emulator.tenant) == before
    assert summary.scanned == len(before)
    loaded = await store.plans.load(summary.plan_id)
    assert loaded is not None
    plan, _ = loaded
    assert plan.status is PlanStatus.REPORTED
    assert {c.guid for c in plan.changes} == expected
    audit = await store.audit.of_run(summary.run_id)
    assert [row["RowKey"] for row in audit] == ["summary"]  # a report run writes no change rows
    assert audit[0]["Outcome"] == "reported"


async def test_enforce_reaches_exactly_the_desired_state(emulator: EmulatorServer, store: Store) -> None:
    tenant = emulator.tenant
    await install(store, tenant.tenant_id)
    org_before = tenant.org_smtp_client_authentication_disabled
    mailboxes = tenant.snapshot()
    excepted = mailboxes[0]
    await grant_as_admin(store, excepted.primary_smtp_address, device="MFP 3rd floor")
    before = states(tenant)
    planned = {g for g, v in before.items() if (v is not False if g == excepted.guid else v is not True)}

    summary = await sweep("enforce")

    assert summary.outcome is RunOutcome.COMPLETED, summary.message
    after = states(tenant)
    assert after == {g: (g != excepted.guid) for g in before}
    assert tenant.org_smtp_client_authentication_disabled == org_before
    audit = {row["MailboxGuid"]: row for row in await store.audit.of_run(summary.run_id) if row["RowKey"] != "summary"}
    assert set(audit) == planned
    assert summary.applied == len(planned)
    for guid, row in audit.items():
        assert row["After"] == ("false" if guid == excepted.guid else "true")
        assert row["Actor"]  # the service principal's object id, from the token
        assert row["Reason"] in {"null", "drift", "exception"}
    # A second run finds nothing to do: idempotent.
    again = await sweep("enforce")
    assert again.outcome is RunOutcome.COMPLETED and again.planned == 0


async def test_throttling_is_survived_and_retry_after_honoured(emulator: EmulatorServer, store: Store) -> None:
    await install(store, emulator.tenant.tenant_id)
    emulator.faults.configure(
        throttle_rate=0.15,
        retry_after_seconds=0.4,
        concurrency_limit=2,
        error_503_rate=0.1,
        batch_item_throttle_rate=0.2,
        latency_ms=5,
    )

    summary = await sweep("enforce")

    assert summary.outcome is RunOutcome.COMPLETED, summary.message
    assert all(v is True for v in states(emulator.tenant).values())
    entries = emulator.calllog.entries()
    statuses = {e["status"] for e in entries}
    assert {429, 503} <= statuses  # the faults really fired
    throttled = [e for e in entries if e["status"] == 429 and e["retry_after"]]
    assert throttled
    for hit in throttled:
        retry = next((e for e in entries if e["key"] == hit["key"] and e["t"] > hit["t_end"]), None)
        assert retry is not None, f"{hit['key']} was never retried"
        assert retry["t"] >= hit["t_end"] + hit["retry_after"] - 0.02, hit["key"]


async def test_persistent_set_failure_fails_then_heals(emulator: EmulatorServer, store: Store) -> None:
    await install(store, emulator.tenant.tenant_id)
    needing = {g for g, v in states(emulator.tenant).items() if v is not True}
    emulator.faults.configure(failing_cmdlets={"Set-CASMailbox": 400})

    failed = await sweep("enforce")

    assert failed.outcome in (RunOutcome.PARTIAL, RunOutcome.FAILED)
    assert failed.applied == 0 and failed.failed > 0
    assert {g for g, v in states(emulator.tenant).items() if v is not True} == needing
    emulator.faults.reset()

    healed = await sweep("enforce")

    assert healed.outcome is RunOutcome.COMPLETED, healed.message
    assert healed.applied == len(needing)
    assert all(v is True for v in states(emulator.tenant).values())


async def test_missing_marker_refuses_without_any_change(emulator: EmulatorServer) -> None:
    summary = await sweep("enforce")
    assert summary.outcome is RunOutcome.REFUSED
    assert "install marker" in summary.message
    assert set_calls(emulator) == 0
    assert len(emulator.calllog.entries()) == 0  # not even a listing


async def test_marker_for_another_tenant_refuses(emulator: EmulatorServer, store: Store) -> None:
    await store.state.initialise("99999999-9999-9999-9999-999999999999", "someone else")
    summary = await sweep("enforce")
    assert summary.outcome is RunOutcome.REFUSED
    assert "names tenant 99999999" in summary.message
    assert set_calls(emulator) == 0


async def test_storage_down_makes_no_change(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from devservices.azurite import free_port, table_connection_string

    monkeypatch.setenv("AzureWebJobsStorage", table_connection_string(free_port()))
    summary = await sweep("enforce")
    assert summary.outcome is RunOutcome.FAILED
    assert set_calls(emulator) == 0


async def test_unreadable_exceptions_table_fails_closed(emulator: EmulatorServer, store: Store, storage: str) -> None:
    from azure.data.tables.aio import TableServiceClient

    await install(store, emulator.tenant.tenant_id)
    async with TableServiceClient.from_connection_string(storage) as service:
        await service.delete_table("SmtpGuardExceptions")  # looks like "no exceptions" if read naively
    summary = await sweep("enforce")
    assert summary.outcome in (RunOutcome.REFUSED, RunOutcome.FAILED)
    assert set_calls(emulator) == 0


async def test_incomplete_listing_makes_no_change(emulator: EmulatorServer, store: Store) -> None:
    await install(store, emulator.tenant.tenant_id)
    emulator.faults.configure(failing_cmdlets={"Get-CASMailbox": 400})
    summary = await sweep("enforce")
    assert summary.outcome is RunOutcome.FAILED
    assert set_calls(emulator) == 0


async def test_over_cap_plan_waits_for_confirmation(
    emulator: EmulatorServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await install(store, emulator.tenant.tenant_id)
    monkeypatch.setenv("MAX_CHANGES_PER_RUN", "3")
    needing = {g for g, v in states(emulator.tenant).items() if v is not True}
    assert len(needing) > 3

    capped = await sweep("enforce")

    assert capped.outcome is RunOutcome.OVER_CAP
    assert set_calls(emulator) == 0
    assert f"--confirm-plan {capped.plan_id}" in capped.message

    unknown = await sweep("enforce", confirm="20260101T000000Z-deadbeef")
    assert unknown.outcome is RunOutcome.REFUSED and "unknown" in unknown.message
    stale = await sweep("enforce", confirm=capped.plan_id, clock=lambda: datetime.now(UTC) + timedelta(days=2))
    assert stale.outcome is RunOutcome.REFUSED and "stale" in stale.message
    assert set_calls(emulator) == 0

    # One reviewed mailbox moves by hand before confirmation: it is no longer part of what is applied.
    moved = sorted(needing)[0]
    emulator.tenant.set_smtp(moved, True)
    # A mailbox arrives after the review, and the admin confirms two hours later: only what was
    # reviewed is applied.
    late = emulator.tenant.add_mailbox(f"late-arrival@{emulator.tenant.domain}", smtp=None)

    def two_hours_later() -> datetime:
        return datetime.now(UTC) + timedelta(hours=2)

    confirmed = await sweep("enforce", confirm=capped.plan_id, clock=two_hours_later)

    assert confirmed.outcome is RunOutcome.COMPLETED, confirmed.message
    assert confirmed.applied == len(needing) - 1
    assert {g: v for g, v in states(emulator.tenant).items() if v is not True} == {late.guid: None}

    replay = await sweep("enforce", confirm=capped.plan_id)
    assert replay.outcome is RunOutcome.REFUSED and "already applied" in replay.message

    # The confirmation did not move the watermark past the late mailbox: the next run is a full one.
    follow = await sweep("enforce", full=False, clock=two_hours_later)
    assert follow.full and follow.outcome is RunOutcome.COMPLETED, follow.message
    assert all(v is True for v in states(emulator.tenant).values())


def _timer_function(name: str):  # type: ignore[no-untyped-def]
    from tests.workflow_support import function

    return function(name)


async def test_timer_runs_the_engine(emulator: EmulatorServer, store: Store, storage: str) -> None:
    from azure.data.tables.aio import TableServiceClient
    from azure.functions.timer import TimerRequest

    await install(store, emulator.tenant.tenant_id)
    await _timer_function("full_reconcile")(TimerRequest())

    async with TableServiceClient.from_connection_string(storage) as service:
        audit = service.get_table_client("SmtpGuardAudit")
        summaries = [e async for e in audit.query_entities("RowKey eq 'summary'")]
    assert len(summaries) == 1
    assert summaries[0]["Outcome"] == "reported"  # ENFORCEMENT_MODE defaults to report
    assert summaries[0]["Full"] is True
    assert summaries[0]["Scanned"] == len(emulator.tenant.snapshot())
    assert set_calls(emulator) == 0


async def test_timer_fails_loudly_when_refused(emulator: EmulatorServer) -> None:
    from azure.functions.timer import TimerRequest

    with pytest.raises(RuntimeError, match="refused"):  # no install marker
        await _timer_function("full_reconcile")(TimerRequest())
    assert set_calls(emulator) == 0


async def test_exchange_clients_in_one_worker_share_the_tenants_concurrency_limit(emulator: EmulatorServer) -> None:
    # A sweep and the workflow each hold a client; the tenant limits the calls of both together.
    from shared.microsoft.exchange import ExchangeClient
    from shared.microsoft.identity import build_credential

    emulator.faults.configure(latency_ms=50, concurrency_limit=2)
    settings = load_settings()
    credential = build_credential()
    async with (
        ExchangeClient(settings.exchange_endpoint, settings.tenant_id, credential, concurrency=2) as sweep_side,
        ExchangeClient(settings.exchange_endpoint, settings.tenant_id, credential, concurrency=2) as workflow_side,
    ):
        await asyncio.gather(*(client.get_transport_config() for client in (sweep_side, workflow_side) * 4))
    await credential.close()
    statuses = [e["status"] for e in emulator.calllog.entries() if e["cmdlet"] == "Get-TransportConfig"]
    assert statuses == [200] * 8  # never over the limit, so never a 429 to retry


@pytest.mark.parametrize("event", ["revoked", "approved"])
async def test_an_approval_or_revocation_during_the_listing_is_not_undone(
    emulator: EmulatorServer, store: Store, storage: str, event: str
) -> None:
    # The web workflow writes the exception, then sets the mailbox at once. When that happens while a
    # sweep lists, the sweep's earlier read of the exceptions must not turn the mailbox back.
    from azure.data.tables import TableClient, UpdateMode

    from shared.storage.tables import EXCEPTIONS_TABLE

    tenant = emulator.tenant
    await install(store, tenant.tenant_id)
    assert (await sweep("enforce")).outcome is RunOutcome.COMPLETED
    target = next(m for m in tenant.snapshot() if m.recipient_type_details == "UserMailbox")
    if event == "revoked":  # it holds an exception, and SMTP AUTH is on
        record = await grant_as_admin(store, target.primary_smtp_address)
        assert (await sweep("enforce")).outcome is RunOutcome.COMPLETED
        assert tenant.find(target.guid).smtp_client_authentication_disabled is False

    def workflow_acts(message: str) -> None:
        if not message.startswith("listing "):  # the sweep has read the exceptions and starts listing
            return
        with TableClient.from_connection_string(storage, EXCEPTIONS_TABLE) as table:
            if event == "revoked":
                keys = {"PartitionKey": target.guid, "RowKey": record.id}
                revocation = {"Status": "revoked", "RevokedAt": datetime.now(UTC)}
                table.update_entity({**keys, **revocation}, mode=UpdateMode.MERGE)
                tenant.set_smtp(target.guid, True)
            else:
                now = datetime.now(UTC)
                table.create_entity(
                    {
                        "PartitionKey": target.guid, "RowKey": "approved-meanwhile", "Status": "approved",
                        "MailboxAddress": target.primary_smtp_address, "ExpiresAt": now + timedelta(days=30),
                        "ApprovedAt": now, "ApprovedBy": "approver", "AuthMethod": "oauth",
                    }
                )  # fmt: skip
                tenant.set_smtp(target.guid, False)

    during = await sweep("enforce", progress=workflow_acts)

    assert during.outcome is RunOutcome.COMPLETED, during.message
    assert target.guid not in {change.guid for change in during.changes}
    expected = event == "revoked"  # revoked: SMTP AUTH stays off; approved: it stays on
    assert tenant.find(target.guid).smtp_client_authentication_disabled is expected


async def test_a_batch_that_partly_landed_keeps_its_landed_changes_when_the_retry_fails(
    emulator: EmulatorServer,
) -> None:
    # Some sub-requests land, some come back throttled, and the re-batch then fails outright: the
    # landed ones must be reported as done (they get audit rows), not lost in a whole-batch failure.
    from shared.microsoft.exchange import ExchangeClient, ExchangeRetryPolicy
    from shared.microsoft.identity import build_credential

    tenant = emulator.tenant
    targets = [m for m in tenant.snapshot() if m.smtp_client_authentication_disabled is not True][:10]
    emulator.faults.configure(batch_item_throttle_rate=0.5, retry_after_seconds=0.3)
    settings = load_settings()
    credential = build_credential()

    async def break_the_endpoint_after_the_first_batch() -> None:
        while not any(e["kind"] == "batch" for e in emulator.calllog.entries()):  # noqa: ASYNC110 - the log has no event
            await asyncio.sleep(0.01)
        emulator.faults.configure(throttle_rate=1.0, retry_after_seconds=0.01)

    async with ExchangeClient(
        settings.exchange_endpoint, settings.tenant_id, credential, retry_policy=ExchangeRetryPolicy(attempts=1)
    ) as exchange:
        breaker = asyncio.create_task(break_the_endpoint_after_the_first_batch())
        outcomes = await exchange.set_smtp_auth_disabled_batch([(m.guid, True) for m in targets])
        await breaker
    await credential.close()

    landed = {o.identity for o in outcomes if o.ok}
    failed = {o.identity for o in outcomes if not o.ok}
    assert landed and failed and landed | failed == {m.guid for m in targets}
    after = states(tenant)
    assert all(after[guid] is True for guid in landed)
    assert all(after[guid] is not True for guid in failed)


async def test_an_unforeseen_failure_while_applying_stops_the_run_and_loses_no_audit_row(
    emulator: EmulatorServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `sweep ... | head` closes the CLI's progress pipe: the next progress line raises mid-apply.
    await install(store, emulator.tenant.tenant_id)
    monkeypatch.setenv("EXCHANGE_CONCURRENCY", "2")
    before = states(emulator.tenant)

    def progress(message: str) -> None:
        if message.startswith("applied "):
            raise BrokenPipeError(32, "Broken pipe")

    summary = await sweep("enforce", progress=progress)

    assert summary.outcome is RunOutcome.PARTIAL, summary.message
    assert "stopped by error (BrokenPipeError" in summary.message
    changed = {g for g, v in states(emulator.tenant).items() if v != before[g]}
    assert changed and summary.applied == len(changed) and summary.remaining > 0
    audit = await store.audit.of_run(summary.run_id)
    assert {row["MailboxGuid"] for row in audit if "MailboxGuid" in row} == changed  # every change recorded
    assert (await store.state.sweep_state("enforce")).full_pending  # the next run lists everything again
