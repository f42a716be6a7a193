"""The applier: sends a plan's changes to Exchange in $batch calls of 10, a few batches at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from shared.errors import ExchangeError
from shared.exchange import BATCH_LIMIT, ExchangeClient
from shared.reconcile import Change

# Stop starting batches once this many changes failed and failures outnumber successes: a persistent
# failure (missing RBAC, a broken endpoint) should not be repeated against the whole plan.
FAILURE_LIMIT: Final = 50


@dataclass(slots=True)
class ApplyResult:
    applied: list[Change] = field(default_factory=list)
    failed: list[tuple[Change, str]] = field(default_factory=list)
    not_started: list[Change] = field(default_factory=list)
    stopped_by: str = ""  # "", "time budget", "failures" or "error"
    error: BaseException | None = None  # what stopped the run, e.g. the audit write failed


async def apply_changes(
    exchange: ExchangeClient,
    changes: Sequence[Change],
    *,
    workers: int,
    deadline: float,
    on_applied: Callable[[list[Change]], Awaitable[None]],
    on_progress: Callable[[ApplyResult, int], None] | None = None,
) -> ApplyResult:
    """Apply `changes`; record each applied batch through `on_applied` before starting more.

    No new batch starts after `deadline` (time.monotonic()); what is left is returned as not started,
    and the next run plans it again. An exception from `on_applied` (the audit write) stops new
    batches, lets those in flight finish and is returned in `error`.
    """
    batches = [list(changes[i : i + BATCH_LIMIT]) for i in range(0, len(changes), BATCH_LIMIT)]
    result = ApplyResult()
    queue: asyncio.Queue[list[Change]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    def should_stop() -> str:
        if result.error is not None:
            return "error"
        if time.monotonic() >= deadline:
            return "time budget"
        if len(result.failed) >= FAILURE_LIMIT and len(result.failed) > len(result.applied):
            return "failures"
        return ""

    async def worker() -> None:
        while not queue.empty():
            reason = should_stop()
            if reason:
                result.stopped_by = result.stopped_by or reason
                return
            batch = queue.get_nowait()
            try:
                outcomes = await exchange.set_smtp_auth_disabled_batch([(c.guid, c.after) for c in batch])
            except ExchangeError as err:
                result.failed.extend((c, str(err)) for c in batch)
                continue
            done = [c for c, o in zip(batch, outcomes, strict=True) if o.ok]
            result.failed.extend((c, str(o.error)) for c, o in zip(batch, outcomes, strict=True) if not o.ok)
            if done:
                result.applied.extend(done)
                try:
                    await on_applied(done)
                except Exception as err:
                    result.error = err
                    return
            if on_progress is not None:
                on_progress(result, len(changes))

    await asyncio.gather(*(worker() for _ in range(max(1, min(workers, len(batches))))))
    while not queue.empty():
        result.not_started.extend(queue.get_nowait())
    return result
