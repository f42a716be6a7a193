"""An exception request: what a requester asks for, and where its decision stands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shared.model.exception_records import AuthMethod


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
