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


@dataclass(slots=True)
class ApplyResult:
    applied: list[Change] = field(default_factory=list)
    failed: list[tuple[Change, str]] = field(default_factory=list)
    not_started: list[Change] = field(default_factory=list)
    stopped_by: str = ""  # "", "time budget", "failures" or "error"
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
) -> ApplyResult:
    """Apply `changes`, recording applied ones through `on_applied` (the audit write).

    No new batch starts after `deadline` (time.monotonic()); what is left is returned as not started,
    and the next run plans it again. An exception from `on_applied` stops new batches, lets those in
    flight finish and is returned in `error`; everything applied is in `applied` either way.
    """
    batches = [list(changes[i : i + BATCH_LIMIT]) for i in range(0, len(changes), BATCH_LIMIT)]
    result = ApplyResult()
    work: asyncio.Queue[list[Change]] = asyncio.Queue()
    for batch in batches:
        work.put_nowait(batch)
    unrecorded: asyncio.Queue[list[Change] | None] = asyncio.Queue(maxsize=AUDIT_QUEUE_BATCHES)

    def should_stop() -> str:
        if result.error is not None or result.stopped_by == "error":
            return "error"
        if time.monotonic() >= deadline:
            return "time budget"
        if len(result.failed) >= FAILURE_LIMIT and len(result.failed) > len(result.applied):
            return "failures"
        return ""

    async def worker() -> None:
        while not work.empty():
            reason = should_stop()
            if reason:
                result.stopped_by = result.stopped_by or reason
                return
            batch = work.get_nowait()
            try:
                outcomes = await exchange.set_smtp_auth_disabled_batch([(c.guid, c.after) for c in batch])
            except ExchangeError as err:
                result.failed.extend((c, str(err)) for c in batch)
                continue
            done = [c for c, o in zip(batch, outcomes, strict=True) if o.ok]
            result.failed.extend((c, str(o.error)) for c, o in zip(batch, outcomes, strict=True) if not o.ok)
            if done:
                result.applied.extend(done)
                await unrecorded.put(done)
            if on_progress is not None:
                on_progress(result, len(changes))

    async def audit_writer() -> None:
        finished = False
        while not finished:
            rows = await unrecorded.get()
            if rows is None:
                return
            flush_at = time.monotonic() + AUDIT_MAX_DELAY
            while len(rows) < AUDIT_ROWS_PER_WRITE and not finished:
                while not unrecorded.empty() and len(rows) < AUDIT_ROWS_PER_WRITE:
                    more = unrecorded.get_nowait()
                    if more is None:
                        finished = True
                        break
                    rows.extend(more)
                if finished or len(rows) >= AUDIT_ROWS_PER_WRITE or time.monotonic() >= flush_at:
                    break
                await asyncio.sleep(AUDIT_POLL)  # polling, not wait_for: a cancelled get() could drop rows
            try:
                await on_applied(rows)
            except Exception as err:
                result.error = err
                _drain(unrecorded)
                return

    writer = asyncio.create_task(audit_writer())
    tasks = [asyncio.create_task(worker()) for _ in range(max(1, min(workers, len(batches))))]
    try:
        await asyncio.gather(*tasks)
    except Exception as err:
        # Something unforeseen (a defect, a broken progress pipe) in one worker: the others start no
        # new batch, those in flight finish and are recorded, and the audit rows are still written.
        result.stopped_by, result.unexpected = "error", err
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if not writer.done():
            await unrecorded.put(None)
        await writer
        while not work.empty():
            result.not_started.extend(work.get_nowait())
    return result


def _drain(queue: asyncio.Queue[list[Change] | None]) -> None:
    """After a failed write, let workers blocked on a full queue go on (they then stop)."""
    while not queue.empty():
        queue.get_nowait()
