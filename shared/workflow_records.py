"""What the request and approval workflow stores: exception requests and their notification outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shared.reconcile import AuthMethod


class RequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"  # nobody decided within REQUEST_PENDING_DAYS


class SenderKind(StrEnum):
    MFP = "mfp"  # multifunction printer or scanner
    LOB_APP = "lob-app"
    SCRIPT = "script"
    OTHER = "other"


class AlternativesReason(StrEnum):
    NO_OAUTH_SUPPORT = "no-oauth-support"  # the device or app cannot do OAuth
    EXTERNAL_RECIPIENTS = "external-recipients"  # rules out High Volume Email and Direct Send
    NO_STATIC_IP = "no-static-ip"  # rules out a connector-based relay
    VENDOR_MIGRATING = "vendor-migrating"  # a replacement is on its way
    OTHER = "other"


class NotificationKind(StrEnum):
    APPROVAL_REQUEST = "approval-request"  # to approvers, with a fresh single-use link
    DECISION = "decision"  # to the requester
    REVOKED = "revoked"
    REMINDER_14 = "reminder-14"
    REMINDER_1 = "reminder-1"
    EXPIRED = "expired"
    REQUEST_EXPIRED = "request-expired"
    TEAMS_CARD = "teams-card"
    MAILBOX_NOTICE = "mailbox-notice"  # to a mailbox's user, when someone else asks for SMTP AUTH on it


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"


@dataclass(slots=True)
class ExceptionRequest:
    id: str
    mailbox_guid: str
    mailbox_address: str
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
    requester_id: str
    requester_upn: str
    status: RequestStatus
    created_at: datetime
    expires_at: datetime  # a pending request, and its approval link, lapse at this time
    renews_exception_id: str = ""
    token_hash: str = ""
    decided_by: str = ""
    decided_by_upn: str = ""
    decided_at: datetime | None = None
    decision_comment: str = ""
    approved_days: int = 0
    exception_expires_at: datetime | None = None
    apply_error: str = ""
    owner_id: str = ""  # the owner's Entra object id; empty on requests stored before it was kept
    mailbox_user_id: str = ""  # the Entra object id of the mailbox's own user


@dataclass(slots=True)
class OutboxItem:
    """One notification to send. Its key is deterministic, so it is enqueued at most once."""

    about: str  # the request id, or "exception-<id>" for exceptions granted outside the workflow
    kind: NotificationKind
    status: OutboxStatus
    created_at: datetime
    next_attempt_at: datetime
    attempts: int = 0
    last_error: str = ""
    sent_at: datetime | None = None
    exception_id: str = ""
    requester_id: str = ""  # set on a request's approval notice: it is filed under its requester
    daily_slot: int = 0  # an approval notice's place among its requester's requests that UTC day
