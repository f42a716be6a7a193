"""The planner is pure: desired state versus actual state, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared.model.exception_records import AuthMethod, ExceptionRecord, ExceptionStatus
from shared.model.mailbox import Change, ChangeReason, MailboxState
from shared.sweep.planner import (
    PlanSummary,
    changed_since,
    confirmable,
    effective_exceptions,
    moved_mailboxes,
    plan_changes,
    plan_mailbox,
)

NOW = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


def record(guid: str, *, days: int = 30, status: ExceptionStatus = ExceptionStatus.APPROVED, rid: str = "r1"):
    return ExceptionRecord(
        id=rid,
        mailbox_guid=guid,
        mailbox_address=f"{guid}@contoso.com",
        status=status,
        expires_at=NOW + timedelta(days=days),
        reason="printer",
        owner="",
        device="",
        auth_method=AuthMethod.OAUTH,
        approved_by="admin",
        approved_at=NOW - timedelta(days=1),
    )


@pytest.mark.parametrize(
    ("actual", "exception", "expected"),
    [
        (True, None, None),
        (None, None, (True, ChangeReason.NULL)),
        (False, None, (True, ChangeReason.DRIFT)),
        (False, record("m", days=10), None),
        (True, record("m", days=10), (False, ChangeReason.EXCEPTION)),
        (None, record("m", days=10), (False, ChangeReason.EXCEPTION)),
        (False, record("m", days=-1), (True, ChangeReason.EXPIRED)),
        (False, record("m", status=ExceptionStatus.REVOKED), (True, ChangeReason.EXPIRED)),
        (None, record("m", days=-1), (True, ChangeReason.NULL)),
        (True, record("m", days=-1), None),
    ],
)
def test_plan_mailbox(actual, exception, expected) -> None:
    change = plan_mailbox(MailboxState("m", "m@contoso.com", actual), exception, NOW)
    if expected is None:
        assert change is None
    else:
        assert change == Change("m", "m@contoso.com", actual, expected[0], expected[1])


def test_expiry_is_exclusive_at_the_instant() -> None:
    expiring = record("m", days=0)  # expires exactly now
    assert plan_mailbox(MailboxState("m", "a", False), expiring, NOW) == Change(
        "m", "a", False, True, ChangeReason.EXPIRED
    )


def test_effective_exception_prefers_active_then_latest() -> None:
    old = record("m", days=-5, rid="old")
    active = record("m", days=3, rid="active")
    revoked_later = record("m", days=90, status=ExceptionStatus.REVOKED, rid="revoked")
    chosen = effective_exceptions([old, revoked_later, active], NOW)
    assert chosen["m"].id == "active"
    assert effective_exceptions([old, revoked_later], NOW)["m"].id == "revoked"


def test_plan_changes_streams_and_counts() -> None:
    mailboxes = [MailboxState(str(i), f"u{i}@c.com", v) for i, v in enumerate([True, None, False, False, None])]
    summary = PlanSummary()
    changes = list(plan_changes(mailboxes, {"3": record("3")}, NOW, summary))
    assert [c.guid for c in changes] == ["1", "2", "4"]
    assert summary.scanned == 5
    assert summary.by_reason == {"null": 2, "drift": 1}
    assert summary.changes == 3


def test_confirmable_keeps_only_changes_that_still_hold() -> None:
    reviewed = [Change("a", "a", None, True, ChangeReason.NULL), Change("b", "b", False, True, ChangeReason.DRIFT)]
    current = [Change("a", "a", None, True, ChangeReason.NULL), Change("c", "c", None, True, ChangeReason.NULL)]
    still, dropped = confirmable(reviewed, current)
    assert [c.guid for c in still] == ["a"]
    assert [c.guid for c in dropped] == ["b"]


def test_change_json_round_trip() -> None:
    change = Change("g", "x@c.com", None, True, ChangeReason.NULL)
    assert Change.from_json(change.to_json()) == change


def test_moved_mailboxes_are_those_whose_desired_state_differs_between_two_reads() -> None:
    before = {"a": record("a"), "b": record("b"), "c": record("c", days=-1)}
    after = {
        "a": record("a"),  # unchanged
        "b": record("b", status=ExceptionStatus.REVOKED),  # revoked meanwhile
        "c": record("c", days=-1, rid="r2"),  # another record, still inactive: no move
        "d": record("d"),  # approved meanwhile
    }
    assert moved_mailboxes(before, after, NOW) == {"b", "d"}
    assert moved_mailboxes(after, after, NOW) == set()


def test_changed_since_takes_grants_revocations_and_lapses_in_the_window() -> None:
    since = NOW - timedelta(minutes=25)
    granted = replace(record("granted"), approved_at=NOW - timedelta(minutes=5))
    revoked = replace(record("revoked", status=ExceptionStatus.REVOKED), revoked_at=NOW - timedelta(minutes=1))
    lapsed = replace(record("lapsed"), expires_at=NOW - timedelta(minutes=10))
    old = record("old")  # approved yesterday, expires in 30 days
    lapsed_long_ago = replace(record("gone"), expires_at=NOW - timedelta(days=2))
    future = replace(record("future"), expires_at=NOW + timedelta(minutes=1))  # not yet
    records = [granted, revoked, lapsed, old, lapsed_long_ago, future]
    assert changed_since(records, since, NOW) == {"granted", "revoked", "lapsed"}


def test_an_undo_puts_back_each_before_where_the_mailbox_still_holds_the_runs_after() -> None:
    from shared.model.runs import AuditedChange
    from shared.sweep.planner import plan_undo

    def row(guid: str, before: bool | None, after: bool | None) -> AuditedChange:
        return AuditedChange("run", NOW, f"{guid}@contoso.com", guid, before, after, "drift", "admin", False)

    rows = [row("a", None, True), row("b", False, True), row("c", False, True), row("gone", False, True)]
    current = {
        "a": MailboxState("a", "a@contoso.com", True),
        "b": MailboxState("b", "b@contoso.com", True),
        "c": MailboxState("c", "c@contoso.com", False),  # changed since the run: left alone
    }
    changes, skipped = plan_undo(rows, current)
    assert [(c.guid, c.before, c.after, c.reason) for c in changes] == [
        ("a", True, None, ChangeReason.UNDO),  # null stays null
        ("b", True, False, ChangeReason.UNDO),
    ]
    assert [r.mailbox_guid for r in skipped] == ["c", "gone"]
