"""Daily lifecycle: expiry reminders (14 days and 1 day before, once each), expiry notices, lapsed
pending requests, and repair of an approval interrupted before its exception was written.

Reminders go out once because each is an outbox row with a deterministic key: enqueueing it again
finds the row already there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from shared.bootstrap import Clients
from shared.errors import RefusedError
from shared.model.clock import utc_now
from shared.model.exception_records import ExceptionRecord, ExceptionStatus
from shared.model.notifications import NotificationKind, OutboxItem, OutboxStatus
from shared.model.requests import RequestStatus
from shared.workflow.requests import granted_exception, release_reservations

RUN_INTERVAL: Final = timedelta(days=1)  # LIFECYCLE_SCHEDULE's default: once a day
# Most urgent first. Only the most urgent due reminder goes out, so a short exception gets one mail,
# not two at once; and the one-day reminder goes at the last run a full day or more before expiry,
# not at the run that happens to fall in the final hours.
REMINDERS: Final[tuple[tuple[NotificationKind, timedelta], ...]] = (
    (NotificationKind.REMINDER_1, timedelta(days=1) + RUN_INTERVAL),
    (NotificationKind.REMINDER_14, timedelta(days=14)),
)


@dataclass(slots=True)
class LifecycleReport:
    reminders: int = 0
    expiry_notices: int = 0
    requests_expired: int = 0
    repaired: int = 0


async def run_lifecycle(c: Clients, now: datetime | None = None) -> LifecycleReport:
    now = now or utc_now()
    report = LifecycleReport()
    await c.require_installed()
    records = await c.store.exceptions.all()
    workflow_ids = {r.id for r in await c.store.requests.query("Status eq @s", {"s": RequestStatus.APPROVED.value})}
    for record in records:
        if record.status is not ExceptionStatus.APPROVED:
            continue
        about = record.id if record.id in workflow_ids else f"exception-{record.id}"
        if record.expires_at <= now:
            # The reconcile switches SMTP AUTH off; this only tells the owner, once.
            report.expiry_notices += await _enqueue(c, about, NotificationKind.EXPIRED, record, now)
            continue
        for kind, before in REMINDERS:
            if record.expires_at - now <= before:
                report.reminders += await _enqueue(c, about, kind, record, now)
                break
    for request in await c.store.requests.query("Status eq @s", {"s": RequestStatus.PENDING.value}):
        if request.expires_at <= now:
            loaded = await c.store.requests.get(request.id)
            if loaded is None:
                continue
            current, etag = loaded
            notice = OutboxItem(request.id, NotificationKind.REQUEST_EXPIRED, OutboxStatus.PENDING, now, now)
            try:
                await c.store.requests.update(
                    replace(current, status=RequestStatus.EXPIRED, token_hash=""), etag, [notice]
                )
            except RefusedError:
                continue  # decided at this very moment
            await release_reservations(c, request)
            report.requests_expired += 1
    report.repaired = await _repair_interrupted_approvals(c, records, now)
    return report


async def _enqueue(c: Clients, about: str, kind: NotificationKind, record: ExceptionRecord, now: datetime) -> int:
    item = OutboxItem(about, kind, OutboxStatus.PENDING, now, now, exception_id=record.id)
    return int(await c.store.outbox.enqueue(item))


async def _repair_interrupted_approvals(c: Clients, records: list[ExceptionRecord], now: datetime) -> int:
    """An approval whose process died after the decision but before the exception was written.

    `records` was read at the start of the run, so the write only inserts: an exception written,
    or revoked, meanwhile is never overwritten.
    """
    have = {r.id for r in records}
    repaired = 0
    for request in await c.store.requests.query("Status eq @s", {"s": RequestStatus.APPROVED.value}):
        if request.id in have or request.exception_expires_at is None or request.exception_expires_at <= now:
            continue
        try:
            await c.store.exceptions.grant(await granted_exception(c, request), created_by=request.decided_by)
        except RefusedError:
            continue  # written meanwhile (by the approval itself, or revoked since): leave it
        repaired += 1
    return repaired
