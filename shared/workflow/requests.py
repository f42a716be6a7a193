"""The request and approval workflow: validate, submit, decide, revoke. HTTP-agnostic.

A decision happens exactly once: the request moves out of `pending` through an ETag-conditional
write, together with the notification it owes. Approval then writes the exception, switches SMTP
AUTH on for that one mailbox at once (an explicit admin action, so in report mode too) and audits it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import uuid
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from shared.bootstrap import Clients
from shared.errors import (
    ConflictError,
    DailyLimitError,
    ForbiddenError,
    GuardError,
    InputError,
    InvalidFieldsError,
    NotFoundError,
    NotSwitchedOffError,
    PendingLimitError,
    RefusedError,
    UnknownTargetError,
)
from shared.microsoft.graph import Evidence
from shared.model.actor import Actor
from shared.model.auth_policy import AuthPolicies, policy_name
from shared.model.exception_records import AuthMethod, ExceptionRecord, ExceptionStatus
from shared.model.mailbox import ChangeReason, MailboxState, Recipient
from shared.model.notifications import NotificationKind, OutboxItem, OutboxStatus
from shared.model.principal import Principal
from shared.model.requests import AlternativesReason, ExceptionRequest, RequestStatus, SenderKind
from shared.model.usage import SIGN_IN_DAYS_MAX, SignIn, SmtpUsage
from shared.workflow.evidence import SignInEvidence, read_sign_ins
from shared.workflow.grants import longest_days, resolve_owner, revoke_and_switch_off, switch_smtp_auth
from shared.workflow.validation import choice, free_text, mailbox_address, whole_number

logger = logging.getLogger(__name__)

MAX_VENDOR: Final = 200
MAX_DETAIL: Final = 2000
MAX_CONTACT: Final = 200
MAX_TICKET: Final = 100
MAX_SOURCE_IPS: Final = 500
MAX_COMMENT: Final = 1000
FIELDS: Final = (
    "mailbox", "sender_kind", "vendor", "source_ips", "auth_method", "alternatives_reason",
    "alternatives_detail", "days", "owner", "contact", "ticket", "renews",
)  # fmt: skip


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_link_token() -> tuple[str, str]:
    """A single-use approval link token and the hash stored on the request (the token never is)."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


# -- validation ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestDraft:
    mailbox: str
    sender_kind: SenderKind
    vendor: str
    source_ips: str
    auth_method: AuthMethod
    alternatives_reason: AlternativesReason
    alternatives_detail: str
    days: int
    owner: str
    contact: str
    ticket: str
    renews: str


def validate_request(
    fields: Mapping[str, str], principal: Principal, max_days: int, retirement: date | None, now: datetime
) -> RequestDraft:
    """Every field checked; raises InvalidFieldsError with a message per bad field."""
    errors: dict[str, str] = {}

    def check(name: str, rule: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return rule(name, *args, **kwargs)
        except InputError as err:
            errors[name] = err.problem
            return None

    unknown = sorted(set(fields) - set(FIELDS) - {"csrf_token"})
    if unknown:
        errors[unknown[0]] = "is not a field of this form"
    auth = check("auth_method", choice, fields.get("auth_method"), AuthMethod)
    limit = longest_days(auth or AuthMethod.OAUTH, max_days, retirement, now)
    draft = dict(
        mailbox=check("mailbox", mailbox_address, fields.get("mailbox") or principal.upn),
        sender_kind=check("sender_kind", choice, fields.get("sender_kind"), SenderKind),
        vendor=check("vendor", free_text, fields.get("vendor"), max_length=MAX_VENDOR, required=True),
        source_ips=check("source_ips", _source_ips, fields.get("source_ips")),
        auth_method=auth,
        alternatives_reason=check("alternatives_reason", choice, fields.get("alternatives_reason"), AlternativesReason),
        alternatives_detail=check(
            "alternatives_detail",
            free_text,
            fields.get("alternatives_detail"),
            max_length=MAX_DETAIL,
            required=True,
            multiline=True,
        ),
        days=check("days", whole_number, fields.get("days"), 1, max(limit, 1)),
        owner=check("owner", mailbox_address, fields.get("owner")),
        contact=check("contact", free_text, fields.get("contact"), max_length=MAX_CONTACT, required=True),
        ticket=check("ticket", free_text, fields.get("ticket"), max_length=MAX_TICKET, required=False),
        renews=check("renews", _optional_guid, fields.get("renews")),
    )
    if auth is AuthMethod.BASIC and limit < 1:
        errors["auth_method"] = "Basic authentication is retired for SMTP AUTH: request OAuth"
    if errors:
        raise InvalidFieldsError("some fields need attention", errors)
    return RequestDraft(**draft)


def _source_ips(field: str, value: str | None) -> str:
    text = free_text(field, value, max_length=MAX_SOURCE_IPS, required=False)
    items = [item for item in text.replace(",", " ").split() if item]
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise InputError(field, f"{item[:60]!r} is not an IP address or network (CIDR)") from None
    return ", ".join(items)


def _optional_guid(field: str, value: str | None) -> str:
    text = (value or "").strip()
    if not text:
        return ""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InputError(field, "must be the id of an existing exception") from None


# -- submission ----------------------------------------------------------------------------------------


def _notification(
    about: str, kind: NotificationKind, now: datetime, exception_id: str = "", requester_id: str = ""
) -> OutboxItem:
    return OutboxItem(about, kind, OutboxStatus.PENDING, now, now, exception_id=exception_id, requester_id=requester_id)


async def submit_request(c: Clients, draft: RequestDraft, principal: Principal, now: datetime) -> ExceptionRequest:
    """Store a pending request and its notices. Refusals raise a Refusal; nothing is left reserved."""
    mailbox, owner = await asyncio.gather(
        c.exchange.find_mailbox(draft.mailbox), _resolved_owner(c, draft.owner, principal)
    )
    if mailbox is None:
        raise UnknownTargetError("that mailbox does not exist", {"mailbox": f"Exchange has no mailbox {draft.mailbox}"})
    if draft.renews:
        previous = await c.store.exceptions.get(draft.renews)
        if previous is None or previous.mailbox_guid != mailbox.guid:
            raise UnknownTargetError("renews an unknown exception", {"renews": "is not an exception of this mailbox"})
    request_id = str(uuid.uuid4())
    await _reserve(c, principal, mailbox, request_id, now)
    request = ExceptionRequest(
        id=request_id,
        mailbox_guid=mailbox.guid,
        mailbox_address=mailbox.address.lower(),
        sender_kind=draft.sender_kind,
        vendor=draft.vendor,
        source_ips=draft.source_ips,
        auth_method=draft.auth_method,
        alternatives_reason=draft.alternatives_reason,
        alternatives_detail=draft.alternatives_detail,
        days=draft.days,
        owner=(owner.address or draft.owner) if owner else "",
        contact=draft.contact,
        ticket=draft.ticket,
        requester_id=principal.object_id,
        requester_upn=principal.upn,
        status=RequestStatus.PENDING,
        created_at=now,
        expires_at=now + timedelta(days=c.workflow.request_pending_days),
        renews_exception_id=draft.renews,
        owner_id=owner.object_id if owner else "",
        mailbox_user_id=mailbox.user_id,
    )
    try:
        notices = _submission_notices(c, request, now)
        await c.store.requests.create(request, notices, c.workflow.request_rate_limit_per_day)
    except GuardError as err:
        await release_reservations(c, request)
        if isinstance(err, DailyLimitError):
            midnight = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time.min, UTC)
            wait = math.ceil((midnight - now).total_seconds())
            raise DailyLimitError(f"{err}: try again after midnight UTC", retry_after=wait) from None
        raise
    # After it is stored, so a refused submission writes nothing. A request left out (storage failed
    # just now) is indexed again when it is decided.
    await _index(c, request)
    return request


async def _index(c: Clients, request: ExceptionRequest) -> None:
    """Point the mailbox index at the request (an upsert: again is harmless); a failure only warns."""
    try:
        await c.store.audit.index_request(request.mailbox_address, request.mailbox_guid, request.id)
    except GuardError as err:
        logger.warning("SMTP AUTH Guard: request %s not indexed by mailbox: %s", request.id, err)


async def _resolved_owner(c: Clients, address: str, principal: Principal) -> Recipient | None:
    """The owner as Exchange knows them; the signed-in user needs no lookup when they name themselves."""
    if not address:
        return None
    if principal.upn and address == principal.upn:  # the platform vouches for this address and object id
        return Recipient(guid="", address=address, object_id=principal.object_id, type="")
    try:
        return await resolve_owner(c.exchange, address)
    except InputError as err:
        raise UnknownTargetError("the owner is not a user of this tenant", {"owner": err.problem}) from None


async def _reserve(c: Clients, principal: Principal, mailbox: MailboxState, request_id: str, now: datetime) -> None:
    """One of the requester's pending slots first (so a squatter at the cap cannot even probe), then the mailbox."""
    try:
        limit = c.workflow.request_pending_per_requester
        await c.store.requests.claim_pending_slot(principal.object_id, request_id, now, limit)
    except PendingLimitError as err:
        raise PendingLimitError(str(err), {"form": str(err)}) from None
    try:
        holder = await c.store.requests.claim_mailbox(mailbox.guid, request_id, now)
    except BaseException:
        with suppress(GuardError):
            await c.store.requests.release_pending_slot(principal.object_id, request_id)
        raise
    if holder is None:
        return
    with suppress(GuardError):
        await c.store.requests.release_pending_slot(principal.object_id, request_id)
    errors = {"mailbox": "already has a pending request"}
    with suppress(GuardError):  # its id only for those who may see it; when that cannot be told, nobody
        held = await c.store.requests.get(holder)
        if held is not None and await can_view(c, held[0], principal):
            errors["request_id"] = holder
    raise ConflictError(f"a request for {mailbox.address} is already pending", errors)


async def release_reservations(c: Clients, request: ExceptionRequest) -> None:
    """Give back what a request holds. A lost release is taken over by the next claim."""
    with suppress(GuardError):
        await c.store.requests.release_mailbox(request.mailbox_guid, request.id)
    with suppress(GuardError):
        await c.store.requests.release_pending_slot(request.requester_id, request.id)


def _submission_notices(c: Clients, request: ExceptionRequest, now: datetime) -> list[OutboxItem]:
    # Filed under the requester: the approval notice takes one of the requester's daily slots.
    notify = [_notification(request.id, NotificationKind.APPROVAL_REQUEST, now, requester_id=request.requester_id)]
    if c.workflow.teams_workflow_url:
        notify.append(_notification(request.id, NotificationKind.TEAMS_CARD, now))
    if request.mailbox_user_id and request.mailbox_user_id != request.requester_id:
        notify.append(_notification(request.id, NotificationKind.MAILBOX_NOTICE, now))  # someone else's mailbox
    return notify


# -- who may do what -----------------------------------------------------------------------------------


async def is_approver(c: Clients, principal: Principal) -> bool:
    if principal.object_id in c.workflow.approvers:
        return True
    group = c.workflow.approver_group_id
    return bool(group) and await c.graph.is_member(principal.object_id, group)  # type: ignore[arg-type]


def is_owner(request: ExceptionRequest, principal: Principal) -> bool:
    """By object id; only requests stored before owner ids were kept fall back to the address."""
    if request.owner_id:
        return principal.object_id == request.owner_id
    return bool(principal.upn) and principal.upn == request.owner


def own_stake(request: ExceptionRequest, principal: Principal) -> str:
    """Why this person may not decide the request ("" when they may): theirs, their mailbox, or theirs to own."""
    if principal.object_id == request.requester_id:
        return "you cannot approve your own request"
    if request.mailbox_user_id:
        own_mailbox = principal.object_id == request.mailbox_user_id
    else:  # stored before the mailbox's user id was kept
        own_mailbox = bool(principal.upn) and principal.upn == request.mailbox_address
    if own_mailbox:
        return "you cannot approve a request for your own mailbox"
    if is_owner(request, principal):
        return "you cannot approve a request for a mailbox you own"
    return ""


async def can_view(c: Clients, request: ExceptionRequest, principal: Principal) -> bool:
    if principal.object_id == request.requester_id or is_owner(request, principal):
        return True
    return await is_approver(c, principal)


async def viewable_request(c: Clients, request_id: str, principal: Principal) -> ExceptionRequest:
    """The request, if this person may see it. Who asks is checked first: anyone who may not see a
    request gets the same 403 whether it exists or not."""
    loaded = await c.store.requests.get(request_id)
    request = loaded[0] if loaded else None
    if request is not None and (principal.object_id == request.requester_id or is_owner(request, principal)):
        return request
    if not await is_approver(c, principal):
        raise ForbiddenError("only the requester, the owner and approvers may see this request")
    if request is None:
        raise NotFoundError("no such request")
    return request


def link_token_valid(request: ExceptionRequest, token: str | None, now: datetime) -> bool:
    if not token or not request.token_hash or now >= request.expires_at:
        return False
    return hmac.compare_digest(token_hash(token), request.token_hash)


# -- decisions -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    approve: bool
    days: int
    comment: str


def grantable_days(c: Clients, request: ExceptionRequest, now: datetime) -> int:
    """The most days an approver may grant now: the request's, within today's caps (Basic's retirement)."""
    retirement = c.workflow.basic_auth_retirement_date
    return min(request.days, longest_days(request.auth_method, c.settings.exception_max_days, retirement, now))


def validate_decision(fields: Mapping[str, str], grantable: int) -> Decision:
    errors: dict[str, str] = {}
    decision = (fields.get("decision") or "").strip().lower()
    if decision not in ("approve", "deny"):
        errors["decision"] = "must be approve or deny"
    elif decision == "approve" and grantable < 1:
        errors["decision"] = "Basic authentication is retired for SMTP AUTH: this request can only be denied"
    comment = ""
    try:
        comment = free_text(
            "comment", fields.get("comment"), max_length=MAX_COMMENT, required=decision == "deny", multiline=True
        )
    except InputError as err:
        errors["comment"] = "is required to deny" if err.problem == "is required" else err.problem
    days = grantable
    if decision == "approve" and grantable >= 1 and (fields.get("days") or "").strip():
        try:
            days = whole_number("days", fields.get("days"), 1, grantable)
        except InputError as err:
            errors["days"] = f"{err.problem} (an approver may shorten, not extend)"
    if errors:
        raise InvalidFieldsError("the decision needs attention", errors)
    return Decision(approve=decision == "approve", days=days, comment=comment)


@dataclass(frozen=True, slots=True)
class DecisionResult:
    request: ExceptionRequest
    applied: bool
    apply_error: str = ""


async def decide(
    c: Clients,
    request_id: str,
    principal: Principal,
    token: str | None,
    fields: Mapping[str, str],
    now: datetime,
) -> DecisionResult:
    """Approve or deny once. Raises a Refusal for every refusal; changes nothing when refused."""
    if not await is_approver(c, principal):  # before the lookup: a non-approver learns nothing of ids
        raise ForbiddenError("only approvers may decide requests")
    loaded = await c.store.requests.get(request_id)
    if loaded is None:
        raise NotFoundError("no such request")
    request, etag = loaded
    stake = own_stake(request, principal)
    if stake:
        raise ForbiddenError(stake)
    if request.status is not RequestStatus.PENDING:
        raise ConflictError(f"this request was already {request.status.value}", {"status": request.status.value})
    if not link_token_valid(request, token, now):
        raise ForbiddenError("this approval link is invalid, used or expired")
    decision = validate_decision(fields, grantable_days(c, request, now))
    decided = replace(
        request,
        status=RequestStatus.APPROVED if decision.approve else RequestStatus.DENIED,
        token_hash="",  # single use
        decided_by=principal.object_id,
        decided_by_upn=principal.upn,
        decided_at=now,
        decision_comment=decision.comment,
        approved_days=decision.days if decision.approve else 0,
        exception_expires_at=now + timedelta(days=decision.days) if decision.approve else None,
    )
    try:
        await c.store.requests.update(decided, etag, [_notification(request.id, NotificationKind.DECISION, now)])
    except RefusedError:
        current = await c.store.requests.get(request_id)
        status = current[0].status.value if current else "changed"
        raise ConflictError(f"another approver decided first: the request is {status}", {"status": status}) from None
    await release_reservations(c, request)
    await _index(c, decided)  # in case its submission could not index it
    if not decision.approve:
        return DecisionResult(decided, applied=False)
    return await _grant(c, decided, principal, now)


def exception_from_request(request: ExceptionRequest, device: str | None = None) -> ExceptionRecord:
    """The exception an approved request grants; its id is the request's, so writing it is idempotent."""
    assert request.exception_expires_at is not None and request.decided_at is not None
    return ExceptionRecord(
        id=request.id,
        mailbox_guid=request.mailbox_guid,
        mailbox_address=request.mailbox_address,
        status=ExceptionStatus.APPROVED,
        expires_at=request.exception_expires_at,
        reason=f"{request.alternatives_reason.value}: {request.alternatives_detail}",
        owner=request.owner,
        owner_id=request.owner_id,
        device=device or request.vendor,
        auth_method=request.auth_method,
        approved_by=request.decided_by,
        approved_at=request.decided_at,
    )


async def granted_exception(c: Clients, request: ExceptionRequest) -> ExceptionRecord:
    """The exception an approved request grants, with the devices of the exception it renews."""
    device = request.vendor
    if request.renews_exception_id:  # adding a device to an existing exception keeps the old ones
        previous = await c.store.exceptions.get(request.renews_exception_id)
        if previous is not None and previous.device and request.vendor not in previous.device:
            device = f"{previous.device}; {request.vendor}"
    return exception_from_request(request, device)


async def _grant(c: Clients, request: ExceptionRequest, principal: Principal, now: datetime) -> DecisionResult:
    record = await granted_exception(c, request)
    try:
        await c.store.exceptions.grant(record, principal.object_id)
    except RefusedError:  # written already (its id is the request's), or a record changed meanwhile
        if await c.store.exceptions.get(record.id) is None:
            await c.store.exceptions.grant(record, principal.object_id)  # once more; never switch on without it
    return await _apply_now(c, request, record, principal, now)


async def _apply_now(
    c: Clients, request: ExceptionRequest, record: ExceptionRecord, principal: Principal, now: datetime
) -> DecisionResult:
    try:
        await switch_smtp_auth(
            c.store, c.exchange, record, False, ChangeReason.EXCEPTION, f"approval-{request.id}", _actor(principal), now
        )
    except GuardError as err:
        logger.error("approved request %s but SMTP AUTH could not be switched on now: %s", request.id, err)
        return DecisionResult(request, applied=False, apply_error=str(err))
    return DecisionResult(request, applied=True)


async def revoke(c: Clients, exception_id: str, principal: Principal, now: datetime) -> ExceptionRecord:
    """End one exception now through the one revoke path; NotSwitchedOffError when SMTP AUTH stays on for now."""
    if not await is_approver(c, principal):
        raise ForbiddenError("only approvers may revoke exceptions")
    record = await c.store.exceptions.get(exception_id)
    if record is None:
        raise NotFoundError("no such exception")
    if not record.is_active(now):
        raise ConflictError(f"this exception is not active (it is {record.status.value})")
    try:
        done = await revoke_and_switch_off(
            c.store, c.exchange, record.mailbox_guid, _actor(principal), now, c.settings.enforcement_mode,
            only_id=record.id,
        )  # fmt: skip
    except RefusedError:
        done = None
    if done is None or not done.revoked:  # superseded or revoked while this ran
        current = await c.store.exceptions.get(exception_id)
        status = current.status.value if current else "gone"
        raise ConflictError(f"this exception is not active (it is {status})")
    about = record.id if await c.store.requests.get(record.id) else f"exception-{record.id}"
    await c.store.outbox.enqueue(_notification(about, NotificationKind.REVOKED, now, exception_id=record.id))
    if not done.switched_off:
        problem = f"revoked, but SMTP AUTH could not be switched off now ({done.problem}); {done.next_step}"
        raise NotSwitchedOffError(problem)
    return record


def _actor(principal: Principal) -> Actor:
    return Actor(principal.object_id, "")


# -- what an approver sees -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthPolicyFinding:
    """Which Exchange authentication policy governs the mailbox's user, and whether it blocks Basic SMTP."""

    blocking: tuple[str, ...]  # every policy with AllowBasicAuthSmtp=false
    applies: str | None = None  # the user's own policy, else the organisation's default; None when neither
    source: str = ""  # "assigned to the user" or "the organisation's default"
    blocks_smtp: bool = False
    unresolved: str = ""  # why `applies` could not be worked out ("" when it was)


@dataclass(frozen=True, slots=True)
class ApprovalEvidence:
    mailbox: MailboxState | None
    owner_name: str
    org_smtp_auth_disabled: Evidence
    auth_policy: Evidence  # of AuthPolicyFinding; empty for OAuth requests, which no Basic blocker concerns
    security_defaults: Evidence
    legacy_auth_blocks: Evidence
    sign_ins: SignInEvidence  # the mailbox's Basic SMTP AUTH sign-ins, successes and failures apart
    protocol: Evidence  # of Protocol: what the last SMTP AUTH clients report showed for it, if any
    keys: tuple[str, ...] = ()  # what the mailbox's sign-ins are matched by

    @property
    def usage(self) -> SmtpUsage | None:
        return self.sign_ins.usage(*self.keys)

    def recent_uses(self, limit: int = 10) -> list[SignIn]:
        """The latest successful sign-ins (failures are shown only as counts: their IPs are attackers')."""
        return [s for s in self.sign_ins.of(*self.keys) if s.succeeded][:limit]


async def _auth_policy(c: Clients, mailbox_guid: str) -> AuthPolicyFinding:
    listed = tuple(await c.exchange.invoke("Get-AuthenticationPolicy", {}))
    blocking = AuthPolicies(listed).blocking
    try:
        users, orgs = await asyncio.gather(
            c.exchange.invoke("Get-User", {"Identity": mailbox_guid}),
            c.exchange.invoke("Get-OrganizationConfig", {}),
        )
    except GuardError as err:
        return AuthPolicyFinding(blocking, unresolved=f"not available (Get-User, Get-OrganizationConfig: {err})")
    policies = AuthPolicies(listed, policy_name((orgs[0] if orgs else {}).get("DefaultAuthenticationPolicy")))
    reference, source = policies.applying(policy_name((users[0] if users else {}).get("AuthenticationPolicy")))
    if not reference:
        return AuthPolicyFinding(blocking)
    policy = policies.named(reference)
    if policy is None:  # a reference to a policy not listed: nothing says it blocks
        return AuthPolicyFinding(blocking, reference, source)
    blocks = policy.get("AllowBasicAuthSmtp") is False
    return AuthPolicyFinding(blocking, str(policy.get("Name") or reference), source, blocks_smtp=blocks)


async def gather_evidence(c: Clients, request: ExceptionRequest, now: datetime) -> ApprovalEvidence:
    """Everything the approval page shows; each read fails on its own into "not available"."""

    async def guarded(coro: Any, what: str) -> Evidence:
        try:
            result = await coro
        except GuardError as err:
            return Evidence(unavailable=f"not available: {what} could not be read ({err})")
        return result if isinstance(result, Evidence) else Evidence(value=result)

    async def org_flag() -> Any:
        return (await c.exchange.get_transport_config()).get("SmtpClientAuthenticationDisabled")

    async def not_needed() -> Evidence:
        return Evidence()

    basic = request.auth_method is AuthMethod.BASIC  # the blockers below stop Basic only

    async def sign_ins() -> SignInEvidence:
        try:
            user = {"user_id": request.mailbox_user_id, "upn": request.mailbox_address}
            return await read_sign_ins(c.graph, now, SIGN_IN_DAYS_MAX, **user)
        except GuardError as err:
            return SignInEvidence(now, unavailable=f"not available: sign-in logs could not be read ({err})")

    mailbox_ev, owner_ev, org, policy, defaults, ca, protocol, signed_in = await asyncio.gather(
        guarded(c.exchange.find_mailbox(request.mailbox_guid), "the mailbox"),
        guarded(c.graph.get_user(request.mailbox_address), "the mailbox owner"),
        guarded(org_flag(), "the organisation flag"),
        guarded(_auth_policy(c, request.mailbox_guid), "authentication policies") if basic else not_needed(),
        guarded(c.graph.security_defaults(), "security defaults") if basic else not_needed(),
        guarded(c.graph.legacy_auth_blocks(), "Conditional Access") if basic else not_needed(),
        guarded(c.store.usage.protocol_of(request.mailbox_address), "the SMTP AUTH clients report"),
        sign_ins(),
    )
    owner = owner_ev.value
    return ApprovalEvidence(
        mailbox=mailbox_ev.value,
        owner_name=owner.display_name if owner else "",
        org_smtp_auth_disabled=org,
        auth_policy=policy,
        security_defaults=defaults,
        legacy_auth_blocks=ca,
        sign_ins=signed_in,
        protocol=protocol,
        keys=(request.mailbox_user_id, request.mailbox_address),
    )


_NOT_PUBLIC: Final = frozenset({"token_hash", "owner_id", "mailbox_user_id"})


def public_request(request: ExceptionRequest) -> dict[str, Any]:
    """The request as the JSON API shows it: never the link token's hash."""
    data = {name: getattr(request, name) for name in request.__dataclass_fields__ if name not in _NOT_PUBLIC}
    return {k: (v.value if hasattr(v, "value") else v) for k, v in data.items()}
