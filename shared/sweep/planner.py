"""The desired-state planner: a pure function from exceptions and actual mailbox state to changes.

No I/O here. Report and enforce runs share every line of it; only the applier differs.

Desired state of `SmtpClientAuthenticationDisabled`:
- `False` for a mailbox with an active (approved, unexpired) exception;
- `True` for every other mailbox, of every type. `None` (follow the organisation) is never desired,
  because someone can flip the organisation flag later.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shared.model.exception_records import ExceptionRecord
from shared.model.mailbox import Change, ChangeReason, MailboxState
from shared.model.runs import AuditedChange


@dataclass(slots=True)
class PlanSummary:
    """Counts for a plan; built while the listing streams so that only the changes are kept."""

    scanned: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> int:
        return sum(self.by_reason.values())

    def count(self, change: Change) -> None:
        self.by_reason[change.reason.value] = self.by_reason.get(change.reason.value, 0) + 1


def effective_exceptions(records: Iterable[ExceptionRecord], now: datetime) -> dict[str, ExceptionRecord]:
    """One record per mailbox: its active exception if it has one, else its latest-expiring record.

    A mailbox that ever had an exception keeps a record here, so that its change is reported as
    `expired` rather than `drift`.
    """
    chosen: dict[str, ExceptionRecord] = {}
    for record in records:
        current = chosen.get(record.mailbox_guid)
        if current is None or _outranks(record, current, now):
            chosen[record.mailbox_guid] = record
    return chosen


def _outranks(candidate: ExceptionRecord, current: ExceptionRecord, now: datetime) -> bool:
    if candidate.is_active(now) != current.is_active(now):
        return candidate.is_active(now)
    return candidate.expires_at > current.expires_at


def _allows(exception: ExceptionRecord | None, now: datetime) -> bool:
    return exception is not None and exception.is_active(now)


def moved_mailboxes(
    before: Mapping[str, ExceptionRecord], after: Mapping[str, ExceptionRecord], now: datetime
) -> set[str]:
    """Mailboxes whose desired state differs between two reads of the exceptions (say, an approval
    or a revocation while a sweep was listing)."""
    guids = before.keys() | after.keys()
    return {guid for guid in guids if _allows(before.get(guid), now) != _allows(after.get(guid), now)}


def changed_since(records: Iterable[ExceptionRecord], since: datetime, now: datetime) -> set[str]:
    """Mailboxes with an exception granted, revoked or lapsed in (since, now]: their desired state may
    have moved while their mailbox did not, so an incremental listing would not show them."""
    return {
        r.mailbox_guid
        for r in records
        if any(moment is not None and since < moment <= now for moment in (r.approved_at, r.revoked_at, r.expires_at))
    }


def plan_mailbox(mailbox: MailboxState, exception: ExceptionRecord | None, now: datetime) -> Change | None:
    """The change one mailbox needs, or None when it is already in its desired state."""
    actual = mailbox.smtp_auth_disabled
    if exception is not None and exception.is_active(now):
        if actual is False:
            return None
        return Change(mailbox.guid, mailbox.address, actual, False, ChangeReason.EXCEPTION)
    if actual is True:
        return None
    if actual is None:
        reason = ChangeReason.NULL
    elif exception is not None:
        reason = ChangeReason.EXPIRED
    else:
        reason = ChangeReason.DRIFT
    return Change(mailbox.guid, mailbox.address, actual, True, reason)


def plan_changes(
    mailboxes: Iterable[MailboxState],
    exceptions: Mapping[str, ExceptionRecord],
    now: datetime,
    summary: PlanSummary,
) -> Iterator[Change]:
    """Stream the changes for `mailboxes`, counting every mailbox and change into `summary`."""
    for mailbox in mailboxes:
        summary.scanned += 1
        change = plan_mailbox(mailbox, exceptions.get(mailbox.guid), now)
        if change is not None:
            summary.count(change)
            yield change


def confirmable(reviewed: Iterable[Change], current: Iterable[Change]) -> tuple[list[Change], list[Change]]:
    """Split a reviewed plan into the changes that still hold now and those that no longer do.

    A reviewed change still holds when today's plan asks for exactly the same change (same mailbox,
    same before and after). Anything else is dropped: the admin did not review it.
    """
    now_planned = {(c.guid, c.before, c.after) for c in current}
    still: list[Change] = []
    dropped: list[Change] = []
    for change in reviewed:
        (still if (change.guid, change.before, change.after) in now_planned else dropped).append(change)
    return still, dropped


def plan_undo(
    rows: Iterable[AuditedChange], current: Mapping[str, MailboxState]
) -> tuple[list[Change], list[AuditedChange]]:
    """Changes that put back what a run did, and the rows skipped because their mailbox moved on since.

    A row is undone only where the mailbox still holds the value the run gave it (its `after`): then
    it goes back to the row's `before`, null included. A mailbox changed since, or gone, is skipped.
    """
    undo: list[Change] = []
    skipped: list[AuditedChange] = []
    for row in rows:
        mailbox = current.get(row.mailbox_guid)
        if mailbox is None or mailbox.smtp_auth_disabled != row.after or row.before == row.after:
            skipped.append(row)
            continue
        undo.append(Change(row.mailbox_guid, mailbox.address, row.after, row.before, ChangeReason.UNDO))
    return undo, skipped
