"""An exception: an approved, expiring permission for one mailbox to use SMTP AUTH."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class ExceptionStatus(StrEnum):
    APPROVED = "approved"
    REVOKED = "revoked"
    SUPERSEDED = "superseded"


class AuthMethod(StrEnum):
    OAUTH = "oauth"
    BASIC = "basic"


@dataclass(frozen=True, slots=True)
class ExceptionRecord:
    id: str
    mailbox_guid: str
    mailbox_address: str
    status: ExceptionStatus
    expires_at: datetime
    reason: str
    owner: str
    device: str
    auth_method: AuthMethod
    approved_by: str
    approved_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str = ""
    owner_id: str = ""  # the owner's Entra object id; empty on records written before it was kept

    def is_active(self, now: datetime) -> bool:
        return self.status is ExceptionStatus.APPROVED and self.expires_at > now
