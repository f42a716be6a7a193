"""A notification the workflow owes someone, as its outbox holds it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


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
