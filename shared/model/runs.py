"""What a sweep run leaves behind: its stored plan, its audit entries and its summary."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from shared.model.actor import Actor
from shared.model.auth_policy import PolicyChange
from shared.model.clock import utc_now
from shared.model.hold import Hold
from shared.model.mailbox import Change, ChangeReason


class PlanStatus(StrEnum):
    REPORTED = "reported"  # report mode: recorded, nothing applied
    OVER_CAP = "over-cap"  # enforce refused by the cap; waits for --confirm-plan
    APPLIED = "applied"  # enforce applied it (fully or partly, see the run summary)


class RunOutcome(StrEnum):
    COMPLETED = "completed"
    REPORTED = "reported"
    OVER_CAP = "over-cap"
    PARTIAL = "partial"  # some changes failed or the time budget ran out
    REFUSED = "refused"  # a safety rule stopped the run before any change
    PAUSED = "paused"  # an enforce run under the enforcement hold: planned and recorded, nothing applied
    FAILED = "failed"


_RUN_STAMP: Final = "%Y%m%dT%H%M%SZ"
_RUN_ID: Final = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{8}$")


def new_run_id(now: datetime | None = None) -> str:
    """Sortable by time, unique across instances."""
    moment = (now or utc_now()).astimezone(UTC)
    return f"{moment:{_RUN_STAMP}}-{uuid.uuid4().hex[:8]}"


def run_started_at(run_id: str) -> datetime | None:
    """When the run with an id made by new_run_id began; None for any other id."""
    match = _RUN_ID.match(run_id)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), _RUN_STAMP).replace(tzinfo=UTC)
    except ValueError:  # shaped like one, but no real moment (a 13th month)
        return None


def tri_state(value: bool | None) -> str:
    """A setting that may be unknown, as stored and printed: "true", "false" or "null"."""
    return "null" if value is None else str(value).lower()


def from_tri_state(value: str) -> bool | None:
    return None if value == "null" else value == "true"


SWEEP_REASONS: Final = (ChangeReason.NULL, ChangeReason.DRIFT, ChangeReason.EXPIRED, ChangeReason.EXCEPTION)


@dataclass(slots=True)
class StoredPlan:
    plan_id: str
    tenant_id: str
    created_at: datetime
    mode: str
    full: bool
    status: PlanStatus
    scanned: int
    org_smtp_auth_disabled: bool | None
    changes: list[Change] = field(default_factory=list)
    undoes: str = ""  # an undo plan: the run whose changes it puts back
    policy_changes: list[PolicyChange] = field(default_factory=list)  # authentication policies (OAuth-only)

    def counts(self) -> dict[str, int]:
        """Changes by reason: the four a sweep plans always (zero included), others only when present."""
        counts = {reason.value: 0 for reason in SWEEP_REASONS}
        for change in [*self.changes, *self.policy_changes]:
            counts[change.reason.value] = counts.get(change.reason.value, 0) + 1
        return counts


@dataclass(frozen=True, slots=True)
class AuditEntry:
    run_id: str
    change: Change
    actor: Actor
    at: datetime
    plan_id: str | None = None
    recovered: bool = False  # written by a later run, which found the change landed after its run died


@dataclass(frozen=True, slots=True)
class AuditedChange:
    """One change row as an export gives it."""

    run_id: str
    at: datetime
    mailbox: str
    mailbox_guid: str
    before: bool | None
    after: bool | None
    reason: str
    actor: str
    recovered: bool


@dataclass(slots=True)
class RunSummary:
    run_id: str
    tenant_id: str
    mode: str
    full: bool
    started_at: datetime
    outcome: RunOutcome = RunOutcome.FAILED
    finished_at: datetime | None = None
    actor: Actor | None = None
    scanned: int = 0
    planned: int = 0
    applied: int = 0
    failed: int = 0
    remaining: int = 0
    plan_id: str | None = None
    org_smtp_auth_disabled: bool | None = None
    message: str = ""
    by_reason: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)  # the plan, for display; stored in the plan table
    hold: Hold | None = None  # the enforcement hold the run found, if any
    undoes: str | None = None  # an undo run: the run whose changes it put back
    skipped: list[str] = field(default_factory=list)  # an undo's mailboxes changed since that run
    # OAuth-only exceptions: authentication-policy changes. Counted in planned, applied and by_reason
    # like the SMTP AUTH changes, except with OAUTH_ONLY_POLICY=report (`policy_report_only`).
    policy_changes: list[PolicyChange] = field(default_factory=list)
    policy_report_only: bool = False
    notes: list[str] = field(default_factory=list)  # what the run noticed and left alone

    @property
    def ok(self) -> bool:
        return self.outcome in (RunOutcome.COMPLETED, RunOutcome.REPORTED)
