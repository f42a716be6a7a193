"""Exchange authentication policies, as far as OAuth-only exceptions need them.

An authentication policy governs Basic authentication only. SMTP AUTH switched on for a mailbox
allows Basic SMTP too, unless the policy that applies to its user (the one assigned to the user,
else the organisation's default) has `AllowBasicAuthSmtp` off. So the sweeps give each user with an
OAuth-only exception the app's own policy, APP_POLICY_NAME, where nothing blocks Basic SMTP already,
and put the previous assignment back when the exception ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

# Found by name: the admin creates it once (docs/permissions.md), the sweeps only assign it.
APP_POLICY_NAME: Final = "SMTP AUTH Guard - no Basic SMTP"
CREATE_APP_POLICY: Final = f'New-AuthenticationPolicy -Name "{APP_POLICY_NAME}"'
# Microsoft: a change to a user's authentication policy can take up to 24 hours to apply.
TAKES_EFFECT_WITHIN: Final = "up to 24 hours"


class PolicyReason(StrEnum):
    OAUTH_ONLY = "oauth-only"  # an active OAuth-only exception, and nothing blocked Basic SMTP for its user
    EXCEPTION_ENDED = "exception-ended"  # its exception ended: the previous assignment goes back
    UNDO = "undo"  # an admin put back what a run did


def same_policy(a: str, b: str) -> bool:
    """Exchange matches policy names in any case; "" is no policy assigned."""
    return a.lower() == b.lower()


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """A change of the authentication policy assigned to a mailbox's user; "" is none (the org default)."""

    guid: str
    address: str
    before: str
    after: str
    reason: PolicyReason

    @property
    def assigns_app_policy(self) -> bool:
        return same_policy(self.after, APP_POLICY_NAME)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PolicyChange:
        return cls(
            guid=str(data["guid"]),
            address=str(data["address"]),
            before=str(data["before"] or ""),
            after=str(data["after"] or ""),
            reason=PolicyReason(data["reason"]),
        )


@dataclass(frozen=True, slots=True)
class PolicyAssignment:
    """The app's policy given to a mailbox's user: what to put back, and since when it holds.

    `pending` is set before the Set-User is sent ("assign" or "restore", by run `pending_run`), and
    cleared once the change is audited: a run that died in between leaves it for the next to settle.
    """

    guid: str
    address: str
    previous: str  # the assignment to put back when the exception ends; "" is none
    assigned_at: datetime | None  # when the app's policy was assigned (None while an assign is pending)
    run_id: str  # the run that assigned it
    pending: str = ""
    pending_run: str = ""


@dataclass(frozen=True, slots=True)
class AuthPolicies:
    """The tenant's authentication policies by name, and the organisation's default ("" for none)."""

    policies: tuple[Mapping[str, Any], ...]
    default: str = ""

    def named(self, reference: str) -> Mapping[str, Any] | None:
        """The policy a Get-User / Get-OrganizationConfig reference points at (a name, or a DN's CN)."""
        wanted = reference.lower()
        if wanted.startswith("cn="):
            wanted = wanted[3:].split(",", 1)[0]
        for policy in self.policies:
            names = {str(policy.get(key) or "").lower() for key in ("Name", "Identity", "DistinguishedName")}
            if wanted in names or reference.lower() in names:
                return policy
        return None

    def blocks_basic_smtp(self, reference: str) -> bool:
        policy = self.named(reference) if reference else None
        return policy is not None and policy.get("AllowBasicAuthSmtp") is False

    def applying(self, assigned: str) -> tuple[str, str]:
        """The policy that governs a user with this assignment, and why: theirs, else the default."""
        if assigned:
            return assigned, "assigned to the user"
        return self.default, "the organisation's default"

    @property
    def blocking(self) -> tuple[str, ...]:
        return tuple(str(p.get("Name", "")) for p in self.policies if p.get("AllowBasicAuthSmtp") is False)

    @property
    def app_policy(self) -> Mapping[str, Any] | None:
        return self.named(APP_POLICY_NAME)


def policy_name(value: Any) -> str:
    """Get-User's AuthenticationPolicy as a name: "" for none; a DN gives its CN."""
    text = str(value or "").strip()
    if text.lower().startswith("cn="):
        return text[3:].split(",", 1)[0]
    return text


def describe(policy: str) -> str:
    return f"'{policy}'" if policy else "none (the organisation's default)"


@dataclass(frozen=True, slots=True)
class AuditedPolicyChange:
    """One policy row of the audit trail (`policy-{guid}` in its run's partition)."""

    run_id: str
    at: datetime
    mailbox: str
    mailbox_guid: str
    before: str
    after: str
    reason: str
    actor: str
    recovered: bool = False
