"""A sweep killed with SIGKILL at any point loses no audit row, and the next run takes over within ~90 s."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from typing import Any

import pytest
from azure.data.tables.aio import TableClient

from emulator.server import EmulatorServer
from emulator.tenant import Tenant
from tests.workflow_support import run_async


@pytest.fixture
def tenant() -> Tenant:
    t = Tenant()
    t.seed(5000, rng_seed=11, disabled_true=0.5)  # about half of them to change
    return t


def batches(emulator: EmulatorServer) -> int:
    return emulator.calllog.count(cmdlet="$batch", kind="batch")


async def _change_rows(storage: str) -> list[dict[str, Any]]:
    async with TableClient.from_connection_string(storage, "SmtpGuardAudit") as table:
        return [dict(e) async for e in table.query_entities("RowKey ge 'change-' and RowKey lt 'change.'")]


async def _mailbox_index(storage: str) -> set[tuple[str, str]]:
    async with TableClient.from_connection_string(storage, "SmtpGuardAuditIndex") as table:
        rows = table.query_entities("PartitionKey ge 'mailbox-' and PartitionKey lt 'mailbox.'")
        indexed = {(e["RunId"], e["MailboxGuid"]) async for e in rows}
        assert [e async for e in table.query_entities("PartitionKey eq 'unindexed'")] == []
        return indexed


def kill_after(cli_process: Any, emulator: EmulatorServer, sent: int, **env: str) -> None:
    """Start an enforce sweep and SIGKILL it once the emulator has seen `sent` more $batch calls."""
    target = batches(emulator) + sent
    process = cli_process("sweep", "--full", "--mode", "enforce", "--json", **env)
    deadline = time.monotonic() + 120
    while batches(emulator) < target:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep never sent its batches"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def sweep_when_the_lease_lapses(cli: Any, env: dict[str, str]) -> tuple[Any, float]:
    """Run enforce sweeps until one is not refused by the dead run's lease; returns it and the wait."""
    started = time.monotonic()
    while True:
        result = cli("sweep", "--full", "--mode", "enforce", "--json", env=env)
        if "holds the lease" not in result.err:
            return result, time.monotonic() - started
        time.sleep(2)


def test_sigkill_at_any_point_loses_no_audit_row(
    cli: Any, cli_process: Any, emulator: EmulatorServer, storage: str, app_env: dict[str, str]
) -> None:
    assert cli("init").code == 0
    before = {m.guid: m.smtp_client_authentication_disabled for m in emulator.tenant.snapshot()}
    emulator.faults.configure(latency_ms=15)
    short = {"SWEEP_LEASE_SECONDS": "15", "MAX_CHANGES_PER_RUN": "100000"}
    kill_after(cli_process, emulator, 1, **short)  # just after the first batch left: before the audit wrote
    time.sleep(16)  # its short lease lapses
    kill_after(cli_process, emulator, 37, **short)  # mid-way, rows buffered and batches in flight
    time.sleep(16)
    kill_after(cli_process, emulator, 120, MAX_CHANGES_PER_RUN="100000")  # the default lease: 60 s

    result, waited = sweep_when_the_lease_lapses(cli, {**app_env, "MAX_CHANGES_PER_RUN": "100000"})
    assert result.code == 0, result.err
    assert waited <= 90, waited

    rows = run_async(_change_rows(storage))
    changed = {
        guid
        for guid, value in before.items()
        if emulator.tenant.find(guid).smtp_client_authentication_disabled != value
    }
    by_mailbox = Counter(row["MailboxGuid"] for row in rows)
    assert set(by_mailbox) == changed and set(by_mailbox.values()) == {1}  # exactly one row per changed mailbox
    for row in rows:
        assert row["Before"] == _tri(before[row["MailboxGuid"]]) and row["After"] == "true"
    recovered = [row for row in rows if row.get("Recovered")]
    assert recovered, "a kill after a batch landed and before its row was written must leave rows to recover"
    # The next run indexes by mailbox every row of the runs before it, recovered or not, killed or not.
    assert cli("sweep", "--json").code == 0
    assert run_async(_mailbox_index(storage)) == {(row["PartitionKey"], row["MailboxGuid"]) for row in rows}
    assert all(m.smtp_client_authentication_disabled is True for m in emulator.tenant.snapshot())


def _tri(value: bool | None) -> str:
    return "null" if value is None else str(value).lower()


def test_an_interrupted_run_gets_a_summary_that_says_so(
    cli: Any, cli_process: Any, emulator: EmulatorServer, storage: str
) -> None:
    assert cli("init").code == 0
    emulator.faults.configure(latency_ms=15)
    kill_after(cli_process, emulator, 20, SWEEP_LEASE_SECONDS="15", MAX_CHANGES_PER_RUN="100000")
    time.sleep(16)
    settled = cli("sweep", "--full", "--mode", "report", "--json")  # a run of any kind settles it
    assert settled.code == 0, settled.err

    async def summaries() -> list[dict[str, Any]]:
        async with TableClient.from_connection_string(storage, "SmtpGuardAudit") as table:
            return [dict(e) async for e in table.query_entities("RowKey eq 'summary'")]

    interrupted = [s for s in asyncio.run(summaries()) if s["Outcome"] == "failed"]
    assert len(interrupted) == 1 and interrupted[0]["Message"].startswith("interrupted:")
    assert interrupted[0]["Applied"] == len(run_async(_change_rows(storage)))
