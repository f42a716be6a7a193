"""Settling the runs that died: every change that landed in Exchange gets its audit row.

A run that applies changes records each batch's intent before sending it (shared/storage/intents.py).
If it dies, its lease lapses within a minute and the next run, of any kind, settles it before it
does anything else: for each intended change with no audit row, it reads the mailbox, and when the
mailbox holds the intended value the change landed, so its row is written now, with the `before`
the dead run planned from, marked recovered. A dead run's summary says it was interrupted.
Then it indexes by mailbox the change rows of every run that has ended (index_pending_runs): a sweep
leaves that to the next run, so its apply pays nothing for the index.

Blind spots, both narrow: a change that landed and was then put back by hand before the settling
run read the mailbox leaves no row (the next sweep plans that mailbox again and records its change);
and a run cut off from storage, but not from Exchange, can land a batch already in flight after its
lease lapsed and its settling: its own audit writer then adds those rows if storage comes back (rows
that exist already are kept), else they are lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from shared.errors import GuardError
from shared.microsoft.exchange import ExchangeClient
from shared.model.mailbox import Change
from shared.model.runs import AuditEntry, RunOutcome, RunSummary
from shared.storage import Store
from shared.storage.intents import Intent, OpenRun

logger = logging.getLogger(__name__)


async def settle_open_runs(
    store: Store,
    exchange: ExchangeClient,
    tenant_id: str,
    settling_run: str,
    now: datetime,
    progress: Callable[[str], None],
) -> set[str]:
    """Settle every run left open by a crash; returns the ids of those still open (not settled now)."""
    still_open: set[str] = set()
    for run in await store.intents.open_runs():
        if run.run_id == settling_run:
            continue
        try:
            await _settle(store, exchange, tenant_id, run, settling_run, now, progress)
        except (GuardError, ValueError, KeyError) as err:
            # Not settled, so it stays open for the next run; one bad run must not stop every sweep.
            logger.error("SMTP AUTH Guard: run %s could not be settled: %s", run.run_id, err)
            progress(f"warning: run {run.run_id} could not be settled now ({err}); the next run tries again")
            still_open.add(run.run_id)
    return still_open


async def _settle(
    store: Store,
    exchange: ExchangeClient,
    tenant_id: str,
    run: OpenRun,
    settling_run: str,
    now: datetime,
    progress: Callable[[str], None],
) -> None:
    intents = await store.intents.of_run(run.run_id)
    recorded = await store.audit.changed_mailboxes(run.run_id)
    rows = await _landed_without_a_row(exchange, run, intents, recorded)
    if rows:
        await store.audit.append(rows, index_mailboxes=False)  # indexed with the run's others, next
    if not await store.audit.has_summary(run.run_id):
        await store.audit.write_summary(_interrupted(run, tenant_id, settling_run, len(recorded), len(rows), now))
    # Settled once, before this run changes anything: settled again later, a mailbox that a later run
    # changed would read as a change of the dead run's.
    await store.intents.close_run(run.run_id)
    progress(f"settled run {run.run_id}, which stopped without finishing: {len(rows)} audit rows recovered")


async def _landed_without_a_row(
    exchange: ExchangeClient, run: OpenRun, intents: list[Intent], recorded: set[str]
) -> list[AuditEntry]:
    pending = [(intent.at, change) for intent in intents for change in intent.changes]
    pending = [(at, change) for at, change in pending if change.guid not in recorded]

    async def landed(change: Change) -> bool:  # the client keeps to the tenant's concurrency limit
        mailbox = await exchange.find_mailbox(change.guid)
        return mailbox is not None and mailbox.smtp_auth_disabled == change.after

    found = await asyncio.gather(*(landed(change) for _, change in pending))
    return [
        AuditEntry(run.run_id, change, run.actor, at, run.plan_id or None, recovered=True)
        for (at, change), did in zip(pending, found, strict=True)
        if did
    ]


def _interrupted(
    run: OpenRun, tenant_id: str, settling_run: str, recorded: int, recovered: int, now: datetime
) -> RunSummary:
    return RunSummary(
        run_id=run.run_id,
        tenant_id=tenant_id,
        mode=run.mode,
        full=run.full,
        started_at=run.opened_at,
        outcome=RunOutcome.FAILED,
        finished_at=now,
        actor=run.actor,
        plan_id=run.plan_id or None,
        applied=recorded + recovered,
        message=f"interrupted: the run stopped without finishing after {recorded + recovered} changes; run "
        f"{settling_run} recorded the {recovered} of them that had no audit row yet (marked recovered)",
    )


async def index_pending_runs(store: Store, this_run: str, still_open: set[str], progress: Callable[[str], None]) -> int:
    """Index by mailbox the change rows of the sweeps that ended (or died and were settled) since.

    A sweep leaves its mailbox index to the next run: 20,000 index rows cost the apply as much CPU
    again as its change rows (docs/performance.md). Until then readers scan that run's partition.
    Runs `still_open` (what settle_open_runs could not settle) wait: their rows may not all be there.
    """
    indexed = 0
    for run_id in await store.audit.unindexed_runs():
        if run_id == this_run or run_id in still_open:
            continue
        try:
            rows = await store.audit.index_run(run_id)
        except GuardError as err:  # left for the next run; readers still find its rows by scanning it
            logger.error("SMTP AUTH Guard: run %s could not be indexed by mailbox: %s", run_id, err)
            progress(f"warning: run {run_id} could not be indexed by mailbox now ({err}); the next run tries again")
            continue
        indexed += rows
        progress(f"indexed the {rows} changes of run {run_id} by mailbox")
    return indexed
