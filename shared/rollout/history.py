"""`exceptions show`: one mailbox's history, oldest first, and its recent SMTP AUTH sign-ins.

Read through the audit's mailbox index (one range query), then one read per run and per request it
lists, and the mailbox's partition of the exceptions table: the storage reads grow with the
mailbox's own history, never with the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from shared.errors import GuardError
from shared.microsoft.exchange import ExchangeClient
from shared.model.auth_policy import APP_POLICY_NAME, TAKES_EFFECT_WITHIN, AuditedPolicyChange, PolicyAssignment
from shared.model.auth_policy import describe as describe_policy
from shared.model.exception_records import ExceptionRecord, ExceptionStatus
from shared.model.requests import ExceptionRequest, RequestStatus
from shared.model.runs import AuditedChange, tri_state
from shared.model.usage import SIGN_IN_DAYS_MAX, SignIn, SmtpUsage
from shared.storage import Store
from shared.workflow.evidence import SignInEvidence, read_sign_ins

if TYPE_CHECKING:  # msgraph-sdk is large: only the commands that read Graph import it
    from shared.microsoft.graph import GraphClient

# What happens at one instant happens in this order: an approval decides, grants, then switches on;
# a revocation ends the exception, then switches off.
_ORDER: Final = {
    kind: n
    for n, kind in enumerate(
        (
            "requested",
            "approved",
            "denied",
            "request-expired",
            "granted",
            "renewed",
            "revoked",
            "expired",
            "policy",
            "change",
        )
    )
}


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    at: datetime
    kind: str  # requested, approved, denied, request-expired, granted, renewed, revoked, expired, policy, change
    detail: str
    ref: str  # the request, exception or run it comes from


@dataclass(frozen=True, slots=True)
class MailboxHistory:
    mailbox: str
    mailbox_guids: tuple[str, ...]
    events: list[HistoryEvent]
    sign_ins: SignInEvidence
    keys: tuple[str, ...]  # what its sign-ins are matched by
    note: str = ""  # what could not be read (Exchange), when something could not
    assignment: PolicyAssignment | None = None  # the app's authentication policy, while it is assigned

    @property
    def usage(self) -> SmtpUsage | None:
        return self.sign_ins.usage(*self.keys)

    def recent(self, succeeded: bool, limit: int = 10) -> list[SignIn]:
        return [s for s in self.sign_ins.of(*self.keys) if s.succeeded is succeeded][:limit]


async def mailbox_history(
    store: Store, exchange: ExchangeClient, graph: GraphClient, *, tenant_id: str, address: str, now: datetime
) -> MailboxHistory:
    await store.state.require_marker(tenant_id)
    pointers = await store.audit.pointers(address)
    note, user_id, guids = "", "", set(pointers.guids) - {""}
    try:
        mailbox = await exchange.find_mailbox(address)
    except GuardError as err:  # the stored history still stands
        mailbox, note = None, f"Exchange could not be read ({err}): exceptions granted outside the index may be missing"
    if mailbox is not None:
        guids.add(mailbox.guid)
        user_id = mailbox.user_id
    records = [r for guid in sorted(guids) for r in await store.exceptions.of_mailbox(guid)]
    requests = [found[0] for rid in pointers.requests if (found := await store.requests.get(rid)) is not None]
    changes = [c async for c in store.audit.history(address, pointers)]
    policies = await store.audit.policy_history(pointers)
    assigned = [a for guid in sorted(guids) if (a := await store.policy_assignments.of_mailbox(guid)) is not None]
    sign_ins = await read_sign_ins(graph, now, SIGN_IN_DAYS_MAX, user_id=user_id, upn=address)
    return MailboxHistory(
        mailbox=address,
        mailbox_guids=tuple(sorted(guids)),
        events=events(records, requests, changes, now, policies),
        sign_ins=sign_ins,
        keys=(user_id, address),
        note=note,
        assignment=next((a for a in assigned if a.assigned_at is not None), None),
    )


def events(
    records: list[ExceptionRecord],
    requests: list[ExceptionRequest],
    changes: list[AuditedChange],
    now: datetime,
    policies: list[AuditedPolicyChange] | None = None,
) -> list[HistoryEvent]:
    """Everything that happened to the mailbox, oldest first."""
    found = [event for request in requests for event in _request_events(request)]
    found += policy_events(policies or [])
    found += _exception_events(records, now)
    found += [
        HistoryEvent(
            c.at,
            "change",
            f"SMTP AUTH disabled {tri_state(c.before)} -> {tri_state(c.after)} ({c.reason}) by {c.actor or 'unknown'}"
            + (", recovered after a crash" if c.recovered else ""),
            c.run_id,
        )
        for c in changes
    ]
    return sorted(found, key=lambda e: (e.at, _ORDER.get(e.kind, len(_ORDER))))


def policy_events(changes: list[AuditedPolicyChange]) -> list[HistoryEvent]:
    """The authentication-policy changes of OAuth-only exceptions (after the other events of an instant)."""
    return [
        HistoryEvent(
            c.at,
            "policy",
            f"authentication policy {describe_policy(c.before)} -> {describe_policy(c.after)} ({c.reason}) by "
            f"{c.actor or 'unknown'}" + (", recovered after a crash" if c.recovered else ""),
            c.run_id,
        )
        for c in changes
    ]


def assignment_line(assignment: PolicyAssignment | None) -> str:
    if assignment is None or assignment.assigned_at is None:
        return ""
    return (
        f"Basic SMTP blocked by the authentication policy '{APP_POLICY_NAME}', assigned "
        f"{assignment.assigned_at:%Y-%m-%d %H:%M}Z (it can take {TAKES_EFFECT_WITHIN} to apply); "
        f"{describe_policy(assignment.previous)} goes back when the exception ends"
    )


def _request_events(request: ExceptionRequest) -> list[HistoryEvent]:
    who = request.requester_upn or request.requester_id
    asked = f"requested by {who}: {request.days} days, {request.auth_method.value}"
    found = [HistoryEvent(request.created_at, "requested", asked, request.id)]
    if request.status is RequestStatus.EXPIRED:
        found.append(HistoryEvent(request.expires_at, "request-expired", "nobody decided in time", request.id))
    elif request.decided_at is not None:
        comment = f": {request.decision_comment}" if request.decision_comment else ""
        by = request.decided_by_upn or request.decided_by
        found.append(
            HistoryEvent(
                request.decided_at, request.status.value, f"{request.status.value} by {by}{comment}", request.id
            )
        )
    return found


def _exception_events(records: list[ExceptionRecord], now: datetime) -> list[HistoryEvent]:
    found: list[HistoryEvent] = []
    for index, record in enumerate(sorted(records, key=lambda r: r.approved_at)):
        kind = "renewed" if index else "granted"
        detail = (
            f"{kind} by {record.approved_by} until {record.expires_at:%Y-%m-%d %H:%M}Z, "
            f"{record.auth_method.value}: {record.reason}"
        )
        found.append(HistoryEvent(record.approved_at, kind, detail, record.id))
        if record.status is ExceptionStatus.REVOKED and record.revoked_at is not None:
            found.append(
                HistoryEvent(record.revoked_at, "revoked", f"revoked by {record.revoked_by or 'unknown'}", record.id)
            )
        elif record.status is ExceptionStatus.APPROVED and record.expires_at <= now:
            found.append(HistoryEvent(record.expires_at, "expired", "the exception ended", record.id))
    return found


def as_json(history: MailboxHistory) -> dict[str, Any]:
    usage = history.usage
    return {
        "mailbox": history.mailbox,
        "mailbox_guids": list(history.mailbox_guids),
        "events": [{"at": _iso(e.at), "kind": e.kind, "detail": e.detail, "ref": e.ref} for e in history.events],
        "signins": usage.signins if usage else None,
        "last_signin": _iso(usage.last_signin) if usage and usage.last_signin else None,
        "ips": list(usage.ips) if usage else [],
        "failures": usage.failures if usage else None,
        "last_failure": _iso(usage.last_failure) if usage and usage.last_failure else None,
        "signins_unavailable": history.sign_ins.unavailable or None,
        "policy_assignment": _assignment_json(history.assignment),
    }


def _assignment_json(assignment: PolicyAssignment | None) -> dict[str, Any] | None:
    if assignment is None or assignment.assigned_at is None:
        return None
    return {
        "policy": APP_POLICY_NAME,
        "assigned_at": _iso(assignment.assigned_at),
        "previous": assignment.previous or None,
        "run_id": assignment.run_id,
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
