"""The applier: sends a plan's changes to Exchange in $batch calls of 10, a few batches at a time.

Each applied batch is handed to one audit writer, which appends the rows in table transactions of
up to 100, at most AUDIT_MAX_DELAY after the first of them landed. Workers do not wait for the write:
a table transaction per batch of 10 costs more CPU (multipart encoding) than the Exchange call it
records and nearly doubled a 100,000-mailbox run. So at any moment at most 100 rows, or half a
second of changes, are applied and not yet recorded; a crash in that window loses those rows (the
mailboxes are in their desired state, and the run has no summary row). If the audit write fails, no
new batch starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from shared.errors import ExchangeError
from shared.microsoft.exchange import BATCH_LIMIT, ExchangeClient
from shared.model.mailbox import Change

# Stop starting batches once this many changes failed and failures outnumber successes: a persistent
# failure (missing RBAC, a broken endpoint) should not be repeated against the whole plan.
FAILURE_LIMIT: Final = 50
AUDIT_ROWS_PER_WRITE: Final = 100  # a table transaction holds at most 100 entities
AUDIT_MAX_DELAY: Final = 0.5  # seconds a landed change may wait for its audit row
AUDIT_POLL: Final = 0.02
AUDIT_QUEUE_BATCHES: Final = 20  # workers wait when this many applied batches are not yet written
# One intent row covers this many batches: a crash then costs the settling run at most this many
# batches' worth of extra mailbox reads, and the apply one insert per group instead of per batch.
INTENT_AHEAD: Final = 10


@dataclass(slots=True)
class ApplyResult:
    applied: list[Change] = field(default_factory=list)
    failed: list[tuple[Change, str]] = field(default_factory=list)
    not_started: list[Change] = field(default_factory=list)
    stopped_by: str = ""  # "", "time budget", "failures", "error", or what `stop_when` said
    error: BaseException | None = None  # what stopped the run, e.g. the audit write failed
    unexpected: Exception | None = None  # a worker failed in a way nobody foresaw (see apply_changes)


async def apply_changes(
    exchange: ExchangeClient,
    changes: Sequence[Change],
    *,
    workers: int,
    deadline: float,
    on_applied: Callable[[list[Change]], Awaitable[None]],
    on_progress: Callable[[ApplyResult, int], None] | None = None,
    stop_when: Callable[[], str] | None = None,
    before_send: Callable[[int, list[Change]], Awaitable[None]] | None = None,
) -> ApplyResult:
    """Apply `changes`, recording applied ones through `on_applied` (the audit write).

    No new batch starts after `deadline` (time.monotonic()), or once `stop_when` names a reason (the
    lease lost, the enforcement hold set); what is left is returned as not started, and the next run
    plans it again. An exception from `on_applied` stops new batches, lets those in flight finish
    and is returned in `error`; everything applied is in `applied` either way. `before_send` (the
    intent write) is awaited for a group of INTENT_AHEAD batches before the first of them is sent;
    when it fails, that batch is not sent and the run stops the same way.
    """
    run = _Application(exchange, changes, deadline, on_applied, on_progress, stop_when)
    run.before_send = before_send
    return await run.execute(workers)


class _Application:
    """One application of a plan: its work queue, its workers, its audit writer and their one result."""

    def __init__(
        self,
        exchange: ExchangeClient,
        changes: Sequence[Change],
        deadline: float,
        on_applied: Callable[[list[Change]], Awaitable[None]],
        on_progress: Callable[[ApplyResult, int], None] | None,
        stop_when: Callable[[], str] | None = None,
    ) -> None:
        self.exchange = exchange
        self.stop_when = stop_when
        self.total = len(changes)
        self.deadline = deadline
        self.on_applied = on_applied
        self.on_progress = on_progress
        self.result = ApplyResult()
        self.before_send: Callable[[int, list[Change]], Awaitable[None]] | None = None
        self.work: asyncio.Queue[tuple[int, list[Change]]] = asyncio.Queue()
        self.all_batches = [list(changes[i : i + BATCH_LIMIT]) for i in range(0, len(changes), BATCH_LIMIT)]
        for number, batch in enumerate(self.all_batches):
            self.work.put_nowait((number, batch))
        self.batches = len(self.all_batches)
        self.intended: set[int] = set()  # batches whose intent is stored
        self.intent_lock = asyncio.Lock()
        self.unrecorded: asyncio.Queue[list[Change] | None] = asyncio.Queue(maxsize=AUDIT_QUEUE_BATCHES)

    async def execute(self, workers: int) -> ApplyResult:
        writer = asyncio.create_task(self._write_audit())
        tasks = [asyncio.create_task(self._work()) for _ in range(max(1, min(workers, self.batches)))]
        try:
            await asyncio.gather(*tasks)
        except Exception as err:
            # Something unforeseen (a defect, a broken progress pipe) in one worker: the others start no
            # new batch, those in flight finish and are recorded, and the audit rows are still written.
            self.result.stopped_by, self.result.unexpected = "error", err
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if not writer.done():
                await self.unrecorded.put(None)
            await writer
            while not self.work.empty():
                self.result.not_started.extend(self.work.get_nowait()[1])
        return self.result

    def _stop_reason(self) -> str:
        result = self.result
        if result.error is not None or result.stopped_by == "error":
            return "error"
        told = self.stop_when() if self.stop_when is not None else ""
        if told:
            return told
        if time.monotonic() >= self.deadline:
            return "time budget"
        if len(result.failed) >= FAILURE_LIMIT and len(result.failed) > len(result.applied):
            return "failures"
        return ""

    async def _work(self) -> None:
        while not self.work.empty():
            reason = self._stop_reason()
            if reason:
                self.result.stopped_by = self.result.stopped_by or reason
                return
            number, batch = self.work.get_nowait()
            if self.before_send is not None:
                try:
                    await self._intend(number)
                except Exception as err:  # unrecorded intent: the batch must not be sent
                    self.result.error = err
                    self.result.not_started.extend(batch)
                    return
            await self._apply(batch)
            if self.on_progress is not None:
                self.on_progress(self.result, self.total)

    async def _intend(self, number: int) -> None:
        """Store the intent of this batch and of the next ones not yet covered, INTENT_AHEAD at a time:
        one insert per group rather than one awaited before every batch."""
        assert self.before_send is not None
        async with self.intent_lock:
            if number in self.intended:
                return
            group = [n for n in range(number, min(number + INTENT_AHEAD, self.batches)) if n not in self.intended]
            await self.before_send(number, [change for n in group for change in self.all_batches[n]])
            self.intended.update(group)

    async def _apply(self, batch: list[Change]) -> None:
        try:
            outcomes = await self.exchange.set_smtp_auth_disabled_batch([(c.guid, c.after) for c in batch])
        except ExchangeError as err:
            self.result.failed.extend((c, str(err)) for c in batch)
            return
        done = [c for c, o in zip(batch, outcomes, strict=True) if o.ok]
        self.result.failed.extend((c, str(o.error)) for c, o in zip(batch, outcomes, strict=True) if not o.ok)
        if done:
            self.result.applied.extend(done)
            await self.unrecorded.put(done)

    async def _write_audit(self) -> None:
        finished = False
        while not finished:
            rows = await self.unrecorded.get()
            if rows is None:
                return
            finished = await self._gather_more(rows)
            try:
                await self.on_applied(rows)
            except Exception as err:
                self.result.error = err
                _drain(self.unrecorded)
                return

    async def _gather_more(self, rows: list[Change]) -> bool:
        """Add what lands within AUDIT_MAX_DELAY to `rows`, up to a transaction's worth; True at the end."""
        flush_at = time.monotonic() + AUDIT_MAX_DELAY
        while len(rows) < AUDIT_ROWS_PER_WRITE:
            while not self.unrecorded.empty() and len(rows) < AUDIT_ROWS_PER_WRITE:
                more = self.unrecorded.get_nowait()
                if more is None:
                    return True
                rows.extend(more)
            if len(rows) >= AUDIT_ROWS_PER_WRITE or time.monotonic() >= flush_at:
                break
            await asyncio.sleep(AUDIT_POLL)  # polling, not wait_for: a cancelled get() could drop rows
        return False


def _drain(queue: asyncio.Queue[list[Change] | None]) -> None:
    """After a failed write, let workers blocked on a full queue go on (they then stop)."""
    while not queue.empty():
        queue.get_nowait()
