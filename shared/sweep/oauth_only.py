"""Planning the OAuth-only exceptions' authentication policies: pure, like the planner.

For each mailbox with an active `oauth` exception, Basic SMTP must be blocked for its user: nothing to
do where the policy that applies already blocks it, else the app's policy is assigned. When the
exception ends, the assignment from before goes back, but only while the app's policy is still the
one assigned: a policy someone else assigned since is theirs, and is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shared.model.auth_policy import (
    APP_POLICY_NAME,
    AuditedPolicyChange,
    AuthPolicies,
    PolicyAssignment,
    PolicyChange,
    PolicyReason,
    describe,
    same_policy,
)
from shared.model.exception_records import AuthMethod, ExceptionRecord


@dataclass(slots=True)
class Settled:
    """What a run that died left: changes that landed without an audit row, and records to tidy."""

    recovered: list[tuple[str, PolicyChange]] = field(default_factory=list)  # (the run that made it, change)
    forget: list[str] = field(default_factory=list)  # records to delete, by mailbox GUID
    unpend: list[PolicyAssignment] = field(default_factory=list)  # records whose pending change never landed
    assignments: dict[str, PolicyAssignment] = field(default_factory=dict)  # what holds now


@dataclass(slots=True)
class OAuthOnlyPlan:
    changes: list[PolicyChange] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)  # records another admin's assignment made stale
    notes: list[str] = field(default_factory=list)
    missing_policy: bool = False  # assignments were needed, and the app's policy is missing or allows Basic SMTP


def oauth_only_guids(exceptions: Mapping[str, ExceptionRecord], now: datetime) -> set[str]:
    return {g for g, r in exceptions.items() if r.is_active(now) and r.auth_method is AuthMethod.OAUTH}


def settle(assignments: Mapping[str, PolicyAssignment], current: Mapping[str, str]) -> Settled:
    """Settle each record a dead run left pending, from the user's policy now (`current`, by GUID)."""
    settled = Settled()
    for guid, record in assignments.items():
        if not record.pending or guid not in current:
            settled.assignments[guid] = record
            continue
        now_assigned = current[guid]
        if record.pending == "assign":
            if same_policy(now_assigned, APP_POLICY_NAME):
                change = PolicyChange(guid, record.address, record.previous, APP_POLICY_NAME, PolicyReason.OAUTH_ONLY)
                settled.recovered.append((record.pending_run, change))
                settled.assignments[guid] = _held(record)
            else:  # never landed
                settled.forget.append(guid)
        elif same_policy(now_assigned, record.previous) and not same_policy(now_assigned, APP_POLICY_NAME):
            change = PolicyChange(guid, record.address, APP_POLICY_NAME, record.previous, PolicyReason.EXCEPTION_ENDED)
            settled.recovered.append((record.pending_run, change))
            settled.forget.append(guid)
        else:  # the restore never landed: the record holds as it was
            unpended = _held(record)
            settled.unpend.append(unpended)
            settled.assignments[guid] = unpended
    return settled


def _held(record: PolicyAssignment) -> PolicyAssignment:
    return PolicyAssignment(record.guid, record.address, record.previous, record.assigned_at, record.run_id)


def plan_oauth_only(
    wanted: Iterable[str],
    addresses: Mapping[str, str],
    assignments: Mapping[str, PolicyAssignment],
    current: Mapping[str, str],
    policies: AuthPolicies,
) -> OAuthOnlyPlan:
    """The policy changes for the mailboxes in `wanted` (active OAuth-only exceptions) and for those
    with an assignment of the app's. `current` holds each user's assigned policy ("" for none);
    a mailbox whose user was not found is missing from it and left alone."""
    plan = OAuthOnlyPlan()
    wanted = set(wanted)
    for guid in sorted(wanted | assignments.keys()):
        if guid not in current:
            plan.notes.append(f"{addresses.get(guid) or guid}: no such user in Exchange, left alone")
            continue
        assigned, record = current[guid], assignments.get(guid)
        holds_app = same_policy(assigned, APP_POLICY_NAME)
        if guid in wanted:
            blocked = policies.blocks_basic_smtp(policies.applying(assigned)[0])
            if holds_app or blocked or not policies.blocks_basic_smtp(APP_POLICY_NAME):
                plan.missing_policy |= not (holds_app or blocked)
                if record is not None and not holds_app:  # someone assigned another policy since
                    plan.forget.append(guid)
                continue
            address = addresses.get(guid) or (record.address if record else guid)
            plan.changes.append(PolicyChange(guid, address, assigned, APP_POLICY_NAME, PolicyReason.OAUTH_ONLY))
        elif record is not None:
            if holds_app:
                change = PolicyChange(guid, record.address, assigned, record.previous, PolicyReason.EXCEPTION_ENDED)
                plan.changes.append(change)
            else:
                plan.forget.append(guid)
                plan.notes.append(
                    f"{record.address}: its exception ended, and its policy is now {describe(assigned)}, "
                    "assigned by someone else: left as it is"
                )
    return plan


def plan_policy_undo(
    rows: Iterable[AuditedPolicyChange], current: Mapping[str, str]
) -> tuple[list[PolicyChange], list[AuditedPolicyChange]]:
    """Put back each row's `before` where the user still holds the row's `after`; the others are skipped."""
    undo: list[PolicyChange] = []
    skipped: list[AuditedPolicyChange] = []
    for row in rows:
        assigned = current.get(row.mailbox_guid)
        if assigned is None or not same_policy(assigned, row.after) or same_policy(row.before, row.after):
            skipped.append(row)
            continue
        undo.append(PolicyChange(row.mailbox_guid, row.mailbox, assigned, row.before, PolicyReason.UNDO))
    return undo, skipped


def confirmable_policies(
    reviewed: Iterable[PolicyChange], current: Iterable[PolicyChange]
) -> tuple[list[PolicyChange], list[PolicyChange]]:
    """As planner.confirmable: a reviewed change holds when today's plan asks for the same change."""
    now_planned = {(c.guid, c.before.lower(), c.after.lower()) for c in current}
    still: list[PolicyChange] = []
    dropped: list[PolicyChange] = []
    for change in reviewed:
        key = (change.guid, change.before.lower(), change.after.lower())
        (still if key in now_planned else dropped).append(change)
    return still, dropped
