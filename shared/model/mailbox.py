"""A mailbox as Exchange reports it, and a change to its SMTP AUTH setting.

The setting is `SmtpClientAuthenticationDisabled`: True (off), False (on) or None (follow the
organisation's flag).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class ChangeReason(StrEnum):
    NULL = "null"  # mailbox followed the organisation flag
    DRIFT = "drift"  # mailbox allowed SMTP AUTH without any exception
    EXPIRED = "expired"  # its exception expired or was revoked
    EXCEPTION = "exception"  # an active exception needs SMTP AUTH on
    UNDO = "undo"  # an admin put back what a run did (`undo`): the value before that run


@dataclass(frozen=True, slots=True)
class MailboxState:
    guid: str
    address: str
    smtp_auth_disabled: bool | None
    user_id: str = ""  # the Entra object id of its user, when looked up on its own (not in listings)


@dataclass(frozen=True, slots=True)
class Recipient:
    """Anyone Exchange can deliver to, as Get-Recipient shows them."""

    guid: str
    address: str
    object_id: str  # ExternalDirectoryObjectId: empty for recipients with no Entra object
    type: str  # RecipientTypeDetails


@dataclass(frozen=True, slots=True)
class Change:
    guid: str
    address: str
    before: bool | None
    after: bool | None  # None only for an undo back to "follow the organisation"
    reason: ChangeReason

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        return cls(
            guid=str(data["guid"]),
            address=str(data["address"]),
            before=data["before"],
            after=None if data["after"] is None else bool(data["after"]),
            reason=ChangeReason(data["reason"]),
        )
