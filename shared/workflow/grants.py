"""Granting, listing and revoking SMTP AUTH exceptions: the one grant path and the one revoke path.

Every write checks its input first and the install marker second, so bad input changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from shared.errors import GuardError, InputError, first_line
from shared.microsoft.exchange import ExchangeClient
from shared.model.actor import Actor
from shared.model.clock import utc_now
from shared.model.exception_records import AuthMethod, ExceptionRecord, ExceptionStatus
from shared.model.mailbox import Change, ChangeReason, MailboxState, Recipient
from shared.model.runs import AuditEntry
from shared.settings import EnforcementMode
from shared.storage import Store
from shared.workflow.validation import choice, free_text, mailbox_address, whole_number

MAX_REASON: Final = 1000
MAX_DEVICE: Final = 200
# An owner gets reminders and renewal links, so it must be a person of this tenant: no contact, guest,
# group or resource mailbox.
_PERSON_TYPES: Final = frozenset({"usermailbox", "mailuser", "remoteusermailbox"})


@dataclass(frozen=True, slots=True)
class ExceptionGrant:
    """A validated request to grant an exception, before the mailbox is resolved."""

    mailbox: str
    days: int
    reason: str
    owner: str
    device: str
    auth_method: AuthMethod


def validate_grant(
    *,
    mailbox: str | None,
    days: str | int | None,
    reason: str | None,
    owner: str | None,
    device: str | None,
    auth: str | None,
    max_days: int,
    retirement: date | None = None,
    now: datetime | None = None,
) -> ExceptionGrant:
    """Every rule of a grant but Exchange's; InputError names the first bad field.

    A Basic exception runs no later than Microsoft's retirement date of Basic, when it is known.
    """
    address = mailbox_address("mailbox", mailbox)  # the fields in the order they were always checked
    auth_method = choice("auth", auth or AuthMethod.OAUTH.value, AuthMethod)
    longest = longest_days(auth_method, max_days, retirement, now or utc_now())
    if longest < 1:
        raise InputError("auth", f"Basic SMTP AUTH retires on {retirement}: grant an OAuth exception instead")
    return ExceptionGrant(
        mailbox=address,
        days=whole_number("days", days, 1, longest),
        reason=free_text("reason", reason, max_length=MAX_REASON, required=True),
        owner=mailbox_address("owner", owner) if owner else "",
        device=free_text("device", device, max_length=MAX_DEVICE, required=False),
        auth_method=auth_method,
    )


def longest_days(auth: AuthMethod, max_days: int, retirement: date | None, now: datetime) -> int:
    """No Basic exception runs past Microsoft's retirement date, when it is known."""
    if auth is AuthMethod.BASIC and retirement is not None:
        end = datetime.combine(retirement, time.min, UTC)
        return max(0, min(max_days, (end - now).days))
    return max_days


async def resolve_owner(exchange: ExchangeClient, address: str) -> Recipient:
    """The owner as Exchange knows them; InputError("owner") for an unknown or external address."""
    recipient = await exchange.find_recipient(address)
    problem = owner_problem(address, recipient)
    if problem:
        raise InputError("owner", problem)
    assert recipient is not None
    return recipient


def owner_problem(address: str, recipient: Recipient | None) -> str:
    """Why this recipient cannot own an exception ("" when it can)."""
    if recipient is None:
        return f"Exchange has no recipient {address}"
    if not recipient.object_id or recipient.type.lower() not in _PERSON_TYPES:
        return f"{address} is not a user of this tenant"
    return ""


async def grant_exception(
    store: Store,
    exchange: ExchangeClient,
    tenant_id: str,
    grant: ExceptionGrant,
    approved_by: str,
    now: datetime,
) -> tuple[ExceptionRecord, list[ExceptionRecord]]:
    """Store an approved exception for an existing mailbox; returns it and the records it supersedes."""
    await store.state.require_marker(tenant_id)
    mailbox = await exchange.find_mailbox(grant.mailbox)
    if mailbox is None:
        raise InputError("mailbox", f"Exchange has no mailbox {grant.mailbox}")
    owner = await resolve_owner(exchange, grant.owner) if grant.owner else None
    record = exception_record(grant, mailbox, owner, approved_by, now)
    superseded = await store.exceptions.grant(record, created_by=approved_by)
    return record, superseded


def exception_record(
    grant: ExceptionGrant, mailbox: MailboxState, owner: Recipient | None, approved_by: str, now: datetime
) -> ExceptionRecord:
    """The record a grant stores, for a mailbox and an owner Exchange has resolved."""
    return ExceptionRecord(
        id=str(uuid.uuid4()),
        mailbox_guid=mailbox.guid,
        mailbox_address=mailbox.address.lower() or grant.mailbox,
        status=ExceptionStatus.APPROVED,
        expires_at=now + timedelta(days=grant.days),
        reason=grant.reason,
        owner=(owner.address or grant.owner) if owner else "",
        owner_id=owner.object_id if owner else "",
        device=grant.device,
        auth_method=grant.auth_method,
        approved_by=approved_by,
        approved_at=now,
    )


@dataclass(frozen=True, slots=True)
class Revocation:
    """What a revocation did: revoking always stands; switching SMTP AUTH off may have to wait."""

    revoked: list[ExceptionRecord]
    switched_off: bool
    problem: str = ""  # why SMTP AUTH could not be switched off now
    next_step: str = ""  # what happens next when it could not


async def revoke_and_switch_off(
    store: Store,
    exchange: ExchangeClient,
    mailbox_guid: str,
    actor: Actor,
    now: datetime,
    mode: EnforcementMode,
    only_id: str | None = None,
) -> Revocation:
    """The one revoke path, for the CLI and the web: end the exceptions (ETag-guarded), then switch
    SMTP AUTH off at once, audited. Off is the safe direction, so it needs no sweep, report mode or cap.

    When Exchange cannot be reached the revocation still stands, and `next_step` says, from the
    settings, who will switch it off.
    """
    revoked = await store.exceptions.revoke(mailbox_guid, str(actor), now, only_id)
    if not revoked:
        return Revocation(revoked, switched_off=False)
    record = revoked[0]
    try:
        await switch_smtp_auth(store, exchange, record, True, ChangeReason.EXPIRED, f"revoke-{record.id}", actor, now)
    except GuardError as err:
        return Revocation(revoked, switched_off=False, problem=first_line(err), next_step=after_failed_switch_off(mode))
    return Revocation(revoked, switched_off=True)


def after_failed_switch_off(mode: EnforcementMode) -> str:
    if mode is EnforcementMode.ENFORCE:
        return "the next enforce sweep switches it off"
    return "sweeps are in report mode: switch it off by hand or enforce"


async def switch_smtp_auth(
    store: Store,
    exchange: ExchangeClient,
    record: ExceptionRecord,
    disabled: bool,
    reason: ChangeReason,
    run_id: str,
    actor: Actor,
    now: datetime,
) -> None:
    """An explicit admin action on one mailbox, outside the sweeps (so in report mode too), audited."""
    current = await exchange.find_mailbox(record.mailbox_guid)
    before = current.smtp_auth_disabled if current else None
    if before is disabled:
        return
    await exchange.set_smtp_auth_disabled(record.mailbox_guid, disabled)
    change = Change(record.mailbox_guid, record.mailbox_address, before, disabled, reason)
    await store.audit.append([AuditEntry(run_id, change, actor, now)])


async def active_mailboxes(store: Store, tenant_id: str, mailbox: str, now: datetime) -> set[str]:
    """The GUIDs of the mailboxes with this address that hold an active exception. Found in the
    exception table, not in Exchange, so a deleted mailbox can still be revoked."""
    address = mailbox_address("mailbox", mailbox)
    await store.state.require_marker(tenant_id)
    guids = {r.mailbox_guid for r in await store.exceptions.all() if r.mailbox_address == address and r.is_active(now)}
    if not guids:
        raise InputError("mailbox", f"{address} has no active exception")
    return guids
